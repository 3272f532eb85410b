//! Parameter sweeps that survive interruption: each finished run is appended durably to a
//! JSON-lines log, and a restarted sweep skips every run already in it.

use crate::error::{Error, Result};
use polars::prelude::{Column, DataFrame, NamedFrom, Series};
use serde_json::{Map, Value};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One run's configuration: named values (numbers, strings, booleans), the seed included.
pub type SweepConfig = Map<String, Value>;

/// A sweep over a grid of configurations, logged to `path` (one JSON object per line).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// use transferlab::report::{grid, Sweep};
/// let configs = grid(&[("rate", vec![0.01.into(), 0.1.into()]), ("seed", vec![0.into(), 1.into()])]);
/// let sweep = Sweep::new(dir.path().join("sweep.jsonl"));
/// let df = sweep.run(&configs, |c| Ok(vec![("asr".to_string(), c["rate"].as_f64().unwrap() * 5.0)])).unwrap();
/// assert_eq!(df.height(), 4);
/// // Running it again computes nothing: every row is already logged.
/// let again = sweep.run(&configs, |_| panic!("recomputed")).unwrap();
/// assert_eq!(again.height(), 4);
/// ```
#[derive(Debug, Clone)]
pub struct Sweep {
    path: PathBuf,
}

/// Every combination of the given values, in order (the last parameter varies fastest).
pub fn grid(params: &[(&str, Vec<Value>)]) -> Vec<SweepConfig> {
    let mut out = vec![SweepConfig::new()];
    for (name, values) in params {
        out = out
            .into_iter()
            .flat_map(|base| {
                values.iter().map(move |v| {
                    let mut c = base.clone();
                    c.insert(name.to_string(), v.clone());
                    c
                })
            })
            .collect();
    }
    out
}

impl Sweep {
    /// A sweep logging to `path` (created on first use).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` for each configuration not yet in the log, appending each result as soon as it
    /// is finished; return the whole table (config columns, then metric columns), in the order
    /// of `configs`.
    pub fn run<F>(&self, configs: &[SweepConfig], mut f: F) -> Result<DataFrame>
    where
        F: FnMut(&SweepConfig) -> Result<Vec<(String, f64)>>,
    {
        let mut done = self.finished()?;
        for config in configs {
            let key = key_of(config);
            if done.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let metrics = f(config)?;
            let mut row = config.clone();
            for (name, value) in metrics {
                if row.contains_key(&name) {
                    return Err(Error::invalid("sweep metric", format!("{name:?} is also a configuration key")));
                }
                row.insert(name, Value::from(value));
            }
            self.append(config, &row)?;
            done.push((key, row));
        }
        let rows: Vec<&SweepConfig> = configs
            .iter()
            .filter_map(|c| {
                let key = key_of(c);
                done.iter().find(|(k, _)| *k == key).map(|(_, r)| r)
            })
            .collect();
        let config_keys: Vec<String> = configs.iter().flat_map(|c| c.keys().cloned()).collect();
        to_dataframe(&rows, &config_keys)
    }

    /// The configurations of `configs` not yet in the log, in order: lets a caller compute
    /// them in parallel before handing the results to [`Sweep::run`].
    pub fn pending(&self, configs: &[SweepConfig]) -> Result<Vec<SweepConfig>> {
        let done = self.finished()?;
        Ok(configs.iter().filter(|c| !done.iter().any(|(k, _)| *k == key_of(c))).cloned().collect())
    }

    /// Every logged run as its full row (configuration and metrics), in log order.
    pub fn rows(&self) -> Result<Vec<SweepConfig>> {
        Ok(self.finished()?.into_iter().map(|(_, row)| row).collect())
    }

    /// The logged row of `config`, if it has run.
    pub fn row_of(&self, config: &SweepConfig) -> Result<Option<SweepConfig>> {
        let key = key_of(config);
        Ok(self.finished()?.into_iter().find(|(k, _)| *k == key).map(|(_, row)| row))
    }

    /// The runs already logged: (configuration key, full row). A last line cut short by a
    /// kill is ignored, so that run is simply done again.
    /// The logged rows, keyed by their configuration. Only a last line without its newline (a
    /// write cut off by a kill) is skipped, to be redone; anything else that is not a record is
    /// an error, so that a damaged log never loses rows silently.
    fn finished(&self) -> Result<Vec<(String, SweepConfig)>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &self.path, e)),
        };
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        let mut out = Vec::new();
        for (n, line) in complete.split('\n').enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let record = match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(row)) => row.get(CONFIG_KEY).and_then(Value::as_object).cloned().map(|config| (config, row)),
                _ => None,
            };
            let Some((config, mut row)) = record else {
                return Err(Error::invalid(
                    "sweep log",
                    format!(
                        "line {} of {} is not a sweep record (damaged or edited?); repair or delete that line and rerun: the rows around it are kept",
                        n + 1,
                        self.path.display()
                    ),
                ));
            };
            row.remove(CONFIG_KEY);
            out.push((key_of(&config), row));
        }
        Ok(out)
    }

    fn append(&self, config: &SweepConfig, row: &SweepConfig) -> Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
        let mut record = row.clone();
        record.insert(CONFIG_KEY.to_string(), Value::Object(config.clone()));
        let line = format!("{}\n", Value::Object(record));
        // A write killed half-way leaves a last line without its newline: cut it off (its run
        // is being redone) so that the log stays one record per line.
        if let Some(complete) = complete_length(&self.path)? {
            let f = OpenOptions::new().write(true).open(&self.path).map_err(|e| Error::io("open", &self.path, e))?;
            f.set_len(complete).map_err(|e| Error::io("truncate", &self.path, e))?;
        }
        let mut f = OpenOptions::new().create(true).append(true).open(&self.path).map_err(|e| Error::io("open", &self.path, e))?;
        f.write_all(line.as_bytes()).map_err(|e| Error::io("append to", &self.path, e))?;
        f.sync_all().map_err(|e| Error::io("sync", &self.path, e))
    }
}

const CONFIG_KEY: &str = "_config";

/// The length of the log up to its last newline, when a cut-off line follows it.
fn complete_length(path: &Path) -> Result<Option<u64>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    if bytes.last().is_none_or(|&c| c == b'\n') {
        return Ok(None);
    }
    Ok(Some(bytes.iter().rposition(|&c| c == b'\n').map_or(0, |i| i as u64 + 1)))
}

fn key_of(config: &SweepConfig) -> String {
    Value::Object(config.clone()).to_string()
}

/// Configuration columns first, then metrics, each in first-seen order.
fn to_dataframe(rows: &[&SweepConfig], config_keys: &[String]) -> Result<DataFrame> {
    let mut names: Vec<String> = Vec::new();
    for k in config_keys {
        if !names.contains(k) {
            names.push(k.clone());
        }
    }
    for row in rows {
        for k in row.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let columns: Vec<Column> = names
        .iter()
        .map(|name| {
            let values: Vec<Option<&Value>> = rows.iter().map(|r| r.get(name)).collect();
            let series = if values.iter().flatten().all(|v| v.is_number()) {
                Series::new(name.as_str().into(), values.iter().map(|v| v.and_then(Value::as_f64)).collect::<Vec<_>>())
            } else {
                Series::new(
                    name.as_str().into(),
                    values.iter().map(|v| v.map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))).collect::<Vec<_>>(),
                )
            };
            series.into()
        })
        .collect();
    Ok(DataFrame::new_infer_height(columns)?)
}

