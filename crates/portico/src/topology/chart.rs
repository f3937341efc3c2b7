//! The probe's report: a table for the terminal, a CSV for tools, and an SVG
//! bar chart for people (hand-written SVG: no plotting dependency).

use std::fmt::Write as _;
use std::time::Duration;

use super::measure::{Measure, Minimum, Samples, median};

/// One measured entry.
#[derive(Debug, Clone)]
pub struct EntryResult {
    pub site: String,
    pub api: String,
    pub mode: String,
    /// The region of the API, to pair edge and regional entries.
    pub region: String,
    pub via: String,
    pub minimum: Minimum,
    pub samples: Samples,
}

impl EntryResult {
    fn median(&self, m: Measure) -> Duration {
        median(self.samples.of(m)).unwrap_or_default()
    }

    /// A warm hit that no cache answered is really a miss: say so.
    fn unanswered_hit(&self, m: Measure) -> bool {
        m == Measure::WarmHit && !self.samples.cached
    }
}

/// The measures any result was measured in (HTTP/3 ones only when the topology
/// enables HTTP/3), in report order.
fn present(results: &[EntryResult]) -> Vec<Measure> {
    Measure::ALL
        .into_iter()
        .filter(|&m| results.iter().any(|r| r.samples.measured(m)))
        .collect()
}

