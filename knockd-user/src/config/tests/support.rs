//! Shared test helpers: parsing shortcuts and throwaway directories.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use crate::config::{parse_str, Config, ConfigError, Proto, Step};

pub fn parse(text: &str, name: &str) -> Result<Config, ConfigError> {
    parse_str(text, Path::new(name))
}

pub fn conf(text: &str) -> Config {
    parse(text, "knockd.conf").unwrap_or_else(|e| panic!("{e}"))
}

pub fn yaml(text: &str) -> Config {
    parse(text, "x.yaml").unwrap_or_else(|e| panic!("{e}"))
}

pub fn conf_err(text: &str) -> ConfigError {
    parse(text, "knockd.conf").expect_err("should fail")
}

pub fn yaml_err(text: &str) -> ConfigError {
    parse(text, "x.yaml").expect_err("should fail")
}

pub fn tcp(port: u16) -> Step {
    Step { port, proto: Proto::Tcp }
}

pub fn udp(port: u16) -> Step {
    Step { port, proto: Proto::Udp }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xknock-config-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
