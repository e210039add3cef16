//! `opsd submit` parsed without clap, for the command lines scripts send
//! in loops. Even the fast path's one-subcommand clap parser (`cli::fast`)
//! builds every option of `submit` before it reads one, and that code and
//! its allocations are about a quarter of the CPU a short `opsd submit`
//! spends in its own process (BENCHMARKS.md §23). This parser takes only
//! what it understands exactly as clap would: `submit TYPE` and then each
//! of the options in [`OPTIONS`] at most once (`--param`/`-p` any number of
//! times), as `--name VALUE` or `--name=VALUE`. Anything else (another
//! option, a repeat, `--`, a value clap might read differently, a number
//! that does not parse) returns `None`, and clap parses the line as before,
//! so its help and errors stay the only ones. A test compares both parsers
//! on many lines.

use super::{Cli, ClientOpts, Command, SubmitArgs};
use std::ffi::OsString;
use std::path::PathBuf;

/// The options taken here, each with whether it takes a value.
const OPTIONS: &[(&str, bool)] = &[
    ("--socket", true),
    ("--json", false),
    ("--params", true),
    ("--param", true),
    ("-p", true),
    ("--hold", false),
    ("--label", true),
    ("--queue", true),
    ("--priority", true),
    ("--watch", false),
];

/// The command line, when it is a `submit` this parser takes whole.
pub fn parse(args: &[OsString]) -> Option<Cli> {
    let mut words = args.iter().skip(1).map(|a| a.to_str());
    if words.next()?? != "submit" {
        return None;
    }
    let kind = plain(words.next()??)?;
    let mut seen: Vec<&str> = Vec::new();
    let mut client = ClientOpts {
        socket: None,
        json: false,
    };
    let mut a = SubmitArgs {
        kind: kind.to_string(),
        submit: crate::protocol::Submit::new(String::new(), serde_json::Value::Null),
        params: Vec::new(),
        params_json: None,
        watch: false,
    };
    while let Some(word) = words.next() {
        let word = word?;
        let (name, inline) = match word.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (word, None),
        };
        let &(name, takes_value) = OPTIONS.iter().find(|(n, _)| *n == name)?;
        let repeatable = matches!(name, "--param" | "-p");
        if !repeatable && seen.contains(&name) {
            return None;
        }
        seen.push(name);
        let value = if takes_value {
            match inline {
                Some(v) if !v.is_empty() => v,
                Some(_) => return None,
                None => plain(words.next()??)?,
            }
        } else if inline.is_some() {
            return None;
        } else {
            ""
        };
        match name {
            "--socket" => client.socket = Some(PathBuf::from(value)),
            "--json" => client.json = true,
            "--params" => a.params_json = Some(value.to_string()),
            "--param" | "-p" => a.params.push(value.to_string()),
            "--hold" => a.submit.hold = true,
            "--label" => a.submit.label = Some(value.to_string()),
            "--queue" => a.submit.queue = Some(value.to_string()),
            "--priority" => a.submit.priority = value.parse().ok()?,
            "--watch" => a.watch = true,
            _ => return None,
        }
    }
    if client.socket.is_none() {
        // clap's `env = "OPSD_SOCKET"`; an empty or non-UTF-8 value is
        // left to clap.
        if let Some(v) = std::env::var_os("OPSD_SOCKET") {
            client.socket = Some(PathBuf::from(plain(v.to_str()?)?));
        }
    }
    Some(Cli {
        client,
        command: Command::Submit(a),
    })
}

/// A value clap reads as this same string: not empty, not an option.
fn plain(word: &str) -> Option<&str> {
    (!word.is_empty() && !word.starts_with('-')).then_some(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(line: &[&str]) -> Vec<OsString> {
        line.iter().map(OsString::from).collect()
    }

    /// Lines it must take, each parsed to exactly what clap makes of it.
    #[test]
    fn takes_common_submits_exactly_as_clap_parses_them() {
        let lines: &[&[&str]] = &[
            &[
                "opsd",
                "submit",
                "command",
                "--params",
                r#"{"argv":["true"]}"#,
            ],
            &[
                "opsd", "submit", "command", "--socket", "/s", "--params", "{}", "--json",
            ],
            &[
                "opsd",
                "submit",
                "dummy",
                "--socket=/s",
                "--params={}",
                "--hold",
            ],
            &[
                "opsd", "submit", "dummy", "-p", "steps=3", "--param", "x=1", "-p", "y=a",
            ],
            &[
                "opsd", "submit", "dummy", "--label", "nightly", "--queue", "gpu",
            ],
            &["opsd", "submit", "dummy", "--priority", "7", "--watch"],
            &["opsd", "submit", "dummy", "--priority=-3"],
            &["opsd", "submit", "dummy", "--param=a=b=c"],
            &["opsd", "submit", "training"],
        ];
        for line in lines {
            let ours = parse(&args(line)).unwrap_or_else(|| panic!("not taken: {line:?}"));
            let clap = Cli::try_parse_from(*line).unwrap();
            assert_eq!(format!("{ours:?}"), format!("{clap:?}"), "{line:?}");
        }
    }

    /// Lines it must leave to clap: other commands, other options,
    /// repeats, help, and values clap would read another way or refuse.
    #[test]
    fn leaves_everything_else_to_clap() {
        let lines: &[&[&str]] = &[
            &["opsd", "submit"],
            &["opsd", "submit", "--help"],
            &["opsd", "submit", "dummy", "--help"],
            &["opsd", "submit", "dummy", "--gpus", "1"],
            &["opsd", "submit", "dummy", "--after", "last"],
            &["opsd", "submit", "dummy", "--hold", "--hold"],
            &["opsd", "submit", "dummy", "--label", "a", "--label", "b"],
            &["opsd", "submit", "dummy", "--priority", "high"],
            &["opsd", "submit", "dummy", "--priority", "-3"],
            &["opsd", "submit", "dummy", "--label"],
            &["opsd", "submit", "dummy", "--label", "--json"],
            &["opsd", "submit", "dummy", "--hold=yes"],
            &["opsd", "submit", "dummy", "--socket="],
            &["opsd", "submit", "dummy", "--label", ""],
            &["opsd", "submit", "dummy", "--", "x"],
            &["opsd", "submit", "dummy", "extra"],
            &["opsd", "submit", "-x"],
            &["opsd", "--socket", "/s", "submit", "dummy"],
            &["opsd", "list"],
            &["opsd"],
        ];
        for line in lines {
            assert!(parse(&args(line)).is_none(), "taken: {line:?}");
        }
    }
}