/// What the medians are of, for the table and the chart's title: `runs` runs,
/// and the measures of which an entry kept fewer samples, with how many (a
/// 0-RTT run whose early data the server refused is left out), e.g.
/// `median of 5 run(s) (0rtt_h3: 3–5 sample(s))`.
pub fn medians_of(results: &[EntryResult], runs: u32) -> String {
    let runs_text = format!("median of {runs} run(s)");
    let fewer: Vec<String> = present(results)
        .into_iter()
        .filter_map(|m| {
            let counts = results
                .iter()
                .filter(|r| r.samples.measured(m))
                .map(|r| r.samples.of(m).len());
            let (lo, hi) = counts.fold((usize::MAX, 0), |(lo, hi), n| (lo.min(n), hi.max(n)));
            if lo as u64 >= u64::from(runs) {
                return None;
            }
            let range = match lo == hi {
                true => lo.to_string(),
                false => format!("{lo}–{hi}"),
            };
            Some(format!("{}: {range} sample(s)", m.as_str()))
        })
        .collect();
    match fewer.is_empty() {
        true => runs_text,
        false => format!("{runs_text} ({})", fewer.join(", ")),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `measured / minimum`, or `None` when the minimum is zero (no added delay).
fn ratio(measured: Duration, minimum: Duration) -> Option<f64> {
    (minimum > Duration::ZERO).then(|| measured.as_secs_f64() / minimum.as_secs_f64())
}

fn ratio_text(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"))
}

/// The terminal table, with one line per entry and a footer comparing edge and
/// regional entry for every site.
pub fn table(results: &[EntryResult], runs: u32) -> String {
    let measures = present(results);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "time to first byte, {} | physical minimum from the topology's link delays | \
         ratio = median / minimum",
        medians_of(results, runs)
    );
    let w = |f: fn(&EntryResult) -> &str, t: &str| {
        results
            .iter()
            .map(|r| f(r).chars().count())
            .max()
            .unwrap_or(0)
            .max(t.len())
    };
    let (ws, wa, wv) = (
        w(|r| &r.site, "site"),
        w(|r| &r.api, "api"),
        w(|r| &r.via, "via"),
    );
    let _ = write!(
        out,
        "{:ws$}  {:wa$}  {:8}  {:wv$}",
        "site", "api", "mode", "via"
    );
    for &m in &measures {
        let _ = write!(out, "  {:>24}", format!("{} ms (min, ratio)", m.as_str()));
    }
    out.push('\n');
    let mut unanswered = false;
    for r in results {
        let _ = write!(
            out,
            "{:ws$}  {:wa$}  {:8}  {:wv$}",
            r.site, r.api, r.mode, r.via
        );
        for &m in &measures {
            if r.samples.of(m).is_empty() {
                let none = match r.samples.measured(m) {
                    true => "no samples ",
                    false => "n/a ",
                };
                let _ = write!(out, "  {none:>24}");
                continue;
            }
            let (measured, min) = (r.median(m), r.minimum.of(m));
            let mark = if r.unanswered_hit(m) { "*" } else { " " };
            unanswered |= r.unanswered_hit(m);
            let cell = format!(
                "{:.1}{mark} ({:.1}, {})",
                ms(measured),
                ms(min),
                ratio_text(ratio(measured, min))
            );
            let _ = write!(out, "  {cell:>24}");
        }
        out.push('\n');
    }
    if unanswered {
        out.push_str(
            "* no cache answered (no `hit` in Cache-Status): these \"hits\" are warm misses; \
             the minimum shown is that of a hit at the entry node\n",
        );
    }
    out.push_str(&savings(results));
    out
}

/// For every site and region: what edge entry saves over regional entry.
fn savings(results: &[EntryResult]) -> String {
    let mut out = String::new();
    for edge in results.iter().filter(|r| r.mode == "edge") {
        let regional = results
            .iter()
            .find(|r| r.mode == "regional" && r.site == edge.site && r.region == edge.region);
        let Some(regional) = regional else { continue };
        let compared = [Measure::Cold, Measure::ColdH3, Measure::WarmMiss];
        let both =
            |m: &Measure| !edge.samples.of(*m).is_empty() && !regional.samples.of(*m).is_empty();
        for m in compared.into_iter().filter(both) {
            let (e, g) = (ms(edge.median(m)), ms(regional.median(m)));
            let saved = g - e;
            let pct = if g > 0.0 { saved / g * 100.0 } else { 0.0 };
            let _ = writeln!(
                out,
                "{}: {} via {} {:.1} ms vs {} via {} {:.1} ms: edge saves {:.1} ms ({:.0} %) [{}]",
                edge.site,
                edge.api,
                edge.via,
                e,
                regional.api,
                regional.via,
                g,
                saved,
                pct,
                m.as_str()
            );
        }
    }
    out
}

/// One line per (entry, measure), with the number of samples the median is of
/// (no median and no ratio without any).
pub fn csv(results: &[EntryResult]) -> String {
    let measures = present(results);
    let mut out =
        String::from("site,api,mode,via,measure,samples,median_ms,minimum_ms,ratio,cache_hit\n");
    for r in results {
        for &m in measures.iter().filter(|&&m| r.samples.measured(m)) {
            let (samples, min) = (r.samples.of(m), r.minimum.of(m));
            let measured = median(samples);
            let median_ms = measured.map_or_else(String::new, |d| format!("{:.3}", ms(d)));
            let ratio = measured
                .and_then(|d| ratio(d, min))
                .map_or_else(String::new, |x| format!("{x:.3}"));
            let hit = match m {
                Measure::WarmHit => r.samples.cached.to_string(),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{median_ms},{:.3},{ratio},{hit}",
                r.site,
                r.api,
                r.mode,
                r.via,
                m.as_str(),
                samples.len(),
                ms(min)
            );
        }
    }
    out
}

const ROW: f64 = 16.0;
const LABEL_W: f64 = 300.0;
const BAR_W: f64 = 560.0;
const TOP: f64 = 56.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart: for each site, a bar per (measure, API) coloured by
/// entry mode, with a black mark at the physical minimum.
pub fn svg(results: &[EntryResult], title: &str) -> String {
    let measures = present(results);
    let max = results
        .iter()
        .flat_map(|r| {
            measures
                .iter()
                .map(|&m| ms(r.median(m)).max(ms(r.minimum.of(m))))
        })
        .fold(1.0_f64, f64::max);
    let mut body = String::new();
    let mut y = TOP;
    let mut sites: Vec<&str> = results.iter().map(|r| r.site.as_str()).collect();
    sites.dedup();
    for site in sites {
        let _ = writeln!(
            body,
            r#"<text x="8" y="{:.1}" font-weight="bold">{}</text>"#,
            y + 12.0,
            escape(site)
        );
        y += ROW + 2.0;
        for &m in &measures {
            let measured = |r: &&EntryResult| r.site == site && !r.samples.of(m).is_empty();
            for r in results.iter().filter(measured) {
                bar(&mut body, r, m, y, max);
                y += ROW;
            }
        }
        y += 8.0;
    }
    let height = y + 30.0;
    let width = LABEL_W + BAR_W + 190.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="8" y="20" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        out,
        r##"<text x="8" y="38"><tspan fill="#2b6cb0">■ edge entry (PoP)</tspan>  <tspan fill="#dd6b20">■ regional entry (origin)</tspan>  ▏ physical minimum   faded: no cache answered</text>"##
    );
    out.push_str(&body);
    let _ = writeln!(
        out,
        r##"<text x="{LABEL_W}" y="{:.0}" fill="#555">0 … {max:.0} ms (median time to first byte)</text>"##,
        height - 10.0
    );
    out.push_str("</svg>\n");
    out
}

