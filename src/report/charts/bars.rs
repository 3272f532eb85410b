//! Grouped bar charts with optional error bars (metrics per run, mean +- std over seeds).

use super::fig_err;
use crate::error::{Error, Result};
use crate::report::font::FAMILY;
use crate::report::style::{colour, LABEL_SIZE, MARGIN, TICK_SIZE, TITLE_SIZE};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Bars grouped by category, one bar per series in each group.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    /// Group names along the x axis.
    pub categories: Vec<String>,
    /// (series name, one value per category, optional error half-width per category).
    pub series: Vec<(String, Vec<f64>, Option<Vec<f64>>)>,
    /// Fixed y range; derived from the data when `None`.
    pub y_range: Option<(f64, f64)>,
}

impl BarChart {
    /// A chart with no series yet.
    pub fn new(title: &str, y_label: &str, categories: Vec<String>) -> Self {
        Self { title: title.into(), y_label: y_label.into(), categories, series: Vec::new(), y_range: None }
    }

    /// Add a series (one value per category; NaN where the series has no value, drawn as no
    /// bar).
    pub fn series(mut self, name: &str, values: Vec<f64>) -> Self {
        self.series.push((name.into(), values, None));
        self
    }

    /// Add a series with error bars.
    pub fn series_with_error(mut self, name: &str, values: Vec<f64>, errors: Vec<f64>) -> Self {
        self.series.push((name.into(), values, Some(errors)));
        self
    }

    /// Fix the y range.
    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }
}

pub(super) fn draw<DB: DrawingBackend>(c: &BarChart, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let n = c.categories.len();
    if n == 0 || c.series.is_empty() {
        return Err(Error::Figure("a bar chart needs at least one category and one series".into()));
    }
    for (name, v, e) in &c.series {
        if v.len() != n || e.as_ref().is_some_and(|e| e.len() != n) {
            return Err(Error::Figure(format!("series {name:?} does not have one value per category ({n})")));
        }
    }
    let (lo, hi) = c.y_range.unwrap_or_else(|| {
        let max = c
            .series
            .iter()
            .flat_map(|(_, v, e)| v.iter().enumerate().map(move |(i, x)| x + e.as_ref().map_or(0.0, |e| e[i])))
            .filter(|x| x.is_finite())
            .fold(0.0f64, f64::max);
        (0.0, if max > 0.0 { max * 1.1 } else { 1.0 })
    });
    let cats = c.categories.clone();
    // The legend gets its own column to the right, so it never covers a bar.
    let entries: Vec<(String, RGBColor)> = c.series.iter().enumerate().map(|(i, (n, _, _))| (n.clone(), colour(i))).collect();
    // The title spans the whole figure; the plot and the legend share what is below it.
    let below_title = area.titled(&c.title, (FAMILY, TITLE_SIZE)).map_err(fig_err)?;
    let (plot_area, legend_area) = super::split_for_legend(&below_title, &entries);
    let mut chart = ChartBuilder::on(&plot_area)
        .margin(MARGIN)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, lo..hi)
        .map_err(fig_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 && i < cats.len() { cats[i].clone() } else { String::new() }
        })
        .y_desc(&c.y_label)
        .y_labels(8)
        .y_label_formatter(&|y| super::tick_label(*y))
        .light_line_style(WHITE)
        .label_style((FAMILY, TICK_SIZE))
        .axis_desc_style((FAMILY, LABEL_SIZE))
        .draw()
        .map_err(fig_err)?;
    let k = c.series.len() as f64;
    let width = 0.8 / k;
    for (s, (_, values, errors)) in c.series.iter().enumerate() {
        let col = colour(s);
        let x0 = |i: usize| i as f64 + 0.1 + s as f64 * width;
        chart
            // A missing value (NaN: a score a method does not have for this category) draws no bar.
            .draw_series(values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, &v)| {
                Rectangle::new([(x0(i), lo.max(0.0).min(hi)), (x0(i) + width * 0.95, v)], col.filled())
            }))
            .map_err(fig_err)?
            ;
        if let Some(errors) = errors {
            chart
                .draw_series(values.iter().zip(errors).enumerate().filter(|(_, (v, e))| v.is_finite() && e.is_finite()).map(|(i, (&v, &e))| {
                    let xm = x0(i) + width * 0.475;
                    PathElement::new(vec![(xm, v - e), (xm, v + e)], BLACK.stroke_width(2))
                }))
                .map_err(fig_err)?;
        }
    }
    super::draw_side_legend(&legend_area, &entries)
}
