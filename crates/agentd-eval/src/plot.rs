//! SVG plots of routing-only budget sweeps: evidence recall against context tokens, one line
//! per policy.
//!
//! Written by hand (a few hundred bytes of markup per series) rather than with a plotting
//! crate: the plot is a handful of polylines, and the output is plain, diffable, deterministic
//! SVG 1.1 that renders on GitHub and in browsers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::report::EvalReport;

/// One line of a plot.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// (x, y) points, drawn in ascending x.
    pub points: Vec<(f64, f64)>,
}

/// The series of a budget sweep: for each (node, policy) of the report, its rows' (mean
/// tokens, evidence recall), one point per budget. Policies without a meaningful sweep are
/// kept (a flat line is information too). With several nodes, labels are `node: policy`.
pub fn sweep_series(report: &EvalReport) -> Vec<Series> {
    let several_nodes = report.config.nodes.len() > 1;
    let mut order: Vec<String> = Vec::new();
    let mut points: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in &report.results {
        let label = if several_nodes {
            format!("{}: {}", r.node, r.policy)
        } else {
            r.policy.clone()
        };
        if !points.contains_key(&label) {
            order.push(label.clone());
        }
        points
            .entry(label)
            .or_default()
            .push((r.mean_tokens, r.evidence_recall));
    }
    order
        .into_iter()
        .map(|label| {
            let mut pts = points.remove(&label).unwrap_or_default();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
            Series { label, points: pts }
        })
        .collect()
}

/// An SVG of evidence recall against tokens for a routing-only report's budget sweep.
pub fn recall_vs_tokens_svg(report: &EvalReport) -> String {
    let full = report
        .full_reference
        .first()
        .map(|f| f.mean_tokens)
        .unwrap_or_default();
    let title = format!(
        "{}: evidence recall vs context tokens ({} questions; full context {:.0} tokens)",
        report.config.dataset, report.config.count, full
    );
    line_chart(
        &title,
        "mean context tokens per pack",
        "evidence recall",
        &sweep_series(report),
    )
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 52.0;
/// Colour-blind-safe palette (Okabe–Ito), then greys.
const COLOURS: [&str; 9] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000",
    "#999999",
];
const MARKERS: usize = 3;

/// A line chart: x from 0 to a round maximum, y from 0 to 1.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let x_max_data = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max);
    let (x_max, x_step) = nice_axis(x_max_data);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + plot_w * (x / x_max).clamp(0.0, 1.0);
    let sy = |y: f64| TOP + plot_h * (1.0 - y.clamp(0.0, 1.0));

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Grid and ticks.
    let mut y = 0.0;
    while y <= 1.0 + 1e-9 {
        let py = sy(y);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{y:.1}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0
        );
        y += 0.2;
    }
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let px = sx(x);
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#e0e0e0"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{x:.0}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 16.0
        );
        x += x_step;
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0,
        escape(x_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    // Series and legend.
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let dash = if i >= COLOURS.len() {
            r#" stroke-dasharray="5 3""#
        } else {
            ""
        };
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| (sx(*x), sy(*y)))
            .collect();
        if pts.len() > 1 {
            let path = pts
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                out,
                r#"<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#
            );
        }
        for (x, y) in &pts {
            let _ = writeln!(out, "{}", marker(i % MARKERS, *x, *y, colour));
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"{dash}/>{}<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 24.0,
            marker(i % MARKERS, lx + 12.0, ly, colour),
            lx + 30.0,
            ly + 4.0,
            escape(&s.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn marker(kind: usize, x: f64, y: f64, colour: &str) -> String {
    match kind {
        0 => format!(r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{colour}"/>"#),
        1 => format!(
            r#"<rect x="{:.1}" y="{:.1}" width="7" height="7" fill="{colour}"/>"#,
            x - 3.5,
            y - 3.5
        ),
        _ => format!(
            r#"<polygon points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="{colour}"/>"#,
            x,
            y - 4.5,
            x - 4.5,
            y + 3.5,
            x + 4.5,
            y + 3.5
        ),
    }
}

/// A round axis maximum ≥ `max` and a tick step giving 4 to 10 ticks.
fn nice_axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.2);
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        let step = magnitude * m / 5.0;
        let top = (max / step).ceil() * step;
        if top / step <= 10.0 {
            return (top, step);
        }
    }
    (max, max / 5.0)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_well_formed_svg_with_one_line_per_series() {
        let series = vec![
            Series {
                label: "rcr".into(),
                points: vec![(500.0, 0.6), (250.0, 0.4), (1000.0, 0.8)],
            },
            Series {
                label: "a <b> & \"c\"".into(),
                points: vec![(0.0, 0.0), (1400.0, 1.0)],
            },
            Series {
                label: "single".into(),
                points: vec![(300.0, 0.5)],
            },
        ];
        let svg = line_chart("t", "x", "y", &series);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;b&gt; &amp; &quot;c&quot;"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // Balanced tags (every element is self-closed or closed).
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        // Deterministic.
        assert_eq!(svg, line_chart("t", "x", "y", &series));
    }

    #[test]
    fn axes_are_round() {
        assert_eq!(nice_axis(1432.0), (1600.0, 200.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        let (top, step) = nice_axis(97.0);
        assert!(top >= 97.0 && top / step <= 10.0);
        let svg = line_chart("empty", "x", "y", &[]);
        assert!(svg.contains("</svg>"));
    }
}
