//! Loss, accuracy and learning rate over the run.

use std::collections::BTreeMap;

use atelier_worker::MetricsLine;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::Chart;

pub struct Curves<'a> {
    pub lines: &'a [MetricsLine],
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (0.0, 1.0)
    } else if (hi - lo).abs() < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi + (hi - lo) * 0.05)
    }
}

impl Chart for Curves<'_> {
    fn size(&self) -> (u32, u32) {
        (1500, 500)
    }

    fn draw<B: DrawingBackend>(&self, area: &DrawingArea<B, Shift>) -> anyhow::Result<()>
    where
        B::ErrorType: 'static,
    {
        area.fill(&WHITE)?;
        let panels = area.split_evenly((1, 3));
        let train: Vec<&MetricsLine> = self.lines.iter().filter(|l| l.split == "train").collect();
        let validation: Vec<&MetricsLine> = self
            .lines
            .iter()
            .filter(|l| l.split == "validation")
            .collect();
        let max_epoch = self.lines.iter().map(|l| l.epoch).fold(1.0, f64::max);

        // Loss per epoch: training (logged steps) and validation (epoch ends).
        let (lo, hi) = range(self.lines.iter().map(|l| l.loss));
        let mut chart = ChartBuilder::on(&panels[0])
            .caption("loss", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_epoch, lo.min(0.0)..hi)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("cross-entropy")
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                train.iter().map(|l| (l.epoch, l.loss)),
                &BLUE,
            ))?
            .label("train")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(
                validation.iter().map(|l| (l.epoch, l.loss)),
                RED.stroke_width(2),
            ))?
            .label("validation")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
        chart.draw_series(
            validation
                .iter()
                .map(|l| Circle::new((l.epoch, l.loss), 4, RED.filled())),
        )?;
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;

        // Validation accuracy per attribute.
        let mut chart = ChartBuilder::on(&panels[1])
            .caption("validation accuracy", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_epoch, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("accuracy (share correct)")
            .draw()?;
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for line in &validation {
            for (name, value) in &line.detail {
                if let Some(attribute) = name.strip_prefix("accuracy_") {
                    series
                        .entry(attribute.to_string())
                        .or_default()
                        .push((line.epoch, *value));
                }
            }
        }
        for (index, (name, points)) in series.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .draw()?;
        }

        // Learning rate per optimizer step.
        let max_step = self.lines.iter().map(|l| l.step).max().unwrap_or(1).max(1) as f64;
        let (_, lr_hi) = range(train.iter().map(|l| l.lr));
        let mut chart = ChartBuilder::on(&panels[2])
            .caption("learning rate", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..max_step, 0.0..lr_hi)?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc("learning rate")
            .draw()?;
        chart.draw_series(LineSeries::new(
            train.iter().map(|l| (l.step as f64, l.lr)),
            GREEN.stroke_width(2),
        ))?;
        Ok(())
    }
}
