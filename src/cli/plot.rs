//! Terminal charts of metric series (`opsd metrics ID... --plot KEY`, the
//! live curve under `opsd watch`, the demo's loss curve), drawn in braille
//! with `textplots`. The code here only turns metric points (as the socket
//! returns them: `{seq, recorded_at, data}`) into a chart string; fetching
//! is the caller's business, so the client underneath can change.

use super::commands::Failure;
use super::MetricsArgs;
use serde_json::Value;
use std::process::ExitCode;
use textplots::{Chart, ColorPlot, LabelBuilder, LabelFormat, Plot, Shape};

/// One line on a chart: a legend label and its `(x, y)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// What the legend calls it (a run's short id, or a metric key).
    pub label: String,
    /// The points, in the order they were recorded.
    pub points: Vec<(f64, f64)>,
}

/// The x value of a point: `x` when named, else `step`, else `epoch`, else
/// the point's `seq` (every point has one).
fn x_of(point: &Value, x: Option<&str>) -> Option<f64> {
    let data = &point["data"];
    match x {
        Some(k) => data[k].as_f64(),
        None => data["step"]
            .as_f64()
            .or_else(|| data["epoch"].as_f64())
            .or_else(|| point["seq"].as_f64()),
    }
}

/// The series of metric `key` in `points` (socket metric points); points
/// without a number under `key` (or under `x`) are skipped.
pub fn series(label: &str, points: &[Value], key: &str, x: Option<&str>) -> Series {
    Series {
        label: label.to_string(),
        points: points
            .iter()
            .filter_map(|p| Some((x_of(p, x)?, p["data"][key].as_f64()?)))
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .collect(),
    }
}

/// The last `_`-separated part of an operation id, as the tables show it.
pub fn short_id(id: &str) -> &str {
    id.rsplit('_').next().unwrap_or(id)
}

/// Line colours, one per series (cycled), chosen to be told apart on dark
/// and light terminals.
const COLORS: [(u8, u8, u8); 6] = [
    (80, 160, 255),
    (255, 140, 40),
    (90, 200, 90),
    (230, 80, 80),
    (180, 120, 230),
    (200, 200, 60),
];

/// Draw `series` overlaid in a box of at most `cols` × `rows` characters:
/// a title line, the chart with the y range on its right and the x range
/// below, and one legend line per series. With `color`, each series (and
/// its legend marker) gets its own ANSI colour. `None` when there is
/// nothing to draw or the box is too small for a chart.
pub fn render(
    series: &[Series],
    title: &str,
    cols: usize,
    rows: usize,
    color: bool,
) -> Option<String> {
    let drawn: Vec<&Series> = series.iter().filter(|s| !s.points.is_empty()).collect();
    if drawn.is_empty() {
        return None;
    }
    let all = drawn.iter().flat_map(|s| s.points.iter());
    let (mut xmin, mut xmax) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut ymin, mut ymax) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymin = ymin.min(y);
        ymax = ymax.max(y);
    }
    if xmax <= xmin {
        xmax = xmin + 1.0;
    }
    if ymax <= ymin {
        ymax = ymin + 1.0;
    }
    let ylabel = |v: f32| format_tick(v as f64);
    let label_w = ylabel(ymin as f32).len().max(ylabel(ymax as f32).len()) + 1;
    // The chart is drawn in braille: 2 dots per column, 4 per row. It needs
    // one row for the title, one for the x range, one per legend line.
    let chart_cols = cols.checked_sub(label_w + 1)?;
    let chart_rows = rows.checked_sub(3 + drawn.len())?;
    let (w, h) = ((chart_cols * 2) as u32, (chart_rows * 4) as u32);
    if w < 32 || h < 8 {
        return None;
    }
    // The canvas has one more row of dots than `h` (0..=h), so ask for one
    // row less than fits.
    let h = h - 4;
    let shapes: Vec<Vec<(f32, f32)>> = drawn
        .iter()
        .map(|s| {
            s.points
                .iter()
                .map(|&(x, y)| (x as f32, y as f32))
                .collect()
        })
        .collect();
    let shapes: Vec<Shape> = shapes.iter().map(|p| Shape::Lines(p)).collect();
    let mut chart =
        Chart::new_with_y_range(w, h, xmin as f32, xmax as f32, ymin as f32, ymax as f32);
    let mut c = chart
        .x_label_format(LabelFormat::Custom(Box::new(|v| format_tick(v as f64))))
        .y_label_format(LabelFormat::Custom(Box::new(ylabel)));
    for (i, s) in shapes.iter().enumerate() {
        c = if color {
            let (r, g, b) = COLORS[i % COLORS.len()];
            c.linecolorplot(s, textplots_rgb(r, g, b))
        } else {
            c.lineplot(s)
        };
    }
    c.figures();
    let body = c.to_string();
    let mut out = String::new();
    out.push_str(&truncate(title, cols));
    out.push('\n');
    for line in body.lines() {
        out.push_str(line.trim_end_matches('\u{2800}'));
        out.push('\n');
    }
    for (i, s) in drawn.iter().enumerate() {
        let marker = if color {
            let (r, g, b) = COLORS[i % COLORS.len()];
            format!("\x1b[38;2;{r};{g};{b}m━━\x1b[0m")
        } else {
            ["━━", "──", "┅┅", "┄┄", "══", "╍╍"][i % 6].to_string()
        };
        let last = s.points.last().map(|p| p.1).unwrap_or(f64::NAN);
        let text = format!(
            " {} (last {}, {} points)",
            s.label,
            format_tick(last),
            s.points.len()
        );
        out.push_str(&marker);
        out.push_str(&truncate(&text, cols.saturating_sub(2)));
        out.push('\n');
    }
    Some(out)
}

