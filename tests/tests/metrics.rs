//! Issue 12: `GET /metrics` after a real knock, read by a real parser
//! (Debian's python3-prometheus-client, both exposition formats), and no
//! listener when `metrics_listen` is absent.

use std::collections::BTreeMap;

use xknock_tests::{
    gate::{Rig, WAIT},
    netns::{CLIENT_V4, SERVER_V4},
    wait_until,
};

const PORT: u16 = 9707;

/// Fetches /metrics in the server namespace, once as OpenMetrics and once as
/// the Prometheus text format, parses each with prometheus_client's own
/// parser (which raises on anything malformed), and prints every sample as
/// `FORMAT NAME{k="v",...} VALUE`.
const SCRAPE: &str = r#"
import sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families as prom
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
url = sys.argv[1]
for fmt, accept, parse in (("om", "application/openmetrics-text; version=1.0.0", om), ("prom", "text/plain", prom)):
    req = urllib.request.Request(url, headers={"Accept": accept})
    body = urllib.request.urlopen(req, timeout=10).read().decode()
    for family in parse(body):
        for s in family.samples:
            labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
            print("%s %s{%s} %s" % (fmt, s.name, labels, s.value))
"#;

/// `sample{labels}` → value, per format, as the parser read them.
fn scrape(rig: &Rig) -> BTreeMap<String, f64> {
    let url = format!("http://127.0.0.1:{PORT}/metrics");
    let out = rig.pair().in_ns(&rig.pair().server, &["/usr/bin/python3", "-c", SCRAPE, &url]).unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, key: &str) -> Option<f64> {
    samples.get(key).copied()
}

#[test]
fn a_knock_shows_in_both_formats() {
    let listen = format!("metrics_listen: \"127.0.0.1:{PORT}\"");
    let Some(mut rig) = Rig::start("metrics_scrape", "nftables", 30, &[&listen]) else { return };
    let before = scrape(&rig);
    assert_eq!(value(&before, "om xknockd_door_opens_total{door=\"ssh\"}"), None, "{before:#?}");
    assert_eq!(value(&before, "prom xknockd_tracker_sources{}"), Some(0.0), "{before:#?}");
    rig.knock(SERVER_V4);
    // The window is listed from the kernel, which the knock's log line
    // already waited for.
    let mut after = BTreeMap::new();
    assert!(wait_until(WAIT, || {
        after = scrape(&rig);
        value(&after, "om xknockd_open_windows{backend=\"nftables\",door=\"ssh\"}") == Some(1.0)
    }));
    for fmt in ["om", "prom"] {
        let get = |k: &str| value(&after, &format!("{fmt} {k}"));
        assert_eq!(get("xknockd_door_opens_total{door=\"ssh\"}"), Some(1.0), "{fmt}: {after:#?}");
        assert_eq!(get("xknockd_door_stages_total{door=\"ssh\",stage=\"3\"}"), Some(1.0), "{fmt}");
        assert_eq!(get("xknockd_open_windows{backend=\"nftables\",door=\"ssh\"}"), Some(1.0), "{fmt}");
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(get(&format!("xknockd_build_info{{version=\"{version}\"}}")), Some(1.0), "{fmt}");
        // The first step stays in the kernel; the second brings both.
        assert_eq!(get("xknockd_xdp_first_step_total{}"), Some(1.0), "{fmt}: {after:#?}");
        assert!(get("xknockd_xdp_frames_total{}").unwrap_or(0.0) >= 3.0, "{fmt}");
        assert_eq!(get("xknockd_xdp_pairs_total{}"), Some(1.0), "{fmt}");
    }
    assert!(rig.srv.daemon.count(&format!("{CLIENT_V4}: ssh: OPEN SESAME")) == 1);
}

#[test]
fn nothing_listens_without_metrics_listen() {
    let Some(rig) = Rig::start("metrics_off", "nftables", 30, &[]) else { return };
    let pair = rig.pair();
    assert!(!pair.listening(&pair.server, PORT).unwrap());
    let out = pair.in_ns(&pair.server, &["ss", "-Hltnp"]).unwrap();
    let listeners = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!listeners.contains("xknockd"), "xknockd listens without metrics_listen:\n{listeners}");
}
