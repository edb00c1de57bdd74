//! What scenarios share in their reports: percentiles and SVG plots
//! (`plotters`) written next to the JSON result.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

/// The `p` quantile (0..=1) of sorted samples, nearest-rank; 0 when empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (sorted.len() as f64 * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Round to three decimals, for JSON figures people read.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `perf/results/<scenario>-<date>/`, the folder for a run's plots.
pub(crate) fn folder(scenario: &str) -> anyhow::Result<PathBuf> {
    let json = crate::machine::result_path(scenario);
    let dir = json.with_extension("");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

const SIZE: (u32, u32) = (900, 520);
const COLORS: [RGBColor; 4] = [BLUE, RED, GREEN, MAGENTA];

/// Lines over a shared x axis: `series` is (name, points).
pub(crate) fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let x_max = series.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x)).fold(0.0_f64, f64::max).max(1e-9);
    let y_max = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y)).fold(0.0_f64, f64::max).max(1e-9);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_max * 1.05)
        .map_err(plot_error)?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(plot_error)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// The cumulative distribution of latency samples (ms).
pub(crate) fn cdf(path: &Path, title: &str, sorted_ms: &[f64]) -> anyhow::Result<()> {
    let n = sorted_ms.len().max(1) as f64;
    // At most a few thousand points: an SVG of a million is unreadable.
    let step = (sorted_ms.len() / 2000).max(1);
    let points: Vec<(f64, f64)> =
        sorted_ms.iter().enumerate().step_by(step).map(|(i, ms)| (*ms, (i + 1) as f64 / n)).collect();
    lines(path, title, "latency (ms)", "fraction of samples", &[("CDF", points)])
}

/// How many items fall in each bucket of `bucket` width: a histogram of
/// integer counts (e.g. allocations per node).
pub(crate) fn histogram(path: &Path, title: &str, x_label: &str, values: &[u32], bucket: u32) -> anyhow::Result<()> {
    let bucket = bucket.max(1);
    let top = values.iter().copied().max().unwrap_or(0) / bucket + 1;
    let mut counts = vec![0u32; top as usize];
    for v in values {
        counts[(v / bucket) as usize] += 1;
    }
    let y_max = counts.iter().copied().max().unwrap_or(1).max(1);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..top * bucket, 0u32..y_max + y_max / 20 + 1)
        .map_err(plot_error)?;
    chart.configure_mesh().x_desc(x_label).y_desc("nodes").draw().map_err(plot_error)?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, c)| {
            let x = i as u32 * bucket;
            Rectangle::new([(x, 0), (x + bucket, *c)], BLUE.mix(0.6).filled())
        }))
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}
