//! Every process a command job started, including those that left its
//! process group (`setsid`, a double fork): found, killed when the job
//! ends, and reaped.
//!
//! The daemon is a child subreaper (`PR_SET_CHILD_SUBREAPER`, set by
//! [`adopt_orphans`]), so a descendant whose parent dies is reparented to
//! the daemon instead of init, and stays visible. A job's processes are:
//!
//! - the program (the "leader", a direct child held by `std::process::Child`),
//! - whatever `/proc` shows below it (a ppid walk), remembered with its start
//!   time while the program runs, so a process orphaned later is still known,
//! - processes carrying `OPSD_OPERATION_ID=<id>` in their environment (what
//!   the program passed on; found among the daemon's adopted children),
//! - and, closing over these, their children, their process groups and the
//!   sessions they lead.
//!
//! Zombies: only processes in the remembered set are ever waited for, one
//! pid at a time under its lock, never with `waitpid(-1)`. The leader is
//! never in the set, so `Child::wait` still gets its exit status.

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// How often a running job's process tree is looked at.
pub(super) const TRACK_EVERY: Duration = Duration::from_millis(200);

/// How long [`JobProcs::kill_all`] keeps killing (a process in
/// uninterruptible sleep may take a while to die; the reaper gets it later).
const KILL_FOR: Duration = Duration::from_secs(3);

/// One line of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    session: i32,
    zombie: bool,
    /// Start time in clock ticks since boot: with the pid, names one
    /// process even after its pid is reused.
    start: u64,
}

fn parse_stat(text: &str) -> Option<Proc> {
    // `pid (comm) state ppid pgrp session ...`; comm may hold spaces and ')'.
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once('(')?.0.trim().parse().ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state=0 ppid=1 pgrp=2 session=3 ... starttime=19.
    Some(Proc {
        pid,
        zombie: matches!(*f.first()?, "Z" | "X"),
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

fn read_proc(pid: i32) -> Option<Proc> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Most pids [`scan_since`] tries one by one before it lists `/proc`
/// instead.
const MAX_PID_RANGE: i32 = 256;

/// The processes that may have started since `leader` did: pids from
/// `leader` up, while the kernel's pid counter has not wrapped since (then
/// every process). A job's processes all start after its program, so this
/// finds them while reading a few `/proc` entries instead of all of them.
/// When few pids were handed out since (a short job on a quiet machine),
/// each is tried directly, which is cheaper than listing `/proc`.
///
/// A pid tried directly may name a thread (`/proc/<tid>` answers, though
/// the listing shows only processes), so the result may hold threads:
/// [`JobProcs::members`] leaves them out of what it returns. Telling them
/// apart costs a read of `/proc/<pid>/status`, done only for the few
/// entries that turn out to be the job's, not for every pid in the range.
///
/// `wrapped` is the job's memory that the counter has wrapped since its
/// program started: once seen, it stays set, because after a wrap the
/// counter passes the leader's pid again and processes started in
/// between have smaller pids.
fn scan_since(leader: i32, wrapped: &mut bool) -> Vec<Proc> {
    let last: Option<i32> = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    match pids_to_scan(leader, last, wrapped) {
        Scan::Range(from, to) => (from..=to).filter_map(read_proc).collect(),
        Scan::Listing { from } => {
            let Ok(dir) = std::fs::read_dir("/proc") else {
                return Vec::new();
            };
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| *pid >= from)
                .filter_map(read_proc)
                .collect()
        }
    }
}

/// Which pids a scan reads.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// These pids one by one.
    Range(i32, i32),
    /// The `/proc` listing, from this pid up (1: everything).
    Listing { from: i32 },
}

/// The scan for a job whose program is `leader`, with the kernel's last
/// pid `last` (`None`: unknown); sets `wrapped` when the counter is below
/// the leader, and keeps to the whole listing once it is set.
fn pids_to_scan(leader: i32, last: Option<i32>, wrapped: &mut bool) -> Scan {
    if last.is_none_or(|l| l < leader) {
        *wrapped = true;
    }
    match last {
        _ if *wrapped => Scan::Listing { from: 1 },
        Some(l) if l - leader < MAX_PID_RANGE => Scan::Range(leader, l),
        _ => Scan::Listing { from: leader },
    }
}

/// Whether `pid` is a process (a thread-group leader), not a thread.
fn is_process(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse::<i32>().ok())
        })
        == Some(pid)
}

