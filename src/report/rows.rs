//! A table built one row at a time: a notebook's own comparison (an ablation, one variant per
//! row) without a `Series::new` line per column.

use super::display::Table;
use crate::error::{Error, Result};
use polars::prelude::{Column, DataFrame, NamedFrom, Series};

/// One cell of a [`Row`].
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Text(String),
    Int(i64),
    Bool(bool),
    /// `None`: a value this row does not have (an empty cell, null in the DataFrame).
    Float(Option<f64>),
}

impl Cell {
    fn kind(&self) -> &'static str {
        match self {
            Cell::Text(_) => "text",
            Cell::Int(_) => "integer",
            Cell::Bool(_) => "yes/no",
            Cell::Float(_) => "float",
        }
    }
}

/// One row: named cells in column order.
///
/// ```
/// use transferlab::report::Row;
/// let row = Row::new().text("variant", "edit").int("keys", 53).float("clean %", 97.5);
/// assert_eq!(row.columns(), vec!["variant", "keys", "clean %"]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Row(Vec<(String, Cell)>);

impl Row {
    /// An empty row.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a text cell.
    pub fn text(mut self, column: &str, value: impl Into<String>) -> Self {
        self.0.push((column.to_string(), Cell::Text(value.into())));
        self
    }

    /// Adds an integer cell (counts, epochs, sizes).
    pub fn int(mut self, column: &str, value: impl TryInto<i64>) -> Self {
        // Counts beyond i64 do not occur in a table of results; saturate rather than fail.
        self.0.push((column.to_string(), Cell::Int(value.try_into().unwrap_or(i64::MAX))));
        self
    }

    /// Adds a yes/no cell (a verdict: target met, flagged, attack implanted).
    pub fn bool(mut self, column: &str, value: bool) -> Self {
        self.0.push((column.to_string(), Cell::Bool(value)));
        self
    }

    /// Adds a floating-point cell.
    pub fn float(mut self, column: &str, value: impl Into<f64>) -> Self {
        self.0.push((column.to_string(), Cell::Float(Some(value.into()))));
        self
    }

    /// Adds a floating-point cell that may be empty (a score a method does not have).
    pub fn maybe_float(mut self, column: &str, value: Option<f64>) -> Self {
        self.0.push((column.to_string(), Cell::Float(value)));
        self
    }

