//! What the two backends' SQL has in common, written once: the column
//! lists, how a result row becomes a record ([`Cells`] hides how each
//! driver hands out a column), and the `list` query with its filters.
//! Each backend keeps its statements where the dialects differ (SQLite's
//! `?N` and `json_insert`, PostgreSQL's `$N`, `jsonb` and row locks).

use crate::error::{Error, Result};
use crate::ids::OperationId;
use crate::model::{OperationType, Status};
use crate::store::records::{ClaimedOperation, ListFilter, OperationRecord, Progress};
use serde_json::Value;

/// One result row, read by column index in the types the store speaks.
/// SQLite keeps JSON as text and flags as integers; PostgreSQL has
/// `jsonb` and narrower integer columns: each backend's impl converts, so
/// the mappings below are the same for both.
pub(crate) trait Cells {
    /// A non-null text column.
    fn text(&self, i: usize) -> Result<String>;
    /// A nullable text column.
    fn opt_text(&self, i: usize) -> Result<Option<String>>;
    /// A non-null integer column.
    fn int(&self, i: usize) -> Result<i64>;
    /// A nullable integer column.
    fn opt_int(&self, i: usize) -> Result<Option<i64>>;
    /// A non-null floating point column.
    fn real(&self, i: usize) -> Result<f64>;
    /// A nullable floating point column.
    fn opt_real(&self, i: usize) -> Result<Option<f64>>;
    /// A nullable JSON column, parsed.
    fn json(&self, i: usize) -> Result<Option<Value>>;
    /// A non-null JSON column as its text, unparsed.
    fn json_text(&self, i: usize) -> Result<String>;
}

/// A column holding one of our enums' names.
fn parse<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T> {
    s.parse().map_err(Error::Internal)
}

/// Every column of `operations`, in the order [`operation`] reads them.
pub(crate) const OPERATION_COLUMNS: &str =
    "operation_id, parent_operation_id, operation_type, status, \
    stop_reason, priority, attempt, max_attempts, run_after, created_at, started_at, \
    completed_at, updated_at, progress_percent, progress_message, current_step, \
    steps_completed, steps_total, items_processed, items_total, eta_seconds, \
    progress_context, metadata, result_summary, error_message, warnings, errors, \
    idempotency_key, phase_start, phase_end, fail_parent, gpus_requested, gpus_assigned, \
    claimed_by, lease_expires_at, label, queue, held, waiting_for";

/// Read a row selected with [`OPERATION_COLUMNS`].
pub(crate) fn operation(r: &impl Cells) -> Result<OperationRecord> {
    Ok(OperationRecord {
        operation_id: OperationId(r.text(0)?),
        parent_operation_id: r.opt_text(1)?.map(OperationId),
        operation_type: parse(&r.text(2)?)?,
        status: parse(&r.text(3)?)?,
        stop_reason: r.opt_text(4)?.map(|s| parse(&s)).transpose()?,
        priority: r.int(5)?,
        attempt: r.int(6)?,
        max_attempts: r.int(7)?,
        run_after: r.opt_text(8)?,
        created_at: r.text(9)?,
        started_at: r.opt_text(10)?,
        completed_at: r.opt_text(11)?,
        updated_at: r.text(12)?,
        progress: Progress {
            percentage: r.real(13)?,
            message: r.opt_text(14)?,
            current_step: r.opt_text(15)?,
            steps_completed: r.opt_int(16)?,
            steps_total: r.opt_int(17)?,
            items_processed: r.opt_int(18)?,
            items_total: r.opt_int(19)?,
            eta_seconds: r.opt_real(20)?,
            context: r.json(21)?,
        },
        metadata: r.json(22)?.unwrap_or(Value::Null),
        result_summary: r.json(23)?,
        error_message: r.opt_text(24)?,
        warnings: r.json(25)?.unwrap_or(Value::Array(vec![])),
        errors: r.json(26)?.unwrap_or(Value::Array(vec![])),
        idempotency_key: r.opt_text(27)?,
        phase_start: r.opt_real(28)?,
        phase_end: r.opt_real(29)?,
        fail_parent: r.int(30)? != 0,
        gpus_requested: r.int(31)?,
        gpus_assigned: r.json(32)?,
        claimed_by: r.opt_text(33)?,
        lease_expires_at: r.opt_text(34)?,
        label: r.opt_text(35)?,
        queue: r.text(36)?,
        held: r.int(37)? != 0,
        waiting_for: r.int(38)?,
    })
}

