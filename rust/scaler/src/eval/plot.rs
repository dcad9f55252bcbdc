//! Hand-written SVG plots of an evaluation, after the paper's Figures 5–8 (no plotting crate):
//!
//! * [`scores_svg`]: overlaid histograms (50 bins over `[0, 1]`) of the anomaly scores of normal
//!   and anomalous spans, each as a share of its class so the rare class stays visible, with the
//!   keep threshold as a vertical line;
//! * [`confusion_svg`]: the 2×2 confusion matrix with counts and row percentages;
//! * [`durations_svg`]: score against duration (log x), subsampled to at most
//!   [`MAX_SCATTER_POINTS`] points by a fixed stride, coloured by label.
//!
//! Every plot is a self-contained SVG 1.1 document; all text goes through [`escape`], so the
//! output is well-formed XML whatever the operation names or titles contain. A span without a
//! score is drawn at score 0, as the metrics count it.

use std::fmt::Write;

use super::TestSpan;

/// The keep threshold drawn on the score plots.
#[derive(Debug, Clone, Copy)]
pub struct Threshold {
    /// Its value.
    pub score: f64,
    /// What it is (`min_score`, or the calibrated threshold at the end of the run).
    pub name: &'static str,
}
use super::metrics::Confusion;

/// Most points drawn by [`durations_svg`].
pub const MAX_SCATTER_POINTS: usize = 5_000;
/// Histogram bins of [`scores_svg`].
pub const BINS: usize = 50;

const W: f64 = 760.0;
const H: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 86.0;
const BOTTOM: f64 = 64.0;
const NORMAL: &str = "#1f77b4";
const ANOMALOUS: &str = "#d62728";
const UNLABELLED: &str = "#7f7f7f";

/// Escape text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            // Control characters other than tab/newline are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// An SVG document under construction.
struct Svg(String);

impl Svg {
    fn new(title: &str) -> Self {
        let mut s = String::with_capacity(64 * 1024);
        let _ = write!(
            s,
            r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<title>{t}</title>
<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>
"#,
            t = escape(&title.replace('\n', " — ")),
        );
        // The first line of the title is the heading, the rest (parameters) smaller below it.
        for (i, line) in title.lines().enumerate() {
            let (y, style) = if i == 0 {
                (22.0, r#" font-size="15" font-weight="bold""#)
            } else {
                (22.0 + 17.0 * i as f64, r#" font-size="12""#)
            };
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{y:.1}" text-anchor="middle"{style}>{}</text>"#,
                W / 2.0,
                escape(line)
            );
        }
        Svg(s)
    }

    fn text(&mut self, x: f64, y: f64, anchor: &str, extra: &str, text: &str) {
        let _ = writeln!(
            self.0,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}"{extra}>{}</text>"#,
            escape(text)
        );
    }

    fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, style: &str) {
        let _ = writeln!(
            self.0,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" {style}/>"#
        );
    }

    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, style: &str) {
        let _ = writeln!(
            self.0,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" {style}/>"#,
            w.max(0.0),
            h.max(0.0)
        );
    }

    /// Axis frame, axis titles, and ticks given as (position in px, label).
    fn axes(
        &mut self,
        xlabel: &str,
        ylabel: &str,
        xticks: &[(f64, String)],
        yticks: &[(f64, String)],
    ) {
        let (x0, x1, y0, y1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
        self.line(x0, y0, x1, y0, r#"stroke="black""#);
        self.line(x0, y0, x0, y1, r#"stroke="black""#);
        for (x, l) in xticks {
            self.line(*x, y0, *x, y0 + 5.0, r#"stroke="black""#);
            self.text(*x, y0 + 18.0, "middle", "", l);
        }
        for (y, l) in yticks {
            self.line(x0 - 5.0, *y, x0, *y, r#"stroke="black""#);
            self.line(x0, *y, x1, *y, r##"stroke="#dddddd""##);
            self.text(x0 - 8.0, y + 4.0, "end", "", l);
        }
        self.text((x0 + x1) / 2.0, H - 20.0, "middle", "", xlabel);
        let (lx, ly) = (18.0, (y0 + y1) / 2.0);
        self.text(
            lx,
            ly,
            "middle",
            &format!(r#" transform="rotate(-90 {lx} {ly:.1})""#),
            ylabel,
        );
    }

    /// A one-row legend between the title and the plot area: (colour, label). Items with an
    /// empty colour are notes, printed small at the bottom right instead.
    fn legend(&mut self, items: &[(&str, String)]) {
        let y = TOP - 24.0;
        let mut x = LEFT;
        for (c, l) in items.iter().filter(|(c, _)| !c.is_empty()) {
            self.rect(
                x,
                y,
                12.0,
                12.0,
                &format!(r#"fill="{c}" fill-opacity="0.7""#),
            );
            self.text(x + 17.0, y + 10.5, "start", "", l);
            x += 17.0 + 6.6 * l.chars().count() as f64 + 22.0;
        }
        let notes: Vec<&str> = items
            .iter()
            .filter(|(c, _)| c.is_empty())
            .map(|(_, l)| l.as_str())
            .collect();
        if !notes.is_empty() {
            self.text(
                W - RIGHT,
                H - 6.0,
                "end",
                r##" font-size="10" fill="#555555""##,
                &notes.join(" "),
            );
        }
    }

    /// The threshold line (vertical at data x in px, or horizontal at y in px).
    #[allow(clippy::too_many_arguments)] // two points, a label and its anchor: all plain coordinates
    fn threshold(
        &mut self,
        x1: f64,
        y1: f64,
        x2: f64,
        y2: f64,
        label: &str,
        lx: f64,
        ly: f64,
        anchor: &str,
    ) {
        self.line(
            x1,
            y1,
            x2,
            y2,
            r#"stroke="black" stroke-width="1.5" stroke-dasharray="6 4""#,
        );
        self.text(lx, ly, anchor, "", label);
    }

    fn finish(mut self) -> String {
        self.0.push_str("</svg>\n");
        self.0
    }
}

/// A round number ≥ `v` (1, 2 or 5 times a power of ten).
fn nice_ceil(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * p)
}

/// A number without trailing zeros.
fn short(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

fn score_of(s: &TestSpan) -> f64 {
    s.score
        .filter(|v| v.is_finite())
        .unwrap_or(0.0)
        .clamp(0.0, 1.0)
}

fn x_of(v: f64) -> f64 {
    LEFT + v * (W - LEFT - RIGHT)
}

fn score_ticks() -> Vec<(f64, String)> {
    (0..=10)
        .map(|i| (x_of(i as f64 / 10.0), short(i as f64 / 10.0)))
        .collect()
}

/// Overlaid score histograms of normal and anomalous spans (or of all spans if none is labelled).
pub fn scores_svg(spans: &[TestSpan], threshold: &Threshold, title: &str) -> String {
    let min_score = threshold.score;
    let mut svg = Svg::new(title);
    let labelled = spans.iter().any(|s| s.label.is_some());
    type Class<'a> = (&'a str, &'a str, Box<dyn Fn(&TestSpan) -> bool>);
    let classes: Vec<Class> = if labelled {
        vec![
            (
                "normal",
                NORMAL,
                Box::new(|s: &TestSpan| s.label == Some(false)),
            ),
            (
                "anomalous",
                ANOMALOUS,
                Box::new(|s: &TestSpan| s.label == Some(true)),
            ),
        ]
    } else {
        vec![(
            "all spans (unlabelled)",
            UNLABELLED,
            Box::new(|_: &TestSpan| true),
        )]
    };
    let mut hists = Vec::new();
    for (name, colour, pick) in &classes {
        let mut h = [0u64; BINS];
        let mut n = 0u64;
        for s in spans.iter().filter(|s| pick(s)) {
            h[((score_of(s) * BINS as f64) as usize).min(BINS - 1)] += 1;
            n += 1;
        }
        let shares: Vec<f64> = h
            .iter()
            .map(|&c| if n == 0 { 0.0 } else { c as f64 / n as f64 })
            .collect();
        hists.push((*name, *colour, n, shares));
    }
    let ymax = nice_ceil(
        hists
            .iter()
            .flat_map(|h| h.3.iter().copied())
            .fold(0.0, f64::max),
    );
    let y_of = |v: f64| H - BOTTOM - v / ymax * (H - TOP - BOTTOM);
    let yticks: Vec<_> = (0..=5)
        .map(|i| ymax * i as f64 / 5.0)
        .map(|v| (y_of(v), short(v)))
        .collect();
    svg.axes(
        "anomaly score",
        "share of spans in class",
        &score_ticks(),
        &yticks,
    );
    let bw = (W - LEFT - RIGHT) / BINS as f64;
    for (_, colour, _, shares) in &hists {
        for (i, &v) in shares.iter().enumerate() {
            if v > 0.0 {
                let y = y_of(v);
                svg.rect(
                    x_of(i as f64 / BINS as f64),
                    y,
                    bw,
                    H - BOTTOM - y,
                    &format!(
                        r#"fill="{colour}" fill-opacity="0.5" stroke="{colour}" stroke-width="0.5""#
                    ),
                );
            }
        }
    }
    let tx = x_of(min_score.clamp(0.0, 1.0));
    let (lx, anchor) = if min_score > 0.8 {
        (tx - 4.0, "end")
    } else {
        (tx + 4.0, "start")
    };
    svg.threshold(
        tx,
        H - BOTTOM,
        tx,
        TOP,
        &format!("{} {}", threshold.name, short(min_score)),
        lx,
        TOP + 12.0,
        anchor,
    );
    let legend: Vec<_> = hists
        .iter()
        .map(|(name, colour, n, _)| (*colour, format!("{name} (n = {n})")))
        .collect();
    svg.legend(&legend);
    svg.finish()
}

/// The 2×2 confusion matrix: rows are the truth, columns the engine's decision.
pub fn confusion_svg(c: &Confusion, title: &str) -> String {
    let mut svg = Svg::new(title);
    let (gx, gy, cw, ch) = (250.0, 110.0, 220.0, 130.0);
    let rows = [
        ("actual normal", [c.tn, c.fp], ["TN", "FP"]),
        ("actual anomalous", [c.fn_, c.tp], ["FN", "TP"]),
    ];
    svg.text(
        gx + cw / 2.0,
        gy - 14.0,
        "middle",
        r#" font-weight="bold""#,
        "predicted normal (dropped)",
    );
    svg.text(
        gx + 1.5 * cw,
        gy - 14.0,
        "middle",
        r#" font-weight="bold""#,
        "predicted anomalous (kept)",
    );
    for (r, (name, counts, tags)) in rows.iter().enumerate() {
        let total: u64 = counts.iter().sum();
        let y = gy + r as f64 * ch;
        svg.text(
            gx - 12.0,
            y + ch / 2.0 + 4.0,
            "end",
            r#" font-weight="bold""#,
            name,
        );
        for (k, (&n, tag)) in counts.iter().zip(tags).enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                n as f64 / total as f64
            };
            let x = gx + k as f64 * cw;
            let colour = if (r == 0) == (k == 0) {
                NORMAL
            } else {
                ANOMALOUS
            };
            svg.rect(
                x,
                y,
                cw,
                ch,
                &format!(
                    r#"fill="{colour}" fill-opacity="{:.3}" stroke="black""#,
                    0.08 + 0.6 * share
                ),
            );
            svg.text(
                x + cw / 2.0,
                y + ch / 2.0 - 14.0,
                "middle",
                r#" font-size="13""#,
                tag,
            );
            svg.text(
                x + cw / 2.0,
                y + ch / 2.0 + 8.0,
                "middle",
                r#" font-size="20" font-weight="bold""#,
                &n.to_string(),
            );
            svg.text(
                x + cw / 2.0,
                y + ch / 2.0 + 30.0,
                "middle",
                "",
                &format!("{:.2} % of row", 100.0 * share),
            );
        }
    }
    let summary = format!(
        "precision {:.3}   recall {:.3}   F1 {:.3}   FPR {:.2} %",
        c.precision(),
        c.recall(),
        c.f1(),
        100.0 * c.fpr()
    );
    svg.text(gx + cw, gy + 2.0 * ch + 36.0, "middle", "", &summary);
    svg.finish()
}

/// Score against duration (log x), at most [`MAX_SCATTER_POINTS`] points, coloured by label.
pub fn durations_svg(spans: &[TestSpan], threshold: &Threshold, title: &str) -> String {
    let min_score = threshold.score;
    let mut svg = Svg::new(title);
    let usable: Vec<&TestSpan> = spans
        .iter()
        .filter(|s| s.duration_ms.is_finite() && s.duration_ms > 0.0)
        .collect();
    let stride = usable.len().div_ceil(MAX_SCATTER_POINTS).max(1);
    let shown: Vec<&TestSpan> = usable.iter().step_by(stride).copied().collect();
    let (lo, hi) = shown
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| {
            (lo.min(s.duration_ms), hi.max(s.duration_ms))
        });
    let (mut e0, mut e1) = if shown.is_empty() {
        (0.0, 3.0)
    } else {
        (lo.log10().floor(), hi.log10().ceil())
    };
    if e1 <= e0 {
        e0 -= 1.0;
        e1 += 1.0;
    }
    let xp = |d: f64| LEFT + (d.log10() - e0) / (e1 - e0) * (W - LEFT - RIGHT);
    let yp = |s: f64| H - BOTTOM - s * (H - TOP - BOTTOM);
    let xticks: Vec<_> = (e0 as i32..=e1 as i32)
        .map(|e| (xp(10f64.powi(e)), short(10f64.powi(e))))
        .collect();
    let yticks: Vec<_> = (0..=5)
        .map(|i| i as f64 / 5.0)
        .map(|v| (yp(v), short(v)))
        .collect();
    svg.axes(
        "duration (ms, log scale)",
        "anomaly score",
        &xticks,
        &yticks,
    );
    let labelled = shown.iter().any(|s| s.label.is_some());
    let mut counts = [0usize; 3];
    // Normals first so the rarer anomalies are drawn on top.
    for (class, colour, want) in [
        (0, NORMAL, Some(false)),
        (2, UNLABELLED, None),
        (1, ANOMALOUS, Some(true)),
    ] {
        let _ = write!(svg.0, r#"<g fill="{colour}" fill-opacity="0.45">"#);
        for s in shown.iter().filter(|s| s.label == want) {
            counts[class] += 1;
            let _ = write!(
                svg.0,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2"/>"#,
                xp(s.duration_ms),
                yp(score_of(s))
            );
        }
        svg.0.push_str("</g>\n");
    }
    let ty = yp(min_score.clamp(0.0, 1.0));
    svg.threshold(
        LEFT,
        ty,
        W - RIGHT,
        ty,
        &format!("{} {}", threshold.name, short(min_score)),
        LEFT + 6.0,
        ty - 5.0,
        "start",
    );
    let mut legend = Vec::new();
    if labelled {
        legend.push((NORMAL, format!("normal ({} shown)", counts[0])));
        legend.push((ANOMALOUS, format!("anomalous ({} shown)", counts[1])));
    }
    if counts[2] > 0 {
        legend.push((UNLABELLED, format!("unlabelled ({} shown)", counts[2])));
    }
    if stride > 1 {
        legend.push(("", format!("(every {stride}th of {} spans)", usable.len())));
    }
    if usable.len() < spans.len() {
        legend.push((
            "",
            format!(
                "({} with duration ≤ 0 not shown)",
                spans.len() - usable.len()
            ),
        ));
    }
    svg.legend(&legend);
    svg.finish()
}

/// Keep rate over time: per bucket of the timeline (empty buckets left out, a gap in time drawn
/// as a dashed line), the kept share of normal spans (and of the services no fault names) in the
/// upper panel, of labelled spans in the lower one; buckets that overlap a fault window shaded.
pub fn timeline_svg(t: &super::timeline::TimelineReport, title: &str) -> String {
    let mut svg = Svg::new(title);
    let n = t.buckets.len().max(1);
    let (x0, x1) = (LEFT, W - RIGHT);
    let xw = (x1 - x0) / n as f64;
    let x_of = |i: usize| x0 + xw * (i as f64 + 0.5);
    // Upper panel: normal keep rate, up to a round number above the largest.
    let (u0, u1) = (TOP + 10.0, TOP + 200.0);
    let (l0, l1) = (TOP + 236.0, H - BOTTOM);
    let peak = t
        .buckets
        .iter()
        .map(|b| b.rates.normal_rate())
        .fold(0.0, f64::max);
    let top = nice_ceil((peak * 100.0).max(0.5));
    let y_up = |v: f64| u1 - (v * 100.0 / top).min(1.0) * (u1 - u0);
    let y_lo = |v: f64| l1 - v.min(1.0) * (l1 - l0);
    for (i, b) in t.buckets.iter().enumerate() {
        if b.fault {
            for (a, z) in [(u0, u1), (l0, l1)] {
                svg.rect(
                    x0 + xw * i as f64,
                    a,
                    xw,
                    z - a,
                    r##"fill="#d62728" fill-opacity="0.10""##,
                );
            }
        }
        if i > 0 && b.start_ns - t.buckets[i - 1].start_ns > (t.bucket_s * 1.5e9) as u64 {
            let x = x0 + xw * i as f64;
            svg.line(x, u0, x, l1, r##"stroke="#999999" stroke-dasharray="3 3""##);
        }
    }
    for (a, z) in [(u0, u1), (l0, l1)] {
        svg.line(x0, z, x1, z, r#"stroke="black""#);
        svg.line(x0, a, x0, z, r#"stroke="black""#);
    }
    for k in 0..=4 {
        let v = top * k as f64 / 4.0;
        let y = y_up(v / 100.0);
        svg.line(x0 - 4.0, y, x0, y, r#"stroke="black""#);
        svg.text(x0 - 7.0, y + 4.0, "end", "", &format!("{} %", short(v)));
        let y = y_lo(k as f64 / 4.0);
        svg.line(x0 - 4.0, y, x0, y, r#"stroke="black""#);
        svg.text(x0 - 7.0, y + 4.0, "end", "", &format!("{} %", 25 * k));
    }
    let path = |f: &dyn Fn(&super::timeline::Bucket) -> Option<f64>, y: &dyn Fn(f64) -> f64| {
        let mut d = String::new();
        let mut pen = false;
        for (i, b) in t.buckets.iter().enumerate() {
            match f(b) {
                Some(v) => {
                    let _ = write!(
                        d,
                        "{}{:.1},{:.1} ",
                        if pen { "L" } else { "M" },
                        x_of(i),
                        y(v)
                    );
                    pen = true;
                }
                None => pen = false,
            }
        }
        d
    };
    type Series<'a> = (
        &'a str,
        &'a str,
        &'a dyn Fn(&super::timeline::Bucket) -> Option<f64>,
        bool,
    );
    let series: [Series; 3] = [
        (
            NORMAL,
            "normal spans",
            &|b| (b.rates.normal > 0).then(|| b.rates.normal_rate()),
            true,
        ),
        (
            "#2ca02c",
            "normal spans of services no fault names",
            &|b| (b.rates.unaffected > 0).then(|| b.rates.unaffected_rate()),
            true,
        ),
        (
            ANOMALOUS,
            "labelled spans (lower panel)",
            &|b| (b.rates.labelled > 0).then(|| b.rates.labelled_rate()),
            false,
        ),
    ];
    for (colour, _, f, upper) in &series {
        let d = if *upper {
            path(*f, &y_up)
        } else {
            path(*f, &y_lo)
        };
        if !d.is_empty() {
            let _ = writeln!(
                svg.0,
                r#"<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#
            );
        }
    }
    svg.text(
        x0 + 6.0,
        u0 + 12.0,
        "start",
        r#" font-weight="bold""#,
        "kept share of normal spans",
    );
    svg.text(
        x0 + 6.0,
        l0 + 12.0,
        "start",
        r#" font-weight="bold""#,
        "kept share of labelled spans",
    );
    svg.text(
        (x0 + x1) / 2.0,
        H - 20.0,
        "middle",
        "",
        &format!(
            "time, {} buckets of {} s with spans (dashed: a gap in time; shaded: a fault window)",
            t.buckets.len(),
            short(t.bucket_s)
        ),
    );
    let legend: Vec<_> = series
        .iter()
        .map(|(c, name, _, _)| (*c, name.to_string()))
        .collect();
    svg.legend(&legend);
    svg.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny XML well-formedness check: one root, balanced and properly nested tags, quoted
    /// attributes, known entities only, no `<` or `&` loose in text.
    pub(crate) fn check_xml(doc: &str) -> Result<(), String> {
        let mut stack: Vec<&str> = Vec::new();
        let mut roots = 0;
        let mut rest = doc;
        if let Some(r) = rest.strip_prefix("<?xml") {
            rest = &r[r.find("?>").ok_or("unterminated declaration")? + 2..];
        }
        let check_text = |t: &str| -> Result<(), String> {
            let mut parts = t.split('&');
            parts.next();
            for p in parts {
                let ent = p.split(';').next().unwrap_or("");
                if !p.contains(';') || !["amp", "lt", "gt", "quot", "apos"].contains(&ent) {
                    return Err(format!("bad entity near {:?}", &p[..p.len().min(20)]));
                }
            }
            Ok(())
        };
        while let Some(i) = rest.find('<') {
            check_text(&rest[..i])?;
            if stack.is_empty() && !rest[..i].trim().is_empty() {
                return Err("text outside the root".into());
            }
            let after = &rest[i + 1..];
            let end = after.find('>').ok_or("unterminated tag")?;
            let tag = &after[..end];
            rest = &after[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack
                    .pop()
                    .ok_or_else(|| format!("close </{name}> without open"))?;
                if open != name.trim() {
                    return Err(format!("<{open}> closed by </{name}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body.split_whitespace().next().ok_or("empty tag")?;
            // Attributes: name="value" pairs, values without '<'.
            let mut attrs = body[name.len()..].trim();
            while !attrs.is_empty() {
                let eq = attrs
                    .find('=')
                    .ok_or_else(|| format!("attribute without value in <{name}>"))?;
                let after_eq = &attrs[eq + 1..];
                let q = after_eq.chars().next().ok_or("missing quote")?;
                if q != '"' && q != '\'' {
                    return Err(format!("unquoted attribute in <{name}>"));
                }
                let close = after_eq[1..].find(q).ok_or("unterminated attribute")?;
                let value = &after_eq[1..1 + close];
                if value.contains('<') {
                    return Err("'<' in attribute".into());
                }
                check_text(value)?;
                attrs = after_eq[close + 2..].trim_start();
            }
            if stack.is_empty() {
                roots += 1;
            }
            if !self_closing {
                stack.push(name);
            }
        }
        check_text(rest)?;
        if !rest.trim().is_empty() {
            return Err("text after the root".into());
        }
        match (stack.is_empty(), roots) {
            (true, 1) => Ok(()),
            (false, _) => Err(format!("unclosed {stack:?}")),
            (_, n) => Err(format!("{n} root elements")),
        }
    }

    fn th(score: f64) -> Threshold {
        Threshold {
            score,
            name: "min_score",
        }
    }

    fn spans() -> Vec<TestSpan> {
        (0..12_000u64)
            .map(|i| {
                let label = if i % 100 == 0 {
                    None
                } else {
                    Some(i % 17 == 0)
                };
                let score = if i % 50 == 0 {
                    None
                } else {
                    Some((i % 97) as f64 / 97.0)
                };
                TestSpan {
                    index: i,
                    score,
                    keep: i % 5 == 0,
                    label,
                    duration_ms: if i % 333 == 0 {
                        0.0
                    } else {
                        0.01 * (1 + i % 5000) as f64
                    },
                    arrival_ns: i * 1_000_000,
                    key: (i % 7) as u32,
                    learned: i % 5 != 0,
                    incident: false,
                    judged_ns: i * 1_000_000,
                }
            })
            .collect()
    }

    #[test]
    fn checker_catches_errors() {
        assert!(check_xml("<a><b/></a>").is_ok());
        assert!(check_xml("<a><b></a>").is_err());
        assert!(check_xml("<a>x & y</a>").is_err());
        assert!(check_xml(r#"<a k=v/>"#).is_err());
        assert!(check_xml("<a/><b/>").is_err());
    }

    #[test]
    fn plots_are_well_formed_with_hostile_titles() {
        let title = "mode <paper> & \"quotes\" 'n' \u{1} n_trees 16";
        let s = spans();
        let c = Confusion {
            tp: 3,
            fp: 1,
            fn_: 0,
            tn: 9,
        };
        for doc in [
            scores_svg(&s, &th(0.6), title),
            confusion_svg(&c, title),
            durations_svg(&s, &th(0.6), title),
        ] {
            check_xml(&doc).unwrap_or_else(|e| panic!("{e}\n{}", &doc[..doc.len().min(2000)]));
            assert!(doc.contains("&lt;paper&gt; &amp; &quot;quotes&quot;"));
        }
    }

    #[test]
    fn scatter_is_subsampled_and_empty_inputs_work() {
        let doc = durations_svg(&spans(), &th(0.6), "t");
        assert!(doc.matches("<circle").count() <= MAX_SCATTER_POINTS);
        for doc in [
            scores_svg(&[], &th(0.5), "t"),
            durations_svg(&[], &th(0.5), "t"),
            confusion_svg(&Confusion::default(), "t"),
        ] {
            check_xml(&doc).unwrap();
        }
        let unlabelled: Vec<_> = spans()
            .into_iter()
            .map(|s| TestSpan { label: None, ..s })
            .collect();
        let doc = scores_svg(&unlabelled, &th(0.5), "t");
        assert!(doc.contains("unlabelled") && check_xml(&doc).is_ok());
    }

    #[test]
    fn histogram_bins_span_the_unit_interval() {
        let s: Vec<_> = [0.0, 0.5, 1.0]
            .iter()
            .map(|&v| TestSpan {
                index: 0,
                score: Some(v),
                keep: false,
                label: Some(false),
                duration_ms: 1.0,
                arrival_ns: 0,
                key: 0,
                learned: true,
                incident: false,
                judged_ns: 0,
            })
            .collect();
        let doc = scores_svg(&s, &th(0.6), "t");
        // Three non-empty bins: 0, 25 and the last (1.0 falls in bin 49).
        assert_eq!(doc.matches("fill-opacity=\"0.5\"").count(), 3);
        assert_eq!(nice_ceil(0.34), 0.5);
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(short(0.30000000000000004), "0.3");
    }
}
