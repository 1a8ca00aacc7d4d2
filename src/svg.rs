//! Small SVG charts for reports: histograms, step lines (ECDFs) and points on linear axes with
//! ticks, labels and a legend. No fonts or system libraries are needed: the text is SVG text.
//! Output is a pure function of the input, so reports are byte-identical for the same data.

use std::fmt::Write as _;

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;

/// Colours of successive series (colour-blind-safe Okabe-Ito palette).
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
];

/// How a series is drawn.
#[derive(Debug, Clone)]
pub enum Mark {
    /// Bars from `x0` to `x1` with height `y`.
    Bars(Vec<(f64, f64, f64)>),
    /// A step line through the points (an ECDF).
    Steps(Vec<(f64, f64)>),
    /// A straight polyline.
    Line(Vec<(f64, f64)>),
    Points(Vec<(f64, f64)>),
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub mark: Mark,
}

/// One chart.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x: (f64, f64),
    pub y: (f64, f64),
    pub series: Vec<Series>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// About `n` round tick values covering `lo..=hi`.
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi <= lo || !lo.is_finite() || !hi.is_finite() {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() >= 1e5 || v.abs() < 1e-3 {
        return format!("{v:.0e}");
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl Chart {
    fn px(&self, x: f64) -> f64 {
        let (lo, hi) = self.x;
        LEFT + (x.clamp(lo, hi) - lo) / (hi - lo).max(f64::MIN_POSITIVE) * (W - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        let (lo, hi) = self.y;
        H - BOTTOM - (y.clamp(lo, hi) - lo) / (hi - lo).max(f64::MIN_POSITIVE) * (H - TOP - BOTTOM)
    }

    /// The chart as a standalone SVG document.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            W / 2.0,
            esc(&self.title)
        );
        // Grid and ticks.
        for t in ticks(self.x.0, self.x.1, 8) {
            let x = self.px(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP,
                H - BOTTOM,
                H - BOTTOM + 16.0,
                label(t)
            );
        }
        for t in ticks(self.y.0, self.y.1, 6) {
            let y = self.py(t);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                label(t)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#333"/>"##,
            W - LEFT - RIGHT,
            H - TOP - BOTTOM
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + (W - LEFT - RIGHT) / 2.0,
            H - 14.0,
            esc(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + (H - TOP - BOTTOM) / 2.0,
            esc(&self.y_label)
        );
        for (i, series) in self.series.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            match &series.mark {
                Mark::Bars(bars) => {
                    for (x0, x1, y) in bars {
                        let (a, b) = (self.px(*x0), self.px(*x1));
                        let top = self.py(*y);
                        let _ = writeln!(
                            s,
                            r#"<rect x="{a:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{c}" fill-opacity="0.45" stroke="{c}"/>"#,
                            (b - a).max(0.5),
                            (self.py(self.y.0.max(0.0)) - top).max(0.0)
                        );
                    }
                }
                Mark::Steps(pts) | Mark::Line(pts) => {
                    let mut d = String::new();
                    for (k, (x, y)) in pts.iter().enumerate() {
                        let (px, py) = (self.px(*x), self.py(*y));
                        if k == 0 {
                            let _ = write!(d, "M{px:.1},{py:.1}");
                        } else if matches!(series.mark, Mark::Steps(_)) {
                            let _ = write!(d, " H{px:.1} V{py:.1}");
                        } else {
                            let _ = write!(d, " L{px:.1},{py:.1}");
                        }
                    }
                    let _ = writeln!(
                        s,
                        r#"<path d="{d}" fill="none" stroke="{c}" stroke-width="2"/>"#
                    );
                }
                Mark::Points(pts) => {
                    for (x, y) in pts {
                        let _ = writeln!(
                            s,
                            r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}" fill-opacity="0.7"/>"#,
                            self.px(*x),
                            self.py(*y)
                        );
                    }
                }
            }
            let ly = TOP + 16.0 + 16.0 * i as f64;
            let lx = W - RIGHT - 230.0;
            let _ = writeln!(
                s,
                r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{c}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                ly - 10.0,
                lx + 18.0,
                ly,
                esc(&series.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Histogram bars of `values` in `bins` equal bins over `lo..hi` (values outside go to the end
/// bins), as a fraction of all values.
pub fn histogram(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<(f64, f64, f64)> {
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for v in values {
        let i = (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let n = values.len().max(1) as f64;
    counts
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            (
                lo + i as f64 * width,
                lo + (i + 1) as f64 * width,
                c as f64 / n,
            )
        })
        .collect()
}

/// The empirical CDF of `values` as step points, starting at (`from`, 0); `total` is the
/// denominator (runs that never reached a value still count, so the line can stay below 1).
pub fn ecdf(values: &[f64], from: f64, total: usize) -> Vec<(f64, f64)> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mut pts = vec![(from, 0.0)];
    for (i, x) in v.iter().enumerate() {
        pts.push((*x, (i + 1) as f64 / total.max(1) as f64));
    }
    pts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let close = |a: Vec<f64>, b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
        };
        assert!(close(ticks(0.0, 1.0, 5), &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]));
        assert!(close(ticks(0.0, 100.0, 4), &[0.0, 25.0, 50.0, 75.0, 100.0]));
        assert_eq!(label(0.6000000000000001), "0.6");
    }

    #[test]
    fn histogram_fractions_sum_to_one() {
        let h = histogram(&[0.1, 0.2, 0.9, 5.0, -1.0], 0.0, 1.0, 10);
        assert!((h.iter().map(|b| b.2).sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(h[9].2, 0.4);
    }

    #[test]
    fn rendering_is_deterministic_and_escaped() {
        let c = Chart {
            title: "a < b".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x: (0.0, 1.0),
            y: (0.0, 1.0),
            series: vec![Series {
                name: "s".into(),
                mark: Mark::Steps(ecdf(&[0.2, 0.5], 0.0, 2)),
            }],
        };
        assert_eq!(c.render(), c.render());
        assert!(c.render().contains("a &lt; b"));
    }
}