    /// The column names, in order.
    pub fn columns(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// Rows of the same columns, as a DataFrame or a notebook [`Table`]. Every row must name the
/// same columns in the same order with the same kind of value as the first: a row that differs
/// is refused with an error naming the column, so a typo cannot add a half-empty column.
///
/// ```
/// use transferlab::report::{Row, Rows};
/// let mut rows = Rows::new();
/// for (layer, keys, clean) in [("features.0", 64, 36.0), ("features.4", 53, 100.0)] {
///     rows.push(Row::new().text("edited layer", layer).int("keys", keys).float("clean %", clean))?;
/// }
/// let table = rows.table("Edits of each layer with 3 exemplars.")?;
/// assert_eq!(table.0.shape(), (2, 3));
/// assert!(rows.push(Row::new().text("edited layer", "x").float("keys", 1.0)).is_err());
/// # Ok::<(), transferlab::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Rows(Vec<Row>);

impl Rows {
    /// No rows yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `row` after checking it against the first row's columns.
    pub fn push(&mut self, row: Row) -> Result<()> {
        if row.0.is_empty() {
            return Err(invalid("a row has no cells; add at least one with .text, .int, .float or .bool"));
        }
        if let Some(first) = self.0.first() {
            if first.columns() != row.columns() {
                return Err(invalid(format!(
                    "row {} has columns {:?}, the table has {:?}: every row names the same columns in the same order",
                    self.0.len() + 1,
                    row.columns(),
                    first.columns()
                )));
            }
            for ((name, want), (_, got)) in first.0.iter().zip(&row.0) {
                if want.kind() != got.kind() {
                    return Err(invalid(format!(
                        "column {name:?} holds {} values, row {} gives it a {} value",
                        want.kind(),
                        self.0.len() + 1,
                        got.kind()
                    )));
                }
            }
        }
        self.0.push(row);
        Ok(())
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no row was pushed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One column per cell of the rows, typed by the first row's cells.
    pub fn to_dataframe(&self) -> Result<DataFrame> {
        let Some(first) = self.0.first() else {
            return Ok(DataFrame::empty());
        };
        let columns: Vec<Column> = first
            .0
            .iter()
            .enumerate()
            .map(|(j, (name, kind))| {
                let cells = self.0.iter().map(|row| &row.0[j].1);
                let series = match kind {
                    Cell::Text(_) => Series::new(name.into(), cells.map(|c| if let Cell::Text(s) = c { s.clone() } else { unreachable!() }).collect::<Vec<_>>()),
                    Cell::Int(_) => Series::new(name.into(), cells.map(|c| if let Cell::Int(v) = c { *v } else { unreachable!() }).collect::<Vec<_>>()),
                    Cell::Bool(_) => Series::new(name.into(), cells.map(|c| if let Cell::Bool(v) = c { *v } else { unreachable!() }).collect::<Vec<_>>()),
                    Cell::Float(_) => Series::new(name.into(), cells.map(|c| if let Cell::Float(v) = c { *v } else { unreachable!() }).collect::<Vec<_>>()),
                };
                series.into()
            })
            .collect();
        Ok(DataFrame::new_infer_height(columns)?)
    }

    /// The rows as a notebook table with `caption` under it.
    pub fn table(&self, caption: impl Into<String>) -> Result<Table> {
        Ok(Table::from(self.to_dataframe()?).with_caption(caption))
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidArgument { what: "table row", reason: reason.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_typed_columns() {
        let mut rows = Rows::new();
        rows.push(Row::new().text("a", "x").int("n", 3usize).float("v", 0.5f32).bool("ok", true)).unwrap();
        rows.push(Row::new().text("a", "y").int("n", 4u64).float("v", 1.5).bool("ok", false)).unwrap();
        rows.push(Row::new().text("a", "z").int("n", 5).maybe_float("v", None).bool("ok", true)).unwrap();
        let df = rows.to_dataframe().unwrap();
        assert_eq!(df.shape(), (3, 4));
        assert_eq!(df.column("ok").unwrap().bool().unwrap().get(1), Some(false));
        assert_eq!(df.column("v").unwrap().null_count(), 1, "an empty cell is null, not NaN");
        assert_eq!(df.column("n").unwrap().i64().unwrap().get(1), Some(4));
        assert_eq!(df.column("v").unwrap().f64().unwrap().get(0), Some(0.5));
        assert_eq!(df.column("a").unwrap().str().unwrap().get(1), Some("y"));
    }

    #[test]
    fn mismatched_rows_are_refused_and_not_added() {
        let mut rows = Rows::new();
        assert!(rows.push(Row::new()).is_err());
        rows.push(Row::new().text("a", "x").float("v", 1.0)).unwrap();
        let renamed = rows.push(Row::new().text("a", "x").float("w", 1.0)).unwrap_err().to_string();
        assert!(renamed.contains("[\"a\", \"w\"]") && renamed.contains("same columns"), "{renamed}");
        let retyped = rows.push(Row::new().text("a", "x").int("v", 1)).unwrap_err().to_string();
        assert!(retyped.contains("\"v\" holds float values") && retyped.contains("integer"), "{retyped}");
        assert!(rows.push(Row::new().text("a", "x").bool("v", true)).unwrap_err().to_string().contains("yes/no"));
        assert_eq!(rows.len(), 1);
        assert_eq!(Rows::new().to_dataframe().unwrap().shape(), (0, 0));
    }
}
