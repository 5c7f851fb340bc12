//! `xknockd --status`: ask the daemon, else read the kernel.

use std::{io::Read, os::unix::net::UnixStream, path::Path, time::Duration};

use thiserror::Error;

use super::{kernel_report, Report};
use crate::{config::model::Config, gate::GateError};

/// A daemon that accepts but does not answer within this is an error, not
/// a reason to fall back: it is alive, and kernel state alone would hide
/// that it is stuck.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum StatusError {
    #[error("asking the daemon on {path}: {source}")]
    Socket { path: String, source: std::io::Error },
    #[error("the daemon on {path} answered: {text}")]
    Answer { path: String, text: String },
    #[error("reading kernel state: {0}")]
    Kernel(#[from] GateError),
}

/// The daemon's report from `socket`, or, when nothing listens there, the
/// report from kernel state for `cfg`.
pub fn status(socket: &Path, cfg: &Config) -> Result<Report, StatusError> {
    match ask(socket) {
        Ok(Some(report)) => Ok(report),
        Ok(None) => Ok(kernel_report(cfg)?),
        Err(e) => Err(e),
    }
}

/// `Ok(None)`: no daemon listens at `socket`.
pub fn ask(socket: &Path) -> Result<Option<Report>, StatusError> {
    let path = socket.display().to_string();
    let io_err = |source| StatusError::Socket { path: path.clone(), source };
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(io_err(e)),
    };
    stream.set_read_timeout(Some(ANSWER_LIMIT)).map_err(io_err)?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(io_err)?;
    serde_json::from_str(&text).map(Some).map_err(|_| StatusError::Answer { path, text })
}
