//! Reporting: result tables (polars) and figures (plotters, embedded font). Generic: report
//! knows no attack or defence, only tables, series and images.

mod categories;
pub mod charts;
mod display;
mod figure;
mod outcome;
mod rows;
pub mod font;
pub mod style;
mod sweep;
mod table;

pub(crate) use categories::first_seen;
pub use display::Table;
pub use charts::{BarChart, Chart, Heatmap, ImageGrid, LineChart, ScatterChart};
pub use figure::{Figure, DEFAULT_SIZE};
pub use outcome::Outcome;
pub use rows::{Row, Rows};
pub use sweep::{grid, Sweep, SweepConfig};
pub use table::{load_table, save_table};
