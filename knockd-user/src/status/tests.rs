use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use super::*;

fn report() -> Report {
    Report {
        origin: Origin::Daemon,
        version: "9.9.9".into(),
        doors: vec![DoorRow {
            name: "ssh".into(),
            steps: 3,
            backend: Some("xdp".into()),
            ports: vec!["22/tcp".into()],
            counters: Some(DoorCounters { opens: 4, ..DoorCounters::default() }),
        }],
        attempts: vec![AttemptRow {
            source: "192.0.2.7".parse().unwrap(),
            door: "ssh".into(),
            stage: 2,
            steps: 3,
            left_ms: 4_250,
        }],
        windows: vec![WindowRow {
            door: "ssh".into(),
            backend: "xdp".into(),
            address: "192.0.2.8".parse().unwrap(),
            port: "22/tcp".into(),
            left_s: Some(29),
        }],
    }
}

#[test]
fn the_socket_sits_beside_the_pid_file() {
    assert_eq!(socket_path(Path::new("/run/xknockd/xknockd.pid")), Path::new("/run/xknockd/xknockd.sock"));
    assert_eq!(socket_path(Path::new("/tmp/x/pid")), Path::new("/tmp/x/pid.sock"));
    assert_eq!(socket_path(Path::new("/tmp/a.sock")), Path::new("/tmp/a.sock.status"));
}

#[test]
fn tables_show_doors_attempts_and_windows() {
    let text = render(&report());
    assert!(text.contains("\nssh\t3\txdp\t22/tcp\t4\t0\t0\t0\t0\t0\n"), "{text}");
    assert!(text.contains("\n192.0.2.7\tssh\t2/3\t4.2s\n"), "{text}");
    assert!(text.contains("\nssh\t192.0.2.8\t22/tcp\t29s\txdp\n"), "{text}");
    let kernel = Report { origin: Origin::Kernel, ..report() };
    assert_eq!(render(&kernel), "DOOR\tADDRESS\tPORT\tLEFT\tBACKEND\nssh\t192.0.2.8\t22/tcp\t29s\txdp\n");
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xknock-status-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_client_reads_the_report_from_a_0600_socket() {
    let dir = temp_dir("serve");
    let path = dir.join("xknockd.sock");
    std::fs::write(&path, "stale").unwrap();
    let mut sock = server::StatusSocket::bind(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    sock.serve(|| async { Some(report()) }).unwrap();
    let asked = path.clone();
    let got = tokio::task::spawn_blocking(move || client::ask(&asked)).await.unwrap().unwrap();
    assert_eq!(got, Some(report()));
    drop(sock);
    assert!(!path.exists(), "the socket outlived its server");
    assert!(client::ask(&path).unwrap().is_none(), "no daemon must mean fall back");
    std::fs::remove_dir_all(dir).unwrap();
}
