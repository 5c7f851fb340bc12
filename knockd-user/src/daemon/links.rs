//! Interfaces that come and go. A device deleted and created again under the
//! same name (a driver reset, a VLAN or bond rebuilt) is a new device: the
//! old XDP link died with the old one, so the program is attached again with
//! the same mode, gate and maps. Each event is a lifecycle line, since a
//! daemon attached to nothing hears no knocks.

use super::Daemon;
use crate::bpf::LinkEvent;

impl Daemon {
    /// Called on every rtnetlink link notice (and once when watching starts):
    /// re-checks every attached interface against the device now under its
    /// name. A failed attach is retried on the next notice.
    pub(super) fn sync_links(&mut self) {
        for event in self.knocker.refresh_links() {
            self.log.notice(&describe(&event));
        }
    }
}

fn describe(event: &LinkEvent) -> String {
    match event {
        LinkEvent::Gone { iface } => {
            format!("{iface}: interface gone; XDP will be attached again when it comes back")
        }
        LinkEvent::Back { iface, ifindex, gap, mode } => format!(
            "{iface}: interface back (ifindex {ifindex}); XDP attached again in {mode:?} mode, {} ms after it went away",
            gap.as_millis()
        ),
        LinkEvent::Failed { iface, error } => {
            format!("{iface}: interface back, but attaching XDP failed (retried on the next link change): {error}")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aya::programs::XdpMode;

    use super::*;

    #[test]
    fn lines_name_the_interface_and_the_gap() {
        let back = LinkEvent::Back {
            iface: "eth1".into(),
            ifindex: 7,
            gap: Duration::from_millis(42),
            mode: XdpMode::Skb,
        };
        assert_eq!(
            describe(&back),
            "eth1: interface back (ifindex 7); XDP attached again in Skb mode, 42 ms after it went away"
        );
        assert!(describe(&LinkEvent::Gone { iface: "eth1".into() }).starts_with("eth1: interface gone"));
    }
}
