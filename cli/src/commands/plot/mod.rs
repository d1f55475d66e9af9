//! `atelier plot`: training curves and confusion heatmaps as PNG and SVG,
//! written under `<checkpoint>/plots/`.

mod confusion;
mod curves;
mod fonts;

use std::io::Cursor;

use anyhow::Context;
use atelier_models::CheckpointDir;
use atelier_worker::MetricsLine;
use atelier_worker::REPORT;
use bytes::Bytes;
use clap::Args;
use plotters::prelude::*;
use tokio::runtime::Handle;

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Checkpoint prefix written by `atelier train` (and `atelier test` for the heatmap).
    #[arg(long)]
    pub checkpoint: String,
}

pub fn run(args: &PlotArgs, handle: &Handle) -> anyhow::Result<()> {
    fonts::register()?;
    let checkpoint = CheckpointDir::parse(&args.checkpoint)?;
    let manifest = handle
        .block_on(checkpoint.manifest())?
        .with_context(|| format!("{} holds no checkpoint: train first", checkpoint.url()))?;
    let metrics_file = manifest.metrics_file();
    let metrics = handle
        .block_on(checkpoint.get(metrics_file))?
        .with_context(|| format!("{} has no {metrics_file}: train first", checkpoint.url()))?;
    let lines: Vec<MetricsLine> = String::from_utf8_lossy(&metrics)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut written = save(
        &checkpoint,
        handle,
        "curves",
        &curves::Curves { lines: &lines },
    )?;
    if let Some(report) = handle.block_on(checkpoint.get(REPORT))? {
        let report: serde_json::Value =
            serde_json::from_slice(&report).context("reading the test report")?;
        if let Some(attributes) = report["attributes"].as_object() {
            for (name, attribute) in attributes {
                let matrix = confusion::Matrix::from_report(name, attribute)?;
                written.extend(save(
                    &checkpoint,
                    handle,
                    &format!("confusion-{name}"),
                    &matrix,
                )?);
            }
        }
    } else {
        println!("no {REPORT} yet: run `atelier test` for confusion heatmaps");
    }
    for url in written {
        println!("wrote {url}");
    }
    Ok(())
}

/// Something drawn the same way on any backend.
trait Chart {
    fn size(&self) -> (u32, u32);
    fn draw<B: DrawingBackend>(
        &self,
        area: &DrawingArea<B, plotters::coord::Shift>,
    ) -> anyhow::Result<()>
    where
        B::ErrorType: 'static;
}

/// Renders `chart` as PNG and SVG and stores both under `plots/`.
fn save(
    checkpoint: &CheckpointDir,
    handle: &Handle,
    name: &str,
    chart: &impl Chart,
) -> anyhow::Result<Vec<String>> {
    let (width, height) = chart.size();
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        chart.draw(&area)?;
        area.present().context("rendering svg")?;
    }
    let mut rgb = vec![0u8; (width * height * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        chart.draw(&area)?;
        area.present().context("rendering png")?;
    }
    let image = image::RgbImage::from_raw(width, height, rgb).context("bitmap size")?;
    let mut png = Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png)?;
    let mut urls = Vec::new();
    for (file, bytes) in [
        (format!("plots/{name}.png"), png.into_inner()),
        (format!("plots/{name}.svg"), svg.into_bytes()),
    ] {
        handle.block_on(checkpoint.put(&file, Bytes::from(bytes)))?;
        urls.push(checkpoint.location.child(&file).url());
    }
    Ok(urls)
}
