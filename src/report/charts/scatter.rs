//! Scatter plots with a least-squares line and Pearson's r (transfer accuracy against source
//! accuracy, and the like).

use super::{fig_err, padded_span, xy_chart};
use crate::error::{Error, Result};
use crate::report::first_seen;
use crate::report::font::FAMILY;
use crate::report::style::{colour, TICK_SIZE};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Points (optionally labelled), the fitted line y = a + b x, and r in the legend.
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<(f64, f64)>,
    pub labels: Vec<String>,
    /// One group name per point (or none): each group gets its own colour and legend entry.
    pub groups: Vec<String>,
    /// Draw the least-squares line (where a linear relation is the question).
    pub fit: bool,
}

/// Least-squares fit of y on x: (intercept, slope, Pearson r). `None` with fewer than two
/// distinct x values.
///
/// ```
/// let (a, b, r) = transferlab::report::charts::fit_line(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]).unwrap();
/// assert!((a - 1.0).abs() < 1e-12 && (b - 2.0).abs() < 1e-12 && (r - 1.0).abs() < 1e-12);
/// ```
pub fn fit_line(points: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        return None;
    }
    let b = sxy / sxx;
    let r = if syy == 0.0 { 0.0 } else { sxy / (sxx * syy).sqrt() };
    Some((my - b * mx, b, r))
}

impl ScatterChart {
    /// A scatter of `points`.
    pub fn new(title: &str, x_label: &str, y_label: &str, points: Vec<(f64, f64)>) -> Self {
        Self { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), points, labels: Vec::new(), groups: Vec::new(), fit: true }
    }

    /// The points alone, without the fitted line.
    pub fn without_fit(mut self) -> Self {
        self.fit = false;
        self
    }

    /// Label each point (model names...).
    pub fn labels(mut self, labels: Vec<String>) -> Self {
        self.labels = labels;
        self
    }

    /// Colour the points by group, one name per point (the attack of a defence cell...), with
    /// a legend: the labels can then name only what differs within a group.
    ///
    /// ```
    /// use transferlab::report::{Chart, Figure, ScatterChart};
    /// let chart = ScatterChart::new("CA vs ASR", "CA", "ASR", vec![(90.0, 5.0), (88.0, 60.0), (91.0, 2.0)])
    ///     .groups(vec!["badnets".into(), "blended".into(), "badnets".into()])
    ///     .without_fit();
    /// assert!(Figure::new(Chart::Scatter(chart)).to_png().is_ok());
    /// ```
    pub fn groups(mut self, groups: Vec<String>) -> Self {
        self.groups = groups;
        self
    }
}

pub(super) fn draw<DB: DrawingBackend>(c: &ScatterChart, area: &DrawingArea<DB, Shift>) -> Result<()> {
    if c.points.is_empty() || c.points.iter().any(|p| !p.0.is_finite() || !p.1.is_finite()) {
        return Err(Error::Figure("a scatter needs at least one point, all finite".into()));
    }
    if !c.labels.is_empty() && c.labels.len() != c.points.len() {
        return Err(Error::Figure(format!("{} labels for {} points", c.labels.len(), c.points.len())));
    }
    if !c.groups.is_empty() && c.groups.len() != c.points.len() {
        return Err(Error::Figure(format!("{} group names for {} points", c.groups.len(), c.points.len())));
    }
    let xs = padded_span(c.points.iter().map(|p| p.0));
    let ys = padded_span(c.points.iter().map(|p| p.1));
    let names = first_seen(c.groups.iter().map(String::as_str));
    // Groups get a legend column beside the plot, so it never covers a point.
    let entries: Vec<(String, RGBColor)> = names.iter().enumerate().map(|(i, n)| (n.to_string(), colour(i))).collect();
    let split = (!entries.is_empty()).then(|| super::split_for_legend(area, &entries));
    let plot_area = split.as_ref().map_or(area, |(plot, _)| plot);
    let mut chart = xy_chart(plot_area, &c.title, &c.x_label, &c.y_label, xs, ys, false)?;
    let line_col = colour(names.len().max(1));
    if names.is_empty() {
        chart.draw_series(c.points.iter().map(|&p| Circle::new(p, 5, colour(0).filled()))).map_err(fig_err)?;
    }
    for (i, name) in names.iter().enumerate() {
        let col = colour(i);
        let members = c.points.iter().zip(&c.groups).filter(|(_, g)| g == name).map(|(&p, _)| p);
        chart.draw_series(members.map(|p| Circle::new(p, 5, col.filled()))).map_err(fig_err)?;
    }
    for (p, l) in c.points.iter().zip(&c.labels) {
        // Labels of points in the right half end at their point, so long names stay inside the plot.
        let side = if p.0 > xs.0 + 0.5 * (xs.1 - xs.0) { HPos::Right } else { HPos::Left };
        let style = TextStyle::from((FAMILY, TICK_SIZE).into_font()).pos(Pos::new(side, VPos::Top));
        chart.draw_series(std::iter::once(Text::new(l.clone(), (p.0, p.1), style))).map_err(fig_err)?;
    }
    if let Some((a, b, r)) = fit_line(&c.points).filter(|_| c.fit) {
        chart
            .draw_series(LineSeries::new([xs.0, xs.1].map(|x| (x, a + b * x)), line_col.stroke_width(2)))
            .map_err(fig_err)?
            .label(format!("y = {a:.3} + {b:.3} x, r = {r:.3}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], line_col.stroke_width(2)));
        super::draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }
    if let Some((_, legend)) = &split {
        super::draw_side_legend(legend, &entries)?;
    }
    Ok(())
}