/// Whether the process's initial environment holds `entry` (`K=V`).
fn environ_has(pid: i32, entry: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|e| e == entry))
        .unwrap_or(false)
}

/// Processes that belonged to a job and are not its leader: the only pids
/// the daemon ever waits for besides its own `Child`ren. Keyed by pid; the
/// value is the start time and the operation.
static KNOWN: Mutex<Option<HashMap<i32, (u64, String)>>> = Mutex::new(None);

fn remember(op: &str, procs: &[Proc]) {
    if procs.is_empty() {
        return;
    }
    if let Ok(mut k) = KNOWN.lock() {
        let k = k.get_or_insert_with(HashMap::new);
        for p in procs {
            k.insert(p.pid, (p.start, op.to_string()));
        }
    }
}

fn known_for(op: &str) -> Vec<(i32, u64)> {
    KNOWN
        .lock()
        .map(|k| {
            k.iter()
                .flat_map(|m| m.iter())
                .filter(|(_, (_, o))| o == op)
                .map(|(pid, (start, _))| (*pid, *start))
                .collect()
        })
        .unwrap_or_default()
}

/// Wait for every remembered process that is now a zombie child of the
/// daemon, and forget those that are gone. Returns how many were reaped.
fn reap_known() -> usize {
    let me = std::process::id() as i32;
    let Ok(mut guard) = KNOWN.lock() else {
        return 0;
    };
    let Some(known) = guard.as_mut() else {
        return 0;
    };
    let mut reaped = 0;
    // The lock is held from the check to the wait: a zombie's pid cannot
    // be reused until it is waited for, and only this code waits for it.
    known.retain(|pid, (start, _)| match read_proc(*pid) {
        Some(p) if p.start != *start => false,
        Some(p) if p.zombie && p.ppid == me => {
            match waitpid(Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG)) {
                // A process whose main thread has exited shows as a zombie
                // while its other threads still run: not reaped, still ours.
                Ok(WaitStatus::StillAlive) => true,
                Ok(_) => {
                    reaped += 1;
                    false
                }
                Err(_) => false,
            }
        }
        Some(_) => true,
        None => false,
    });
    reaped
}

/// Whether this process is a child subreaper ([`adopt_orphans`] succeeded).
static SUBREAPER: AtomicBool = AtomicBool::new(false);

/// The pids in a `/proc/<pid>/task/<tid>/children` file (`None`: it
/// cannot be read, as without `CONFIG_PROC_CHILDREN`).
fn children_of_thread(pid: u32, tid: i32) -> Option<Vec<i32>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")).ok()?;
    text.split_whitespace().map(|p| p.parse().ok()).collect()
}

/// Whether a job whose program `leader` has exited (all its threads:
/// `waitid` reports only then) can have left no process alive, judged
/// from two children lists instead of a look at every process since the
/// program started. Call on the thread that started the program. `false`
/// when unsure (not a subreaper, no children files).
///
/// Why: every living process the program started hangs from a chain of
/// living parents, and the top of that chain was handed at its parent's
/// death to the nearest subreaper above, the daemon: the kernel gives an
/// orphan to the subreaper's first live thread (the main thread) or, on
/// kernels before 3.19, to the thread above it (the one that started the
/// program). A process made with `clone(CLONE_PARENT)` is a child of that
/// thread too. So the main thread must have no children and this thread
/// the program alone (its zombie is still there, which also shows the
/// file works).
fn nothing_left_behind(leader: i32) -> bool {
    if !SUBREAPER.load(Ordering::Relaxed) {
        return false;
    }
    let me = std::process::id();
    let this_thread = nix::unistd::gettid().as_raw();
    // On the main thread itself (not so in the daemon), the second list
    // is the main thread's.
    let main_has_none =
        this_thread == me as i32 || children_of_thread(me, me as i32).is_some_and(|c| c.is_empty());
    main_has_none && children_of_thread(me, this_thread).is_some_and(|c| c == [leader])
}

