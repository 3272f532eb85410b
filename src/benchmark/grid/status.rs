//! Where each task of a grid stands, from the results folder (finished cells, failure
//! reports) and the scheduler (queued, running, or ended and why).

use super::slurm::{queue_states, submissions};
use super::spec::GridSpec;
use crate::benchmark::GridTask;
use crate::error::Result;
use polars::prelude::{DataFrame, NamedFrom, Series};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Every cell of the task is in the results folder.
    Done,
    /// Waiting in the scheduler's queue.
    Queued,
    /// Running under the scheduler.
    Running,
    /// Submitted, no longer queued or running, and not finished: killed, timed out, out of
    /// memory, or an error (see the task's log and error). A resubmission runs it again.
    Failed,
    /// Never submitted (and not finished by a local run).
    NotSubmitted,
}

impl TaskState {
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Done => "done",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Failed => "failed",
            TaskState::NotSubmitted => "not submitted",
        }
    }

    /// Whether a submission should (re)run the task.
    pub fn needs_submission(self) -> bool {
        matches!(self, TaskState::Failed | TaskState::NotSubmitted)
    }
}

/// One task's standing.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskStatus {
    /// Its index in [`crate::benchmark::BackdoorBenchConfig::tasks`] (the array index).
    pub index: usize,
    pub task: GridTask,
    pub cells_done: usize,
    pub cells: usize,
    pub state: TaskState,
    /// The scheduler's own word for the latest submission (`PENDING`, `CANCELLED`, ...).
    pub scheduler_state: Option<String>,
    /// `JOB_INDEX` of the latest submission.
    pub job: Option<String>,
    /// Its Slurm output file.
    pub log: Option<PathBuf>,
    /// The error the task reported, if it ended on one.
    pub error: Option<String>,
}

/// Every task of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct GridStatus {
    pub tasks: Vec<TaskStatus>,
}

impl GridStatus {
    /// Counts per state, e.g. `3 done, 1 failed`.
    pub fn summary(&self) -> String {
        let states = [TaskState::Done, TaskState::Running, TaskState::Queued, TaskState::Failed, TaskState::NotSubmitted];
        let parts: Vec<String> = states
            .iter()
            .filter_map(|s| {
                let n = self.tasks.iter().filter(|t| t.state == *s).count();
                (n > 0).then(|| format!("{n} {}", s.name()))
            })
            .collect();
        let cells: usize = self.tasks.iter().map(|t| t.cells).sum();
        let done: usize = self.tasks.iter().map(|t| t.cells_done).sum();
        format!("{} tasks: {}; {done}/{cells} cells finished", self.tasks.len(), parts.join(", "))
    }

    /// One row per task: index, task, state, cells (`done/planned`), scheduler state, job, log, error.
    pub fn to_dataframe(&self) -> Result<DataFrame> {
        let t = &self.tasks;
        let text = |f: &dyn Fn(&TaskStatus) -> Option<String>| t.iter().map(f).collect::<Vec<Option<String>>>();
        Ok(DataFrame::new_infer_height(vec![
            Series::new("index".into(), t.iter().map(|x| x.index as u64).collect::<Vec<_>>()).into(),
            Series::new("task".into(), t.iter().map(|x| x.task.id()).collect::<Vec<_>>()).into(),
            Series::new("state".into(), t.iter().map(|x| x.state.name()).collect::<Vec<_>>()).into(),
            Series::new("cells".into(), t.iter().map(|x| format!("{}/{}", x.cells_done, x.cells)).collect::<Vec<_>>()).into(),
            Series::new("scheduler".into(), text(&|x| x.scheduler_state.clone())).into(),
            Series::new("job".into(), text(&|x| x.job.clone())).into(),
            Series::new("log".into(), text(&|x| x.log.as_ref().map(|p| p.display().to_string()))).into(),
            Series::new("error".into(), text(&|x| x.error.clone())).into(),
        ])?)
    }
}

/// Where a task that ended on an error writes it (removed when the task next starts).
pub(crate) fn failure_path(out: &Path, task: &GridTask) -> PathBuf {
    out.join("cells").join(format!("{}.failed", task.id()))
}

/// The grid's standing. Asks the scheduler only about jobs this grid submitted, so a grid
/// run only locally needs no scheduler.
pub fn status(spec: &GridSpec) -> Result<GridStatus> {
    let cfg = spec.planning_config()?;
    let subs = submissions(&spec.out)?;
    let mut states: HashMap<String, HashMap<usize, String>> = HashMap::new();
    let mut tasks = Vec::new();
    for (index, task) in cfg.tasks().into_iter().enumerate() {
        let cells = cfg.task_cells(&task)?;
        let cells_done = cells.iter().filter(|c| c.1).count();
        let latest = subs.iter().rev().find_map(|s| s.tasks.iter().find(|(_, id)| *id == task.id()).map(|(i, _)| (s, *i)));
        let mut scheduler_state = None;
        if let Some((s, i)) = latest {
            if !states.contains_key(&s.job_id) {
                states.insert(s.job_id.clone(), queue_states(&s.job_id)?);
            }
            scheduler_state = states[&s.job_id].get(&i).cloned();
        }
        let error = std::fs::read_to_string(failure_path(&spec.out, &task)).ok().map(|e| e.trim().to_string());
        let state = if cells_done == cells.len() {
            TaskState::Done
        } else {
            match (latest, scheduler_state.as_deref()) {
                (None, _) => TaskState::NotSubmitted,
                (Some(_), Some("PENDING" | "CONFIGURING" | "REQUEUED" | "RESIZING" | "SUSPENDED")) => TaskState::Queued,
                (Some(_), Some("RUNNING" | "COMPLETING")) => TaskState::Running,
                (Some(_), _) => TaskState::Failed,
            }
        };
        tasks.push(TaskStatus {
            index,
            cells_done,
            cells: cells.len(),
            state,
            job: latest.map(|(s, i)| format!("{}_{i}", s.job_id)),
            log: latest.map(|(s, i)| s.log_path(&spec.out, i)),
            error: if state == TaskState::Done { None } else { error },
            scheduler_state,
            task,
        });
    }
    Ok(GridStatus { tasks })
}
