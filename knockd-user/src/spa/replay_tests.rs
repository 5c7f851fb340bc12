use std::os::unix::fs::PermissionsExt;

use super::*;

const NOW: u64 = 1_800_000_000;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("xknock-replay-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        Self(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn survives_a_restart_until_expiry() {
    let dir = Dir::new("restart");
    let mut c = ReplayCache::open(&dir.0, NOW).unwrap();
    assert!(!c.contains("d1", NOW));
    c.record("d1", expiry(NOW as u32, NOW, Duration::from_secs(120)), NOW).unwrap();
    c.record("d2", NOW + 10, NOW).unwrap();
    assert!(c.contains("d1", NOW));
    let mode = fs::metadata(c.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(c);

    let c = ReplayCache::open(&dir.0, NOW + 100).unwrap();
    assert!(c.contains("d1", NOW + 100), "a restart keeps recorded packets refused");
    assert!(!c.contains("d2", NOW + 100));
    assert_eq!(c.len(), 1, "expired entries are dropped at load");
    assert!(!c.contains("d1", NOW + 180), "gone once the packet can no longer pass max_age");
}

#[test]
fn expiry_covers_future_packets_and_skew() {
    let max = Duration::from_secs(120);
    assert_eq!(expiry(NOW as u32, NOW, max), NOW + 180);
    assert_eq!(expiry((NOW + 100) as u32, NOW, max), NOW + 280);
    assert_eq!(expiry((NOW - 500) as u32, NOW, max), NOW + 180, "stale packets are recorded too");
}

#[test]
fn writes_are_bounded_by_expiry() {
    let dir = Dir::new("bounded");
    let mut c = ReplayCache::open(&dir.0, NOW).unwrap();
    for i in 0..50 {
        c.record(&format!("d{i}"), NOW + i + 1, NOW + i).unwrap();
    }
    assert_eq!(c.len(), 1, "each record sweeps what expired");
    let text = fs::read_to_string(c.path()).unwrap();
    assert_eq!(text, format!("d49 {}\n", NOW + 50));
}

#[test]
fn unwritable_state_fails_closed() {
    let dir = Dir::new("unwritable");
    let mut c = ReplayCache::open(&dir.0, NOW).unwrap();
    // A directory in the temp file's place makes the write fail even for root.
    fs::create_dir(c.path().with_extension("tmp")).unwrap();
    fs::write(c.path().with_extension("tmp").join("x"), "").unwrap();
    assert!(c.record("d1", NOW + 100, NOW).is_err());
    assert!(c.contains("d1", NOW), "what could not be written is still refused in memory");
}

#[test]
fn bad_files_are_refused() {
    let dir = Dir::new("bad");
    fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join(FILE_NAME);
    fs::write(&path, "good 1900000000\nbad-line\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let err = ReplayCache::open(&dir.0, NOW).unwrap_err().to_string();
    assert!(err.contains("line 2 is malformed"), "{err}");
    fs::write(&path, "good 1900000000\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    assert!(ReplayCache::open(&dir.0, NOW).unwrap_err().to_string().contains("can write"));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(ReplayCache::open(&dir.0, NOW).unwrap().contains("good", NOW));
}

#[test]
fn a_failed_write_leaves_no_half_written_copy() {
    let dir = Dir::new("failed");
    let mut c = ReplayCache::open(&dir.0, NOW).unwrap();
    // A directory where the cache goes: the copy is written, the rename fails.
    fs::create_dir(c.path()).unwrap();
    assert!(c.record("d1", NOW + 10, NOW).is_err(), "refused: not stored");
    assert!(c.contains("d1", NOW), "and refused again while the daemon runs");
    assert!(!c.path().with_extension("tmp").exists(), "the half-written copy is gone");
    fs::remove_dir(c.path()).unwrap();
    c.record("d2", NOW + 10, NOW).unwrap();
    assert!(ReplayCache::open(&dir.0, NOW).unwrap().contains("d1", NOW), "stored with the next write");
}
