//! The SVG chart: legitimate knock success, daemon CPU, peak RSS and the flood rate
//! actually reached (sent by the generator, received by the server's veth) against the
//! flood rate asked for, one line per daemon (and flood mode, and generator core
//! count, when the results mix several).
//!
//! SVG text is left to the viewer's fonts, so nothing here needs a font library.

use crate::report::RunResult;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// One line of the chart: its label and its runs, in x order.
struct Line<'a> {
    label: String,
    runs: Vec<(usize, &'a RunResult)>,
}

/// The x categories (rates, ascending, `max` last) and the lines.
fn layout(runs: &[RunResult]) -> (Vec<String>, Vec<Line<'_>>) {
    let mut rates: Vec<Option<u64>> = runs.iter().map(|r| r.target_pps).collect();
    // Numbers ascending, then None (max).
    rates.sort_by_key(|r| (r.is_none(), *r));
    rates.dedup();
    let labels: Vec<String> = rates
        .iter()
        .map(|r| match r {
            // Flat out: what the generator reached (it differs between runs).
            None => {
                let offered: Vec<u64> =
                    runs.iter().filter(|x| x.target_pps.is_none()).map(|x| x.offered_pps as u64).collect();
                let (lo, hi) = (offered.iter().min().copied(), offered.iter().max().copied());
                match (lo, hi) {
                    (Some(lo), Some(hi)) if lo == hi => format!("max ({})", crate::report::short_count(lo)),
                    (Some(lo), Some(hi)) => {
                        format!("max ({}-{})", crate::report::short_count(lo), crate::report::short_count(hi))
                    }
                    _ => "max".to_string(),
                }
            }
            Some(n) => crate::report::short_count(*n),
        })
        .collect();
    // A run without flood (rate 0) is the starting point of every flood's line, not a
    // series of its own.
    let floods: std::collections::BTreeSet<(&str, &str)> =
        runs.iter().filter(|r| r.flood != "none").map(|r| (r.flood.as_str(), r.proto.as_str())).collect();
    // Runs with different generator core counts are different lines.
    let several_gens = runs.iter().any(|r| r.gen_cpus != runs[0].gen_cpus);
    let gens =
        |r: &RunResult| if several_gens { format!(", gen-cpus {}", r.gen_cpus) } else { String::new() };
    let mut groups: BTreeMap<String, Vec<(usize, &RunResult)>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for r in runs {
        let x = rates.iter().position(|v| *v == r.target_pps).expect("rate listed");
        let labels: Vec<String> = if floods.len() <= 1 {
            vec![format!("{}{}", r.daemon, gens(r))]
        } else if r.flood == "none" {
            floods.iter().map(|(f, p)| format!("{} ({f} {p}{})", r.daemon, gens(r))).collect()
        } else {
            vec![format!("{} ({} {}{})", r.daemon, r.flood, r.proto, gens(r))]
        };
        for label in labels {
            if !groups.contains_key(&label) {
                order.push(label.clone());
            }
            groups.entry(label).or_default().push((x, r));
        }
    }
    let lines = order
        .into_iter()
        .map(|label| {
            let mut runs = groups.remove(&label).unwrap_or_default();
            runs.sort_by_key(|(x, _)| *x);
            Line { label, runs }
        })
        .collect();
    (labels, lines)
}

fn color_of(label: &str, i: usize) -> RGBColor {
    if label.starts_with("sesamed") {
        RGBColor(31, 119, 180)
    } else if label.starts_with("knockd") {
        RGBColor(214, 39, 40)
    } else {
        let c = Palette99::pick(i + 2).to_rgba();
        RGBColor(c.0, c.1, c.2)
    }
}

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

/// A value of a run to plot, `None` where it has none.
type Value<'a> = &'a dyn Fn(&RunResult) -> Option<f64>;

