//! The `opsd` command line (SPEC §6): clap definitions and one function
//! per subcommand. Every client command takes `--socket` and `--json`
//! (before or after the subcommand);
//! machine output goes to stdout, messages for people to stderr.

mod by_hand;
mod commands;
mod demo;
mod everyday;
mod fast;
pub mod light;
mod output;
mod plot;
mod watch;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// opsd runs your long jobs (training runs, backtests, pipelines) from one
/// SQLite file, survives restarts, and shows live progress.
#[derive(Debug, Parser)]
#[command(name = "opsd", version, about, long_about = None)]
pub struct Cli {
    /// Socket and output options, taken before or after the subcommand.
    #[command(flatten)]
    pub client: ClientOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every client command shares.
#[derive(Debug, Args, Clone)]
pub struct ClientOpts {
    /// The daemon's socket [default: $OPSD_SOCKET, else the daemon's default path].
    #[arg(long, global = true, env = "OPSD_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ClientOpts {
    /// The socket path to use.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(crate::config::default_socket_path)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (systemd runs this).
    Serve(ServeArgs),
    /// Queue an operation and print its id.
    Submit(SubmitArgs),
    /// List operations (newest first).
    List(ListArgs),
    /// Everything about one operation.
    Show(IdArgs),
    /// Live progress of an operation (and its children) until it ends.
    Watch(WatchArgs),
    /// Cancel an operation and everything under it.
    Cancel(CancelArgs),
    /// Resume a cancelled or failed operation from its latest checkpoint.
    Resume(IdArgs),
    /// An operation's metric series (loss curves, equity, ...).
    Metrics(MetricsArgs),
    /// The child operations of a parent.
    Children(IdArgs),
    /// Output of a `command` operation.
    Logs(LogsArgs),
    /// Checkpoints: list them, or `checkpoints delete ID`.
    Checkpoints(CheckpointsArgs),
    /// Is the daemon up? Version, uptime, paths, workers, counts.
    Health(NoArgs),
    /// The daemons sharing this store: version, workers, GPUs, types, last seen.
    Hosts(NoArgs),
    /// First run: trains a model and backtests it on bundled data, live.
    Demo(DemoArgs),
    /// Print the web dashboard's URL (with its token); needs `http` in the daemon's config.
    Dashboard(NoArgs),
    /// Run a program as a `command` operation: `opsd run [OPTIONS] -- PROGRAM ARGS...`.
    Run(everyday::RunArgs),
    /// Wait until operations end: exit 0 if all completed, 1 otherwise.
    Wait(everyday::WaitArgs),
    /// Let a held operation (`--hold`) start.
    Release(IdArgs),
    /// Submit a new operation like another, with edited parameters.
    Rerun(everyday::RerunArgs),
    /// Delete finished operations with their metrics, checkpoints and logs.
    Clean(everyday::CleanArgs),
    /// Named queues: list, pause, start, set --parallel.
    Queue(everyday::QueueArgs),
    /// Shell completions: `opsd completions bash|zsh|fish`.
    Completions(everyday::CompletionsArgs),
    /// The manual page (roff), e.g. `opsd man | man -l -`.
    Man,
}

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory for the database, logs and checkpoints.
    #[arg(long, env = "OPSD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The SQLite database file [default: <state dir>/opsd.db].
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// The store: an SQLite path, or postgres://USER@HOST:PORT/DB for a
    /// queue shared by several hosts.
    #[arg(long, env = "OPSD_STORE")]
    pub store: Option<String>,
    /// A TOML config file (see README, "Configuration").
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `submit` options: the request's own (`protocol::Submit`) and how to
/// build its parameters.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Operation type: dummy, command, training, backtest or pipeline.
    #[arg(value_name = "TYPE")]
    pub kind: String,
    /// The request: parent, priority, GPUs, key, attempts, start time,
    /// label, queue, hold, dependencies.
    #[command(flatten)]
    pub submit: crate::protocol::Submit,
    /// A parameter, KEY=VALUE; VALUE is parsed as JSON when it can be (repeatable).
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// All parameters as a JSON object, or @FILE to read it from a file.
    #[arg(long = "params", value_name = "JSON|@FILE")]
    pub params_json: Option<String>,
    /// Watch it until it ends (exit status as `watch`).
    #[arg(long)]
    pub watch: bool,
}

/// `list` options.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only these statuses (repeatable): pending, resuming, running, completed, failed, cancelled.
    #[arg(long)]
    pub status: Vec<crate::model::Status>,
    /// Only this type.
    #[arg(long = "type")]
    pub kind: Option<crate::model::OperationType>,
    /// Only pending, resuming and running operations.
    #[arg(long)]
    pub active: bool,
    /// Only children of this operation.
    #[arg(long)]
    pub parent: Option<crate::ids::OperationId>,
    /// Only operations with this label.
    #[arg(long)]
    pub label: Option<String>,
    /// Only operations in this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Full ids and every column, whatever the terminal's width.
    #[arg(long)]
    pub wide: bool,
    /// At most this many rows.
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Skip this many rows.
    #[arg(long, default_value_t = 0)]
    pub offset: i64,
}

