//! Parameters of `command` (SPEC §8): checked at submit so that a typo in
//! a path is an error on the user's terminal, not a failed operation an
//! hour later in the queue.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys `command` accepts.
const KNOWN: [&str; 4] = ["argv", "cwd", "env", "grace_seconds"];

/// Longest grace accepted: a day. More is surely a unit mistake.
const MAX_GRACE_SECONDS: f64 = 86_400.0;

/// Parameters of `command`, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandParams {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Working directory (absolute); the daemon's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds between SIGTERM and SIGKILL when stopping [30].
    #[serde(default = "default_grace")]
    pub grace_seconds: f64,
}

fn default_grace() -> f64 {
    30.0
}

/// Check submitted parameters; the error names the offending key.
pub fn validate(params: &Value) -> Result<CommandParams, String> {
    let p = parse(params, &|dir| Some(is_dir_remembered(dir)))
        .expect("the file-system check always answers")?;
    resolve_program(&p)?;
    Ok(p)
}

/// [`validate`] without touching the file system, when it can be done:
/// the `cwd`, if any, was found to be a directory less than [`FOUND_FOR`]
/// ago, and `argv[0]` is a bare name whose PATH search found its program
/// less than [`FOUND_FOR`] ago. Such hits are trusted without the `statx`
/// and `access` calls [`validate`] makes, so a submit can be checked on
/// the daemon's async threads, which must never wait on a disk or a hung
/// network mount. (`opsd submit` always sends the caller's directory as
/// `cwd`, so without the directory's hit every CLI submit went through
/// the blocking pool: BENCHMARKS.md §25.) A program or directory removed
/// within that second is then found missing when the job starts (its
/// start resolves the program again and enters the directory), not at
/// submit. `None`: validate on a thread that may block.
pub fn validate_without_io(params: &Value) -> Option<Result<CommandParams, String>> {
    let p = match parse(params, &|dir| dir_checked_within(dir).then_some(true))? {
        Ok(p) => p,
        Err(e) => return Some(Err(e)),
    };
    let key = search_key(&p)?;
    FOUND.within(&key)?;
    Some(Ok(p))
}

/// Whether a directory exists: `Some(answer)`, or `None` when it cannot
/// be told without touching the file system.
type DirCheck<'a> = &'a dyn Fn(&Path) -> Option<bool>;

/// The parameters' shape and values, checked; `cwd`, when given, must be
/// a directory (asked of `is_dir`, the only file-system access here).
/// `None` when `is_dir` cannot tell. Errors are looked for in the same
/// order whatever `is_dir` is, so both ways report the same first error.
fn parse(params: &Value, is_dir: DirCheck) -> Option<Result<CommandParams, String>> {
    let empty = Map::new();
    let obj = match params {
        Value::Null => &empty,
        Value::Object(m) => m,
        _ => return Some(Err("parameters must be a JSON object".into())),
    };
    let (argv, cwd) = match program_and_cwd(obj) {
        Ok(found) => found,
        Err(e) => return Some(Err(e)),
    };
    if let Some(dir) = &cwd {
        if !is_dir(Path::new(dir))? {
            return Some(Err(format!("cwd {dir:?} is not a directory")));
        }
    }
    Some(the_rest(obj, argv, cwd))
}

/// The keys, `argv` and the shape of `cwd` (absolute), checked.
fn program_and_cwd(obj: &Map<String, Value>) -> Result<(Vec<String>, Option<String>), String> {
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "unknown parameter `{k}`; known: {}",
            KNOWN.join(", ")
        ));
    }
    let argv =
        match obj.get("argv") {
            None | Some(Value::Null) => return Err(
                r#"argv is required: the program and its arguments, e.g. ["python3", "train.py"]"#
                    .into(),
            ),
            Some(Value::Array(a)) => a,
            Some(_) => return Err("argv must be an array of strings".into()),
        };
    if argv.is_empty() {
        return Err("argv must not be empty: it names the program to run".into());
    }
    let mut args = Vec::with_capacity(argv.len());
    for (i, a) in argv.iter().enumerate() {
        let Some(s) = a.as_str() else {
            return Err(format!("argv[{i}] must be a string (got {a})"));
        };
        if s.contains('\0') {
            return Err(format!("argv[{i}] contains a NUL byte"));
        }
        args.push(s.to_string());
    }
    let cwd = match obj.get("cwd") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let p = Path::new(s);
            if !p.is_absolute() {
                return Err(format!("cwd must be an absolute path (got {s:?})"));
            }
            Some(s.clone())
        }
        Some(v) => return Err(format!("cwd must be a string (got {v})")),
    };
    Ok((args, cwd))
}

