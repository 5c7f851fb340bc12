//! The daemon's side of the status socket: one JSON [`Report`] per
//! connection, written by a task of its own.

use std::{
    future::Future,
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{io::AsyncWriteExt, net::UnixListener};

use super::Report;

/// A client that stops reading is dropped after this.
const WRITE_LIMIT: Duration = Duration::from_secs(5);

/// The bound socket; dropping it removes the path.
pub struct StatusSocket {
    listener: Option<std::os::unix::net::UnixListener>,
    path: PathBuf,
}

impl StatusSocket {
    /// Binds at `path`, mode 0600. It is bound under a temporary name and
    /// renamed into place, so no one can connect before the mode is set; a
    /// stale socket from a killed daemon is replaced (the pid lock says it
    /// is stale).
    pub fn bind(path: &Path) -> io::Result<Self> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        listener.set_nonblocking(true)?;
        Ok(Self { listener: Some(listener), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves reports from `report` until the runtime stops; the path stays
    /// until `self` is dropped.
    pub fn serve<F, Fut>(&mut self, report: F) -> io::Result<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Option<Report>> + Send + 'static,
    {
        let Some(std_listener) = self.listener.take() else {
            return Ok(());
        };
        let listener = UnixListener::from_std(std_listener)?;
        tokio::spawn(async move {
            loop {
                let mut stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        log::warn!("status socket: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let fut = report();
                tokio::spawn(async move {
                    let body = match fut.await {
                        Some(r) => serde_json::to_vec(&r).expect("a report serializes"),
                        None => br#"{"error":"the daemon did not answer"}"#.to_vec(),
                    };
                    let _ = tokio::time::timeout(WRITE_LIMIT, stream.write_all(&body)).await;
                });
            }
        });
        Ok(())
    }
}

impl Drop for StatusSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
