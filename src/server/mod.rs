//! The Unix socket server (SPEC §7): binding (stale-socket probe, mode
//! 0600, optional group), peer checks with SO_PEERCRED, and one task per
//! connection reading newline-delimited JSON with a 1 MiB line limit.

mod connection;
mod handlers;

use crate::error::{Error, Result};
use crate::service::Service;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;
use tokio::sync::watch;

/// Who may talk to the daemon besides root and its own user.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// The daemon's uid.
    pub uid: u32,
    /// A group whose members may connect.
    pub gid: Option<u32>,
}

/// Bind the socket at `path`: replace a stale socket file, refuse when a
/// live daemon answers there, restrict the mode.
pub fn bind(path: &Path, group: Option<&str>) -> Result<(UnixListener, Access)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Unavailable(format!(
                "another opsd is already serving on {}; stop it first or pass --socket",
                path.display()
            )));
        }
        tracing::info!(socket = %path.display(), "replacing a stale socket file");
        std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("removing stale socket {}", path.display()), e))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
    let gid = match group {
        Some(name) => {
            let g = nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    Error::BadRequest(format!("socket_group: no group named {name:?}"))
                })?;
            nix::unistd::chown(path, None, Some(g.gid))
                .map_err(|e| Error::io(format!("chown {}", path.display()), e.into()))?;
            Some(g.gid.as_raw())
        }
        None => None,
    };
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
    Ok((
        listener,
        Access {
            uid: nix::unistd::getuid().as_raw(),
            gid,
        },
    ))
}

/// Accept connections until `stop` turns true.
pub async fn serve(
    listener: UnixListener,
    access: Access,
    service: Service,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let svc = service.clone();
                    tokio::spawn(async move { connection::handle(stream, svc, access).await });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
}

/// Remove the socket file if it is still ours.
pub fn remove_socket(path: &PathBuf) {
    let _ = std::fs::remove_file(path);
}

/// Whether `path` names a socket a client can connect to now.
pub fn is_live(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Permission bits of the socket file, for tests and `health`.
pub fn socket_mode(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}