/// `env` and `grace_seconds`, checked, after `argv` and `cwd`.
fn the_rest(
    obj: &Map<String, Value>,
    argv: Vec<String>,
    cwd: Option<String>,
) -> Result<CommandParams, String> {
    let mut env = BTreeMap::new();
    match obj.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(format!("env: {k:?} is not a valid variable name"));
                }
                let Some(s) = v.as_str() else {
                    return Err(format!("env.{k} must be a string (got {v})"));
                };
                if s.contains('\0') {
                    return Err(format!("env.{k} contains a NUL byte"));
                }
                env.insert(k.clone(), s.to_string());
            }
        }
        Some(v) => return Err(format!("env must be an object of strings (got {v})")),
    }
    let grace_seconds = match obj.get("grace_seconds") {
        None | Some(Value::Null) => default_grace(),
        Some(v) => match v.as_f64() {
            Some(g) if (0.0..=MAX_GRACE_SECONDS).contains(&g) => g,
            _ => {
                return Err(format!(
                    "grace_seconds must be a number between 0 and {MAX_GRACE_SECONDS} (got {v})"
                ))
            }
        },
    };
    Ok(CommandParams {
        argv,
        cwd,
        env,
        grace_seconds,
    })
}

/// The PATH search `argv[0]` needs, when it is a bare name: its key.
fn search_key(p: &CommandParams) -> Option<SearchKey> {
    let prog = p.argv.first().map(String::as_str).unwrap_or_default();
    if prog.is_empty() || prog.contains('/') {
        return None;
    }
    Some((prog.to_owned(), path_var(p), base_dir(p)))
}

/// The PATH the program is searched on: the job's `env.PATH` when set,
/// as the child will see it, else the daemon's.
fn path_var(p: &CommandParams) -> OsString {
    match p.env.get("PATH") {
        Some(v) => v.into(),
        None => std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
    }
}

/// The directory relative paths are taken from.
fn base_dir(p: &CommandParams) -> PathBuf {
    match &p.cwd {
        Some(c) => PathBuf::from(c),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
    }
}

/// The executable `argv[0]` names: a path (relative to `cwd`) when it holds
/// a slash, else the first match on `PATH` (the job's `env.PATH` when set,
/// as the child will see it). Errors say what was looked at.
pub fn resolve_program(p: &CommandParams) -> Result<PathBuf, String> {
    let prog = p.argv.first().map(String::as_str).unwrap_or_default();
    if prog.is_empty() {
        return Err("argv[0] must not be empty: it names the program to run".into());
    }
    let base = base_dir(p);
    if prog.contains('/') {
        let path = base.join(prog);
        return match std::fs::metadata(&path) {
            Err(e) => Err(format!("argv[0] {prog:?} cannot be used: {} ({e})", path.display())),
            Ok(m) if !m.is_file() => Err(format!("argv[0] {prog:?} is not a file ({})", path.display())),
            Ok(_) if !executable(&path) => Err(format!(
                "argv[0] {prog:?} is not executable: `chmod +x` it, or run it through its interpreter, e.g. [\"python3\", {prog:?}]"
            )),
            Ok(_) => Ok(path),
        };
    }
    let path_var = path_var(p);
    let key = (prog.to_owned(), path_var.clone(), base.clone());
    if let Some(found) = recently_found(&key) {
        return Ok(found);
    }
    for dir in std::env::split_paths(&path_var) {
        // An empty PATH entry means the working directory.
        let dir = if dir.as_os_str().is_empty() {
            base.clone()
        } else {
            base.join(dir)
        };
        let candidate = dir.join(prog);
        if candidate.is_file() && executable(&candidate) {
            FOUND.remember(key, candidate.clone());
            return Ok(candidate);
        }
    }
    Err(format!(
        "argv[0] {prog:?} was not found on PATH ({}); give its full path",
        path_var.to_string_lossy()
    ))
}

