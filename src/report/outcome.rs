//! The one shape every attack, defence and analysis result has: a table and a figure.
//!
//! Like scikit-learn's estimator contract, a reader who knows one method's result knows them
//! all: `result.to_dataframe()?` for the numbers, `result.figure()?` for the picture,
//! `result.summary()` for the sentence, and `result.table()?` for the table with that sentence
//! under it (what a notebook shows as a cell's last value).

use super::display::Table;
use super::figure::Figure;
use crate::error::Result;
use polars::prelude::DataFrame;

/// What a method returns. Implemented by every `*Result` type of `attacks`, `defenses` and
/// `analysis`.
///
/// ```
/// use transferlab::report::{BarChart, Chart, Figure, Outcome};
/// use transferlab::Result;
/// struct Coin { heads: f64 }
/// impl Outcome for Coin {
///     fn to_dataframe(&self) -> Result<polars::prelude::DataFrame> {
///         Ok(polars::df!("heads" => [self.heads])?)
///     }
///     fn figure(&self) -> Result<Figure> {
///         let chart = BarChart::new("coin", "rate", vec!["heads".into()]).series("run", vec![self.heads]);
///         Ok(Figure::new(Chart::Bars(chart)))
///     }
///     fn summary(&self) -> String {
///         format!("The coin came up heads {:.0} % of the time.", 100.0 * self.heads)
///     }
/// }
/// let c = Coin { heads: 0.5 };
/// assert_eq!(c.table().unwrap().0.height(), 1);
/// assert!(c.table().unwrap().to_html().contains("heads 50 %"));
/// assert!(c.figure().unwrap().to_png().unwrap().len() > 100);
/// ```
pub trait Outcome {
    /// The result as a table, one row per run/condition, rates as fractions in [0, 1].
    fn to_dataframe(&self) -> Result<DataFrame>;
    /// The result's paper figure.
    fn figure(&self) -> Result<Figure>;
    /// What was measured, in a sentence or two a paper could quote: the setting, the headline
    /// numbers (rates in %), and the comparison that gives them their meaning.
    fn summary(&self) -> String;
    /// The table wrapped for inline display in a notebook, the summary as its caption.
    fn table(&self) -> Result<Table> {
        Ok(Table::from(self.to_dataframe()?).with_caption(self.summary()))
    }
}
