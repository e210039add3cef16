//! A quicker parse for the subcommands scripts call in loops (`submit`,
//! `run`, `show`, ...). Building the whole clap `Cli` defines every
//! subcommand's arguments, about half of what a short `opsd submit`
//! spends in its own process. When the first argument names one of the
//! subcommands here, only that subcommand and the shared options are
//! built. Whatever that parse does not accept (`--help`, a usage error,
//! options before the subcommand) goes to the full `Cli::parse`, so help
//! and error messages are the full parser's, unchanged.

use super::{everyday, CancelArgs, Cli, ClientOpts, IdArgs, ListArgs, NoArgs, SubmitArgs};
use clap::{Args, FromArgMatches};
use std::ffi::OsString;

/// How the fast path builds a subcommand's arguments.
type Augment = fn(clap::Command) -> clap::Command;

/// The subcommands the fast path knows, by name, each with the `Args`
/// type its `Command` variant holds (a test checks them against `Cli`).
const FAST: &[(&str, Augment)] = &[
    ("submit", SubmitArgs::augment_args),
    ("run", everyday::RunArgs::augment_args),
    ("show", IdArgs::augment_args),
    ("health", NoArgs::augment_args),
    ("list", ListArgs::augment_args),
    ("wait", everyday::WaitArgs::augment_args),
    ("cancel", CancelArgs::augment_args),
    ("release", IdArgs::augment_args),
];

/// The command line parsed by the fast path, or `None` when the full
/// parser must take it (not a fast subcommand, or anything that is not
/// a clean parse).
pub fn parse(args: Vec<OsString>) -> Option<Cli> {
    let name = args.get(1)?.to_str()?;
    let &(name, augment) = FAST.iter().find(|(n, _)| *n == name)?;
    let mut matches = command(name, augment).try_get_matches_from(args).ok()?;
    Cli::from_arg_matches_mut(&mut matches).ok()
}

/// The root command with the shared options and one subcommand.
fn command(name: &'static str, augment: Augment) -> clap::Command {
    ClientOpts::augment_args(clap::Command::new("opsd"))
        .subcommand(augment(clap::Command::new(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// What clap needs to parse an argument the same way, written out.
    fn shape(a: &clap::Arg) -> String {
        format!(
            "{} long={:?} short={:?} pos={:?} req={} last={} action={:?} num={:?} env={:?} default={:?}",
            a.get_id(),
            a.get_long(),
            a.get_short(),
            a.get_index(),
            a.is_required_set(),
            a.is_last_set(),
            a.get_action(),
            a.get_num_args(),
            a.get_env(),
            a.get_default_values(),
        )
    }

    fn shapes(c: &clap::Command) -> Vec<String> {
        let mut v: Vec<String> = c.get_arguments().map(shape).collect();
        v.sort();
        v
    }

    #[test]
    fn each_fast_subcommand_has_the_full_parsers_arguments() {
        let mut full = Cli::command();
        full.build();
        for &(name, augment) in FAST {
            let mut fast = command(name, augment);
            fast.build();
            let want = full
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("{name}"));
            let got = fast.find_subcommand(name).unwrap();
            assert_eq!(shapes(got), shapes(want), "{name}");
            assert_eq!(
                got.get_groups().count(),
                want.get_groups().count(),
                "{name}"
            );
        }
    }

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_what_the_full_parser_parses() {
        let line = [
            "opsd", "submit", "command", "--socket", "/s", "--params", "{}", "--json",
        ];
        let fast = parse(args(&line)).expect("fast parse");
        let full = Cli::try_parse_from(line).unwrap();
        assert_eq!(format!("{fast:?}"), format!("{full:?}"));
    }

    #[test]
    fn leaves_help_errors_and_other_commands_to_the_full_parser() {
        assert!(parse(args(&["opsd", "submit", "--help"])).is_none());
        assert!(parse(args(&["opsd", "submit"])).is_none());
        assert!(parse(args(&["opsd", "submit", "dummy", "--nope"])).is_none());
        assert!(parse(args(&["opsd", "--socket", "/s", "submit", "dummy"])).is_none());
        assert!(parse(args(&["opsd", "logs", "x"])).is_none());
        assert!(parse(args(&["opsd"])).is_none());
    }
}
