//! A confusion-matrix heatmap with class names, from the test report.

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::Chart;

/// Beyond this many classes a heatmap is unreadable; the most frequent ones are shown.
const MAX_CLASSES: usize = 30;

pub struct Matrix {
    name: String,
    classes: Vec<String>,
    /// Row-normalised shares (recall per true class).
    shares: Vec<Vec<f64>>,
    counts: Vec<Vec<u64>>,
    hidden: usize,
}

impl Matrix {
    pub fn from_report(name: &str, report: &serde_json::Value) -> anyhow::Result<Self> {
        let classes: Vec<String> =
            serde_json::from_value(report["classes"].clone()).context("classes")?;
        let confusion: Vec<Vec<u64>> =
            serde_json::from_value(report["confusion"].clone()).context("confusion")?;
        let mut order: Vec<usize> = (0..classes.len())
            .filter(|&i| confusion[i].iter().sum::<u64>() > 0)
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse(confusion[i].iter().sum::<u64>()));
        let hidden = order.len().saturating_sub(MAX_CLASSES);
        order.truncate(MAX_CLASSES);
        let counts: Vec<Vec<u64>> = order
            .iter()
            .map(|&t| order.iter().map(|&p| confusion[t][p]).collect())
            .collect();
        let shares = order
            .iter()
            .zip(&counts)
            .map(|(&t, row)| {
                let total = confusion[t].iter().sum::<u64>().max(1) as f64;
                row.iter().map(|&c| c as f64 / total).collect()
            })
            .collect();
        Ok(Self {
            name: name.to_string(),
            classes: order.iter().map(|&i| classes[i].clone()).collect(),
            shares,
            counts,
            hidden,
        })
    }
}

impl Chart for Matrix {
    fn size(&self) -> (u32, u32) {
        let side = 260 + 34 * self.classes.len() as u32;
        (side + 40, side)
    }

    fn draw<B: DrawingBackend>(&self, area: &DrawingArea<B, Shift>) -> anyhow::Result<()>
    where
        B::ErrorType: 'static,
    {
        area.fill(&WHITE)?;
        let n = self.classes.len().max(1);
        let title = if self.hidden > 0 {
            format!(
                "{}: confusion (share of each true class; {} rarer classes not shown)",
                self.name, self.hidden
            )
        } else {
            format!("{}: confusion (share of each true class)", self.name)
        };
        // Segmented axes put each label at the centre of its cell; rows run top-down.
        // plotters centres rotated labels on the axis, hiding their first half;
        // padding each with as many spaces keeps the name below the axis.
        let name = |v: &SegmentValue<usize>, flip: bool| match v {
            SegmentValue::CenterOf(i) if *i < n => {
                self.classes[if flip { n - 1 - i } else { *i }].clone()
            }
            _ => String::new(),
        };
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(130)
            .y_label_area_size(170)
            .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n)
            .y_labels(n)
            .x_desc("predicted class")
            .y_desc("true class")
            .x_label_formatter(&|v| {
                let label = name(v, false);
                format!("{}{label}", " ".repeat(label.chars().count() + 1))
            })
            .y_label_formatter(&|v| name(v, true))
            .x_label_style(
                ("sans-serif", 13)
                    .into_font()
                    .transform(FontTransform::Rotate90)
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Right, VPos::Center)),
            )
            .y_label_style(("sans-serif", 13))
            .draw()?;
        for (t, row) in self.shares.iter().enumerate() {
            let y = n - 1 - t;
            for (p, &share) in row.iter().enumerate() {
                let color = HSLColor(0.6, 0.75, 1.0 - 0.6 * share);
                let corners = [
                    (SegmentValue::Exact(p), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(p + 1), SegmentValue::Exact(y + 1)),
                ];
                chart.draw_series(std::iter::once(Rectangle::new(corners, color.filled())))?;
                if self.counts[t][p] > 0 {
                    let text_color = if share > 0.5 { WHITE } else { BLACK };
                    let style = ("sans-serif", 12)
                        .into_font()
                        .color(&text_color)
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    chart.draw_series(std::iter::once(Text::new(
                        self.counts[t][p].to_string(),
                        (SegmentValue::CenterOf(p), SegmentValue::CenterOf(y)),
                        style,
                    )))?;
                }
            }
        }
        Ok(())
    }
}