/// The claimed columns in the order [`claimed`] reads them, with the
/// expression that gives the attempt the claim starts.
macro_rules! claim_columns {
    ($attempt:literal) => {
        concat!(
            "operation_id, metadata, ",
            $attempt,
            ", parent_operation_id, progress_percent, gpus_requested, max_attempts, \
             priority, created_at, fail_parent, queue"
        )
    };
}

/// What a claim statement returns (`RETURNING`, after its UPDATE).
pub(crate) const CLAIM_RETURNING: &str = claim_columns!("attempt");

/// The same columns read before the claim's UPDATE (SQLite's claim selects,
/// then updates): `attempt + 1` is the attempt the claim starts.
pub(crate) const CLAIM_SELECT: &str = claim_columns!("attempt + 1");

/// One claimed row: its claim order (priority, created_at), its queue and
/// the operation.
pub(crate) type Claimed = ((i64, String), String, ClaimedOperation);

/// Read a row returned with [`CLAIM_RETURNING`] (or selected with
/// [`CLAIM_SELECT`]) by a claim of `kind`.
pub(crate) fn claimed(r: &impl Cells, kind: OperationType) -> Result<Claimed> {
    let op = ClaimedOperation {
        id: OperationId(r.text(0)?),
        kind,
        metadata_json: r.json_text(1)?,
        attempt: r.int(2)?,
        parent: r.opt_text(3)?.map(OperationId),
        progress_percent: r.real(4)?,
        gpus_requested: r.int(5)?,
        max_attempts: r.int(6)?,
        fail_parent: r.int(9)? != 0,
    };
    Ok(((r.int(7)?, r.text(8)?), r.text(10)?, op))
}

/// The statements of one `list` page: `rows` (the page, newest first)
/// and `count` (all that match), both bound to `args` in order.
pub(crate) struct ListQuery {
    /// The page.
    pub rows: String,
    /// How many match in all.
    pub count: String,
    /// The values of the placeholders, in order.
    pub args: Vec<String>,
}

/// Build `list`'s statements for `filter`; `mark(n)` spells the dialect's
/// n-th placeholder (`?n` or `$n`). Filter values are always bound, never
/// spliced; the limit and offset are clamped numbers.
pub(crate) fn list_query(filter: &ListFilter, mark: fn(usize) -> String) -> ListQuery {
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<String> = Vec::new();
    let mut statuses: Vec<Status> = filter.status.clone();
    if filter.active {
        statuses.extend([Status::Pending, Status::Resuming, Status::Running]);
    }
    if !statuses.is_empty() {
        let marks: Vec<String> = statuses
            .iter()
            .map(|s| {
                args.push(s.as_str().to_string());
                mark(args.len())
            })
            .collect();
        clauses.push(format!("status IN ({})", marks.join(",")));
    }
    let equal = [
        (
            "operation_type",
            filter.kind.map(|k| k.as_str().to_string()),
        ),
        (
            "parent_operation_id",
            filter.parent.as_ref().map(|p| p.0.clone()),
        ),
        ("label", filter.label.clone()),
        ("queue", filter.queue.clone()),
    ];
    for (column, value) in equal {
        if let Some(v) = value {
            args.push(v);
            clauses.push(format!("{column} = {}", mark(args.len())));
        }
    }
    let where_sql = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let limit = filter.limit.unwrap_or(50).clamp(0, 10_000);
    let offset = filter.offset.unwrap_or(0).max(0);
    ListQuery {
        rows: format!(
            "SELECT {OPERATION_COLUMNS} FROM operations {where_sql} \
             ORDER BY created_at DESC, operation_id DESC LIMIT {limit} OFFSET {offset}"
        ),
        count: format!("SELECT count(*) FROM operations {where_sql}"),
        args,
    }
}
