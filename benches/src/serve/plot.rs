//! SVG plots of `dvd bench serve` runs: latency CDFs (TTFT and end-to-end, load and probes) of
//! one run or a sweep, and, for a sweep over request rates, achieved throughput and latency
//! against the offered rate.

use std::path::{Path, PathBuf};

use anyhow::Result;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::dataset::Kind;
use super::report::{Outcome, ServeReport};

/// One run of a sweep: its report and every request's outcome.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    /// The summary.
    pub report: &'a ServeReport,
    /// Per-request outcomes (load and probes).
    pub outcomes: &'a [Outcome],
}

impl Run<'_> {
    fn label(&self) -> String {
        match self.report.run.request_rate {
            Some(r) => format!("{r} req/s"),
            None => "all at once".into(),
        }
    }
}

/// Which latency a CDF shows.
#[derive(Debug, Clone, Copy)]
enum Latency {
    Ttft,
    E2el,
}

const SIZE: (u32, u32) = (900, 560);
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Writes `ttft_cdf.svg` and `e2el_cdf.svg`, and `throughput_vs_rate.svg` when at least two
/// runs had a finite rate, into `dir`; returns the files written.
pub fn write_all(dir: &Path, runs: &[Run<'_>]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (latency, name) in [
        (Latency::Ttft, "ttft_cdf.svg"),
        (Latency::E2el, "e2el_cdf.svg"),
    ] {
        let path = dir.join(name);
        latency_cdf(&path, runs, latency)?;
        written.push(path);
    }
    if runs
        .iter()
        .filter(|r| r.report.run.request_rate.is_some())
        .count()
        >= 2
    {
        let path = dir.join("throughput_vs_rate.svg");
        throughput_vs_rate(&path, runs)?;
        written.push(path);
    }
    Ok(written)
}

/// Milliseconds of `latency` for each answered request of `kind`, sorted.
fn latencies(outcomes: &[Outcome], kind: Kind, latency: Latency) -> Vec<f64> {
    let mut v: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.kind == kind)
        .filter_map(|o| o.result.as_ref().ok())
        .filter_map(|t| match latency {
            Latency::Ttft => t.ttft,
            Latency::E2el => Some(t.e2el),
        })
        .map(|s| s * 1e3)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Empirical CDF points of sorted values: (value, fraction at or below it).
fn cdf(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, (i + 1) as f64 / n))
        .collect()
}

