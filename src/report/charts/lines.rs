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
    super::draw_legend(&mut chart, quietest_corner(c, xs, ys))
}

/// The plot corner the lines pass through least (points and points along each segment), so
/// the legend hides no data; lower right when several are empty.
fn quietest_corner(c: &LineChart, xs: (f64, f64), ys: (f64, f64)) -> SeriesLabelPosition {
    let (wx, wy) = ((xs.1 - xs.0).max(f64::MIN_POSITIVE), (ys.1 - ys.0).max(f64::MIN_POSITIVE));
    let mut counts = [0usize; 4]; // lower right, upper right, upper left, lower left
    for (_, points) in &c.series {
        let samples = points.windows(2).flat_map(|w| (0..8).map(move |k| {
            let t = k as f64 / 8.0;
            (w[0].0 + t * (w[1].0 - w[0].0), w[0].1 + t * (w[1].1 - w[0].1))
        }));
        for (x, y) in samples.chain(points.last().copied()) {
            let (u, v) = ((x - xs.0) / wx, (y - ys.0) / wy);
            let (right, left, top, bottom) = (u > 0.55, u < 0.45, v > 0.7, v < 0.3);
            for (i, inside) in [right && bottom, right && top, left && top, left && bottom].into_iter().enumerate() {
                counts[i] += inside as usize;
            }
        }
    }
    let best = (0..4).min_by_key(|&i| (counts[i], i)).unwrap_or(0);
    match best {
        1 => SeriesLabelPosition::UpperRight,
        2 => SeriesLabelPosition::UpperLeft,
        3 => SeriesLabelPosition::LowerLeft,
        _ => SeriesLabelPosition::LowerRight,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legend_goes_where_no_line_passes() {
        let falling = LineChart::new("t", "x", "y").series("a", vec![(0.0, 100.0), (10.0, 0.0)]);
        assert!(matches!(quietest_corner(&falling, (0.0, 10.0), (0.0, 100.0)), SeriesLabelPosition::UpperRight));
        let rising = LineChart::new("t", "x", "y").series("a", vec![(0.0, 0.0), (10.0, 100.0)]);
        assert!(matches!(quietest_corner(&rising, (0.0, 10.0), (0.0, 100.0)), SeriesLabelPosition::LowerRight));
        let top = LineChart::new("t", "x", "y").series("a", vec![(0.0, 95.0), (5.0, 100.0), (10.0, 95.0)]);
        assert!(matches!(quietest_corner(&top, (0.0, 10.0), (0.0, 100.0)), SeriesLabelPosition::LowerRight));
        let bottom = LineChart::new("t", "x", "y").series("a", vec![(0.0, 5.0), (5.0, 0.0), (10.0, 5.0)]);
        assert!(matches!(quietest_corner(&bottom, (0.0, 10.0), (0.0, 100.0)), SeriesLabelPosition::UpperRight));
    }
}
