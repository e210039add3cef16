//! Who is admitted (uid, primary and supplementary groups) and how many
//! connections fit under the open-file limit.

use super::Access;
use std::time::Duration;

/// Idle limit of a connection on a reserve slot.
pub const RESERVE_IDLE: Duration = Duration::from_secs(5);

/// Connection slots derived from `RLIMIT_NOFILE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft open-file limit the daemon runs under.
    pub open_file_limit: u64,
    /// Ordinary connections served at once.
    pub connections: usize,
    /// Extra connections that may only ask `health`, `get` and `cancel`.
    pub reserve: usize,
}

impl Budget {
    /// From the soft limit and the handles already open: a quarter of the
    /// limit (at least 64) stays with the database, logs and jobs' pipes.
    pub fn new(limit: u64, open_now: u64) -> Budget {
        let limit_c = limit.min(1 << 20);
        let kept = (limit_c / 4).max(64);
        let reserve: u64 = 16;
        let connections = limit_c
            .saturating_sub(open_now)
            .saturating_sub(kept)
            .saturating_sub(reserve)
            .clamp(4, 100_000);
        Budget {
            open_file_limit: limit,
            connections: connections as usize,
            reserve: reserve as usize,
        }
    }

    /// From this process's `RLIMIT_NOFILE` and `/proc/self/fd`.
    pub fn from_environment() -> Budget {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct we pass.
        let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
            rl.rlim_cur
        } else {
            1024
        };
        let open = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(32);
        Budget::new(limit, open)
    }
}

/// The decision of the SO_PEERCRED check: root, the daemon's own user, or
/// a member of `socket_group` by primary group, by the supplementary groups
/// of the connecting process, or by the group database (so a member added
/// with `usermod -aG` is admitted before they log in again).
pub fn admits(access: Access, uid: u32, gid: u32, groups: &[u32]) -> bool {
    if uid == 0 || uid == access.uid {
        return true;
    }
    match access.gid {
        Some(g) => gid == g || groups.contains(&g),
        None => false,
    }
}

/// Supplementary groups of process `pid` (`Groups:` of /proc/PID/status)
/// and of user `uid` in the group database.
pub fn peer_groups(pid: Option<i32>, uid: u32, gid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Some(pid) = pid {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            out.extend(parse_groups_line(&status));
        }
    }
    if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        if let Ok(name) = std::ffi::CString::new(user.name) {
            if let Ok(gs) = nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)) {
                out.extend(gs.iter().map(|g| g.as_raw()));
            }
        }
    }
    out
}

/// The numbers on the `Groups:` line of a /proc status file.
fn parse_groups_line(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAEMON: Access = Access {
        uid: 1000,
        gid: Some(500),
    };

    #[test]
    fn supplementary_group_members_are_admitted() {
        assert!(admits(DAEMON, 0, 0, &[]), "root");
        assert!(admits(DAEMON, 1000, 1000, &[]), "the daemon's user");
        assert!(admits(DAEMON, 1001, 500, &[]), "primary group");
        assert!(
            admits(DAEMON, 1002, 1002, &[20, 500]),
            "supplementary group"
        );
        assert!(!admits(DAEMON, 1003, 1003, &[20, 27]), "not a member");
        let no_group = Access {
            uid: 1000,
            gid: None,
        };
        assert!(!admits(no_group, 1002, 1002, &[500]));
    }

    #[test]
    fn groups_line_of_proc_status_is_read() {
        let s = "Name:\tbash\nUid:\t1\t1\t1\t1\nGroups:\t4 24 500 \nNSpid:\t9\n";
        assert_eq!(parse_groups_line(s), vec![4, 24, 500]);
        assert_eq!(parse_groups_line("Groups:\n"), Vec::<u32>::new());
    }

    #[test]
    fn connections_stay_below_the_open_file_limit() {
        let b = Budget::new(1024, 20);
        assert!(b.connections + b.reserve + 20 + 64 <= 1024, "{b:?}");
        assert!(b.connections >= 700, "{b:?}");
        let small = Budget::new(256, 20);
        assert!(
            small.connections + small.reserve + 20 + 64 <= 256,
            "{small:?}"
        );
        assert_eq!(Budget::new(40, 30).connections, 4);
    }
}

/// A slot's permit, handed from an evicted connection to the newcomer.
pub type Permit = tokio::sync::OwnedSemaphorePermit;

/// How an idle connection is asked to give up its slot: it sends its
/// permit down the channel it receives, then closes.
pub type EvictRequest = tokio::sync::oneshot::Sender<Permit>;

/// One tier of connection slots, with the connections now waiting for a
/// request in age order, so a newcomer over the cap can take the slot of
/// the one idle the longest instead of being locked out by idle clients.
pub struct Pool {
    /// One permit per slot.
    pub slots: std::sync::Arc<tokio::sync::Semaphore>,
    idle: std::sync::Mutex<
        std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<EvictRequest>>,
    >,
    next: std::sync::atomic::AtomicU64,
}

impl Pool {
    /// A pool of `n` slots.
    pub fn new(n: usize) -> Pool {
        Pool {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(n)),
            idle: Default::default(),
            next: Default::default(),
        }
    }

    /// Mark the caller idle; the receiver yields when a newcomer needs its
    /// slot. Call [`Pool::busy`] with the key when a request arrives.
    pub fn idle(&self) -> (u64, tokio::sync::oneshot::Receiver<EvictRequest>) {
        let key = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut m) = self.idle.lock() {
            m.insert(key, tx);
        }
        (key, rx)
    }

    /// No longer idle.
    pub fn busy(&self, key: u64) {
        if let Ok(mut m) = self.idle.lock() {
            m.remove(&key);
        }
    }

    /// Ask the connection idle the longest for its slot; `None` when none
    /// is idle. The permit arrives on the receiver as that connection closes.
    pub fn evict_oldest(&self) -> Option<tokio::sync::oneshot::Receiver<Permit>> {
        loop {
            let (_, victim) = self.idle.lock().ok()?.pop_first()?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            if victim.send(tx).is_ok() {
                return Some(rx);
            }
            // That one stopped waiting in the meantime: try the next.
        }
    }
}

#[cfg(test)]
mod pool_tests {
    use super::Pool;

    #[test]
    fn the_longest_idle_connection_hands_over_its_slot() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let p = Pool::new(2);
            let permit_a = p.slots.clone().try_acquire_owned().unwrap();
            let permit_b = p.slots.clone().try_acquire_owned().unwrap();
            let (a, _ask_a) = p.idle();
            let (_b, ask_b) = p.idle();
            p.busy(a);
            let handed = p.evict_oldest().expect("b is idle");
            assert!(
                p.evict_oldest().is_none(),
                "a is busy and must not be evicted"
            );
            // b gives its permit to the newcomer; no free slot appears in between.
            let to = ask_b.await.unwrap();
            to.send(permit_b).unwrap();
            assert!(p.slots.clone().try_acquire_owned().is_err());
            let got = handed.await.unwrap();
            drop(got);
            drop(permit_a);
            assert_eq!(p.slots.available_permits(), 2);
        });
    }
}