/// Commands that take one operation id.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The operation: its id, the last 8 hex digits, a unique start, or `last`.
    pub id: String,
}

/// `watch` options.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The operation id.
    pub id: String,
    /// On Ctrl-C, cancel the operation without asking.
    #[arg(long)]
    pub cancel_on_interrupt: bool,
}

/// `cancel` options.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The operation id.
    pub id: String,
    /// Why (kept with the operation).
    #[arg(long)]
    pub reason: Option<String>,
}

/// `metrics` options.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// The operation id (several only with --plot: their curves overlaid).
    #[arg(required = true, num_args = 1..)]
    pub ids: Vec<String>,
    /// Draw this metric as a chart in the terminal instead of printing points.
    #[arg(long, value_name = "KEY")]
    pub plot: Option<String>,
    /// The x axis of --plot [default: `step`, else `epoch`, else the point's sequence number].
    #[arg(long, value_name = "KEY", requires = "plot")]
    pub x: Option<String>,
    /// Only points after this sequence number.
    #[arg(long, default_value_t = 0)]
    pub cursor: i64,
    /// Keep printing new points (with --plot: redraw) until the operation ends.
    #[arg(long)]
    pub follow: bool,
}

/// `logs` options.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The operation id.
    pub id: String,
    /// Keep printing new output until the operation ends.
    #[arg(long)]
    pub follow: bool,
}

/// `checkpoints` options.
#[derive(Debug, Args)]
pub struct CheckpointsArgs {
    /// An operation id, or `delete ID`.
    pub args: Vec<String>,
}

/// Only the shared client options.
#[derive(Debug, Args)]
pub struct NoArgs {}

/// `demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's state directory here (default: a fresh temporary one).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Keep the temporary state directory (database, model, metrics) after the demo.
    #[arg(long)]
    pub keep: bool,
    /// Also serve the web dashboard here while the demo runs, e.g. 127.0.0.1:8470.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Training epochs for the demo's model.
    #[arg(long, default_value_t = DEMO_EPOCHS)]
    pub epochs: i64,
}

/// The demo's default epochs: enough for a curve worth watching (several
/// seconds on a small machine), few enough to finish in well under 20 s.
pub const DEMO_EPOCHS: i64 = 300;

/// Columns `line` takes on a terminal: ANSI colour codes take none. A
/// chart must fit `COLUMNS` by this measure; the unit and integration
/// tests of `--plot` check it with this one function.
pub fn screen_width(line: &str) -> usize {
    let mut n = 0;
    let mut esc = false;
    for ch in line.chars() {
        match (esc, ch) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// Parse the command line and run it; the process exit code (the
/// `opsd-full` binary; `opsd` itself is [`light::main`]).
pub fn main() -> ExitCode {
    let cli = fast::parse(std::env::args_os().collect()).unwrap_or_else(Cli::parse);
    // Only the daemon (`serve`, and `demo`'s own) logs; a client command
    // sets up logging only when asked to (`OPSD_LOG`): the subscriber's
    // set-up is ~40k of a short command's ~690k instructions.
    let daemon = matches!(cli.command, Command::Serve(_));
    if daemon || matches!(cli.command, Command::Demo(_)) {
        init_logging(daemon);
    } else {
        init_client_logging();
    }
    commands::run(cli.command, &cli.client)
}

/// A client command logs only when asked to (`OPSD_LOG`).
fn init_client_logging() {
    if std::env::var_os("OPSD_LOG").is_some() {
        init_logging(false);
    }
}

fn init_logging(daemon: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if daemon { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("OPSD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LossyStderr)
        .log_internal_errors(false)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Log output to stderr that drops what cannot be written: a full disk or
/// a closed journal must not take down the thread that logs (tracing's
/// own fallback `eprintln!`s the failure, which panics).
#[derive(Debug, Clone, Copy, Default)]
pub struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LossyStderr {
    type Writer = LossyStderr;

    fn make_writer(&'a self) -> Self::Writer {
        LossyStderr
    }
}

#[cfg(test)]
mod tests {
    use super::LossyStderr;
    use std::io::Write;

    #[test]
    fn log_writer_reports_success_whatever_happens() {
        let mut w = LossyStderr;
        assert_eq!(w.write(b"").unwrap(), 0);
        assert_eq!(w.write(b"x\n").unwrap(), 2);
        assert!(w.flush().is_ok());
    }
}
