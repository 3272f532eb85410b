//! The kinds of chart a [`Figure`](super::Figure) can hold, and their drawing.

mod bars;
mod grid;
mod lines;

pub use bars::BarChart;
pub use grid::ImageGrid;
pub use lines::LineChart;

use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// What a figure shows.
#[derive(Debug, Clone, PartialEq)]
pub enum Chart {
    Bars(BarChart),
    Lines(LineChart),
    Grid(ImageGrid),
}

/// Draw `chart` on `area` with any plotters backend.
pub fn draw<DB: DrawingBackend>(chart: &Chart, area: &DrawingArea<DB, Shift>) -> Result<()> {
    area.fill(&WHITE).map_err(fig_err)?;
    match chart {
        Chart::Bars(c) => bars::draw(c, area),
        Chart::Lines(c) => lines::draw(c, area),
        Chart::Grid(c) => grid::draw(c, area),
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

pub(crate) fn fig_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Figure(e.to_string())
}
