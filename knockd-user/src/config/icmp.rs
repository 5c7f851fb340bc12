//! ICMP echo steps, `icmp:N` (YAML only; knockd.conf has no such step):
//! an echo request whose payload is N bytes, what `ping -s N` sends.

use super::{
    model::{Proto, Step, MAX_ICMP_PAYLOAD},
    values::{check_sequence_len, parse_step, SEQUENCE_SEPARATORS},
};

/// A YAML knock step: `icmp:N`, or whatever knockd's syntax allows.
pub(crate) fn parse_yaml_step(text: &str) -> Result<Step, String> {
    let item = text.trim();
    let Some((head, len)) = item.split_once(':') else {
        return parse_step(item, SEQUENCE_SEPARATORS);
    };
    if !head.trim().eq_ignore_ascii_case("icmp") {
        return parse_step(item, SEQUENCE_SEPARATORS);
    }
    let len = len.trim();
    let n: u32 = match len.bytes().all(|b| b.is_ascii_digit()) && !len.is_empty() {
        true => len.parse().unwrap_or(u32::MAX),
        false => return Err(format!("`{item}`: the ICMP payload length is not a number")),
    };
    if n > u32::from(MAX_ICMP_PAYLOAD) {
        return Err(format!(
            "`{item}`: an ICMP payload of {n} bytes does not fit one frame; at most {MAX_ICMP_PAYLOAD}"
        ));
    }
    Ok(Step { port: n as u16, proto: Proto::Icmp })
}

/// A YAML sequence written as one string: `"7000, icmp:64, 8000:udp"`.
pub(crate) fn parse_yaml_sequence(text: &str) -> Result<Vec<Step>, String> {
    if text.trim().is_empty() {
        return Err("the sequence is empty".to_string());
    }
    let steps = text.split(',').map(parse_yaml_step).collect::<Result<Vec<_>, _>>()?;
    check_sequence_len(&steps)?;
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_steps() {
        assert_eq!(parse_yaml_step("icmp:64"), Ok(Step { port: 64, proto: Proto::Icmp }));
        assert_eq!(parse_yaml_step(" ICMP : 0 "), Ok(Step { port: 0, proto: Proto::Icmp }));
        assert_eq!(parse_yaml_step("icmp:1452").unwrap().port, 1452);
        assert!(parse_yaml_step("icmp:1453").unwrap_err().contains("at most 1452"));
        assert!(parse_yaml_step("icmp:x").is_err());
        assert!(parse_yaml_step("icmp:").is_err());
        assert_eq!(parse_yaml_step("7000:udp"), Ok(Step { port: 7000, proto: Proto::Udp }));
        let seq = parse_yaml_sequence("7000, icmp:100,8000:udp").unwrap();
        assert_eq!(seq[1], Step { port: 100, proto: Proto::Icmp });
        assert_eq!(seq[1].to_string(), "icmp:100");
    }
}
