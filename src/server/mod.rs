//! The Unix socket server (SPEC §7): binding (stale-socket probe, mode
//! 0600, optional group), peer checks with SO_PEERCRED, and one task per
//! connection reading newline-delimited JSON with a 1 MiB line limit.
//!
//! Connections are capped below the open-file limit so the daemon keeps
//! handles for its database and jobs, idle ones are closed after
//! `idle_timeout_ms`, and a few reserve slots beyond the cap still answer
//! `health`, `get` and `cancel`, so an operator can look and act while
//! some client holds every ordinary slot.

mod connection;
mod handlers;
mod limits;

use crate::error::{Error, Result};
use crate::service::Service;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::{watch, Semaphore};

pub use limits::{admits, peer_groups, Budget, Pool};

/// Who may talk to the daemon besides root and its own user.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// The daemon's uid.
    pub uid: u32,
    /// A group whose members may connect.
    pub gid: Option<u32>,
}

/// (path, device, inode) of each socket this process bound, so shutdown
/// removes only the file it created, never one put there since.
static BOUND: Mutex<Vec<(PathBuf, u64, u64)>> = Mutex::new(Vec::new());

/// What sits at the socket path before binding.
#[derive(Debug, PartialEq, Eq)]
enum Existing {
    Nothing,
    /// A socket nobody answers on: left by a daemon that died.
    StaleSocket,
    /// A socket a live daemon answers on.
    LiveSocket,
    /// Anything else (file, directory, symlink, fifo, device).
    Other(&'static str),
}

fn inspect(path: &Path) -> Result<Existing> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(Error::io(format!("looking at {}", path.display()), e)),
    };
    let ft = meta.file_type();
    if ft.is_socket() {
        return Ok(match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Existing::LiveSocket,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Existing::StaleSocket,
            // Permission denied and the like: not ours to judge, leave it.
            Err(_) => Existing::Other("socket opsd cannot probe"),
        });
    }
    Ok(Existing::Other(if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_file() {
        "regular file"
    } else {
        "special file"
    }))
}

/// Bind the socket at `path`: replace a stale socket file, refuse when a
/// live daemon answers there or when anything but a socket is there (it
/// is someone's file; deleting it would lose their data).
pub fn bind(path: &Path, group: Option<&str>) -> Result<(UnixListener, Access)> {
    let gid = match group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    Error::BadRequest(format!(
                        "socket_group: no group named {name:?}; create it or remove socket_group from the config"
                    ))
                })?
                .gid,
        ),
        None => None,
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            // Ours: members of socket_group must be able to reach the socket.
            if let Some(g) = gid {
                let _ = nix::unistd::chown(dir, None, Some(g));
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750));
            }
        }
    }
    match inspect(path)? {
        Existing::Nothing => {}
        Existing::LiveSocket => {
            return Err(Error::Unavailable(format!(
                "another opsd is already serving on {}; stop it first or pass --socket",
                path.display()
            )))
        }
        Existing::StaleSocket => {
            tracing::info!(socket = %path.display(), "replacing a stale socket file");
            std::fs::remove_file(path)
                .map_err(|e| Error::io(format!("removing stale socket {}", path.display()), e))?;
        }
        Existing::Other(what) => {
            return Err(Error::BadRequest(format!(
                "the socket path {} is a {what}, not a socket; opsd leaves it alone. \
                 Pass another --socket (or `socket` in the config), or move it away",
                path.display()
            )))
        }
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
    if let Some(g) = gid {
        nix::unistd::chown(path, None, Some(g))
            .map_err(|e| Error::io(format!("chown {}", path.display()), e.into()))?;
    }
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if let Ok(mut b) = BOUND.lock() {
            b.push((path.to_path_buf(), m.dev(), m.ino()));
        }
    }
    Ok((
        listener,
        Access {
            uid: nix::unistd::getuid().as_raw(),
            gid: gid.map(|g| g.as_raw()),
        },
    ))
}

/// How long a newcomer waits for the slot of the connection it evicted.
const EVICT_WAIT: Duration = Duration::from_secs(2);

