//! Heatmaps: influence matrices, confusion matrices.

use super::fig_err;
use crate::error::{Error, Result};
use crate::report::font::FAMILY;
use crate::report::style::{LABEL_SIZE, MARGIN, TICK_SIZE, TITLE_SIZE};
use plotters::coord::Shift;
use plotters::prelude::*;

/// A matrix of values drawn as coloured cells (diverging blue-white-red around zero when the
/// values have both signs, white-to-blue otherwise), with row and column names.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    pub title: String,
    pub row_label: String,
    pub col_label: String,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    /// Row-major values, `rows.len() * cols.len()` of them; NaN marks a missing cell (drawn
    /// grey with a `?`, e.g. a result still running).
    pub values: Vec<f64>,
    /// Write each value in its cell.
    pub annotate: bool,
    /// (row, column, text): a missing cell that no result will fill, drawn grey with the text
    /// instead of the `?` of a result still to come.
    pub notes: Vec<(usize, usize, String)>,
}

impl Heatmap {
    /// A heatmap of `values` (row-major) with the given row and column names.
    pub fn new(title: &str, rows: Vec<String>, cols: Vec<String>, values: Vec<f64>) -> Self {
        Self { title: title.into(), row_label: String::new(), col_label: String::new(), rows, cols, values, annotate: true, notes: Vec::new() }
    }

    /// Mark the missing cell at (`row`, `col`) with `text` (e.g. "n/a" where nothing will run).
    pub fn note(mut self, row: usize, col: usize, text: &str) -> Self {
        self.notes.push((row, col, text.into()));
        self
    }

    /// Name the axes.
    pub fn axes(mut self, row_label: &str, col_label: &str) -> Self {
        self.row_label = row_label.into();
        self.col_label = col_label.into();
        self
    }
}

fn cell_colour(v: f64, lo: f64, hi: f64) -> RGBColor {
    let mix = |a: (f64, f64, f64), b: (f64, f64, f64), t: f64| {
        let t = t.clamp(0.0, 1.0);
        RGBColor(((a.0 + (b.0 - a.0) * t) * 255.0) as u8, ((a.1 + (b.1 - a.1) * t) * 255.0) as u8, ((a.2 + (b.2 - a.2) * t) * 255.0) as u8)
    };
    let white = (1.0, 1.0, 1.0);
    let (blue, red) = ((0.13, 0.40, 0.67), (0.70, 0.09, 0.17));
    if lo < 0.0 && hi > 0.0 {
        let m = lo.abs().max(hi.abs());
        if v < 0.0 { mix(white, blue, -v / m) } else { mix(white, red, v / m) }
    } else {
        mix(white, blue, if hi > lo { (v - lo) / (hi - lo) } else { 0.0 })
    }
}

