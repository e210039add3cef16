//! Metric curves drawn server-side as SVG with `plotters` (no JavaScript,
//! nothing fetched from elsewhere: the machine may be offline).

use plotters::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// The colour of every metric curve, so a page (or a test) can tell the
/// curve from the axes and grid.
pub const CURVE_COLOR: RGBColor = RGBColor(31, 119, 180);

/// The x value of a point: `step`, else `epoch`, else its `seq`.
fn x_of(point: &Value) -> Option<f64> {
    let d = &point["data"];
    d["step"]
        .as_f64()
        .or_else(|| d["epoch"].as_f64())
        .or_else(|| point["seq"].as_f64())
}

/// The name of the x axis for these points.
fn x_name(points: &[Value]) -> &'static str {
    let first = points.first().map(|p| &p["data"]);
    match first {
        Some(d) if d["step"].is_number() => "step",
        Some(d) if d["epoch"].is_number() => "epoch",
        _ => "seq",
    }
}

/// Every numeric metric key and its `(x, y)` points, keys in name order
/// (`step` and `epoch` are axes, not curves).
pub fn curves(points: &[Value]) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for p in points {
        let (Some(x), Value::Object(m)) = (x_of(p), &p["data"]) else {
            continue;
        };
        for (k, v) in m {
            if k == "step" || k == "epoch" {
                continue;
            }
            if let Some(y) = v.as_f64().filter(|y| y.is_finite()) {
                out.entry(k.clone()).or_default().push((x, y));
            }
        }
    }
    out
}

/// One curve as an SVG document of `w` × `h` pixels.
pub fn chart(key: &str, points: &[(f64, f64)], all: &[Value], w: u32, h: u32) -> String {
    let mut buf = String::new();
    if let Err(e) = draw(&mut buf, key, points, x_name(all), w, h) {
        return format!("<p>cannot draw {key}: {}</p>", super::pages::esc(&e));
    }
    buf
}

fn draw(
    buf: &mut String,
    key: &str,
    points: &[(f64, f64)],
    x_label: &str,
    w: u32,
    h: u32,
) -> Result<(), String> {
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if points.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let root = SVGBackend::with_string(buf, (w, h)).into_drawing_area();
    let e = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut c = ChartBuilder::on(&root)
        .caption(key, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(|x| e(&x))?;
    c.configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(230, 230, 230))
        .x_desc(x_label)
        .x_labels(6)
        .y_labels(5)
        .draw()
        .map_err(|x| e(&x))?;
    c.draw_series(LineSeries::new(
        points.iter().copied(),
        CURVE_COLOR.stroke_width(2),
    ))
    .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
