//! The kinds of chart a [`Figure`](super::Figure) can hold, and their drawing.

mod bars;
mod grid;
mod heatmap;
mod lines;
mod scatter;

pub use bars::BarChart;
pub use grid::ImageGrid;
pub use heatmap::Heatmap;
pub use lines::LineChart;
pub use scatter::{fit_line, ScatterChart};

use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// What a figure shows.
#[derive(Debug, Clone, PartialEq)]
pub enum Chart {
    Bars(BarChart),
    Lines(LineChart),
    Grid(ImageGrid),
    Scatter(ScatterChart),
    Heatmap(Heatmap),
}

/// Draw `chart` on `area` with any plotters backend.
pub fn draw<DB: DrawingBackend>(chart: &Chart, area: &DrawingArea<DB, Shift>) -> Result<()> {
    area.fill(&WHITE).map_err(fig_err)?;
    match chart {
        Chart::Bars(c) => bars::draw(c, area),
        Chart::Lines(c) => lines::draw(c, area),
        Chart::Grid(c) => grid::draw(c, area),
        Chart::Scatter(c) => scatter::draw(c, area),
        Chart::Heatmap(c) => heatmap::draw(c, area),
    }
}

/// The range of finite `values` with 5 % padding each side ((0, 1) when there are none).
pub(crate) fn padded_span(values: impl Iterator<Item = f64>) -> (f64, f64) {
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

/// A tick label without trailing zeros ("2", "0.25", "97.5"): plotters' default prints
/// "2.0" for an epoch count.
pub(crate) fn tick_label(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".to_string() } else { s.to_string() }
}

/// Numeric x/y axes with a title and axis names, in the common style. With `integer_x` (the
/// x values are counts: epochs, updates, shots) ticks between integers stay unlabelled.
pub(crate) fn xy_chart<'a, DB: DrawingBackend + 'a>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    xs: (f64, f64),
    ys: (f64, f64),
    integer_x: bool,
) -> Result<ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>> {
    use crate::report::font::FAMILY;
    use crate::report::style::{LABEL_SIZE, MARGIN, TICK_SIZE, TITLE_SIZE};
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, TITLE_SIZE))
        .margin(MARGIN)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(xs.0..xs.1, ys.0..ys.1)
        .map_err(fig_err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| if integer_x && (x - x.round()).abs() > 1e-9 { String::new() } else { tick_label(*x) })
        .y_label_formatter(&|y| tick_label(*y))
        .light_line_style(WHITE.mix(0.0))
        .label_style((FAMILY, TICK_SIZE))
        .axis_desc_style((FAMILY, LABEL_SIZE))
        .draw()
        .map_err(fig_err)?;
    Ok(chart)
}

/// The legend every chart with series uses.
pub(crate) fn draw_legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>, position: SeriesLabelPosition) -> Result<()>
where
    DB: DrawingBackend + 'a,
    CT: plotters::coord::CoordTranslate,
{
    chart
        .configure_series_labels()
        .label_font((crate::report::font::FAMILY, crate::report::style::TICK_SIZE))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(fig_err)
}

/// Split `area` into the plot and a right-hand column wide enough for the legend entries.
pub(crate) fn split_for_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, RGBColor)],
) -> (DrawingArea<DB, Shift>, DrawingArea<DB, Shift>) {
    let font = TextStyle::from((crate::report::font::FAMILY, crate::report::style::TICK_SIZE).into_font());
    let widest = entries.iter().filter_map(|(n, _)| area.estimate_text_size(n, &font).ok()).map(|(w, _)| w).max().unwrap_or(0);
    // The swatch, the gap after it and a margin each side.
    let legend_w = (widest + crate::report::style::TICK_SIZE + 28).min(area.dim_in_pixel().0 / 2);
    area.split_horizontally(area.dim_in_pixel().0 - legend_w)
}

/// A legend drawn as a column of colour swatches and names, top-aligned in `area`.
pub(crate) fn draw_side_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, entries: &[(String, RGBColor)]) -> Result<()> {
    let size = crate::report::style::TICK_SIZE as i32;
    let font = (crate::report::font::FAMILY, crate::report::style::TICK_SIZE).into_font();
    for (i, (name, col)) in entries.iter().enumerate() {
        let y = 20 + i as i32 * (size + 10);
        area.draw(&Rectangle::new([(4, y), (4 + size, y + size)], col.filled())).map_err(fig_err)?;
        area.draw(&Text::new(name.clone(), (12 + size, y + 1), font.clone())).map_err(fig_err)?;
    }
    Ok(())
}

pub(crate) fn fig_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Figure(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::tick_label;

    #[test]
    fn tick_labels_drop_trailing_zeros() {
        assert_eq!(tick_label(2.0), "2");
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(97.5), "97.5");
        assert_eq!(tick_label(-0.0001), "0");
        assert_eq!(tick_label(-1.5), "-1.5");
        assert_eq!(tick_label(100.0), "100");
    }
}
