//! The command line: output, `--json`, exit codes.

use crate::common::*;
use serde_json::Value;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn submit_watch_show_list_metrics_via_the_cli() {
    let d = Daemon::start();
    let o = d.cli(&["submit", "dummy", "--param", "steps=3", "-p", "step_ms=10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    assert!(id.starts_with("op_dummy_"), "{id}");
    // watch exits 0 when the operation completes.
    let o = d.cli(&["watch", &id]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = d.cli(&["show", &id, "--json"]);
    let op: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(op["status"], "completed");
    assert_eq!(op["metadata"]["steps"], 3);
    let o = d.cli(&["list", "--json", "--status", "completed"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["total"], 1);
    assert_eq!(v["active"], 0);
    // `list` shows the 8-hex tail (SPEC §12); `--wide` the full id.
    let o = d.cli(&["list"]);
    assert!(stdout(&o).contains(&id[id.len() - 8..]));
    let o = d.cli(&["metrics", &id, "--json", "--cursor", "1"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["cursor"], 3);
    assert_eq!(v["metrics"].as_array().unwrap().len(), 2);
    let o = d.cli(&["health", "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["counts"]["completed"], 1);
    // submit --json
    let o = d.cli(&[
        "submit",
        "dummy",
        "--params",
        "{\"steps\":1,\"step_ms\":1}",
        "--json",
        "--watch",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first: Value = serde_json::Deserializer::from_str(&stdout(&o))
        .into_iter::<Value>()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(first["status"], "pending");
}

#[test]
fn exit_codes_follow_the_contract() {
    let d = Daemon::start();
    // A failing operation: watch exits 1.
    let o = d.cli(&[
        "submit",
        "dummy",
        "-p",
        "steps=2",
        "-p",
        "step_ms=1",
        "-p",
        "fail_at_step=1",
        "--watch",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // A request the daemon refuses: 1 with the message on stderr.
    let o = d.cli(&["cancel", "op_dummy_nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no operation matches \"op_dummy_nope\""),
        "{}",
        stderr(&o)
    );
    let o = d.cli(&["submit", "rocket"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("known types"), "{}", stderr(&o));
    // Usage errors: 2.
    let o = d.cli(&["submit"]);
    assert_eq!(o.status.code(), Some(2));
    let o = d.cli(&["submit", "dummy", "--param", "novalue"]);
    assert_eq!(o.status.code(), Some(2));
    let o = d.cli(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    // No daemon: 1 with advice.
    let o = std::process::Command::new(bin())
        .args(["list", "--socket", "/nonexistent/opsd.sock"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("opsd serve"), "{}", stderr(&o));
}

#[test]
fn cancel_and_resume_from_the_cli() {
    let d = Daemon::start();
    let o = d.cli(&["submit", "dummy", "-p", "steps=1000", "-p", "step_ms=20"]);
    let id = stdout(&o).trim().to_string();
    d.wait_status(&id, "running", 20);
    let o = d.cli(&["cancel", &id, "--json"]);
    assert!(o.status.success());
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["status"], "cancelled");
    let o = d.cli(&["checkpoints", "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["checkpoints"][0]["operation_id"], id.as_str());
    let o = d.cli(&["resume", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    d.wait_status(&id, "running", 20);
    let o = d.cli(&["resume", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("only cancelled or failed"),
        "{}",
        stderr(&o)
    );
    d.cli(&["cancel", &id]);
    let o = d.cli(&["checkpoints", "delete", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = d.cli(&["checkpoints", &id, "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["checkpoints"].as_array().unwrap().len(), 0);
}

/// `submit` and `run` are parsed without building the other subcommands
/// (`cli::fast`); help, usage errors and options before the subcommand
/// must still come out as the full parser gives them.
#[test]
fn quick_subcommands_keep_help_errors_and_leading_options() {
    let d = Daemon::start();
    let run = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(args)
            .env_remove("OPSD_SOCKET")
            .output()
            .unwrap()
    };
    let o = run(&["submit", "--help"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let help = stdout(&o);
    assert!(
        help.starts_with("Queue an operation and print its id"),
        "{help}"
    );
    assert!(
        help.contains("Usage: opsd submit [OPTIONS] <TYPE>"),
        "{help}"
    );
    for opt in [
        "--param <KEY=VALUE>",
        "--socket <SOCKET>",
        "--json",
        "--watch",
    ] {
        assert!(help.contains(opt), "{opt}: {help}");
    }
    let o = run(&["run", "--help"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("Usage: opsd run"), "{}", stdout(&o));
    // A bad argument: exit 2, the argument named, the subcommand's usage.
    let o = d.cli(&["submit", "dummy", "--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("unexpected argument '--bogus'"), "{err}");
    assert!(err.contains("Usage: opsd submit"), "{err}");
    let socket = d.socket.to_str().unwrap();
    // After `--` everything is the program's, even what looks like an option.
    let o = run(&["run", "--socket", socket, "--", "true", "--bogus"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = d.cli(&["run", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // The shared options before the subcommand.
    let o = run(&["--socket", socket, "submit", "dummy", "-p", "steps=1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).trim().starts_with("op_dummy_"), "{}", stdout(&o));
    let o = run(&["--json", "--socket", socket, "show", "last"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["operation_type"], "dummy", "{v}");
    // And after it, with `$OPSD_SOCKET` instead of `--socket`.
    let o = std::process::Command::new(bin())
        .args(["submit", "dummy", "--json"])
        .env("OPSD_SOCKET", socket)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(
        v["operation_id"].as_str().unwrap().starts_with("op_dummy_"),
        "{v}"
    );
}

/// `opsd` runs the quick subcommands itself and hands the rest to
/// `opsd-full` beside it (`cli::light`). A lone copy of `opsd` must still
/// run the quick ones (so they really run in the light binary), say what
/// is missing for the others, and both binaries must give the same help.
/// Whether an ELF executable names a dynamic loader (a `PT_INTERP`
/// program header): what a statically linked program lacks.
fn has_interpreter(exe: &std::path::Path) -> bool {
    let elf = std::fs::read(exe).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF", "{}", exe.display());
    assert_eq!(elf[4], 2, "a 64-bit ELF: {}", exe.display());
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3
    })
}

#[test]
fn the_light_binary_is_static_and_the_daemon_is_not() {
    // The daemon looks up users, groups and host names, which a static
    // glibc does by loading shared NSS modules: it must stay dynamic.
    let full = bin().with_file_name("opsd-full");
    assert!(
        has_interpreter(&full),
        "{} is linked statically",
        full.display()
    );
    if option_env!("OPSD_LIGHT_STATIC").is_none() {
        eprintln!(
            "note: no static C library here (libc6-dev's libc.a); opsd is linked dynamically"
        );
        assert!(has_interpreter(&bin()));
        return;
    }
    assert!(
        !has_interpreter(&bin()),
        "{} needs a dynamic loader",
        bin().display()
    );
    // It runs with nothing from the environment, a copy in a folder of
    // its own included, and speaks to the daemon.
    let d = Daemon::start();
    let lone_dir = tempfile::tempdir().unwrap();
    let lone = lone_dir.path().join("opsd");
    std::fs::copy(bin(), &lone).unwrap();
    let o = std::process::Command::new(&lone)
        .args(["submit", "dummy", "-p", "steps=1", "--json", "--socket"])
        .arg(&d.socket)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("\"operation_id\""), "{}", stdout(&o));
}

#[test]
fn the_light_binary_runs_quick_commands_alone_and_hands_over_the_rest() {
    use std::os::unix::process::CommandExt;
    let d = Daemon::start();
    let socket = d.socket.to_str().unwrap();
    let full = bin().with_file_name("opsd-full");
    assert!(full.exists(), "{} was not built", full.display());
    let lone_dir = tempfile::tempdir().unwrap();
    let lone = lone_dir.path().join("opsd");
    std::fs::copy(bin(), &lone).unwrap();
    let run = |exe: &std::path::Path, args: &[&str]| {
        std::process::Command::new(exe)
            .args(args)
            .env_remove("OPSD_SOCKET")
            .output()
            .unwrap()
    };
    for args in [
        &["health", "--socket", socket, "--json"][..],
        &["submit", "dummy", "-p", "steps=1", "--socket", socket],
        &["list", "--socket", socket],
        &["wait", "last", "--socket", socket],
    ] {
        let o = run(&lone, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }
    // What it does not run, a lone copy explains instead of running.
    for args in [&["logs", "last", "--socket", socket][..], &["--version"]] {
        let o = run(&lone, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert!(
            err.contains("opsd-full") && err.contains("cargo install --path ."),
            "{err}"
        );
    }
    // Beside it, `opsd-full` takes them with the same arguments (its name
    // included, which clap's usage lines show) and gives the same output.
    for args in [
        &["--help"][..],
        &["submit", "--help"],
        &["logs", "--help"],
        &["--version"],
    ] {
        let light = run(&bin(), args);
        let whole = std::process::Command::new(&full)
            .arg0(bin())
            .args(args)
            .env_remove("OPSD_SOCKET")
            .output()
            .unwrap();
        assert!(!stdout(&light).contains("opsd-full"), "{}", stdout(&light));
        assert_eq!(light.status.code(), Some(0), "{args:?}: {}", stderr(&light));
        assert_eq!(stdout(&light), stdout(&whole), "{args:?}");
    }
    let o = run(&bin(), &["logs", "nope", "--socket", socket]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
}