/// Make the daemon a child subreaper and start the thread that reaps
/// adopted processes once they exit. Called once per process (later calls
/// do nothing); without it, escaped processes go to init and are still
/// killed, just not reaped by us.
pub fn adopt_orphans() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        match nix::sys::prctl::set_child_subreaper(true) {
            Ok(()) => SUBREAPER.store(true, Ordering::Relaxed),
            Err(e) => tracing::warn!("cannot become a child subreaper ({e}); processes that leave a job's session are found only while their parent lives"),
        }
        let spawned = std::thread::Builder::new()
            .name("opsd-reaper".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_secs(1));
                reap_known();
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the reaper thread: {e}");
        }
    });
}

/// One job's processes.
pub(super) struct JobProcs {
    op: String,
    leader: i32,
    /// The program's start time, read at the first look at `/proc` (a
    /// short job that leaves nothing behind never needs it).
    leader_start: Option<u64>,
    marker: Vec<u8>,
    last_track: Option<Instant>,
    /// The pid counter has wrapped since the program started.
    wrapped: bool,
}

impl JobProcs {
    /// Watch the processes of operation `op`, whose program is `leader`.
    pub(super) fn new(op: &str, leader: Pid) -> JobProcs {
        let leader = leader.as_raw();
        JobProcs {
            op: op.to_string(),
            leader,
            leader_start: None,
            marker: format!("OPSD_OPERATION_ID={op}").into_bytes(),
            // The first look is one period after the start: a program that
            // has just been exec'd has nothing below it yet, and most
            // short jobs end before (their end looks once, in `kill_all`).
            last_track: Some(Instant::now()),
            wrapped: false,
        }
    }

    /// The job's processes (without the leader, and never a thread) in this
    /// snapshot. `environ_all`: look for the marker in every young process,
    /// not only in those adopted by the daemon. The job's end needs it even
    /// with the daemon a subreaper: an escaped process whose environment
    /// cannot be read (`sudo`, a non-dumpable program) may have children
    /// that carry the marker, and a short job was never tracked.
    fn members(&self, all: &[Proc], environ_all: bool) -> Vec<Proc> {
        let me = std::process::id() as i32;
        let known: HashMap<i32, u64> = known_for(&self.op).into_iter().collect();
        let mut ids: HashSet<i32> = HashSet::new();
        let mut leaders: HashSet<i32> = HashSet::new();
        if all
            .iter()
            .any(|p| p.pid == self.leader && Some(p.start) == self.leader_start)
        {
            ids.insert(self.leader);
        }
        for p in all {
            if p.pid == me || p.pid <= 1 || p.pid == self.leader {
                continue;
            }
            let remembered = known.get(&p.pid) == Some(&p.start);
            let adopted = p.ppid == me || environ_all;
            // Whatever the job started, started after its program: older
            // processes need not have their environment read (most of
            // /proc, on a busy machine).
            let young = p.start >= self.leader_start.unwrap_or(0);
            if remembered || (!p.zombie && adopted && young && environ_has(p.pid, &self.marker)) {
                ids.insert(p.pid);
            }
        }
        // Close over children, and the groups and sessions members lead.
        loop {
            leaders.extend(ids.iter().copied());
            let before = ids.len();
            for p in all {
                if p.pid == me || p.pid <= 1 || ids.contains(&p.pid) {
                    continue;
                }
                if ids.contains(&p.ppid)
                    || leaders.contains(&p.pgrp)
                    || leaders.contains(&p.session)
                {
                    ids.insert(p.pid);
                }
            }
            if ids.len() == before {
                break;
            }
        }
        // A thread of a member shares its group and shows its parent, so
        // the closure takes it in: keep processes only (the scan may list
        // threads), or it would be signalled, counted and remembered as a
        // process of its own.
        all.iter()
            .filter(|p| p.pid != self.leader && ids.contains(&p.pid))
            .filter(|p| is_process(p.pid))
            .copied()
            .collect()
    }

