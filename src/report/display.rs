//! Rich display in notebooks (evcxr): figures as inline PNG, tables as HTML.
//!
//! evcxr shows a cell's final value through its `evcxr_display` method when the type has one,
//! reading MIME blocks from stdout. Only one output per MIME type survives per cell, so each
//! type emits exactly one image or one table.

use super::figure::Figure;
use base64::Engine;
use polars::prelude::{AnyValue, DataFrame};

fn emit(mime: &str, body: &str) {
    println!("EVCXR_BEGIN_CONTENT {mime}\n{body}\nEVCXR_END_CONTENT");
}

impl Figure {
    /// Show the figure inline in a notebook (called by evcxr for a cell's final value).
    pub fn evcxr_display(&self) {
        match self.to_png() {
            Ok(png) => emit("image/png", &base64::engine::general_purpose::STANDARD.encode(png)),
            Err(e) => emit("text/plain", &format!("figure could not be rendered: {e}")),
        }
    }
}

/// A DataFrame that shows itself as an HTML table in notebooks and as text elsewhere.
///
/// ```
/// use transferlab::report::Table;
/// let df = polars::df!("run" => ["clean"], "asr" => [0.01]).unwrap();
/// let t = Table::from(df);
/// assert!(t.to_html().contains("<td>clean</td>"));
/// ```
#[derive(Debug, Clone)]
pub struct Table(pub DataFrame, Option<String>);

impl From<DataFrame> for Table {
    fn from(df: DataFrame) -> Self {
        Table(df, None)
    }
}

/// A table shown without giving the DataFrame up (a notebook cell can be run again).
impl From<&DataFrame> for Table {
    fn from(df: &DataFrame) -> Self {
        Table(df.clone(), None)
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        match &self.1 {
            Some(caption) => write!(f, "\n{caption}"),
            None => Ok(()),
        }
    }
}

impl Table {
    /// The table with a sentence under it (an [`Outcome`](super::Outcome)'s summary).
    ///
    /// ```
    /// use transferlab::report::Table;
    /// let t = Table::from(polars::df!("asr" => [0.01]).unwrap()).with_caption("ASR 1 %.");
    /// assert!(t.to_html().contains("ASR 1 %.") && t.to_string().ends_with("ASR 1 %."));
    /// ```
    pub fn with_caption(self, caption: impl Into<String>) -> Self {
        Table(self.0, Some(caption.into()))
    }

    /// The caption, if any.
    pub fn caption(&self) -> Option<&str> {
        self.1.as_deref()
    }

    /// The table as an HTML `<table>` (floats with 4 significant decimals).
    pub fn to_html(&self) -> String {
        let df = &self.0;
        let mut html = String::from("<table>");
        if let Some(caption) = &self.1 {
            html.push_str(&format!("<caption style=\"caption-side: bottom; text-align: left\">{}</caption>", escape(caption)));
        }
        html.push_str("<thead><tr>");
        for name in df.get_column_names() {
            html.push_str(&format!("<th>{}</th>", escape(name.as_str())));
        }
        html.push_str("</tr></thead><tbody>");
        let cols = df.columns();
        for row in 0..df.height() {
            html.push_str("<tr>");
            for col in cols {
                let cell = match col.get(row) {
                    Ok(AnyValue::Float64(v)) => format!("{v:.4}"),
                    Ok(AnyValue::Float32(v)) => format!("{v:.4}"),
                    Ok(AnyValue::Null) => String::new(),
                    // str_value: strings unquoted, everything else as displayed.
                    Ok(v) => v.str_value().into_owned(),
                    Err(_) => String::new(),
                };
                html.push_str(&format!("<td>{}</td>", escape(&cell)));
            }
            html.push_str("</tr>");
        }
        html.push_str("</tbody></table>");
        html
    }

    /// Show the table in a notebook: HTML, with the text rendering as a fallback.
    pub fn evcxr_display(&self) {
        emit("text/html", &self.to_html());
        emit("text/plain", &self.to_string());
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