/// One panel: `value` of every run against the rate categories, and `dashed`, if
/// given, as a dashed line of the same colour.
#[allow(clippy::too_many_arguments)]
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    labels: &[String],
    lines: &[Line<'_>],
    y_max: f64,
    value: Value<'_>,
    dashed: Option<Value<'_>>,
) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    // A discrete u32 range includes its end: categories 0..=n-1.
    let last = labels.len().saturating_sub(1) as u32;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((0u32..last).into_segmented(), 0f64..y_max)?;
    let fmt_x = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("flood rate (pps)")
        .y_desc(y_desc)
        .x_label_formatter(&fmt_x)
        .draw()?;
    for (i, line) in lines.iter().enumerate() {
        let color = color_of(&line.label, i);
        let pts: Vec<(SegmentValue<u32>, f64)> = line
            .runs
            .iter()
            .filter_map(|(x, r)| value(r).map(|v| (SegmentValue::CenterOf(*x as u32), v)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
        if let Some(dashed) = dashed {
            let pts: Vec<(SegmentValue<u32>, f64)> = line
                .runs
                .iter()
                .filter_map(|(x, r)| dashed(r).map(|v| (SegmentValue::CenterOf(*x as u32), v)))
                .collect();
            chart.draw_series(DashedLineSeries::new(pts.clone(), 6, 4, color.stroke_width(2)))?;
            chart.draw_series(pts.into_iter().map(|p| Cross::new(p, 4, color.stroke_width(2))))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn upper(runs: &[RunResult], f: impl Fn(&RunResult) -> Option<f64>, floor: f64) -> f64 {
    let m = runs.iter().filter_map(f).fold(0.0f64, f64::max);
    (m * 1.15).max(floor)
}

/// Renders the chart of `runs` as an SVG document.
pub fn render_svg(runs: &[RunResult]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 1440)).into_drawing_area();
        draw(&root, runs).map_err(|e| anyhow::anyhow!("drawing the chart: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("writing the chart: {e}"))?;
    }
    Ok(svg)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    runs: &[RunResult],
) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (labels, lines) = layout(runs);
    let panels = root.split_evenly((4, 1));
    panel(
        &panels[0],
        "Legitimate knock sequences that opened the door",
        "success (%)",
        &labels,
        &lines,
        105.0,
        &|r| Some(r.legit_success_pct),
        None,
    )?;
    panel(
        &panels[1],
        "Daemon CPU while the flood ran",
        "CPU (% of one core)",
        &labels,
        &lines,
        upper(runs, |r| Some(r.cpu_percent), 10.0),
        &|r| Some(r.cpu_percent),
        None,
    )?;
    let mib = |r: &RunResult| r.peak_rss_kib.map(|k| k as f64 / 1024.0);
    panel(&panels[2], "Daemon peak RSS (VmHWM)", "MiB", &labels, &lines, upper(runs, mib, 8.0), &mib, None)?;
    let received = |r: &RunResult| Some(r.delivered_pps / 1000.0);
    let sent = |r: &RunResult| Some(r.flood_pps() / 1000.0);
    let top = upper(runs, received, 1.0).max(upper(runs, sent, 1.0));
    panel(
        &panels[3],
        &format!("Flood reached: received by the server's veth (solid), sent ({}, dashed)", gen_cores(runs)),
        "kpps",
        &labels,
        &lines,
        top,
        &received,
        Some(&sent),
    )?;
    Ok(())
}

/// `1 generator core`, `2 generator cores`, `1-2 generator cores`.
fn gen_cores(runs: &[RunResult]) -> String {
    let lo = runs.iter().map(|r| r.gen_cpus).min().unwrap_or(1);
    let hi = runs.iter().map(|r| r.gen_cpus).max().unwrap_or(1);
    let n = if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") };
    format!("{n} generator core{}", if hi == 1 { "" } else { "s" })
}

/// Writes the chart of `runs` to `path`.
pub fn write_svg(path: &Path, runs: &[RunResult]) -> anyhow::Result<()> {
    std::fs::write(path, render_svg(runs)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample_run;

    #[test]
    fn categories_are_sorted_with_max_last() {
        let runs = vec![
            sample_run("sesamed", None, 50, 1.0),
            sample_run("sesamed", Some(10_000), 50, 0.5),
            sample_run("sesamed", Some(0), 50, 0.1),
            sample_run("knockd", Some(10_000), 30, 4.0),
            sample_run("knockd", None, 0, 9.0),
        ];
        let (labels, lines) = layout(&runs);
        assert_eq!(labels, ["0", "10k", "max (10)"]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].label, "sesamed");
        assert_eq!(lines[0].runs.iter().map(|(x, _)| *x).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(lines[1].label, "knockd");
        assert_eq!(lines[1].runs.iter().map(|(x, _)| *x).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn several_flood_modes_get_their_own_lines() {
        let mut a = sample_run("sesamed", None, 50, 1.0);
        a.flood = "mixed".into();
        let b = sample_run("sesamed", None, 50, 1.0);
        let runs = [a, b];
        let (_, lines) = layout(&runs);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].label, "sesamed (mixed syn)");
    }

    #[test]
    fn generator_core_counts_get_their_own_lines() {
        let one = sample_run("sesamed", None, 50, 1.0);
        let mut two = sample_run("sesamed", None, 50, 1.0);
        two.gen_cpus = 2;
        let runs = [one.clone(), two];
        let (_, lines) = layout(&runs);
        assert_eq!(
            lines.iter().map(|l| l.label.as_str()).collect::<Vec<_>>(),
            ["sesamed, gen-cpus 1", "sesamed, gen-cpus 2"]
        );
        assert_eq!(gen_cores(&runs), "1-2 generator cores");
        let (_, lines) = layout(std::slice::from_ref(&one));
        assert_eq!(lines[0].label, "sesamed");
        assert_eq!(gen_cores(&[one]), "1 generator core");
        let svg = render_svg(&runs).unwrap();
        assert!(
            svg.contains("Flood reached") && svg.contains("gen-cpus 2"),
            "{}",
            &svg[..svg.len().min(200)]
        );
    }

    #[test]
    fn svg_has_both_daemons() {
        let runs = vec![
            sample_run("sesamed", Some(1000), 50, 0.2),
            sample_run("sesamed", None, 50, 3.0),
            sample_run("knockd", Some(1000), 50, 0.4),
            sample_run("knockd", None, 10, 10.0),
        ];
        let svg = render_svg(&runs).unwrap();
        assert!(svg.contains("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.contains("sesamed") && svg.contains("knockd"));
        assert!(svg.contains("max") && svg.contains("1k"));
        assert!(svg.contains("</svg>"));
        // One run (one category) and no run at all still make a chart.
        assert!(render_svg(&runs[..1]).unwrap().contains("<svg"));
        assert!(render_svg(&[]).unwrap().contains("<svg"));
    }
}
