//! Rendering for people: tables, durations, one-line summaries.

use crate::protocol::OperationView;
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde_json::Value;

/// A table with the house style.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

/// A JSON value as short text ("-" for null).
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Seconds as `1h02m`, `3m05s` or `12s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The progress column: `42.0% · Epoch 3/20`.
pub fn progress(op: &OperationView) -> String {
    let pct = op.progress_percent;
    match op.progress_message.as_deref() {
        Some(m) if !m.is_empty() => format!("{pct:5.1}% · {m}"),
        _ => format!("{pct:5.1}%"),
    }
}

/// Rows of operations as a table.
pub fn operations_table<'a>(ops: impl IntoIterator<Item = &'a OperationView>) -> Table {
    let mut t = table(&["ID", "TYPE", "STATUS", "PROGRESS", "CREATED"]);
    for op in ops {
        let status = match op.stop_reason {
            Some(r) => format!("{} ({r})", op.status),
            None => op.status.to_string(),
        };
        t.add_row(vec![
            op.operation_id.to_string(),
            op.operation_type.to_string(),
            status,
            progress(op),
            op.created_at.chars().take(19).collect(),
        ]);
    }
    t
}

/// Bytes as `1.2 MB`.
pub fn bytes(n: i64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(5.2), "5s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(bytes(1_500_000), "1.5 MB");
    }
}
