//! OHLCV bars loaded from CSV.

use std::path::Path;

/// Bars of one instrument, oldest first, as parallel columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bars {
    /// The first column of each row, as written in the file.
    pub timestamps: Vec<String>,
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

/// Why a data file could not be loaded. The message names the file and line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DataError(pub String);

/// Load a CSV of bars: a header row naming Open, High, Low, Close, Volume in
/// any case, and a first column of timestamps.
pub fn load_csv(path: &Path) -> Result<Bars, DataError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DataError(format!("{}: cannot read: {e}", path.display())))?;
    parse_csv(&text, &path.display().to_string())
}

/// Parse CSV text; `source` names the file in error messages.
pub fn parse_csv(text: &str, source: &str) -> Result<Bars, DataError> {
    let mut lines = text.lines().enumerate();
    let (_, header) = lines
        .next()
        .ok_or_else(|| DataError(format!("{source}: the file is empty")))?;
    let names: Vec<String> = header
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let col = |want: &str| {
        names
            .iter()
            .position(|n| n == want)
            .ok_or_else(|| DataError(format!("{source}:1: missing column {want:?}")))
    };
    let (io, ih, il, ic, iv) = (
        col("open")?,
        col("high")?,
        col("low")?,
        col("close")?,
        col("volume")?,
    );
    let mut bars = Bars::default();
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let num = |i: usize, name: &str| -> Result<f64, DataError> {
            let raw = fields.get(i).map(|s| s.trim()).unwrap_or("");
            raw.parse::<f64>().map_err(|_| {
                DataError(format!(
                    "{source}:{}: {name} is not a number: {raw:?}",
                    n + 1
                ))
            })
        };
        bars.timestamps
            .push(fields.first().map(|s| s.trim()).unwrap_or("").to_string());
        bars.open.push(num(io, "Open")?);
        bars.high.push(num(ih, "High")?);
        bars.low.push(num(il, "Low")?);
        bars.close.push(num(ic, "Close")?);
        bars.volume.push(num(iv, "Volume")?);
    }
    if bars.is_empty() {
        return Err(DataError(format!("{source}: no data rows after the header")));
    }
    Ok(bars)
}