fn textplots_rgb(r: u8, g: u8, b: u8) -> rgb::RGB8 {
    rgb::RGB8 { r, g, b }
}

fn truncate(s: &str, cols: usize) -> String {
    s.chars().take(cols).collect()
}

/// A short number for an axis label: at most 4 significant digits.
fn format_tick(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if v.fract() == 0.0 && a < 1e6 {
        format!("{v:.0}")
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The terminal's size in characters, `(columns, rows)`: `$COLUMNS` and
/// `$LINES` when set (so scripts and tests can choose), else the size of
/// the terminal on `fd`, else 80 × 24.
pub fn terminal_size(fd: i32) -> (usize, usize) {
    let env = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
    };
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ only writes a `winsize` into the struct we pass.
    let tty = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0;
    let (c, r) = if tty {
        (ws.ws_col as usize, ws.ws_row as usize)
    } else {
        (80, 24)
    };
    (env("COLUMNS").unwrap_or(c), env("LINES").unwrap_or(r))
}

/// `opsd metrics ID... --plot KEY [--x KEY] [--follow]`. `fetch(id, cursor)`
/// returns the points after `cursor`, the next cursor and whether the
/// operation has stopped. With `--follow` the chart is redrawn as points
/// arrive until every operation has stopped.
pub fn command(
    a: &MetricsArgs,
    mut fetch: impl FnMut(&str, i64) -> Result<(Vec<Value>, i64, bool), Failure>,
) -> Result<ExitCode, Failure> {
    use std::io::{IsTerminal, Write};
    let key = a.plot.as_deref().unwrap_or_default();
    let tty = std::io::stdout().is_terminal();
    let color = tty && std::env::var_os("NO_COLOR").is_none();
    let mut runs: Vec<(String, Vec<Value>, i64, bool)> = a
        .ids
        .iter()
        .map(|id| (id.clone(), Vec::new(), a.cursor, false))
        .collect();
    let mut drawn_once = false;
    loop {
        let mut changed = false;
        for (id, points, cursor, over) in runs.iter_mut().filter(|r| !r.3) {
            let (new, next, stopped) = fetch(id, *cursor)?;
            changed |= !new.is_empty() || stopped;
            points.extend(new);
            *cursor = next;
            *over = stopped;
        }
        let all_over = runs.iter().all(|r| r.3);
        let last = !a.follow || all_over;
        if (changed || !drawn_once) && (tty || last) {
            let (cols, rows) = terminal_size(1);
            let list: Vec<Series> = runs
                .iter()
                .map(|(id, p, _, _)| series(short_id(id), p, key, a.x.as_deref()))
                .collect();
            let x = a.x.as_deref().unwrap_or_else(|| {
                let first = runs.iter().find_map(|r| r.1.first());
                match first.map(|p| &p["data"]) {
                    Some(d) if d["step"].is_number() => "step",
                    Some(d) if d["epoch"].is_number() => "epoch",
                    _ => "seq",
                }
            });
            let title = format!("{key} over {x}");
            match render(&list, &title, cols, rows.saturating_sub(1), color) {
                Some(chart) => {
                    let mut out = std::io::stdout().lock();
                    if a.follow && tty {
                        let _ = write!(out, "\x1b[H\x1b[2J");
                    }
                    let _ = write!(out, "{chart}");
                    let _ = out.flush();
                    drawn_once = true;
                }
                None if last && !drawn_once => return Err(no_chart(&runs, key, cols, rows)),
                None => {}
            }
        }
        if last {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Why nothing could be drawn, and what to try.
fn no_chart(
    runs: &[(String, Vec<Value>, i64, bool)],
    key: &str,
    cols: usize,
    rows: usize,
) -> Failure {
    let mut keys = std::collections::BTreeSet::new();
    for (_, points, _, _) in runs {
        for p in points {
            if let Value::Object(m) = &p["data"] {
                keys.extend(
                    m.iter()
                        .filter(|(_, v)| v.is_number())
                        .map(|(k, _)| k.clone()),
                );
            }
        }
    }
    let any = runs
        .iter()
        .any(|r| !series("", &r.1, key, None).points.is_empty());
    if any {
        return Failure::Request(format!(
            "the terminal ({cols}x{rows}) is too small for a chart; make it larger or set COLUMNS and LINES"
        ));
    }
    if keys.is_empty() {
        Failure::Request(format!(
            "no metric points yet for {}; try again once it has recorded some, or add --follow",
            runs.iter()
                .map(|r| r.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    } else {
        Failure::Request(format!(
            "no numeric `{key}` in these metric points; they record: {} (pick one with --plot, and --x for the x axis)",
            keys.into_iter().collect::<Vec<_>>().join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn points(n: usize, f: impl Fn(usize) -> f64) -> Vec<Value> {
        (0..n)
            .map(|i| json!({"seq": i + 1, "data": {"epoch": i + 1, "train_loss": f(i)}}))
            .collect()
    }

    #[test]
    fn series_uses_x_key_then_step_epoch_seq() {
        let p = vec![
            json!({"seq": 7, "data": {"loss": 1.0}}),
            json!({"seq": 8, "data": {"epoch": 3, "loss": 0.5}}),
            json!({"seq": 9, "data": {"step": 10, "epoch": 4, "loss": 0.25}}),
            json!({"seq": 10, "data": {"other": 1}}),
        ];
        let s = series("a", &p, "loss", None);
        assert_eq!(s.points, vec![(7.0, 1.0), (3.0, 0.5), (10.0, 0.25)]);
        let s = series("a", &p, "loss", Some("epoch"));
        assert_eq!(s.points, vec![(3.0, 0.5), (4.0, 0.25)]);
    }

    #[test]
    fn chart_fits_the_box_and_names_every_run() {
        let a = series(
            "abc123",
            &points(30, |i| 1.0 / (i + 1) as f64),
            "train_loss",
            None,
        );
        let b = series(
            "def456",
            &points(20, |i| 0.5 + 0.01 * i as f64),
            "train_loss",
            None,
        );
        for (cols, rows) in [(80, 24), (60, 16), (120, 40), (40, 12)] {
            for color in [false, true] {
                let out = render(&[a.clone(), b.clone()], "train_loss", cols, rows, color)
                    .expect("a chart fits");
                let lines: Vec<&str> = out.lines().collect();
                assert!(
                    lines.len() <= rows,
                    "{} lines > {rows}:\n{out}",
                    lines.len()
                );
                for l in &lines {
                    assert!(
                        crate::cli::screen_width(l) <= cols,
                        "line wider than {cols}: {l:?}"
                    );
                }
                // Uses most of the box: a chart, not a thumbnail.
                assert!(
                    lines.len() + 2 >= rows,
                    "{} lines for {rows} rows",
                    lines.len()
                );
                let legend = &lines[lines.len() - 2..];
                assert!(legend[0].contains("abc123") && legend[0].contains("30 points"));
                assert!(legend[1].contains("def456") && legend[1].contains("20 points"));
                // Braille dots were drawn.
                assert!(out.chars().any(|c| ('\u{2801}'..='\u{28ff}').contains(&c)));
            }
        }
    }

    #[test]
    fn nothing_to_draw_or_no_room_gives_none() {
        let empty = Series {
            label: "x".into(),
            points: vec![],
        };
        assert!(render(&[empty], "t", 80, 24, false).is_none());
        let a = series("a", &points(5, |i| i as f64), "train_loss", None);
        assert!(render(std::slice::from_ref(&a), "t", 16, 24, false).is_none());
        assert!(render(&[a], "t", 80, 5, false).is_none());
    }

    #[test]
    fn a_single_point_or_flat_series_still_draws() {
        let a = series("a", &points(1, |_| 2.0), "train_loss", None);
        assert!(render(&[a], "t", 80, 24, false).is_some());
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(format_tick(0.5432), "0.543");
        assert_eq!(format_tick(12.345), "12.3");
        assert_eq!(format_tick(12345.6), "12346");
        assert_eq!(format_tick(30.0), "30");
        assert_eq!(format_tick(0.00001), "1.00e-5");
    }
}
