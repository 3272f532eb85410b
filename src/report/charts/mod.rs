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
    let longest = entries.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0) as u32;
    // About 0.6 em per character at the tick font size, plus the swatch and margins.
    let legend_w = (longest * crate::report::style::TICK_SIZE * 6 / 10 + 50).min(area.dim_in_pixel().0 / 2);
    area.split_horizontally(area.dim_in_pixel().0 - legend_w)
}

/// A legend drawn as a column of colour swatches and names, top-aligned in `area`.
pub(crate) fn draw_side_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, entries: &[(String, RGBColor)]) -> Result<()> {
    let size = crate::report::style::TICK_SIZE as i32;
    let font = (crate::report::font::FAMILY, crate::report::style::TICK_SIZE).into_font();
    for (i, (name, col)) in entries.iter().enumerate() {
        let y = 60 + i as i32 * (size + 10);
        area.draw(&Rectangle::new([(4, y), (4 + size, y + size)], col.filled())).map_err(fig_err)?;
        area.draw(&Text::new(name.clone(), (12 + size, y + 1), font.clone())).map_err(fig_err)?;
    }
    Ok(())
}

pub(crate) fn fig_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Figure(e.to_string())
}