fn latency_cdf(path: &Path, runs: &[Run<'_>], latency: Latency) -> Result<()> {
    let (title, axis) = match latency {
        Latency::Ttft => ("Time to first token, CDF", "TTFT (ms)"),
        Latency::E2el => ("End-to-end latency, CDF", "E2EL (ms)"),
    };
    let mut lines = Vec::new();
    for run in runs {
        for (kind, what) in [(Kind::Load, "load"), (Kind::Probe, "text probes")] {
            let values = latencies(run.outcomes, kind, latency);
            if !values.is_empty() {
                lines.push((format!("{}, {what}", run.label()), kind, cdf(&values)));
            }
        }
    }
    let max = lines
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|&(v, _)| v))
        .fold(1.0f64, f64::max);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = new_chart(
        &root,
        title,
        (axis, max * 1.05),
        ("fraction of requests", 1.0),
    )?;
    for (i, (label, kind, points)) in lines.into_iter().enumerate() {
        let width = if kind == Kind::Load { 2 } else { 1 };
        line(
            &mut chart,
            points,
            PALETTE[i % PALETTE.len()].stroke_width(width),
            &label,
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

fn throughput_vs_rate(path: &Path, runs: &[Run<'_>]) -> Result<()> {
    let mut points: Vec<(f64, &ServeReport)> = runs
        .iter()
        .filter_map(|r| r.report.run.request_rate.map(|rate| (rate, r.report)))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let max_rate = points.iter().map(|p| p.0).fold(0.0f64, f64::max).max(1e-3);
    let latency = |r: &ServeReport, key: &str| r.latencies.get(key).copied().unwrap_or(0.0);
    let max_ms = points
        .iter()
        .map(|(_, r)| latency(r, "p99_ttft_ms").max(latency(r, "p99_e2el_ms")))
        .fold(1.0f64, f64::max);
    let offered = ("offered requests/s", max_rate * 1.05);

    let root = SVGBackend::new(path, (SIZE.0, SIZE.1 * 2)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(SIZE.1);
    let title = "Achieved against offered request rate";
    let mut chart = new_chart(
        &top,
        title,
        offered,
        ("completed requests/s", max_rate * 1.05),
    )?;
    let diagonal = vec![(0.0, 0.0), (max_rate, max_rate)];
    line(
        &mut chart,
        diagonal,
        BLACK.mix(0.4).stroke_width(1),
        "offered = achieved",
    )?;
    let achieved: Vec<(f64, f64)> = points
        .iter()
        .map(|(x, r)| (*x, r.request_throughput))
        .collect();
    let style = PALETTE[0].stroke_width(2);
    line(&mut chart, achieved.clone(), style, "completed requests/s")?;
    chart.draw_series(
        achieved
            .iter()
            .map(|&p| Circle::new(p, 4, PALETTE[0].filled())),
    )?;
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;

    let title = "Latency against offered request rate";
    let mut chart = new_chart(&bottom, title, offered, ("milliseconds", max_ms * 1.05))?;
    for (i, key) in [
        "median_ttft_ms",
        "p99_ttft_ms",
        "median_e2el_ms",
        "p99_e2el_ms",
    ]
    .into_iter()
    .enumerate()
    {
        let series: Vec<(f64, f64)> = points.iter().map(|(x, r)| (*x, latency(r, key))).collect();
        let label = key.trim_end_matches("_ms").replace('_', " ");
        line(
            &mut chart,
            series,
            PALETTE[(i + 1) % PALETTE.len()].stroke_width(2),
            &label,
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

/// A chart on the SVG drawing area, both axes from 0.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A titled chart over [0, x max] x [0, y max] with described axes and a mesh.
fn new_chart<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
    (x_desc, x_max): (&str, f64),
    (y_desc, y_max): (&str, f64),
) -> Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()?;
    Ok(chart)
}

/// Draws `points` joined by a line with `style`, named `label` in the legend.
fn line<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    points: Vec<(f64, f64)>,
    style: ShapeStyle,
    label: &str,
) -> Result<()> {
    chart
        .draw_series(LineSeries::new(points, style))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    Ok(())
}

/// The legend box at `position`.
fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::client::Timing;
    use crate::serve::report::RunInfo;

    fn outcome(kind: Kind, ttft: f64) -> Outcome {
        let timing = Timing {
            ttft: Some(ttft),
            e2el: ttft * 2.0,
            output_tokens: 4,
            ..Timing::default()
        };
        Outcome {
            kind,
            sent_at: 0.0,
            images: 1,
            result: Ok(timing),
        }
    }

    fn report(rate: Option<f64>, outcomes: &[Outcome]) -> ServeReport {
        let info = RunInfo {
            model: "m".into(),
            request_rate: rate,
            burstiness: 1.0,
            max_concurrency: None,
            num_prompts: outcomes.len(),
            duration_asked_s: None,
            duration: 1.0,
        };
        ServeReport::new(info, outcomes, &[], &[50.0, 99.0])
    }

    #[test]
    fn cdfs_rise_to_one_in_order() {
        let points = cdf(&[1.0, 2.0, 4.0, 8.0]);
        assert_eq!(points.first(), Some(&(1.0, 0.25)));
        assert_eq!(points.last(), Some(&(8.0, 1.0)));
    }

    #[test]
    fn a_sweep_writes_every_plot() {
        let dir = tempfile::tempdir().unwrap();
        let slow: Vec<Outcome> = (1..=20)
            .map(|i| outcome(Kind::Load, i as f64 * 0.01))
            .collect();
        let mut fast = slow.clone();
        fast.push(outcome(Kind::Probe, 0.005));
        let (a, b) = (report(Some(1.0), &slow), report(Some(4.0), &fast));
        let runs = [
            Run {
                report: &a,
                outcomes: &slow,
            },
            Run {
                report: &b,
                outcomes: &fast,
            },
        ];
        let written = write_all(dir.path(), &runs).unwrap();
        assert_eq!(written.len(), 3);
        let cdf = std::fs::read_to_string(dir.path().join("ttft_cdf.svg")).unwrap();
        assert!(
            cdf.starts_with("<svg") && cdf.contains("4 req/s, text probes"),
            "{cdf}"
        );
        let rate = std::fs::read_to_string(dir.path().join("throughput_vs_rate.svg")).unwrap();
        assert!(rate.contains("completed requests/s") && rate.contains("p99 ttft"));
        // One run: no rate plot.
        let one = write_all(dir.path(), &runs[..1]).unwrap();
        assert_eq!(one.len(), 2);
    }
}
