//! The purge timer never runs ahead of the ring: when an attempt's deadline
//! passes, the knocks the kernel queued before then are handed to the
//! tracker first, so an in-time knock still in the ring completes its
//! attempt instead of finding it expired.

use std::{future::Future, io, task::Poll, time::Duration};

use crate::{
    events::{EventStream, KnockRecord},
    tracker::{Input, Outcome, Tracker},
};

/// Appends whatever the ring holds now to `out`, without waiting.
pub async fn pending(events: &mut EventStream, out: &mut Vec<KnockRecord>) -> io::Result<()> {
    // One turn through the runtime lets its reactor see a wakeup the kernel
    // has already sent; until then the ring does not count as readable.
    tokio::task::yield_now().await;
    let mut batch = std::pin::pin!(events.next_batch(out));
    match std::future::poll_fn(|cx| Poll::Ready(batch.as_mut().poll(cx))).await {
        Poll::Ready(res) => res,
        Poll::Pending => Ok(()),
    }
}

/// The deadline's work once the ring is drained: the queued `knocks` first,
/// then every attempt due at `now`, read before the drain.
pub fn expire(tracker: &mut Tracker, knocks: &[Input], now: Duration, out: &mut Vec<Outcome>) {
    for k in knocks {
        tracker.feed(k, out);
    }
    tracker.purge(now, out);
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, sync::Arc};

    use super::*;
    use crate::{
        config::model::{Proto, Step, TcpFlags},
        tracker::{DoorSpec, Knock},
    };

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn tracker() -> Tracker {
        let step = |port| Step { port, proto: Proto::Tcp };
        let door = DoorSpec {
            name: Arc::from("d"),
            sequence: vec![step(7000), step(8000)],
            seq_timeout: TIMEOUT,
            tcp_flags: TcpFlags::default(),
            target: None,
        };
        Tracker::new(vec![door], 16)
    }

    fn knock(port: u16, at: Duration) -> Knock {
        let src: IpAddr = "192.0.2.1".parse().unwrap();
        Knock {
            src,
            dst: "192.0.2.9".parse().unwrap(),
            dst_is_local: true,
            step: Step { port, proto: Proto::Tcp },
            tcp_flags: 0x02,
            at,
        }
    }

    /// The first knock at 0 s; the second at 4.9 s, still in the ring when
    /// the timer fires just after the 5 s deadline.
    fn started() -> (Tracker, Knock, Duration) {
        let mut t = tracker();
        let mut out = Vec::new();
        t.on_knock(&knock(7000, Duration::ZERO), &mut out);
        assert_eq!(t.next_deadline(), Some(TIMEOUT));
        (t, knock(8000, Duration::from_millis(4900)), TIMEOUT + Duration::from_millis(1))
    }

    #[test]
    fn a_queued_in_time_knock_completes_before_the_purge() {
        let (mut t, queued, now) = started();
        let mut out = Vec::new();
        expire(&mut t, &[Input::Knock(queued)], now, &mut out);
        assert!(out.iter().any(|o| matches!(o, Outcome::Open { .. })), "{out:?}");
        assert!(!out.iter().any(|o| matches!(o, Outcome::Timeout { .. })), "{out:?}");
    }

    /// What the order prevents: purging first expires the attempt, and the
    /// queued knock then finds nothing to advance.
    #[test]
    fn purging_first_would_expire_it() {
        let (mut t, queued, now) = started();
        let mut out = Vec::new();
        t.purge(now, &mut out);
        t.on_knock(&queued, &mut out);
        assert!(matches!(out[0], Outcome::Timeout { stage: 1, .. }), "{out:?}");
        assert!(!out.iter().any(|o| matches!(o, Outcome::Open { .. })));
    }

    #[test]
    fn a_late_attempt_still_times_out() {
        let (mut t, _, now) = started();
        let mut out = Vec::new();
        expire(&mut t, &[], now, &mut out);
        assert!(matches!(out[..], [Outcome::Timeout { stage: 1, .. }]), "{out:?}");
    }
}
