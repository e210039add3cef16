//! `opsd demo`: a newcomer's first command. Starts a daemon in-process on
//! a fresh state directory, runs the research pipeline (training, then a
//! backtest of the trained model) on bundled GOOG bars with live progress
//! bars (and a live loss curve on a tall terminal), then draws the loss
//! curves, prints the results and what to try next. The backtest figures
//! are out of sample: the pipeline trades only the training's test split,
//! and the table says which bars those were. The temporary state directory
//! is removed at the end unless `--keep`.

use super::commands::Failure;
use super::watch::{self as watching, WatchEnd};
use super::DemoArgs;
use super::{output, plot};
use crate::client::Client;
use crate::config::Config;
use crate::daemon::Daemon;
use crate::protocol::Submit;
use serde_json::{json, Value};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The demo's data, inside the binary so `opsd demo` works from anywhere.
const GOOG_CSV: &[u8] = include_bytes!("../../data/GOOG.csv");

/// Run the demo.
pub fn run(a: DemoArgs, json: bool) -> Result<ExitCode, Failure> {
    if !(1..=1000).contains(&a.epochs) {
        return Err(Failure::Usage("--epochs must be between 1 and 1000".into()));
    }
    if let Some(addr) = &a.http {
        crate::http::loopback_addr(addr).map_err(|e| Failure::Usage(e.to_string()))?;
    }
    // A fresh temporary directory, removed at the end unless --keep (a
    // --state-dir of the user's own is always kept).
    let (state_dir, temp) = match &a.state_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("opsd-demo-")
                .tempdir()
                .map_err(|e| {
                    Failure::Request(format!("cannot create a temporary directory: {e}"))
                })?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let keep = a.keep || temp.is_none();
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| Failure::Request(format!("cannot create {}: {e}", state_dir.display())))?;
    let data = state_dir.join("GOOG.csv");
    std::fs::write(&data, GOOG_CSV)
        .map_err(|e| Failure::Request(format!("cannot write {}: {e}", data.display())))?;
    let socket = state_dir.join("opsd.sock");
    let config = Config {
        state_dir: state_dir.clone(),
        socket: Some(socket.clone()),
        http: a.http.clone(),
        ..Config::default()
    };
    eprintln!(
        "opsd demo: a daemon runs in this process; its state is in {}{}",
        state_dir.display(),
        if keep {
            ""
        } else {
            " (removed at the end; --keep keeps it)"
        }
    );
    let daemon = Daemon::start(config)?;
    if let Some(addr) = &a.http {
        if let Ok(token) = crate::http::ensure_token(&state_dir) {
            eprintln!("dashboard: http://{addr}/?token={token}");
        }
    }
    let result = run_pipeline(&socket, &data, a.epochs, json, &state_dir, keep);
    daemon.stop(&|| false);
    if let Some(t) = temp {
        if keep {
            let _ = t.keep();
        } else if let Err(e) = t.close() {
            eprintln!("could not remove {}: {e}", state_dir.display());
        }
    }
    result
}