    /// The processes that may be the job's (see [`scan_since`]); reads the
    /// program's start time first, while its pid is still held.
    fn scan(&mut self) -> Vec<Proc> {
        if self.leader_start.is_none() {
            self.leader_start = Some(read_proc(self.leader).map_or(0, |p| p.start));
        }
        scan_since(self.leader, &mut self.wrapped)
    }

    /// Remember the job's processes now, so one orphaned later is still
    /// known to be the job's.
    pub(super) fn track(&mut self) {
        self.last_track = Some(Instant::now());
        let all = self.scan();
        let members = self.members(&all, false);
        remember(&self.op, &members);
        reap_known();
    }

    /// [`Self::track`], at most every [`TRACK_EVERY`].
    pub(super) fn track_every(&mut self) {
        if self.last_track.is_none_or(|t| t.elapsed() >= TRACK_EVERY) {
            self.track();
        }
    }

    /// Send `sig` to the job's processes outside the program's own group
    /// (the group itself is signalled with `killpg`).
    pub(super) fn signal_escaped(&mut self, sig: Signal) {
        let all = self.scan();
        let members = self.members(&all, false);
        remember(&self.op, &members);
        for p in members
            .iter()
            .filter(|p| p.pgrp != self.leader && !p.zombie)
        {
            let _ = kill(Pid::from_raw(p.pid), sig);
        }
    }

