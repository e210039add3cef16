//! OHLCV bars loaded from CSV.
//!
//! The shared format is a header `,Open,High,Low,Close,Volume` whose unnamed
//! first column holds the bar's timestamp. Common variants are accepted too:
//! a timestamp column named `Date`, `Datetime`, `Time` or `Timestamp` in any
//! position, header names in any case, extra columns (ignored), quoted
//! fields, a UTF-8 byte order mark and CRLF line ends. Every error names the
//! file, the 1-based line and the column, so a user can fix the file.

use chrono::{NaiveDate, NaiveDateTime};
use std::borrow::Cow;
use std::path::Path;

/// Bars of one instrument, oldest first, as parallel columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bars {
    /// The timestamp field of each row, as written in the file (unquoted).
    pub timestamps: Vec<String>,
    /// The parsed timestamps; a date without a time of day is midnight.
    /// Strictly increasing when loaded by [`load_csv`] / [`parse_csv`].
    pub times: Vec<NaiveDateTime>,
    /// Opening prices.
    pub open: Vec<f64>,
    /// Highest prices.
    pub high: Vec<f64>,
    /// Lowest prices.
    pub low: Vec<f64>,
    /// Closing prices.
    pub close: Vec<f64>,
    /// Volumes.
    pub volume: Vec<f64>,
}

impl Bars {
    /// Number of bars.
    pub fn len(&self) -> usize {
        self.close.len()
    }
    /// True when there are no bars.
    pub fn is_empty(&self) -> bool {
        self.close.is_empty()
    }
}

/// Why a data file could not be loaded. The message names the file, the
/// 1-based line and the column.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DataError(pub String);

/// Header names (lower case) accepted for the timestamp column.
const TIME_NAMES: [&str; 4] = ["date", "datetime", "timestamp", "time"];
/// The price and volume columns, in `Bars` order, as users write them.
const VALUE_NAMES: [&str; 5] = ["Open", "High", "Low", "Close", "Volume"];

/// Load a CSV of bars (see the module documentation for the format).
pub fn load_csv(path: &Path) -> Result<Bars, DataError> {
    let bytes = std::fs::read(path)
        .map_err(|e| DataError(format!("{}: cannot read: {e}", path.display())))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        DataError(format!(
            "{}: not UTF-8 text (byte {}); save the file as UTF-8 CSV",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse_csv(&text, &path.display().to_string())
}

/// Parse CSV text; `source` names the file in error messages.
pub fn parse_csv(text: &str, source: &str) -> Result<Bars, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let err = |line: usize, msg: String| DataError(format!("{source}:{line}: {msg}"));
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let header = loop {
        match lines.next() {
            None => return Err(err(1, "the file is empty; expected a header row".into())),
            Some((_, l)) if l.trim().is_empty() => continue,
            Some(h) => break h,
        }
    };
    let mut fields: Vec<Cow<str>> = Vec::new();
    split_fields(header.1, &mut fields);
    let names: Vec<String> = fields.iter().map(|f| f.trim().to_string()).collect();
    let lower: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    let missing = |what: &str| {
        err(
            header.0,
            format!(
                "missing column {what:?} in the header (found: {}); the header must name \
                 Open, High, Low, Close, Volume and a timestamp column",
                names.join(", ")
            ),
        )
    };
    let mut cols = [0usize; 5];
    for (slot, want) in cols.iter_mut().zip(VALUE_NAMES) {
        let want_lower = want.to_ascii_lowercase();
        *slot = lower
            .iter()
            .position(|n| *n == want_lower)
            .ok_or_else(|| missing(want))?;
    }
    // A named timestamp column wins; otherwise the shared format's unnamed
    // first column.
    let time_col = match lower.iter().position(|n| TIME_NAMES.contains(&n.as_str())) {
        Some(i) => i,
        None if lower.first().is_some_and(|n| n.is_empty()) => 0,
        None => return Err(missing("Date")),
    };
    let time_name = if names[time_col].is_empty() {
        "timestamp (first column)".to_string()
    } else {
        names[time_col].clone()
    };

    let mut bars = Bars::default();
    let mut prev_line = 0;
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        split_fields(line, &mut fields);
        let field = |i: usize, name: &str| -> Result<&str, DataError> {
            fields
                .get(i)
                .map(|f| f.trim())
                .ok_or_else(|| err(n, format!("column {name:?}: missing value (row too short)")))
        };
        let raw_time = field(time_col, &time_name)?;
        let time = parse_time(raw_time).ok_or_else(|| {
            err(
                n,
                format!(
                    "column {time_name:?}: bad timestamp {raw_time:?}; expected YYYY-MM-DD \
                     or YYYY-MM-DD HH:MM:SS"
                ),
            )
        })?;
        if let Some(prev) = bars.times.last() {
            if time <= *prev {
                return Err(err(
                    n,
                    format!(
                        "column {time_name:?}: timestamp {raw_time:?} is not after the previous \
                         row's (line {prev_line}); rows must be sorted oldest first, without \
                         duplicates"
                    ),
                ));
            }
        }
        let mut v = [0f64; 5];
        for ((slot, &col), name) in v.iter_mut().zip(&cols).zip(&names_of(&cols, &names)) {
            let raw = field(col, name)?;
            *slot = match raw.parse::<f64>() {
                Ok(x) if x.is_finite() => x,
                Ok(_) => {
                    return Err(err(
                        n,
                        format!("column {name:?}: value {raw:?} is not finite"),
                    ))
                }
                Err(_) => {
                    return Err(err(n, format!("column {name:?}: not a number: {raw:?}")));
                }
            };
        }
        check_row(&v, &names_of(&cols, &names)).map_err(|m| err(n, m))?;
        bars.timestamps.push(raw_time.to_string());
        bars.times.push(time);
        bars.open.push(v[0]);
        bars.high.push(v[1]);
        bars.low.push(v[2]);
        bars.close.push(v[3]);
        bars.volume.push(v[4]);
        prev_line = n;
    }
    if bars.is_empty() {
        return Err(err(header.0, "no data rows after the header".into()));
    }
    Ok(bars)
}

