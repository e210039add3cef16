//! The light `opsd` binary: every CLI call is a fresh process, and one
//! that links the daemon (tokio, SQLite, PostgreSQL, the dashboard, the
//! engines) spends much of a short `opsd submit` mapping and faulting in
//! a 10 MB program. So `opsd` itself holds only the quick subcommands
//! scripts call in loops (those `cli::fast` parses and
//! `commands::run_light` runs) and hands everything else, help and usage
//! errors included, to `opsd-full` beside it: the same program with the
//! daemon and every other subcommand, exec'd in place with the same
//! arguments, pid and environment (systemd's `opsd serve` stays the
//! service's main process).

use super::{by_hand, commands, fast};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

/// The file name of the full program, installed next to `opsd`.
pub const FULL: &str = "opsd-full";

/// Run the command line: here when it is one of the quick subcommands,
/// else in `opsd-full`.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if let Some(cli) = by_hand::parse(&args).or_else(|| fast::parse(args.clone())) {
        super::init_client_logging();
        if let Ok(code) = commands::run_light(cli.command, &cli.client) {
            return code;
        }
    }
    hand_over(&args)
}

/// Exec `opsd-full` with the same arguments; only returns (exit 2, with
/// a sentence on stderr) when it cannot.
fn hand_over(args: &[OsString]) -> ExitCode {
    use std::io::Write;
    let full = full_path();
    let mut cmd = std::process::Command::new(&full);
    if let Some((argv0, rest)) = args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    let err = cmd.exec();
    let _ = writeln!(
        std::io::stderr(),
        "error: cannot run {} ({err}). `opsd` runs the quick commands itself and hands \
         the others (serve, logs, demo, --help, ...) to `{FULL}`, which must be installed \
         next to it: `cargo install --path .` installs both, or copy target/release/{FULL} \
         beside this `opsd`",
        full.display()
    );
    ExitCode::from(2)
}

/// `opsd-full` in the directory of the running `opsd` (symbolic links
/// followed, so a link to a build directory finds the build's).
fn full_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .map(|dir| dir.join(FULL))
        .unwrap_or_else(|| PathBuf::from(FULL))
}
