use std::time::Duration;

use super::*;
use crate::config::model::{Proto, Step};

fn window(door: &str, last: u8) -> Window {
    Window {
        door: door.into(),
        src: format!("192.0.2.{last}").parse().unwrap(),
        port: Step { port: 22, proto: Proto::Tcp },
        remaining: Duration::from_secs(3),
    }
}

fn state() -> State {
    State {
        kernel: Some(Counters { frames: 5, gate_drop: 2, ..Counters::default() }),
        spa_kernel: Some(SpaCounters { captured: 4, ..SpaCounters::default() }),
        sources: 3,
        evictions: 1,
        attempts: vec![("m-ssh".into(), 2)],
        windows: vec![
            (Backend::Xdp, window("m-ssh", 1)),
            (Backend::Xdp, window("m-ssh", 2)),
            (Backend::Nftables, window("m-web", 1)),
        ],
    }
}

#[test]
fn exposes_events_state_and_build_info() {
    events().door_opened("m-ssh");
    events().stage("m-ssh", 2);
    events().command_ran("m-ssh", false);
    // A label of its own: other tests count real outcomes in the same registry.
    events().spa("m-bad HMAC", 1);
    let text = render(&state(), Format::Prometheus);
    for line in [
        "xknockd_door_opens_total{door=\"m-ssh\"} 1\n",
        "xknockd_door_stages_total{door=\"m-ssh\",stage=\"2\"} 1\n",
        "xknockd_command_runs_total{door=\"m-ssh\"} 1\n",
        "xknockd_command_failures_total{door=\"m-ssh\"} 1\n",
        "xknockd_xdp_frames_total 5\n",
        "xknockd_xdp_gate_drop_total 2\n",
        "xknockd_xdp_spa_captured_total 4\n",
        "xknockd_spa_packets_total{outcome=\"m-bad HMAC\"} 1\n",
        "xknockd_tracker_sources 3\n",
        "xknockd_tracker_evictions_total 1\n",
        "xknockd_attempts_in_progress{door=\"m-ssh\"} 2\n",
        "xknockd_open_windows{door=\"m-ssh\",backend=\"xdp\"} 2\n",
        "xknockd_open_windows{door=\"m-web\",backend=\"nftables\"} 1\n",
        &format!("xknockd_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
}

#[test]
fn every_kernel_counter_is_exposed() {
    let text = render(&state(), Format::OpenMetrics);
    for (name, _, _) in table::KERNEL {
        assert!(text.contains(&format!("\nxknockd_xdp_{name}_total ")), "no {name} in:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn without_kernel_counters_the_rest_still_renders() {
    let text = render(&State::default(), Format::Prometheus);
    assert!(!text.contains("xknockd_xdp_frames"), "{text}");
    assert!(text.contains("xknockd_tracker_sources 0\n"), "{text}");
}

#[test]
fn openmetrics_only_when_asked() {
    assert_eq!(Format::from_accept(None), Format::Prometheus);
    let prom = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    assert_eq!(Format::from_accept(Some(prom)), Format::OpenMetrics);
    assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
}

/// configs/grafana-dashboard.json only queries metrics that exist.
#[test]
fn the_dashboard_queries_existing_metrics() {
    let dashboard = include_str!("../../../configs/grafana-dashboard.json");
    // A family shows only once it has a sample.
    let e = events();
    e.door_opened("dash");
    e.timeout("dash");
    e.refused("dash", 1);
    e.gate_failed("dash");
    e.command_ran("dash", false);
    e.spa("accepted", 1);
    let text = render(&state(), Format::OpenMetrics);
    let mut names = 0;
    for (i, _) in dashboard.match_indices("xknockd_") {
        let name: String =
            dashboard[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let family = name.strip_suffix("_total").or_else(|| name.strip_suffix("_info")).unwrap_or(&name);
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {name}, which is not exposed"
        );
        names += 1;
    }
    assert!(names >= 10, "{names}");
}