/// The header names of the value columns, as written in the file.
fn names_of<'a>(cols: &[usize; 5], names: &'a [String]) -> [&'a str; 5] {
    cols.map(|c| names[c].as_str())
}

/// Sanity of one row's `[open, high, low, close, volume]`; the message
/// names the offending column.
fn check_row(v: &[f64; 5], names: &[&str; 5]) -> Result<(), String> {
    let [o, h, l, c, vol] = *v;
    for (x, name) in [o, h, l, c].iter().zip(names) {
        if *x <= 0.0 {
            return Err(format!("column {name:?}: price {x} must be > 0"));
        }
    }
    let (no, nh, nl, nc, nv) = (names[0], names[1], names[2], names[3], names[4]);
    if h < l {
        return Err(format!("column {nh:?}: {nh} {h} is below {nl} {l}"));
    }
    if h < o || h < c {
        return Err(format!(
            "column {nh:?}: {nh} {h} is below {no} {o} or {nc} {c}"
        ));
    }
    if l > o || l > c {
        return Err(format!(
            "column {nl:?}: {nl} {l} is above {no} {o} or {nc} {c}"
        ));
    }
    if vol < 0.0 {
        return Err(format!("column {nv:?}: volume {vol} is negative"));
    }
    Ok(())
}

/// Split one CSV line into fields, honouring double quotes (`""` inside a
/// quoted field is a quote). Unquoted lines, the common case, borrow.
fn split_fields<'a>(line: &'a str, out: &mut Vec<Cow<'a, str>>) {
    out.clear();
    if !line.contains('"') {
        out.extend(line.split(',').map(Cow::Borrowed));
        return;
    }
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(Cow::Owned(std::mem::take(&mut cur))),
            _ => cur.push(ch),
        }
    }
    out.push(Cow::Owned(cur));
}