fn run_pipeline(
    socket: &Path,
    data: &Path,
    epochs: i64,
    json_out: bool,
    state_dir: &Path,
    keep: bool,
) -> Result<ExitCode, Failure> {
    let params = json!({
        "data": data,
        "training": {
            "epochs": epochs, "seed": 42,
            "hidden": [128, 64], "batch_size": 32, "learning_rate": 0.0002,
        },
        "backtest": { "cash": 10000, "commission": 0.002 },
    });
    let submitted = Client::connect(socket)?.submit(Submit::new("pipeline", params))?;
    let id = submitted.operation_id.to_string();
    eprintln!(
        "Submitted {id}: train a small neural network on GOOG daily bars ({epochs} epochs), \
         then backtest it on the test split it never trained on.\n"
    );
    let interrupted = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone());
    let op = match watching::watch(socket, &id, json_out, &interrupted)? {
        WatchEnd::Finished(op) => serde_json::to_value(op).unwrap_or_default(),
        WatchEnd::Interrupted => {
            eprintln!("interrupted: the pipeline is cancelled with the demo daemon");
            return Ok(ExitCode::from(1));
        }
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&op).unwrap_or_default());
    } else if op["status"] == "completed" {
        print_curve(socket, &op["result_summary"]["training_operation"]);
        print_results(&op["result_summary"], keep);
    }
    if op["status"] != "completed" {
        eprintln!(
            "the pipeline ended {}: {}",
            op["status"],
            output::text(&op["error_message"])
        );
        return Ok(ExitCode::from(1));
    }
    let training = output::text(&op["result_summary"]["training_operation"]);
    if keep {
        let db = state_dir.join("opsd.db");
        eprintln!(
            "\nThe demo's state stays in {dir}. Look inside:\n  \
             sqlite3 {db} 'SELECT operation_id, status, progress FROM active_operations'\n  \
             sqlite3 {db} \"SELECT seq, data FROM operation_metrics WHERE operation_id = '{training}'\"   # the loss curve",
            dir = state_dir.display(),
            db = db.display(),
        );
    } else {
        eprintln!("\n(The demo's daemon and its temporary state are gone; `opsd demo --keep` keeps them to look inside.)");
    }
    eprintln!(
        "\nNext, with a daemon of your own:\n  \
         opsd serve                                     # in its own terminal (or under systemd: README)\n  \
         opsd submit dummy --watch                      # your first operation\n  \
         opsd submit pipeline -p data=data/GOOG.csv --watch\n  \
         opsd metrics <id> --plot train_loss            # the loss curve in the terminal\n  \
         opsd list; opsd cancel <id>; opsd resume <id>; opsd dashboard\n\
         Run your own training script: README, \"Run your own training script\"."
    );
    Ok(ExitCode::SUCCESS)
}

/// The training's loss curves, drawn in the terminal under the results.
fn print_curve(socket: &Path, training: &Value) {
    let Some(id) = training.as_str() else {
        return;
    };
    let page = Client::connect(socket)
        .and_then(|mut c| c.metrics(&crate::ids::OperationId::from(id), 0, Some(100_000)));
    let Ok(page) = page else {
        return;
    };
    let points: Vec<Value> = page
        .metrics
        .iter()
        .map(|p| serde_json::to_value(p).unwrap_or_default())
        .collect();
    let (cols, _) = plot::terminal_size(2);
    let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let title = format!("loss per epoch of {}", plot::short_id(id));
    if let Some(chart) = plot::render(
        &watching::loss_series(&points),
        &title,
        cols.min(100),
        18,
        color,
    ) {
        println!("{chart}");
    }
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.2} %"))
        .unwrap_or_else(|| "-".into())
}

fn print_results(summary: &Value, keep: bool) {
    let t = &summary["training"];
    let b = &summary["backtest"];
    let mut table = output::table(&["RESULT", "VALUE"]);
    let acc = |k: &str| {
        t[k]["accuracy"]
            .as_f64()
            .map(|a| format!("{:.1} %", a * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    table.add_row(vec![
        "training accuracy (train / validation / test)".to_string(),
        format!(
            "{} / {} / {}",
            acc("training_metrics"),
            acc("validation_metrics"),
            acc("test_metrics")
        ),
    ]);
    table.add_row(vec![
        "backtest period (test split, out of sample)".to_string(),
        format!(
            "{} to {} ({} bars)",
            output::text(&b["start"]),
            output::text(&b["end"]),
            output::text(&b["bars"])
        ),
    ]);
    table.add_row(vec![
        "backtest return (test split)".to_string(),
        pct(&b["return_pct"]),
    ]);
    table.add_row(vec![
        "buy and hold return (same period)".to_string(),
        pct(&b["buy_hold_return_pct"]),
    ]);
    table.add_row(vec![
        "max drawdown".to_string(),
        pct(&b["max_drawdown_pct"]),
    ]);
    table.add_row(vec![
        "trades (win rate)".to_string(),
        format!(
            "{} ({})",
            output::text(&b["trades"]),
            pct(&b["win_rate_pct"])
        ),
    ]);
    table.add_row(vec![
        "sharpe".to_string(),
        b["sharpe"]
            .as_f64()
            .map(|s| format!("{s:.2}"))
            .unwrap_or_else(|| "-".into()),
    ]);
    table.add_row(vec![
        "final equity (from 10,000)".to_string(),
        b["final_equity"]
            .as_f64()
            .map(|e| format!("{e:.2}"))
            .unwrap_or_else(|| "-".into()),
    ]);
    if keep {
        table.add_row(vec![
            "model".to_string(),
            output::text(&summary["model_path"]),
        ]);
    }
    println!("{table}");
}
