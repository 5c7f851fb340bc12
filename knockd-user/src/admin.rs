//! `xknockd --status` and `--flush`: read or remove the kernel state the
//! gates own, with no daemon needed (it may have crashed or been stopped).

use std::{fmt::Write as _, path::Path, time::Duration};

use crate::{
    config::model::{Backend, Config},
    daemon::gates,
    gate::{protected_by_backend, GateError, Window},
};

const ALL: [Backend; 3] = [Backend::Nftables, Backend::Iptables, Backend::Xdp];

/// Open windows of every backend `cfg` uses, as a table.
pub fn status(cfg: &Config) -> Result<String, GateError> {
    let mut rows: Vec<Window> = Vec::new();
    for (backend, _) in protected_by_backend(cfg) {
        let gate = gates::build(backend, &cfg.options.bpffs_dir, None)?;
        rows.extend(gate.windows()?);
    }
    Ok(render(&rows))
}

pub fn render(rows: &[Window]) -> String {
    let mut out = String::from("DOOR\tADDRESS\tPORT\tLEFT\n");
    for w in rows {
        // nft lists an element without a timeout as never expiring.
        let left = if w.remaining == Duration::MAX {
            "never".to_string()
        } else {
            format!("{}s", w.remaining.as_secs())
        };
        let _ = writeln!(out, "{}\t{}\t{}/{}\t{left}", w.door, w.src, w.port.port, w.port.proto.as_str());
    }
    out
}

/// Removes what every backend owns; only the xdp backend needs a place (its
/// bpffs pins). A backend that is not present (no nft, nothing pinned) has
/// nothing to remove and is reported, not failed.
pub fn flush(bpffs_dir: &Path) -> Vec<(Backend, Result<(), GateError>)> {
    ALL.iter()
        .map(|&b| {
            let res = gates::build(b, bpffs_dir, None).and_then(|mut g| g.flush());
            (b, res)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{Proto, Step};

    #[test]
    fn status_table_lists_door_address_port_and_time_left() {
        let rows = [Window {
            door: "ssh".into(),
            src: "10.0.0.2".parse().unwrap(),
            port: Step { port: 22, proto: Proto::Tcp },
            remaining: Duration::from_millis(29_500),
        }];
        assert_eq!(render(&rows), "DOOR\tADDRESS\tPORT\tLEFT\nssh\t10.0.0.2\t22/tcp\t29s\n");
    }
}
