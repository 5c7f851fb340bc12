//! Issue 12: the Debian package. `cargo xtask test` builds it from the
//! debug binaries (`cargo xtask deb --debug`) and names it in XKNOCK_DEB;
//! this checks its contents, unpacks it into a scratch root with `dpkg -x`,
//! runs the installed `xknockd --check` on the shipped config and renders
//! both man pages with `man -l`.

use std::{path::PathBuf, process::Command};

use xknock_tests::daemon::TempDir;

/// The package, or `None` (skip, loudly) outside `cargo xtask test`.
fn package() -> Option<PathBuf> {
    match std::env::var_os("XKNOCK_DEB") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("XKNOCK_REQUIRE_PRIV").is_some() => {
            panic!("XKNOCK_DEB is not set: run `cargo xtask test`, or `cargo xtask deb --debug` and set it")
        }
        None => {
            eprintln!("SKIPPED deb: XKNOCK_DEB is not set (cargo xtask test sets it)");
            None
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_package_holds_everything_and_installs_into_a_scratch_root() {
    let Some(deb) = package() else { return };
    let name = deb.file_name().unwrap().to_str().unwrap();
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(name, format!("xknock_{}_{}.deb", env!("CARGO_PKG_VERSION"), arch.trim()));

    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/sbin/xknockd",
        "./usr/bin/xknock",
        "./usr/lib/systemd/system/xknockd.service",
        "./usr/lib/systemd/system/xknockd-gate.service",
        "./etc/xknockd/xknockd.yaml",
        "./etc/logrotate.d/xknockd",
        "./usr/share/man/man8/xknockd.8.gz",
        "./usr/share/man/man1/xknock.1.gz",
        "./usr/share/bash-completion/completions/xknockd",
        "./usr/share/bash-completion/completions/xknock",
        "./usr/share/zsh/vendor-completions/_xknockd",
        "./usr/share/zsh/vendor-completions/_xknock",
        "./usr/share/fish/vendor_completions.d/xknockd.fish",
        "./usr/share/fish/vendor_completions.d/xknock.fish",
    ] {
        assert!(listing.lines().any(|l| l.ends_with(&format!(" {path}"))), "no {path} in:\n{listing}");
    }
    let package_name = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Package"));
    assert_eq!(package_name.trim(), "xknock");
    let control = TempDir::new();
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(control.path("DEBIAN")));
    let conf = std::fs::read_to_string(control.path("DEBIAN/conffiles")).unwrap();
    assert!(conf.lines().any(|l| l == "/etc/xknockd/xknockd.yaml"), "{conf}");

    let root = TempDir::new();
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root.0));
    let config = root.path("etc/xknockd/xknockd.yaml");
    let check = run(Command::new(root.path("usr/sbin/xknockd")).arg("--check").arg("-c").arg(&config));
    assert!(check.contains("OK (1 door)"), "{check}");
    let version = run(Command::new(root.path("usr/bin/xknock")).arg("--version"));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let unit = std::fs::read_to_string(root.path("usr/lib/systemd/system/xknockd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/sbin/xknockd ") && !unit.contains("/usr/local"), "{unit}");

    for (page, needles) in [
        (
            "usr/share/man/man8/xknockd.8.gz",
            &["--status", "CONFIGURATION", "metrics_listen", "seq_timeout"][..],
        ),
        ("usr/share/man/man1/xknock.1.gz", &["--delay", "EXAMPLES"][..]),
    ] {
        let out = Command::new("man")
            .arg("-l")
            .arg(root.path(page))
            .env("MANWIDTH", "120")
            .env("MAN_KEEP_FORMATTING", "")
            .output()
            .unwrap();
        assert!(out.status.success(), "man -l {page}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        // man renders hyphens as U+2010 in some locales; compare plainly.
        let text = text.replace(['\u{2010}', '\u{2212}'], "-");
        for n in needles {
            assert!(text.contains(n), "{page} has no {n}:\n{text}");
        }
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "man -l {page}: {warnings}");
    }
}