/// Accept connections until `stop` turns true.
pub async fn serve(
    listener: UnixListener,
    access: Access,
    service: Service,
    mut stop: watch::Receiver<bool>,
) {
    let budget = Budget::from_environment();
    let idle = match service.rt.config.idle_timeout_ms {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    tracing::info!(
        open_file_limit = budget.open_file_limit,
        max_connections = budget.connections,
        reserve_connections = budget.reserve,
        "connection limits"
    );
    let ordinary = Arc::new(Pool::new(budget.connections));
    let reserve = Arc::new(Pool::new(budget.reserve));
    let reserve_tier = connection::Tier::Reserve {
        limit: budget.connections,
    };
    // Reserve slots are for a quick look or a cancel.
    let reserve_idle = Some(idle.map_or(limits::RESERVE_IDLE, |d| d.min(limits::RESERVE_IDLE)));
    // Newcomers waiting for an evicted connection's slot (each holds a handle).
    let waiting = Arc::new(Semaphore::new(budget.reserve));
    let full = budget.connections + budget.reserve;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let svc = service.clone();
        if let Ok(permit) = ordinary.slots.clone().try_acquire_owned() {
            let slot = connection::Slot::new(ordinary.clone(), connection::Tier::Ordinary, permit);
            tokio::spawn(connection::handle(stream, svc, access, slot, idle));
            continue;
        }
        // Every slot taken: take over the slot of the connection idle the
        // longest, an ordinary one if any, else a reserve one.
        let Ok(wait_turn) = waiting.clone().try_acquire_owned() else {
            reject(&stream, full);
            continue;
        };
        let (pool, tier, timeout, handover) = if let Some(h) = ordinary.evict_oldest() {
            (ordinary.clone(), connection::Tier::Ordinary, idle, h)
        } else if let Ok(permit) = reserve.slots.clone().try_acquire_owned() {
            let slot = connection::Slot::new(reserve.clone(), reserve_tier, permit);
            tokio::spawn(connection::handle(stream, svc, access, slot, reserve_idle));
            continue;
        } else if let Some(h) = reserve.evict_oldest() {
            (reserve.clone(), reserve_tier, reserve_idle, h)
        } else {
            reject(&stream, full);
            continue;
        };
        tracing::debug!("closing the longest-idle connection to make room");
        tokio::spawn(async move {
            let got = tokio::time::timeout(EVICT_WAIT, handover).await;
            drop(wait_turn);
            match got {
                Ok(Ok(permit)) => {
                    let slot = connection::Slot::new(pool, tier, permit);
                    connection::handle(stream, svc, access, slot, timeout).await
                }
                _ => reject(&stream, full),
            }
        });
    }
}

/// Tell a client there is no room, and close.
fn reject(stream: &tokio::net::UnixStream, open: usize) {
    let line = crate::protocol::error_response(
        "unavailable",
        &format!(
            "opsd has {open} connections open, its limit, and none is idle; \
             close some clients or raise the daemon's open-file limit (LimitNOFILE)"
        ),
    )
    .to_string()
        + "\n";
    let _ = stream.try_write(line.as_bytes());
}

/// Remove the socket file if it is still the one this process bound.
pub fn remove_socket(path: &PathBuf) {
    let Ok(mut bound) = BOUND.lock() else {
        return;
    };
    let Some(i) = bound.iter().position(|(p, _, _)| p == path) else {
        return;
    };
    let (_, dev, ino) = bound.remove(i);
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_socket() && m.dev() == dev && m.ino() == ino {
            let _ = std::fs::remove_file(path);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_stale_socket_counts_as_replaceable() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, "thesis").unwrap();
        assert_eq!(inspect(&f).unwrap(), Existing::Other("regular file"));
        assert_eq!(inspect(dir.path()).unwrap(), Existing::Other("directory"));
        let l = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        assert_eq!(inspect(&l).unwrap(), Existing::Other("symbolic link"));
        assert_eq!(
            inspect(&dir.path().join("none")).unwrap(),
            Existing::Nothing
        );
        let s = dir.path().join("s.sock");
        let live = std::os::unix::net::UnixListener::bind(&s).unwrap();
        assert_eq!(inspect(&s).unwrap(), Existing::LiveSocket);
        drop(live);
        assert_eq!(inspect(&s).unwrap(), Existing::StaleSocket);
    }
}
