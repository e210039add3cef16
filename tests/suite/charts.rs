//! `opsd metrics ID... --plot KEY`: terminal charts of metric series.

use crate::common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

fn plot(d: &Daemon, args: &[&str], cols: usize, rows: usize) -> std::process::Output {
    Command::new(bin())
        .arg("metrics")
        .args(args)
        .arg("--socket")
        .arg(&d.socket)
        .env("COLUMNS", cols.to_string())
        .env("LINES", rows.to_string())
        .output()
        .unwrap()
}

fn short(id: &str) -> &str {
    id.rsplit('_').next().unwrap()
}

#[test]
fn several_runs_overlaid_fit_the_terminal_with_a_legend() {
    let d = Daemon::start();
    let goog = data("GOOG.csv");
    let a = d.submit("training", json!({ "data": goog, "epochs": 6, "seed": 1 }));
    let b = d.submit(
        "training",
        json!({ "data": goog, "epochs": 4, "seed": 2, "learning_rate": 0.01 }),
    );
    d.wait_status(&a, "completed", 120);
    d.wait_status(&b, "completed", 120);
    for (cols, rows) in [(72, 20), (100, 30), (50, 14)] {
        let out = plot(&d, &[&a, &b, "--plot", "train_loss"], cols, rows);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        // One row is left for the shell prompt.
        assert!(
            lines.len() < rows,
            "{} lines for {rows} rows:\n{text}",
            lines.len()
        );
        assert!(
            lines.len() + 4 >= rows,
            "the chart uses the height:\n{text}"
        );
        for l in &lines {
            assert!(
                opsd::cli::screen_width(l) <= cols,
                "wider than {cols}: {l:?}"
            );
        }
        assert!(lines[0].contains("train_loss over epoch"), "{text}");
        let legend = &lines[lines.len() - 2..];
        assert!(
            legend[0].contains(short(&a)) && legend[0].contains("6 points"),
            "{text}"
        );
        assert!(
            legend[1].contains(short(&b)) && legend[1].contains("4 points"),
            "{text}"
        );
        let dots = text
            .chars()
            .filter(|c| ('\u{2801}'..='\u{28ff}').contains(c))
            .count();
        assert!(dots > 10, "no curve drawn:\n{text}");
    }
}

#[test]
fn a_missing_key_names_the_recorded_ones_and_several_ids_need_plot() {
    let d = Daemon::start();
    let id = d.submit("dummy", json!({ "steps": 3, "step_ms": 1 }));
    d.wait_status(&id, "completed", 30);
    let out = plot(&d, &[&id, "--plot", "loss"], 80, 24);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("value") && err.contains("--plot"), "{err}");
    let out = plot(&d, &[&id, &id], 80, 24);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--plot"));
    // --x picks the axis.
    let out = plot(&d, &[&id, "--plot", "value", "--x", "step"], 80, 24);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("value over step"));
}

#[test]
fn follow_draws_until_the_run_ends_with_every_point() {
    let d = Daemon::start();
    let id = d.submit("dummy", json!({ "steps": 12, "step_ms": 100 }));
    let mut child = Command::new(bin())
        .args(["metrics", &id, "--plot", "value", "--follow", "--socket"])
        .arg(&d.socket)
        .env("COLUMNS", "80")
        .env("LINES", "24")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_child(&mut child, Duration::from_secs(60));
    assert!(status.success());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut text).unwrap();
    assert_eq!(d.status(&id), "completed");
    // Not a terminal: one chart, drawn once the run ended, with all 12 points.
    assert_eq!(text.matches("value over step").count(), 1, "{text}");
    assert!(text.contains("12 points"), "{text}");
}

/// `opsd demo`: ends with the loss curves and the results, leaves no
/// temporary directory behind unless `--keep`, prints the dashboard URL
/// when asked to serve one.
#[test]
fn the_demo_draws_the_loss_curve_and_cleans_up_unless_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = format!("127.0.0.1:{port}");
    let run = |extra: &[&str]| {
        let o = Command::new(bin())
            .args(["demo", "--epochs", "5"])
            .args(extra)
            .env("TMPDIR", tmp.path())
            .env("COLUMNS", "90")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{out}\n{err}");
        (out, err)
    };
    let (out, err) = run(&["--http", &http]);
    assert!(out.contains("loss per epoch of"), "{out}");
    assert!(
        out.contains("train_loss (last") && out.contains("val_loss (last"),
        "{out}"
    );
    assert!(out.contains("5 points"), "{out}");
    assert!(out.contains("buy and hold return (same period)"), "{out}");
    assert!(
        err.contains(&format!("dashboard: http://{http}/?token=")),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the demo left {left:?} behind");
    let (_, err) = run(&["--keep"]);
    let kept: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].join("opsd.db").exists());
    assert!(err.contains("sqlite3"), "{err}");
}
