//! SPA in the daemon's loop: what the screener thread ([`super::spa_screen`])
//! accepted is opened through the same gate worker and rate limit as a
//! knock, and its refusals are logged, once per reason per second.

use std::sync::Arc;

use super::{ratelimit, spa_screen::Screened, worker, Daemon};
use crate::{
    commands::pick,
    config::model::Proto,
    events::monotonic_now,
    gate::door_backend,
    spa::{Grant, SpaMessage},
};

impl Daemon {
    /// Acts on one verdict of the screener.
    pub(super) async fn handle_screened(&mut self, v: Screened) {
        match v {
            Screened::Accepted { door, msg, grant, generation } if generation == self.spa_generation => {
                self.spa_open(&door, &msg, grant).await;
            }
            Screened::Accepted { door, grant, .. } => {
                self.spa.lock().count_refused("judged before a reload");
                let who = self.who(grant.ip.to_canonical());
                self.log
                    .line(&format!("{who}: {door}: SPA refused: judged before a reload (send a new packet)"));
            }
            Screened::Refused { src, port, door, reason, detail } => {
                let place = door.map_or_else(|| format!("SPA port {port}"), |n| n.to_string());
                let detail = if detail.is_empty() || detail == reason {
                    String::new()
                } else {
                    format!(" ({detail})")
                };
                self.log.line(&format!("{}: {place}: SPA refused: {reason}{detail}", self.who(src)));
            }
            Screened::Suppressed { reason, n } => {
                self.log.line(&format!("SPA: {n} more refused ({reason}) in the last second"));
            }
        }
    }

    /// The kernel's SPA counters and ours, for the stats line.
    pub(super) fn spa_stats(&self) -> String {
        let k = self.knocker.spa_counters().unwrap_or_default();
        format!(
            " spa_captured={} spa_limited={} spa_ring_full={} spa_bad_len={}{}",
            k.captured,
            k.limited,
            k.ring_full,
            k.bad_len,
            self.spa.lock().stats_line()
        )
    }

    /// Opens the granted ports for the granted time, as a knock would: the
    /// rate limit first, then the gate thread, which logs `sesame` once
    /// the window is in the kernel, then the door's commands with %IP%.
    async fn spa_open(&mut self, name: &Arc<str>, msg: &SpaMessage, grant: Grant) {
        let Some(door) = self.doors.get(name).cloned() else { return };
        let ip = grant.ip.to_canonical();
        if self.limiter.admit(name, ip, monotonic_now()) == ratelimit::Verdict::Refused {
            self.spa.lock().count_refused("over the open rate");
            return;
        }
        let ports: Vec<String> =
            grant.ports.iter().map(|p| format!("{}/{}", proto(p.proto), p.port)).collect();
        let sesame =
            format!("{}: {name}: SPA accepted (user {}, {})", self.who(ip), msg.user, ports.join(", "));
        let start = pick(door.start_command.as_deref(), door.start_command_6.as_deref(), ip);
        let stop = pick(door.stop_command.as_deref(), door.stop_command_6.as_deref(), ip);
        let commands = (start.is_some() || stop.is_some()).then(|| worker::Commands {
            start: start.map(String::from),
            stop: stop.map(String::from),
            timeout: door.cmd_timeout,
        });
        let Some(backend) = door_backend(&self.cfg, &door) else { return };
        let req = worker::OpenRequest {
            door: Arc::clone(name),
            backend,
            src: ip,
            ports: grant.ports,
            duration: grant.duration,
            commands,
            sesame: sesame.clone(),
        };
        // Fail closed: a stalled firewall tool must not stall the loop.
        if let Err(e) = self.gates.open(req) {
            self.log.line(&sesame);
            self.log.line(&format!("{name}: not opening the gate for {ip}: {e}"));
        }
    }
}

fn proto(p: Proto) -> &'static str {
    p.as_str()
}
