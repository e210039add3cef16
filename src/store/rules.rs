//! The rules both backends apply around their statements, written once:
//! who may join a parent, what an idempotency key may return, what a
//! dependency needs, which queue names and caps are valid, which finished
//! operations `clean` may take, how `resolve` chooses among candidates,
//! and the words each refusal uses. A backend reads the rows (with its
//! own locks) and asks these functions what follows from them.

use crate::error::{Error, Result};
use crate::ids::OperationId;
use crate::model::Status;
use crate::store::records::{CleanFilter, OperationRecord, QueueChange};
use std::collections::HashSet;

/// The answer for an id with no row.
pub(crate) fn not_found(id: &OperationId) -> Error {
    Error::NotFound(format!("no operation {id}; `opsd list` shows the ids"))
}

/// A child may only join a parent that is waiting or running and not
/// being cancelled. `parent_row` is the parent's status and whether a
/// stop marker is on it (`None`: no such operation).
pub(crate) fn parent_takes_children(
    parent: &OperationId,
    parent_row: Option<(Status, bool)>,
) -> Result<()> {
    let Some((status, stopping)) = parent_row else {
        return Err(Error::NotFound(format!(
            "parent operation {parent} does not exist"
        )));
    };
    if !status.is_active() {
        return Err(Error::InvalidTransition(format!(
            "parent operation {parent} is {status}; children can only be added to a pending or \
             running operation (resume it first)"
        )));
    }
    if status == Status::Running && stopping {
        return Err(Error::InvalidTransition(format!(
            "parent operation {parent} is being cancelled; no new children can be added to it"
        )));
    }
    Ok(())
}

/// A submit whose idempotency `key` operation `id` already has: it gets
/// `id` back when it asks for the same type and parameters (`same`).
pub(crate) fn key_reuse(key: &str, id: &OperationId, same: bool) -> Result<()> {
    if same {
        return Ok(());
    }
    Err(Error::BadRequest(format!(
        "key {key:?} was already used by operation {id} with a different type or \
         parameters; use a new key, or submit the same parameters to get {id} back"
    )))
}

/// A dependency of a new operation, checked: `met` when it already ended
/// as the dependent needs.
pub(crate) struct Dep {
    /// The operation depended on.
    pub id: OperationId,
    /// `--after-any` (any outcome), not `--after` (completed).
    pub any: bool,
    /// Already satisfied.
    pub met: bool,
}

/// The dependencies asked for, each once: `--after` ones (`false`) then
/// `--after-any` ones (`true`); an id named twice keeps its first kind.
pub(crate) fn dependencies<'a>(
    after: &'a [OperationId],
    after_any: &'a [OperationId],
) -> Vec<(&'a OperationId, bool)> {
    let mut out: Vec<(&OperationId, bool)> = Vec::new();
    let tagged = after
        .iter()
        .map(|i| (i, false))
        .chain(after_any.iter().map(|i| (i, true)));
    for (id, any) in tagged {
        if !out.iter().any(|(d, _)| *d == id) {
            out.push((id, any));
        }
    }
    out
}

/// Check one dependency whose row says `status` (`None`: it does not
/// exist): an `--after` one must not have failed or been cancelled.
pub(crate) fn dependency(id: &OperationId, any: bool, status: Option<Status>) -> Result<Dep> {
    let Some(status) = status else {
        return Err(Error::NotFound(format!(
            "the dependency {id} does not exist; `opsd list` shows the ids"
        )));
    };
    let met = match (status, any) {
        (Status::Completed, _) => true,
        (s, true) if !s.is_active() => true,
        (s, false) if !s.is_active() => {
            return Err(Error::InvalidTransition(format!(
                "--after {id}: that operation is {s} and will not complete unless it is \
                 resumed; resume it first, or use --after-any to start whatever its outcome"
            )))
        }
        _ => false,
    };
    Ok(Dep {
        id: id.clone(),
        any,
        met,
    })
}

/// Check a queue name: what a user types, not a path or a sentence.
pub(crate) fn queue_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "queue name {name:?} is not valid: use 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// Check a queue change before anything is written.
pub(crate) fn queue_change(ch: &QueueChange) -> Result<()> {
    queue_name(&ch.name)?;
    if let Some(Some(n)) = ch.parallel {
        if n < 1 {
            return Err(Error::BadRequest(format!(
                "--parallel must be at least 1 (got {n}); pause the queue to start nothing"
            )));
        }
    }
    Ok(())
}

/// Why `release` changed nothing, from the row as it is.
pub(crate) fn release_refused(rec: &OperationRecord) -> Error {
    let id = &rec.operation_id;
    Error::InvalidTransition(if rec.held {
        format!(
            "operation {id} is {}; only a pending operation is held",
            rec.status
        )
    } else {
        format!(
            "operation {id} is not held (it is {}); only operations submitted with --hold need a release",
            rec.status
        )
    })
}

/// Why a cancel of `root`, which is `status`, is refused (`None`: it may
/// go on).
pub(crate) fn cancel_refused(root: &OperationId, status: Status) -> Option<Error> {
    (!status.is_active()).then(|| {
        Error::InvalidTransition(format!(
            "operation {root} is {status}; only pending, resuming or running operations can be cancelled"
        ))
    })
}