/// A PATH search's key: the program's name, the PATH searched and the
/// directory relative entries are taken from.
type SearchKey = (String, OsString, PathBuf);

/// How long a PATH search's answer is reused. A command job's program
/// is searched for at submit and again when it starts, along every
/// directory of PATH (18 `statx` calls per job with a 9-entry PATH, in
/// the daemon's profile of `true` jobs: BENCHMARKS.md §22). Reused for a
/// second, a hit costs one `statx` and one `access` on the file found
/// (so a program removed meanwhile is searched for again); a program
/// newly installed earlier on PATH is picked up within the second, as
/// a shell's command hash would not.
const FOUND_FOR: Duration = Duration::from_secs(1);

/// At most this many answers are kept (then the table starts afresh).
const FOUND_MAX: usize = 256;

/// Answers of file-system checks, each reused for [`FOUND_FOR`].
struct Recent<K, V>(Mutex<Option<HashMap<K, (V, Instant)>>>);

impl<K: std::hash::Hash + Eq, V: Clone> Recent<K, V> {
    const fn new() -> Self {
        Recent(Mutex::new(None))
    }

    /// The answer for `key` if it is less than [`FOUND_FOR`] old.
    fn within<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (value, at) = table.as_ref()?.get(key)?;
        (at.elapsed() < FOUND_FOR).then(|| value.clone())
    }

    fn remember(&self, key: K, value: V) {
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let table = table.get_or_insert_with(HashMap::new);
        if table.len() >= FOUND_MAX {
            table.clear();
        }
        table.insert(key, (value, Instant::now()));
    }
}

/// What PATH searches found.
static FOUND: Recent<SearchKey, PathBuf> = Recent::new();

/// Working directories found to be directories.
static DIRS: Recent<PathBuf, ()> = Recent::new();

/// The program a search for `key` found less than [`FOUND_FOR`] ago, if it
/// is still an executable file.
fn recently_found(key: &SearchKey) -> Option<PathBuf> {
    let path = FOUND.within(key)?;
    (path.is_file() && executable(&path)).then_some(path)
}

/// Whether `dir` is a directory, asking the file system (and
/// remembering a yes).
fn is_dir_remembered(dir: &Path) -> bool {
    let yes = dir.is_dir();
    if yes {
        DIRS.remember(dir.to_path_buf(), ());
    }
    yes
}

/// Whether `dir` was found to be a directory less than [`FOUND_FOR`] ago.
fn dir_checked_within(dir: &Path) -> bool {
    DIRS.within(dir).is_some()
}

