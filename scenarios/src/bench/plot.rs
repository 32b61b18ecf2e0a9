//! The suite's plot: for every figure with a baseline, how many times
//! better mesh is (log scale; right of 1, mesh wins; left, it loses).

use std::path::Path;

use anyhow::{anyhow, Context};
use plotters::prelude::*;

use super::report::Figure;

/// The font the labels are drawn in (Debian's fonts-dejavu-core).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Longest label drawn.
const LABEL: usize = 90;

/// Draws the advantage of each figure with a baseline into `path` (PNG).
pub(super) fn advantage(figures: &[Figure], path: &Path) -> anyhow::Result<()> {
    let bars: Vec<(String, f64)> = figures.iter().filter_map(|f| Some((label(f), f.advantage()?))).collect();
    if bars.is_empty() {
        return Ok(());
    }
    register_font()?;
    let height = u32::try_from(120 + 26 * bars.len()).unwrap_or(u32::MAX);
    let root = BitMapBackend::new(path, (1400, height)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let (low, high) = bars.iter().fold((0.5f64, 2.0f64), |(low, high), (_, v)| (low.min(*v), high.max(*v)));
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "mesh against its baseline, same run: times better (log scale; right of 1 mesh wins)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(620)
        .build_cartesian_2d((low / 1.5..high * 1.5).log_scale(), (0..bars.len()).into_segmented())
        .map_err(drawing)?;
    let names: Vec<String> = bars.iter().map(|(name, _)| name.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(names.len().wrapping_sub(1 + *i)).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_formatter(&|v| format!("{v}x"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(drawing)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, value))| {
            // The first figure at the top.
            let i = bars.len() - 1 - i;
            let colour = if *value >= 1.0 { GREEN.mix(0.7) } else { RED.mix(0.7) };
            let mut bar =
                Rectangle::new([(1.0, SegmentValue::Exact(i)), (*value, SegmentValue::Exact(i + 1))], colour.filled());
            bar.set_margin(3, 3, 0, 0);
            bar
        }))
        .map_err(drawing)?;
    chart
        .draw_series(LineSeries::new([(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(bars.len()))], &BLACK))
        .map_err(drawing)?;
    root.present().map_err(drawing)?;
    Ok(())
}

fn label(figure: &Figure) -> String {
    let baseline = figure.baseline.as_ref().map_or("", |b| b.name.as_str());
    let text = format!("{}: {} (vs {baseline})", figure.bench, figure.name);
    if text.chars().count() <= LABEL {
        return text;
    }
    let cut: String = text.chars().take(LABEL - 1).collect();
    format!("{cut}…")
}

fn register_font() -> anyhow::Result<()> {
    let bytes =
        std::fs::read(FONT).with_context(|| format!("cannot read {FONT}: apt-get install fonts-dejavu-core"))?;
    // The font lives as long as the process: plotters keeps a reference.
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| anyhow!("{FONT} is not a font plotters can read"))
}

fn drawing(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw the plot: {error}")
}
