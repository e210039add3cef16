//! `opsd-full`: the whole program (the daemon and every subcommand).
//! The light `opsd` binary hands it every command it does not run itself
//! (see `cli::light`); it can also be run directly.

fn main() -> std::process::ExitCode {
    opsd::cli::main()
}