/// Why a resume of `id`, which is `status`, changed nothing.
pub(crate) fn not_resumable(id: &OperationId, status: Status) -> Error {
    Error::NotResumable(format!(
        "operation {id} is {status}; only cancelled or failed operations can be resumed"
    ))
}

/// The final statuses `clean` looks at (all three unless the filter
/// names some); an active status is refused.
pub(crate) fn clean_statuses(filter: &CleanFilter) -> Result<Vec<Status>> {
    let statuses: Vec<Status> = if filter.statuses.is_empty() {
        vec![Status::Completed, Status::Failed, Status::Cancelled]
    } else {
        filter.statuses.clone()
    };
    if let Some(s) = statuses.iter().find(|s| s.is_active()) {
        return Err(Error::BadRequest(format!(
            "clean never deletes {s} operations; --status takes completed, failed or cancelled"
        )));
    }
    Ok(statuses)
}

/// Of the operations in `set`, those `clean` may delete: a parent only
/// together with all its children (`children_of` reads them), sorted.
pub(crate) fn whole_trees(
    mut set: HashSet<String>,
    mut children_of: impl FnMut(&str) -> Result<Vec<String>>,
) -> Result<Vec<OperationId>> {
    // Drop, until nothing changes, parents with a child that stays.
    loop {
        let mut keep = Vec::new();
        for id in &set {
            if children_of(id)?.iter().any(|k| !set.contains(k)) {
                keep.push(id.clone());
            }
        }
        if keep.is_empty() {
            break;
        }
        for k in keep {
            set.remove(&k);
        }
    }
    let mut out: Vec<String> = set.into_iter().collect();
    out.sort();
    Ok(out.into_iter().map(OperationId).collect())
}

/// True when `text` may be (the start of) an id's 8-hex tail.
pub(crate) fn could_be_tail(text: &str) -> bool {
    text.len() <= 8 && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// `resolve`'s answer from the ids that start with (or end in) `text`,
/// in id order, at most six: exactly one, or an error naming them.
pub(crate) fn pick(text: &str, mut found: Vec<String>) -> Result<OperationId> {
    match found.len() {
        0 => Err(Error::NotFound(format!(
            "no operation matches {text:?}; give the full id, its last 8 hex digits, a unique \
             start of it, or `last` (`opsd list` shows the ids)"
        ))),
        1 => Ok(OperationId(found.remove(0))),
        n => {
            let more = if n > 5 { ", ..." } else { "" };
            found.truncate(5);
            Err(Error::BadRequest(format!(
                "{text:?} matches more than one operation: {}{more}; give more of the id",
                found.join(", ")
            )))
        }
    }
}

/// `last` with no operation at all.
pub(crate) fn no_last() -> Error {
    Error::NotFound("there are no operations yet, so `last` names none".into())
}

/// One dependency row being settled: `dependent` waited for `on`, which
/// ended; the row is now met, or broken.
pub(crate) struct Settled<'a> {
    /// The operation that waited.
    pub dependent: &'a OperationId,
    /// The operation it waited for.
    pub on: &'a OperationId,
    /// Met (else broken).
    pub met: bool,
}

/// The statements [`settle`] runs, as each backend spells them.
pub(crate) trait DependencyRows {
    /// The dependents still waiting for `done`, each with `any_outcome`.
    fn waiting_dependents(&mut self, done: &OperationId) -> Result<Vec<(OperationId, bool)>>;
    /// Mark the dependency row met or broken and count it off the
    /// dependent's `waiting_for`.
    fn resolve_dependency(&mut self, row: Settled<'_>) -> Result<()>;
    /// Cancel `dep`, if still pending, with `stop_reason = dependency` and
    /// `message`; true when it was.
    fn cancel_dependent(&mut self, dep: &OperationId, message: &str, now: &str) -> Result<bool>;
}

/// `id` ended with `status`: its waiting dependents count it as met, or
/// (an `--after` one, when it did not complete) are cancelled with
/// `stop_reason = dependency`, and so on down the chain. Returns the
/// operations cancelled that way, and whether any dependency was met
/// (work may have become runnable).
pub(crate) fn settle(
    rows: &mut impl DependencyRows,
    id: &OperationId,
    status: Status,
    now: &str,
) -> Result<(Vec<OperationId>, bool)> {
    let mut cancelled = Vec::new();
    let mut freed = false;
    let mut work = vec![(id.clone(), status)];
    while let Some((done, st)) = work.pop() {
        for (dep, any) in rows.waiting_dependents(&done)? {
            let met = any || st == Status::Completed;
            rows.resolve_dependency(Settled {
                dependent: &dep,
                on: &done,
                met,
            })?;
            if met {
                freed = true;
                continue;
            }
            let message = format!("its dependency {done} ended {st}, so it was not started");
            if rows.cancel_dependent(&dep, &message, now)? {
                cancelled.push(dep.clone());
                work.push((dep, Status::Cancelled));
            }
        }
    }
    Ok((cancelled, freed))
}