pub(super) fn draw<DB: DrawingBackend>(h: &Heatmap, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let (nr, nc) = (h.rows.len(), h.cols.len());
    if nr == 0 || nc == 0 || h.values.len() != nr * nc {
        return Err(Error::Figure(format!("a {nr}x{nc} heatmap needs {} values, got {}", nr * nc, h.values.len())));
    }
    if h.values.iter().any(|v| v.is_infinite()) || h.values.iter().all(|v| v.is_nan()) {
        return Err(Error::Figure("heatmap values must be finite (NaN marks a missing cell), and at least one present".into()));
    }
    if let Some((r, c, _)) = h.notes.iter().find(|(r, c, _)| *r >= nr || *c >= nc || !h.values[r * nc + c].is_nan()) {
        return Err(Error::Figure(format!("a note at ({r}, {c}) must name a missing (NaN) cell of the {nr}x{nc} heatmap")));
    }
    let lo = h.values.iter().cloned().filter(|v| !v.is_nan()).fold(f64::INFINITY, f64::min);
    let hi = h.values.iter().cloned().filter(|v| !v.is_nan()).fold(f64::NEG_INFINITY, f64::max);
    let (rows, cols) = (h.rows.clone(), h.cols.clone());
    let (width, _) = area.dim_in_pixel();
    let (area, bar) = area.split_horizontally(width.saturating_sub(COLOUR_BAR_WIDTH));
    draw_colour_bar(&bar, lo, hi)?;
    let mut chart = ChartBuilder::on(&area)
        .caption(&h.title, (FAMILY, TITLE_SIZE))
        .margin(MARGIN)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..nc as f64, 0f64..nr as f64)
        .map_err(fig_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(nc * 2 + 1)
        .y_labels(nr * 2 + 1)
        .x_label_formatter(&|x| centre_label(*x, &cols))
        .y_label_formatter(&|y| centre_label(nr as f64 - *y, &rows))
        .x_desc(&h.col_label)
        .y_desc(&h.row_label)
        .label_style((FAMILY, TICK_SIZE))
        .axis_desc_style((FAMILY, LABEL_SIZE))
        .draw()
        .map_err(fig_err)?;
    for r in 0..nr {
        for c in 0..nc {
            let v = h.values[r * nc + c];
            let y0 = (nr - 1 - r) as f64;
            let colour = if v.is_nan() { RGBColor(215, 215, 215) } else { cell_colour(v, lo, hi) };
            chart.draw_series(std::iter::once(Rectangle::new([(c as f64, y0), (c as f64 + 1.0, y0 + 1.0)], colour.filled()))).map_err(fig_err)?;
            if h.annotate && nr * nc <= 400 {
                let style = TextStyle::from((FAMILY, TICK_SIZE).into_font()).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ));
                let text = match h.notes.iter().find(|(nr_, nc_, _)| (*nr_, *nc_) == (r, c)) {
                    Some((_, _, note)) => note.clone(),
                    None if v.is_nan() => "?".to_string(),
                    None => format!("{v:.2}"),
                };
                chart
                    .draw_series(std::iter::once(Text::new(text, (c as f64 + 0.5, y0 + 0.5), style)))
                    .map_err(fig_err)?;
            }
        }
    }
    Ok(())
}

/// Width in pixels of the colour scale beside the cells.
const COLOUR_BAR_WIDTH: u32 = 100;

/// The colour scale: the value range (symmetric around zero for diverging maps) as a vertical
/// gradient with value ticks, so a reader can tell what a cell's colour means without its label.
fn draw_colour_bar<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, lo: f64, hi: f64) -> Result<()> {
    let (a, b) = if lo < 0.0 && hi > 0.0 {
        let m = lo.abs().max(hi.abs());
        (-m, m)
    } else if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, hi + 0.5)
    };
    // Gradient in x 0..1, tick values written to its right (x > 1): plotters' own axis labels
    // would be painted over by the gradient in a strip this narrow.
    let mut chart = ChartBuilder::on(area).margin_top(60).margin_bottom(60).margin_right(5).build_cartesian_2d(0f64..2.6f64, a..b).map_err(fig_err)?;
    let steps = 120;
    let at = |i: usize| a + (b - a) * i as f64 / steps as f64;
    chart
        .draw_series((0..steps).map(|i| Rectangle::new([(0.0, at(i)), (1.0, at(i + 1))], cell_colour((at(i) + at(i + 1)) / 2.0, lo, hi).filled())))
        .map_err(fig_err)?;
    chart.draw_series(std::iter::once(Rectangle::new([(0.0, a), (1.0, b)], BLACK.stroke_width(1)))).map_err(fig_err)?;
    let style = TextStyle::from((FAMILY, TICK_SIZE).into_font()).pos(plotters::style::text_anchor::Pos::new(
        plotters::style::text_anchor::HPos::Left,
        plotters::style::text_anchor::VPos::Center,
    ));
    let ticks = 5;
    chart
        .draw_series((0..ticks).map(|k| {
            let v = a + (b - a) * k as f64 / (ticks - 1) as f64;
            Text::new(super::tick_label(v), (1.2, v), style.clone())
        }))
        .map_err(fig_err)?;
    Ok(())
}

/// The name of the cell whose centre is at `x` (labels sit at cell centres only).
fn centre_label(x: f64, names: &[String]) -> String {
    let i = x.floor();
    if (x - i - 0.5).abs() < 0.01 && i >= 0.0 && (i as usize) < names.len() {
        names[i as usize].clone()
    } else {
        String::new()
    }
}
