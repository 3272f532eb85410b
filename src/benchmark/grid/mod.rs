//! The benchmark grid beyond one machine: a grid described in a spec file ([`GridSpec`]) runs
//! here ([`run`]) or as a Slurm job array ([`submit_slurm`]), one task per backdoored model,
//! on the same code as [`crate::benchmark::backdoorbench::run`] and with the same results
//! folder: each task logs its cells into its own file there, [`status`] reads where every
//! task stands (results folder and scheduler), [`collect`] merges the logs into the one table
//! and figure, and a resubmission runs only the tasks that are missing or failed.
//!
//! A task that fails (bad input, NaN, out of memory, time limit, cancelled) leaves no row for
//! the cell it was on: a cell is logged only once computed, in one appended line. Cells
//! logged before the failure, the task's trained model and its last epoch checkpoint are
//! kept, so the rerun resumes where it stopped. The other tasks are not affected.
//!
//! ```no_run
//! use transferlab::benchmark::grid::{self, GridSpec};
//! let spec = GridSpec::load("grid.json").unwrap();
//! // On a Slurm login node (the tlab binary and the results folder on a shared file system):
//! grid::submit_slurm(&spec, &std::env::current_exe().unwrap(), false).unwrap();
//! println!("{}", grid::status(&spec).unwrap().summary());
//! // Later, from anywhere that sees the results folder:
//! let table = grid::collect(&spec).unwrap();
//! ```

mod slurm;
mod spec;
mod status;

pub use slurm::{batch_script, submissions, Submission};
pub use spec::{GridSpec, Resources};
pub use status::{status, GridStatus, TaskState, TaskStatus};

use crate::benchmark::backdoorbench::{self, BackdoorBenchResult};
use crate::error::{Error, Result};
use crate::fsutil::write_bytes_atomic;
use std::path::Path;

/// Run the whole grid on this machine, resuming what an earlier run or a cluster left: exactly
/// [`backdoorbench::run`] on the spec's configuration.
pub fn run(spec: &GridSpec) -> Result<BackdoorBenchResult> {
    backdoorbench::run(&spec.config()?)
}

/// Run task `index` of the grid ([`crate::benchmark::BackdoorBenchConfig::tasks`]), as one
/// array task of a cluster job does. On an error (or a panic) the task writes it into the
/// results folder, where [`status`] shows it, and returns it.
pub fn run_task(spec: &GridSpec, index: usize) -> Result<()> {
    let plan = spec.planning_config()?;
    let tasks = plan.tasks();
    let task = tasks.get(index).ok_or_else(|| Error::invalid("grid task", format!("index {index}; this grid has tasks 0 to {}", tasks.len().saturating_sub(1))))?;
    let failure = status::failure_path(&spec.out, task);
    std::fs::remove_file(&failure).ok();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| spec.config().and_then(|cfg| backdoorbench::run_task(&cfg, task))));
    let error = match outcome {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => e,
        Err(panic) => {
            let msg = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Error::invalid("grid task", format!("{} panicked: {msg}", task.id()))
        }
    };
    write_bytes_atomic(&failure, format!("{error}\n").as_bytes())?;
    Err(error)
}

/// Submit the grid's unfinished tasks as one Slurm job array (tasks done, queued or running
/// are left alone, so resubmitting runs only what is missing or failed). The spec is frozen
/// into the results folder and the tasks run `tlab` (the binary at `tlab`, on a file system
/// the nodes share) on that copy. Returns the submission, or `None` when nothing is left to
/// run; with `dry_run` writes the script and reports what it would submit, submitting nothing.
pub fn submit_slurm(spec: &GridSpec, tlab: &Path, dry_run: bool) -> Result<Option<Submission>> {
    let current = status(spec)?;
    let todo: Vec<&TaskStatus> = current.tasks.iter().filter(|t| t.state.needs_submission()).collect();
    if todo.is_empty() {
        return Ok(None);
    }
    let tlab = std::fs::canonicalize(tlab).map_err(|e| Error::io("find the tlab binary", tlab, e))?;
    let dir = slurm::slurm_dir(&spec.out);
    let frozen_text = spec.to_json();
    let tag = backdoorbench::short_hash(&frozen_text);
    let frozen = dir.join(format!("spec-{tag}.json"));
    write_bytes_atomic(&frozen, frozen_text.as_bytes())?;
    let script = dir.join(format!("grid-{tag}.sbatch"));
    write_bytes_atomic(&script, batch_script(spec, &frozen, &tlab).as_bytes())?;
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| Error::io("create directory", dir.join("logs"), e))?;
    let indices: Vec<usize> = todo.iter().map(|t| t.index).collect();
    let job_id = if dry_run { "dry-run".to_string() } else { slurm::sbatch(&script, &indices)? };
    let submitted = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let submission = Submission { job_id, tasks: todo.iter().map(|t| (t.index, t.task.id())).collect(), script, spec: frozen, submitted };
    if !dry_run {
        slurm::record(&spec.out, submission.clone())?;
    }
    Ok(Some(submission))
}

/// The grid's table from every task's log (unfinished cells pending), with `table.parquet`,
/// `table.csv` and the figures rewritten in the results folder. Trains nothing.
pub fn collect(spec: &GridSpec) -> Result<BackdoorBenchResult> {
    backdoorbench::status(&spec.planning_config()?)
}