fn bar(out: &mut String, r: &EntryResult, m: Measure, y: f64, max: f64) {
    let color = if r.mode == "edge" {
        "#2b6cb0"
    } else {
        "#dd6b20"
    };
    let opacity = if r.unanswered_hit(m) { 0.35 } else { 1.0 };
    let (measured, min) = (ms(r.median(m)), ms(r.minimum.of(m)));
    let w = measured / max * BAR_W;
    let x_min = LABEL_W + min / max * BAR_W;
    let label = format!("{} · {} ({})", m.as_str().replace('_', " "), r.api, r.via);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
        LABEL_W - 6.0,
        y + 11.0,
        escape(&label)
    );
    let _ = writeln!(
        out,
        r#"<rect x="{LABEL_W}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{color}" fill-opacity="{opacity}"/>"#,
        y + 2.0,
        ROW - 4.0
    );
    let _ = writeln!(
        out,
        r#"<line x1="{x_min:.1}" x2="{x_min:.1}" y1="{:.1}" y2="{:.1}" stroke="black" stroke-width="2"/>"#,
        y,
        y + ROW
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}">{measured:.1} ms (min {min:.1})</text>"#,
        LABEL_W + w.max(x_min - LABEL_W) + 6.0,
        y + 11.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(mode: &str, api: &str, cold_ms: u64, min_ms: u64) -> EntryResult {
        let d = Duration::from_millis;
        EntryResult {
            site: "far".into(),
            api: api.into(),
            mode: mode.into(),
            region: "r".into(),
            via: format!("{mode}-node"),
            minimum: Minimum {
                cold: d(min_ms),
                warm_miss: d(min_ms / 3),
                warm_hit: d(0),
                ..Minimum::default()
            },
            samples: Samples {
                cold: vec![d(cold_ms), d(cold_ms + 10), d(cold_ms - 10)],
                warm_miss: vec![d(cold_ms / 3)],
                warm_hit: vec![d(1)],
                cached: false,
                ..Samples::default()
            },
        }
    }

    #[test]
    fn table_shows_medians_minimums_ratios_and_savings() {
        let rs = [
            result("edge", "e", 110, 100),
            result("regional", "g", 300, 270),
        ];
        let t = table(&rs, 3);
        assert!(t.contains("110.0  (100.0, 1.10x)"), "{t}");
        assert!(t.contains("1.0* (0.0, -)"), "{t}");
        assert!(t.contains("* no cache answered"), "{t}");
        assert!(
            t.contains("far: e via edge-node 110.0 ms vs g via regional-node 300.0 ms: edge saves 190.0 ms (63 %) [cold]"),
            "{t}"
        );
    }

    #[test]
    fn measures_without_samples_are_left_out_or_marked() {
        let mut edge = result("edge", "e", 110, 100);
        edge.samples.cold_h3 = vec![Duration::from_millis(80)];
        edge.minimum.cold_h3 = Duration::from_millis(70);
        let rs = [edge, result("regional", "g", 300, 270)];
        let t = table(&rs, 3);
        assert!(t.contains("cold_h3 ms (min, ratio)"), "{t}");
        assert!(
            t.contains("80.0  (70.0, 1.14x)") && t.contains("n/a "),
            "{t}"
        );
        assert!(
            !t.contains("0rtt_h3"),
            "no samples anywhere: no column\n{t}"
        );
        assert!(
            !t.contains("[cold_h3]"),
            "no comparison without both sides\n{t}"
        );
        assert_eq!(csv(&rs).matches(",cold_h3,").count(), 1);
        assert_eq!(csv(&[result("edge", "e", 20, 1)]).matches("h3").count(), 0);
    }

    #[test]
    fn csv_has_a_line_per_entry_and_measure() {
        let rs = [result("edge", "e", 110, 100)];
        let c = csv(&rs);
        let lines: Vec<_> = c.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[1],
            "far,e,edge,edge-node,cold,3,110.000,100.000,1.100,"
        );
        assert_eq!(
            lines[3],
            "far,e,edge,edge-node,warm_hit,1,1.000,0.000,,false"
        );
    }

    #[test]
    fn refused_0rtt_runs_are_not_counted_as_samples() {
        let d = Duration::from_millis;
        let with_0rtt = |api: &str, kept: Vec<Duration>| {
            let mut r = result("edge", api, 110, 100);
            r.samples.cold_h3 = vec![d(80); 3];
            r.samples.warm_miss = vec![d(36); 3];
            r.samples.warm_hit = vec![d(1); 3];
            r.samples.zero_rtt_h3 = kept;
            r.samples.zero_rtt_runs = 3;
            r.minimum.cold_h3 = d(70);
            r
        };
        let rs = [
            with_0rtt("two", vec![d(40), d(44)]),
            with_0rtt("none", Vec::new()),
        ];
        let c = csv(&rs);
        assert!(
            c.contains("\nfar,two,edge,edge-node,0rtt_h3,2,42.000,33.000,1.273,\n"),
            "{c}"
        );
        assert!(
            c.contains("\nfar,none,edge,edge-node,0rtt_h3,0,,33.000,,\n"),
            "{c}"
        );
        assert!(c.contains(",cold,3,") && c.contains(",cold_h3,3,"), "{c}");
        let title = "median of 3 run(s) (0rtt_h3: 0–2 sample(s))";
        assert_eq!(medians_of(&rs, 3), title);
        let t = table(&rs, 3);
        assert!(
            t.starts_with(&format!("time to first byte, {title} |")),
            "{t}"
        );
        assert!(t.contains("no samples "), "{t}");
        assert_eq!(medians_of(&rs[..1], 1), "median of 1 run(s)");
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let rs = [
            result("edge", "e<1>", 110, 100),
            result("regional", "g", 300, 270),
        ];
        let s = svg(&rs, "probe & co");
        assert!(s.starts_with("<svg ") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<rect ").count(), 1 + 6);
        assert!(s.contains("e&lt;1&gt;") && s.contains("probe &amp; co"));
    }
}