/// Parse `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS[.f]]` (or with `T`), optionally
/// followed by `Z` or `+00:00` style offsets (converted to UTC).
pub fn parse_time(s: &str) -> Option<NaiveDateTime> {
    const FORMATS: [&str; 4] = [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ];
    if s.len() == 10 {
        return NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0));
    }
    if let Some(t) = FORMATS
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    {
        return Some(t);
    }
    let zoned = s.strip_suffix('Z').map(|b| format!("{b}+00:00"));
    let zoned = zoned.as_deref().unwrap_or(s).replacen(' ', "T", 1);
    chrono::DateTime::parse_from_rfc3339(&zoned)
        .ok()
        .map(|t| t.naive_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = ",Open,High,Low,Close,Volume\n\
        2004-08-19,100,104.06,95.96,100.34,22351900\n\
        2004-08-20,101.01,109.08,100.5,108.31,11428600\n";

    fn bad(text: &str) -> String {
        parse_csv(text, "x.csv").unwrap_err().to_string()
    }

    /// The error names the file, the line and the column.
    fn assert_names(msg: &str, line: usize, column: &str) {
        assert!(msg.starts_with(&format!("x.csv:{line}: ")), "{msg}");
        assert!(msg.contains(&format!("{column:?}")), "{msg}");
    }

    #[test]
    fn shared_format() {
        let b = parse_csv(GOOD, "x.csv").unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b.timestamps[1], "2004-08-20");
        assert_eq!(b.times[0].to_string(), "2004-08-19 00:00:00");
        assert_eq!((b.open[1], b.high[1], b.low[1]), (101.01, 109.08, 100.5));
        assert_eq!((b.close[1], b.volume[1]), (108.31, 11428600.0));
    }

    #[test]
    fn variants_named_date_quotes_bom_crlf_extra_columns() {
        let text = "\u{feff}\"CLOSE\",volume,\"Datetime\",open,Adj Close,high,LOW\r\n\
            \"100.5\",10,\"2017-04-19 09:00:00\",100,1,101,99\r\n\
            101,0,2017-04-19T10:30:00,100.5,1,101.5,100\r\n\r\n";
        let b = parse_csv(text, "x.csv").unwrap();
        assert_eq!(b.close, vec![100.5, 101.0]);
        assert_eq!(b.open, vec![100.0, 100.5]);
        assert_eq!(b.high, vec![101.0, 101.5]);
        assert_eq!(b.volume, vec![10.0, 0.0]);
        assert_eq!(b.times[1].to_string(), "2017-04-19 10:30:00");
        assert_eq!(b.timestamps[0], "2017-04-19 09:00:00");
    }

    #[test]
    fn shared_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        let goog = load_csv(&dir.join("GOOG.csv")).unwrap();
        assert_eq!(goog.len(), 2148);
        assert_eq!(goog.timestamps[2147], "2013-03-01");
        let eur = load_csv(&dir.join("EURUSD.csv")).unwrap();
        assert_eq!(eur.len(), 5000);
        assert_eq!(eur.times[1].to_string(), "2017-04-19 10:00:00");
    }

    #[test]
    fn missing_column() {
        let m = bad("Date,Open,High,Low,Volume\n2004-08-19,1,1,1,1\n");
        assert_names(&m, 1, "Close");
        let m = bad("Symbol,Open,High,Low,Close,Volume\nX,1,1,1,1,1\n");
        assert_names(&m, 1, "Date");
    }

    #[test]
    fn non_numeric_and_non_finite() {
        let m = bad(&format!("{GOOD}2004-08-23,1,2,0.5,abc,5\n"));
        assert_names(&m, 4, "Close");
        assert!(m.contains("not a number"), "{m}");
        let m = bad(&format!("{GOOD}2004-08-23,1,inf,0.5,1,5\n"));
        assert_names(&m, 4, "High");
        let m = bad(&format!("{GOOD}2004-08-23,NaN,2,0.5,1,5\n"));
        assert_names(&m, 4, "Open");
        let m = bad(&format!("{GOOD}2004-08-23,1,2,0.5\n"));
        assert_names(&m, 4, "Close");
    }

    #[test]
    fn bad_timestamp() {
        let m = bad(&format!("{GOOD}2004-13-01,1,2,0.5,1,5\n"));
        assert_names(&m, 4, "timestamp (first column)");
        let m = bad("Date,Open,High,Low,Close,Volume\n\n19/08/2004,1,2,0.5,1,5\n");
        assert_names(&m, 3, "Date");
    }

    #[test]
    fn timestamps_must_increase() {
        let m = bad(&format!("{GOOD}2004-08-20,1,2,0.5,1,5\n"));
        assert_names(&m, 4, "timestamp (first column)");
        assert!(m.contains("line 3"), "{m}");
        let m = bad(&format!("{GOOD}2004-08-01,1,2,0.5,1,5\n"));
        assert_names(&m, 4, "timestamp (first column)");
    }

    #[test]
    fn inconsistent_prices_and_volume() {
        let m = bad(&format!("{GOOD}2004-08-23,1,0.4,0.5,0.45,5\n"));
        assert_names(&m, 4, "High");
        let m = bad(&format!("{GOOD}2004-08-23,1,2,0.5,3,5\n"));
        assert_names(&m, 4, "High");
        let m = bad(&format!("{GOOD}2004-08-23,1,2,1.5,1.8,5\n"));
        assert_names(&m, 4, "Low");
        let m = bad(&format!("{GOOD}2004-08-23,1,2,0.5,1,-5\n"));
        assert_names(&m, 4, "Volume");
        let m = bad(&format!("{GOOD}2004-08-23,0,2,0,1,5\n"));
        assert_names(&m, 4, "Open");
    }

    #[test]
    fn empty_file_and_no_rows() {
        let m = bad("");
        assert!(m.starts_with("x.csv:1: ") && m.contains("empty"), "{m}");
        let m = bad(",Open,High,Low,Close,Volume\r\n\r\n");
        assert!(
            m.starts_with("x.csv:1: ") && m.contains("no data rows"),
            "{m}"
        );
        let e = load_csv(Path::new("/nonexistent/y.csv")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/y.csv"), "{e}");
    }
}
