//! serde wrappers that validate values while serde_yaml still knows where they are.
//!
//! serde_yaml stamps an error with a value's line only if the error comes out of that
//! value's visitor; an error raised after `deserialize` returns gets the enclosing
//! block's line instead. So every check on a single value happens inside a visitor here.

use std::{fmt, net::IpAddr, time::Duration};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{
    model::{Backend, Proto, Step, TcpFlags},
    values::{
        check_port, parse_backend, parse_duration, parse_interface, parse_step, parse_target,
        parse_tcp_flags, seconds_from_int, OPEN_PORT_SEPARATORS,
    },
};

/// Starts the message of every error raised here, so `yaml::serde_error` can tell our
/// message apart from the path serde_yaml puts in front of it.
pub(super) const MARK: char = '\u{1}';

fn fail<E: de::Error>(message: String) -> E {
    E::custom(format_args!("{MARK}{message}"))
}

type Parse<T> = fn(&str) -> Result<T, String>;
type ParseInt<T> = fn(i128) -> Result<T, String>;

/// A value written as an integer and/or a string, checked by `parse`.
struct Scalar<T> {
    expecting: &'static str,
    /// `None`: an integer is parsed as its decimal text.
    from_int: Option<ParseInt<T>>,
    from_str: Parse<T>,
}

impl<T> Scalar<T> {
    fn int<E: de::Error>(self, n: i128) -> Result<T, E> {
        match self.from_int {
            Some(from_int) => from_int(n).map_err(fail),
            None => (self.from_str)(&n.to_string()).map_err(fail),
        }
    }
}

impl<T> Visitor<'_> for Scalar<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.int(i128::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.int(i128::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        (self.from_str)(&v.to_string()).map_err(fail)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.from_str)(v).map_err(fail)
    }
}

fn tcp_port(n: i128) -> Result<Step, String> {
    check_port(n).map(|port| Step { port, proto: Proto::Tcp })
}

/// Declares a newtype that deserializes through a `Scalar`.
macro_rules! scalar_type {
    ($name:ident, $inner:ty, $expecting:expr, $from_int:expr, $from_str:expr) => {
        pub(super) struct $name(pub $inner);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let visitor = Scalar { expecting: $expecting, from_int: $from_int, from_str: $from_str };
                d.deserialize_any(visitor).map($name)
            }
        }
    };
}

scalar_type!(
    StepDe,
    Step,
    "a knock step like 7000, \"7000:udp\" or \"icmp:64\"",
    Some(tcp_port),
    super::icmp::parse_yaml_step
);
scalar_type!(OpenPortDe, Step, "a port like 22, \"22/tcp\" or \"53:udp\"", Some(tcp_port), |s| parse_step(
    s,
    OPEN_PORT_SEPARATORS
));
scalar_type!(
    DurationDe,
    Duration,
    "a duration like 30, \"5s\", \"2m\" or \"500ms\"",
    Some(seconds_from_int),
    parse_duration
);
scalar_type!(TcpFlagsDe, TcpFlags, "tcp flags like \"syn,!ack\"", None, parse_tcp_flags);
scalar_type!(TargetDe, IpAddr, "an IP address", None, parse_target);
scalar_type!(BackendDe, Backend, "nftables, iptables or xdp", None, parse_backend);
scalar_type!(InterfaceDe, String, "an interface name", None, parse_interface);
scalar_type!(ListenDe, std::net::SocketAddr, "an address and port like \"127.0.0.1:9707\"", None, |s| {
    let s = s.trim();
    s.parse()
        .map_err(|_| format!("`{s}` is not an address and port like \"127.0.0.1:9707\" or \"[::1]:9707\""))
});
scalar_type!(MaxSourcesDe, usize, "a number of sources (at least 1)", Some(max_sources), |s| s
    .trim()
    .parse::<i128>()
    .map_err(|_| format!("`{s}` is not a number"))
    .and_then(max_sources));

fn max_sources(n: i128) -> Result<usize, String> {
    match usize::try_from(n) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("max_sources must be at least 1, not {n}")),
    }
}

