//! Line charts: a metric against epochs, poison rate, fine-tuning steps...

use super::fig_err;
use crate::error::{Error, Result};
use crate::report::font::FAMILY;
use crate::report::style::{colour, LABEL_SIZE, MARGIN, TICK_SIZE, TITLE_SIZE};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Named series of (x, y) points, with markers.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    pub y_range: Option<(f64, f64)>,
}

impl LineChart {
    /// A chart with no series yet.
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        Self { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), series: Vec::new(), y_range: None }
    }

    /// Add a series.
    pub fn series(mut self, name: &str, points: Vec<(f64, f64)>) -> Self {
        self.series.push((name.into(), points));
        self
    }

    /// Fix the y range.
    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }
}

fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

pub(super) fn draw<DB: DrawingBackend>(c: &LineChart, area: &DrawingArea<DB, Shift>) -> Result<()> {
    if c.series.iter().all(|(_, p)| p.is_empty()) {
        return Err(Error::Figure("a line chart needs at least one point".into()));
    }
    let xs = span(c.series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)));
    let ys = c.y_range.unwrap_or_else(|| span(c.series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1))));
    let mut chart = ChartBuilder::on(area)
        .caption(&c.title, (FAMILY, TITLE_SIZE))
        .margin(MARGIN)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(xs.0..xs.1, ys.0..ys.1)
        .map_err(fig_err)?;
    chart
        .configure_mesh()
        .x_desc(&c.x_label)
        .y_desc(&c.y_label)
        .light_line_style(WHITE.mix(0.0))
        .label_style((FAMILY, TICK_SIZE))
        .axis_desc_style((FAMILY, LABEL_SIZE))
        .draw()
        .map_err(fig_err)?;
    for (s, (name, points)) in c.series.iter().enumerate() {
        let col = colour(s);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), col.stroke_width(3)))
            .map_err(fig_err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], col.stroke_width(3)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, col.filled())))
            .map_err(fig_err)?;
    }
    super::draw_legend(&mut chart, SeriesLabelPosition::LowerRight)
}