fn executable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        validate(&v).unwrap_err()
    }

    #[test]
    fn defaults_and_path_lookup() {
        let p = validate(&json!({ "argv": ["true"] })).unwrap();
        assert_eq!(p.grace_seconds, 30.0);
        assert!(p.cwd.is_none() && p.env.is_empty());
        assert!(resolve_program(&p).unwrap().is_absolute());
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err(json!({})).starts_with("argv is required"));
        assert!(err(json!({ "argv": [] })).contains("argv must not be empty"));
        assert!(err(json!({ "argv": "true" })).contains("argv must be an array"));
        assert!(err(json!({ "argv": ["true", 3] })).contains("argv[1]"));
        assert!(err(json!({ "argv": ["no-such-program-opsd"] })).contains("argv[0]"));
        assert!(err(json!({ "argv": ["/no/such/file"] })).contains("argv[0]"));
        assert!(err(json!({ "argv": ["true"], "cwd": "rel" })).contains("cwd"));
        assert!(err(json!({ "argv": ["true"], "cwd": "/no/such/dir" })).contains("cwd"));
        assert!(err(json!({ "argv": ["true"], "env": { "A": 1 } })).contains("env.A"));
        assert!(err(json!({ "argv": ["true"], "grace_seconds": -1 })).contains("grace_seconds"));
        assert!(err(json!({ "argv": ["true"], "gpu": 1 })).contains("`gpu`"));
    }

    #[test]
    fn a_path_search_is_reused_only_while_its_program_is_still_there() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (first, second) = (d.path().join("a"), d.path().join("b"));
        for dir in [&first, &second] {
            std::fs::create_dir(dir).unwrap();
            let prog = dir.join("opsd-test-prog");
            std::fs::write(&prog, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = format!("{}:{}", first.display(), second.display());
        let p = validate(&json!({ "argv": ["opsd-test-prog"], "env": { "PATH": path } })).unwrap();
        assert_eq!(resolve_program(&p).unwrap(), first.join("opsd-test-prog"));
        // Gone from the first directory: the remembered answer is not
        // used, the search finds the second.
        std::fs::remove_file(first.join("opsd-test-prog")).unwrap();
        assert_eq!(resolve_program(&p).unwrap(), second.join("opsd-test-prog"));
        // No longer executable anywhere: an error, not a stale answer.
        std::fs::set_permissions(
            second.join("opsd-test-prog"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let e = resolve_program(&p).unwrap_err();
        assert!(e.contains("was not found on PATH"), "{e}");
    }

    #[test]
    fn relative_programs_resolve_against_cwd_and_must_be_executable() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let cwd = d.path().to_str().unwrap();
        let e = err(json!({ "argv": ["./run.sh"], "cwd": cwd }));
        assert!(e.contains("not executable"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = validate(&json!({ "argv": ["./run.sh"], "cwd": cwd })).unwrap();
        assert_eq!(resolve_program(&p).unwrap(), d.path().join("./run.sh"));
    }

    #[test]
    fn without_io_only_recent_checks_of_the_directory_and_the_program_are_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let prog = d.path().join("opsd-test-quick");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = d.path().display().to_string();
        let params = json!({ "argv": ["opsd-test-quick", "x"], "env": { "PATH": path } });
        // Never searched for: it must be checked where blocking is allowed.
        assert!(validate_without_io(&params).is_none());
        let checked = validate(&params).unwrap();
        // Found just now: the same parameters, with no file-system access.
        let quick = validate_without_io(&params)
            .expect("a recent search")
            .unwrap();
        assert_eq!(
            serde_json::to_value(&quick).unwrap(),
            serde_json::to_value(&checked).unwrap()
        );
        // A shape error is the same error either way.
        let bad = json!({ "argv": ["opsd-test-quick"], "env": { "PATH": 1 } });
        assert_eq!(validate_without_io(&bad).unwrap().unwrap_err(), err(bad));
        // A directory to check: only once it was found to be one just
        // now (`opsd submit` always sends the caller's), and never a
        // directory that is not there.
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().to_str().unwrap().to_string();
        let in_dir = json!({ "argv": ["opsd-test-quick"], "env": { "PATH": path }, "cwd": cwd });
        assert!(validate_without_io(&in_dir).is_none());
        validate(&in_dir).unwrap();
        let quick = validate_without_io(&in_dir)
            .expect("a directory checked just now")
            .unwrap();
        assert_eq!(quick.cwd.as_deref(), Some(cwd.as_str()));
        let gone = json!({ "argv": ["opsd-test-quick"], "env": { "PATH": path }, "cwd": "/no/such/opsd-dir" });
        assert!(err(gone.clone()).contains("is not a directory"));
        assert!(validate_without_io(&gone).is_none());
        // A program named by path: not here.
        let by_path = json!({ "argv": [prog.display().to_string()] });
        validate(&by_path).unwrap();
        assert!(validate_without_io(&by_path).is_none());
    }
}
