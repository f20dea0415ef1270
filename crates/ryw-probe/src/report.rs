//! The self-contained HTML report: the numbers, and the plots as inline SVG.

use crate::check::CheckResult;
use crate::lag::LagResult;
use crate::recommend::Recommendation;
use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 300.0;
const PAD: f64 = 48.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn frame(out: &mut String, id: &str, title: &str, x_label: &str, y_label: &str) {
    let _ = write!(
        out,
        r##"<svg id="{id}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{t}">
<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>
<text x="{cx}" y="18" text-anchor="middle" font-family="sans-serif" font-size="14">{t}</text>
<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/>
<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="#333"/>
<text x="{cx}" y="{xl}" text-anchor="middle" font-family="sans-serif" font-size="12">{xlab}</text>
<text x="14" y="{cy}" text-anchor="middle" font-family="sans-serif" font-size="12" transform="rotate(-90 14 {cy})">{ylab}</text>
"##,
        t = esc(title),
        cx = W / 2.0,
        b = H - PAD,
        r = W - 16.0,
        xl = H - 10.0,
        cy = H / 2.0,
        xlab = esc(x_label),
        ylab = esc(y_label),
    );
}

/// The t-visibility curve: a polyline of p_visible by delay, x on a square-root scale.
pub(crate) fn visibility_svg(lag: &LagResult) -> String {
    let mut out = String::new();
    frame(
        &mut out,
        "t-visibility",
        "t-visibility: share of cheap reads that saw the write",
        "delay after the write (ms, square-root scale)",
        "p(visible)",
    );
    let max = lag
        .t_visibility
        .iter()
        .map(|p| p.delay_ms)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |d: u64| PAD + (W - 16.0 - PAD) * (d as f64 / max).sqrt();
    let y = |p: f64| (H - PAD) - (H - 2.0 * PAD) * p;
    for tick in [0.0, 0.5, 1.0] {
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="end" font-family="sans-serif" font-size="11">{tick}</text>"##,
            PAD - 4.0,
            y(tick) + 4.0
        );
    }
    for p in &lag.t_visibility {
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" font-family="sans-serif" font-size="9">{}</text>"##,
            x(p.delay_ms),
            H - PAD + 12.0,
            p.delay_ms
        );
    }
    let points: Vec<String> = lag
        .t_visibility
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.delay_ms), y(p.p_visible)))
        .collect();
    let _ = writeln!(
        out,
        r##"<polyline class="curve" fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
        points.join(" ")
    );
    for p in &lag.t_visibility {
        let _ = writeln!(
            out,
            r##"<circle class="point" cx="{:.1}" cy="{:.1}" r="3" fill="#1f77b4"><title>{} ms: {:.3} of {} reads</title></circle>"##,
            x(p.delay_ms),
            y(p.p_visible),
            p.delay_ms,
            p.p_visible,
            p.samples
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Bars side by side.
fn bars_svg(id: &str, title: &str, y_label: &str, bars: &[(&str, f64, &str)]) -> String {
    let mut out = String::new();
    frame(&mut out, id, title, "", y_label);
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0);
    let slot = (W - 16.0 - PAD) / bars.len().max(1) as f64;
    for (i, (label, v, color)) in bars.iter().enumerate() {
        let h = (H - 2.0 * PAD) * v / max;
        let x = PAD + slot * i as f64 + slot * 0.2;
        let _ = writeln!(
            out,
            r##"<rect class="bar" x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"><title>{}: {v}</title></rect>
<text x="{:.1}" y="{:.1}" text-anchor="middle" font-family="sans-serif" font-size="12">{} ({v})</text>"##,
            H - PAD - h,
            slot * 0.6,
            esc(label),
            x + slot * 0.3,
            H - PAD + 14.0,
            esc(label)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Read latency histograms of both runs, as bars per bucket (ms, powers of two).
fn latency_svg(check: &CheckResult) -> String {
    let bucket = |us: u64| -> usize { ((us / 1000).max(1) as f64).log2().floor() as usize };
    let n = check
        .raw
        .latencies_us
        .iter()
        .chain(&check.ryw.latencies_us)
        .map(|&u| bucket(u))
        .max()
        .unwrap_or(0)
        + 1;
    let count = |v: &[u64]| {
        let mut c = vec![0u64; n];
        for &u in v {
            c[bucket(u)] += 1;
        }
        c
    };
    let (raw, ryw) = (
        count(&check.raw.latencies_us),
        count(&check.ryw.latencies_us),
    );
    let mut out = String::new();
    frame(
        &mut out,
        "latency",
        "read latency: raw (grey) and through ryw (blue)",
        "latency bucket (ms, from)",
        "reads",
    );
    let max = raw.iter().chain(&ryw).copied().max().unwrap_or(1).max(1) as f64;
    let slot = (W - 16.0 - PAD) / n as f64;
    for i in 0..n {
        for (j, (c, color)) in [(raw[i], "#999"), (ryw[i], "#1f77b4")].iter().enumerate() {
            let h = (H - 2.0 * PAD) * *c as f64 / max;
            let x = PAD + slot * i as f64 + slot * (0.1 + 0.4 * j as f64);
            let _ = writeln!(
                out,
                r##"<rect class="bar" x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"/>"##,
                H - PAD - h,
                slot * 0.4
            );
        }
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-family="sans-serif" font-size="10">{}</text>"##,
            PAD + slot * (i as f64 + 0.5),
            H - PAD + 12.0,
            1u64 << i
        );
    }
    out.push_str("</svg>\n");
    out
}

/// The whole page.
pub(crate) fn html(
    title: &str,
    store: &str,
    partial: Option<&str>,
    lag: Option<&LagResult>,
    check: Option<&CheckResult>,
    recommendation: Option<&Recommendation>,
) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;max-width:760px;margin:2em auto}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}.partial{{color:#b00}}</style></head><body>\n\
         <h1>{t}</h1>\n<p>{s}</p>\n",
        t = esc(title),
        s = esc(store)
    );
    if let Some(why) = partial {
        let _ = writeln!(
            out,
            "<p class=\"partial\" id=\"partial\">Partial results: {}</p>",
            esc(why)
        );
    }
    if let Some(lag) = lag {
        out.push_str("<h2>t-visibility</h2>\n");
        out.push_str(&visibility_svg(lag));
        out.push_str("<table><tr><th>delay (ms)</th><th>p(visible)</th><th>samples</th></tr>\n");
        for p in &lag.t_visibility {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
                p.delay_ms, p.p_visible, p.samples
            );
        }
        out.push_str("</table>\n");
    }
    if let Some(r) = recommendation {
        let _ = writeln!(
            out,
            "<h2>Recommendation</h2>\n<p id=\"recommendation\">{}</p>\n<pre>{}</pre>",
            esc(&match r.delay_ms {
                Some(d) => format!(
                    "re-read once after {d} ms, then escalate (budget {} ms)",
                    r.budget_ms
                ),
                None => format!(
                    "escalate at once: a re-read within {} ms rarely meets the fence",
                    r.budget_ms
                ),
            }),
            esc(&r.code)
        );
    }
    if let Some(c) = check {
        out.push_str("<h2>The promise, checked</h2>\n");
        out.push_str(&bars_svg(
            "violations",
            "session-guarantee violations",
            "violations",
            &[
                ("raw", c.raw.violations as f64, "#999"),
                ("ryw", c.ryw.violations as f64, "#1f77b4"),
            ],
        ));
        out.push_str(&latency_svg(c));
        let _ = writeln!(
            out,
            "<table><tr><th></th><th>violations</th><th>reads</th><th>stale reads</th><th>strong reads</th><th>p50 (ms)</th><th>p99 (ms)</th></tr>\n\
             <tr><th>raw</th><td>{}</td><td>{}</td><td>{}</td><td></td><td>{:.2}</td><td>{:.2}</td></tr>\n\
             <tr><th>ryw</th><td>{}</td><td>{}</td><td></td><td>{}</td><td>{:.2}</td><td>{:.2}</td></tr></table>",
            c.raw.violations, c.raw.reads, c.raw.stale_reads, c.raw.p50_ms, c.raw.p99_ms,
            c.ryw.violations, c.ryw.reads, c.ryw.strong_reads, c.ryw.p50_ms, c.ryw.p99_ms
        );
    }
    out.push_str("</body></html>\n");
    out
}
