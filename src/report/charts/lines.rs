//! Line charts: a metric against epochs, poison rate, fine-tuning steps...

use super::{fig_err, padded_span, xy_chart};
use crate::error::{Error, Result};
use crate::report::style::colour;
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

pub(super) fn draw<DB: DrawingBackend>(c: &LineChart, area: &DrawingArea<DB, Shift>) -> Result<()> {
    if c.series.iter().all(|(_, p)| p.is_empty()) {
        return Err(Error::Figure("a line chart needs at least one point".into()));
    }
    let xs = padded_span(c.series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)));
    let ys = c.y_range.unwrap_or_else(|| padded_span(c.series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1))));
    let integer_x = c.series.iter().flat_map(|(_, p)| p.iter()).all(|q| q.0 == q.0.round());
    let mut chart = xy_chart(area, &c.title, &c.x_label, &c.y_label, xs, ys, integer_x)?;
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