    /// SIGKILL every process of the job but the program itself, until none
    /// is left (or [`KILL_FOR`] passes), and reap those adopted by the
    /// daemon. Call while the program's zombie still holds its pid.
    /// Returns how many processes were killed, and whether any was still
    /// alive when it gave up.
    ///
    /// `exited`: the program's exit was seen (else it may still be alive,
    /// and the whole scan runs). Must run on the thread that started it.
    pub(super) fn kill_all(&mut self, exited: bool) -> (usize, bool) {
        // Most jobs leave nothing: then two children lists replace a look
        // at every process started since the program.
        if exited && known_for(&self.op).is_empty() && nothing_left_behind(self.leader) {
            return (0, false);
        }
        let until = Instant::now() + KILL_FOR;
        let mut killed: HashSet<(i32, u64)> = HashSet::new();
        let mut survivors = false;
        loop {
            let all = self.scan();
            let members = self.members(&all, true);
            remember(&self.op, &members);
            let living: Vec<&Proc> = members.iter().filter(|p| !p.zombie).collect();
            for p in &members {
                // A "zombie" may still have running threads (its main
                // thread exited first): it is killed too; a real zombie
                // ignores the signal and is not counted.
                if kill(Pid::from_raw(p.pid), Signal::SIGKILL).is_ok() && !p.zombie {
                    killed.insert((p.pid, p.start));
                }
            }
            reap_known();
            if living.is_empty() {
                break;
            }
            if Instant::now() >= until {
                tracing::warn!(operation = %self.op, left = living.len(), "processes of the job did not die after SIGKILL");
                survivors = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (killed.len(), survivors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_names() {
        let line =
            "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        let p = parse_stat(line).unwrap();
        assert_eq!(
            p,
            Proc {
                pid: 4242,
                ppid: 17,
                pgrp: 4242,
                session: 4242,
                zombie: false,
                start: 98765
            }
        );
        let me = read_proc(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(!me.zombie);
    }

    #[test]
    fn a_threads_children_list_holds_what_it_started_even_once_exited() {
        // The end of a job trusts these lists to skip its /proc scan: the
        // program must show in the list of the thread that started it
        // while its zombie waits (WNOWAIT), and in no other thread's.
        use nix::sys::wait::{waitid, Id};
        let me = std::process::id();
        let this_thread = nix::unistd::gettid().as_raw();
        let Some(before) = children_of_thread(me, this_thread) else {
            eprintln!("note: no /proc/<pid>/task/<tid>/children here; the scan always runs");
            return;
        };
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        waitid(
            Id::Pid(Pid::from_raw(pid)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        )
        .unwrap();
        let mine = children_of_thread(me, this_thread).unwrap();
        assert!(mine.contains(&pid), "{pid} not in {mine:?}");
        assert!(!before.contains(&pid));
        let other = std::thread::spawn(move || {
            children_of_thread(me, nix::unistd::gettid().as_raw()).unwrap()
        })
        .join()
        .unwrap();
        assert!(
            !other.contains(&pid),
            "another thread lists {pid}: {other:?}"
        );
        child.wait().unwrap();
        let after = children_of_thread(me, this_thread).unwrap();
        assert!(!after.contains(&pid), "reaped, yet listed: {after:?}");
    }

    #[test]
    fn a_jobs_members_are_its_processes_never_their_threads() {
        use std::io::BufRead;
        // A program whose child has a second thread, as a job's Python
        // data loader has: the child is the job's, its thread is not a
        // process to signal or count.
        let mut leader = std::process::Command::new("sh")
            .args([
                "-c",
                "python3 -c 'import os, threading, time\n\
                 def t():\n    print(os.getpid(), threading.get_native_id(), flush=True); time.sleep(30)\n\
                 threading.Thread(target=t, daemon=True).start(); time.sleep(30)' & wait",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(leader.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ids: Vec<i32> = line
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        let (pid, tid) = (ids[0], ids[1]);
        assert!(is_process(pid));
        assert!(read_proc(tid).is_some(), "/proc/<tid> answers for a thread");
        assert!(!is_process(tid), "but a thread is not a process");
        let mut job = JobProcs::new("op_test", Pid::from_raw(leader.id() as i32));
        let all = job.scan();
        let found: Vec<i32> = job.members(&all, false).iter().map(|p| p.pid).collect();
        assert_eq!(found, vec![pid], "the child, not its thread");
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = leader.kill();
        let _ = leader.wait();
    }

    #[test]
    fn a_process_whose_main_thread_exited_is_kept_until_its_threads_end() {
        // /proc shows it as a zombie while a thread still runs; waitpid
        // says it is alive. It must stay remembered (to be killed and
        // reaped later), not be counted as reaped and forgotten.
        let child = std::process::Command::new("python3")
            .args([
                "-c",
                "import ctypes, threading, time\n\
                 threading.Thread(target=lambda: time.sleep(1.5)).start()\n\
                 ctypes.CDLL(None).pthread_exit(None)",
            ])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let until = Instant::now() + Duration::from_secs(10);
        let p = loop {
            match read_proc(pid) {
                Some(p) if p.zombie => break p,
                _ => assert!(Instant::now() < until, "the main thread did not exit"),
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let op = "op_test_zombie_leader";
        remember(op, &[p]);
        reap_known();
        assert_eq!(
            known_for(op),
            vec![(pid, p.start)],
            "kept while its thread runs"
        );
        let until = Instant::now() + Duration::from_secs(10);
        while !known_for(op).is_empty() {
            assert!(Instant::now() < until, "never reaped");
            reap_known();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(read_proc(pid).is_none_or(|q| q.start != p.start), "reaped");
        drop(child);
    }

    #[test]
    fn once_the_pid_counter_wraps_every_later_scan_lists_all_of_proc() {
        let mut wrapped = false;
        assert_eq!(
            pids_to_scan(30_000, Some(30_010), &mut wrapped),
            Scan::Range(30_000, 30_010)
        );
        assert_eq!(
            pids_to_scan(30_000, Some(31_000), &mut wrapped),
            Scan::Listing { from: 30_000 }
        );
        assert!(!wrapped);
        assert_eq!(
            pids_to_scan(30_000, Some(120), &mut wrapped),
            Scan::Listing { from: 1 }
        );
        assert!(wrapped);
        // Past the leader again: processes started since the wrap have
        // smaller pids, so the scan must not go back to a range.
        assert_eq!(
            pids_to_scan(30_000, Some(30_005), &mut wrapped),
            Scan::Listing { from: 1 }
        );
        assert_eq!(
            pids_to_scan(30_000, None, &mut false),
            Scan::Listing { from: 1 }
        );
    }

    #[test]
    fn a_spawned_child_is_never_reaped_behind_its_handle() {
        // A direct child that is not remembered keeps its exit status for
        // `Child::wait`, however often the reaper runs.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        reap_known();
        reap_known();
        assert!(child.wait().unwrap().success());
    }
}