scalar_type!(AtLeastOneDe, u32, "a whole number, at least 1", Some(at_least_one), |s| s
    .trim()
    .parse::<i128>()
    .map_err(|_| format!("`{s}` is not a whole number"))
    .and_then(at_least_one));

fn at_least_one(n: i128) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("must be a whole number from 1 to {}, not {n}", u32::MAX)),
    }
}

scalar_type!(SlotsDe, u32, "a power of two", Some(first_step_slots), |s| s
    .trim()
    .parse::<i128>()
    .map_err(|_| format!("`{s}` is not a whole number"))
    .and_then(first_step_slots));

fn first_step_slots(n: i128) -> Result<u32, String> {
    use super::model::{MAX_FIRST_STEP_SLOTS, MIN_FIRST_STEP_SLOTS};
    match u32::try_from(n) {
        Ok(n) if n.is_power_of_two() && (MIN_FIRST_STEP_SLOTS..=MAX_FIRST_STEP_SLOTS).contains(&n) => Ok(n),
        _ => Err(format!(
            "first_step_slots must be a power of two from {MIN_FIRST_STEP_SLOTS} to {MAX_FIRST_STEP_SLOTS}, not {n}"
        )),
    }
}

scalar_type!(
    SweepLimitDe,
    Option<u32>,
    "a number of packets or `off`",
    Some(sweep_limit),
    |s| match s.trim() {
        "off" => Ok(None),
        n => n.parse::<i128>().map_err(|_| format!("`{s}` is not a number or `off`")).and_then(sweep_limit),
    }
);

fn sweep_limit(n: i128) -> Result<Option<u32>, String> {
    match u16::try_from(n) {
        Ok(n) if n < u16::MAX => Ok(Some(u32::from(n))),
        _ => Err(format!("sweep_limit must be `off` or a number from 0 to {}, not {n}", u16::MAX - 1)),
    }
}

/// `sequence`: a list of steps; also knockd's `"7000,8000:udp"` string or one bare port.
pub(super) struct SequenceDe(pub Vec<Step>);

impl<'de> Deserialize<'de> for SequenceDe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SequenceVisitor).map(SequenceDe)
    }
}

struct SequenceVisitor;

impl<'de> Visitor<'de> for SequenceVisitor {
    type Value = Vec<Step>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of knock steps like [7000, \"8000:udp\"]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Step>, A::Error> {
        let mut steps = Vec::new();
        while let Some(StepDe(step)) = seq.next_element()? {
            steps.push(step);
        }
        // Length limits are checked later, against the `sequence:` line.
        Ok(steps)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<Step>, E> {
        super::icmp::parse_yaml_sequence(v).map_err(fail)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<Step>, E> {
        tcp_port(i128::from(v)).map(|s| vec![s]).map_err(fail)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<Step>, E> {
        tcp_port(i128::from(v)).map(|s| vec![s]).map_err(fail)
    }
}

/// `interface`: one name or a list of names.
pub(super) struct InterfacesDe(pub Vec<String>);

impl<'de> Deserialize<'de> for InterfacesDe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(InterfacesVisitor).map(InterfacesDe)
    }
}

struct InterfacesVisitor;

impl<'de> Visitor<'de> for InterfacesVisitor {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an interface name or a list of them")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
        parse_interface(v).map(|name| vec![name]).map_err(fail)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut names = Vec::new();
        while let Some(InterfaceDe(name)) = seq.next_element()? {
            names.push(name);
        }
        Ok(names)
    }
}

/// A map kept in file order, repeats included (they are reported later, with lines).
pub(super) struct OrderedMap<T>(pub Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OrderedMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(OrderedMapVisitor(std::marker::PhantomData)).map(OrderedMap)
    }
}

struct OrderedMapVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for OrderedMapVisitor<T> {
    type Value = Vec<(String, T)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of doors by name")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value()?;
            entries.push((name, value));
        }
        Ok(entries)
    }
}
