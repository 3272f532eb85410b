//! Slurm: the grid as a job array, one array task per backdoored model (its defences run
//! inside the task, so the model is trained once). Talks to the scheduler through its
//! commands (`sbatch`, `squeue`), as a user on a login node does.

use super::spec::GridSpec;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One `sbatch` of the grid: the job array's id and which grid task each array index runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub job_id: String,
    /// (array index, task id such as `badnets-seed0`).
    pub tasks: Vec<(usize, String)>,
    /// The batch script and the frozen spec it runs (both in the results folder).
    pub script: PathBuf,
    pub spec: PathBuf,
    /// Unix time of the submission.
    pub submitted: u64,
}

impl Submission {
    /// Where Slurm writes array task `index`'s output (stdout and stderr).
    pub fn log_path(&self, out: &Path, index: usize) -> PathBuf {
        log_dir(out).join(format!("{}_{index}.out", self.job_id))
    }
}

pub(crate) fn slurm_dir(out: &Path) -> PathBuf {
    out.join("slurm")
}

fn log_dir(out: &Path) -> PathBuf {
    slurm_dir(out).join("logs")
}

fn submissions_path(out: &Path) -> PathBuf {
    slurm_dir(out).join("submissions.json")
}

/// The batch script of a submission: resources from the spec, one array task running
/// `tlab grid task FROZEN_SPEC --index $SLURM_ARRAY_TASK_ID`. The array indices are given to
/// `sbatch` on its command line (only the tasks still to run).
pub fn batch_script(spec: &GridSpec, frozen_spec: &Path, tlab: &Path) -> String {
    let r = &spec.resources;
    let name = spec.out.file_name().map_or("grid".into(), |n| n.to_string_lossy().into_owned());
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        "# Written by `tlab grid submit --slurm`: one array task = one backdoored model and its defences.".into(),
        format!("#SBATCH --job-name=tlab-{name}"),
        format!("#SBATCH --output={}/%A_%a.out", log_dir(&spec.out).display()),
        "#SBATCH --nodes=1".into(),
        "#SBATCH --ntasks=1".into(),
        format!("#SBATCH --cpus-per-task={}", r.cpus),
        format!("#SBATCH --mem={}", r.mem),
        format!("#SBATCH --time={}", r.time),
    ];
    if r.gpus > 0 {
        lines.push(format!("#SBATCH --gres=gpu:{}", r.gpus));
    }
    if let Some(p) = &r.partition {
        lines.push(format!("#SBATCH --partition={p}"));
    }
    lines.extend(r.sbatch_args.iter().map(|a| format!("#SBATCH {a}")));
    lines.push("set -euo pipefail".into());
    // The task's threads match what Slurm gave it, not the node's core count.
    lines.push("export RAYON_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-1}\"".into());
    lines.push(format!("exec {} grid task {} --index \"$SLURM_ARRAY_TASK_ID\"", shell_quote(&tlab.display().to_string()), shell_quote(&frozen_spec.display().to_string())));
    lines.join("\n") + "\n"
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Submit `script` as a job array over `indices`; returns the job id.
pub(crate) fn sbatch(script: &Path, indices: &[usize]) -> Result<String> {
    let array = indices.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let out = scheduler_command("sbatch", &["--parsable".to_string(), format!("--array={array}"), script.display().to_string()])?;
    // `--parsable` prints `JOBID` or `JOBID;CLUSTER`.
    let id = out.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(Error::Scheduler(format!("sbatch answered {:?}, not a job id", out.trim())));
    }
    Ok(id)
}

/// The scheduler's state of each array task of `job_id` still known to it (`PENDING`,
/// `RUNNING`, `CANCELLED`, `TIMEOUT`, `OUT_OF_MEMORY`, ...), by array index. A job the
/// scheduler has forgotten (finished long ago) gives an empty map.
pub(crate) fn queue_states(job_id: &str) -> Result<HashMap<usize, String>> {
    let args = ["-h", "-r", "--states=all", "-o", "%i|%T", "-j", job_id].map(String::from);
    let out = match scheduler_command("squeue", &args) {
        Ok(out) => out,
        Err(Error::Scheduler(msg)) if msg.contains("Invalid job id") => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    let mut states = HashMap::new();
    for line in out.lines() {
        let Some((id, state)) = line.trim().split_once('|') else { continue };
        // Array tasks print as JOB_INDEX; a not yet expanded remainder as JOB_[1-3,5].
        if let Some(index) = id.strip_prefix(&format!("{job_id}_")).and_then(|i| i.parse::<usize>().ok()) {
            states.insert(index, state.to_string());
        } else if let Some(range) = id.strip_prefix(&format!("{job_id}_[")).and_then(|r| r.strip_suffix(']')) {
            for index in expand_indices(range) {
                states.insert(index, state.to_string());
            }
        }
    }
    Ok(states)
}

/// `1-3,5` (Slurm's array notation, `%N` throttles dropped) as indices.
fn expand_indices(range: &str) -> Vec<usize> {
    let range = range.split('%').next().unwrap_or("");
    range
        .split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) => (a..=b).collect(),
                _ => Vec::new(),
            },
            None => part.parse::<usize>().into_iter().collect(),
        })
        .collect()
}

fn scheduler_command(program: &str, args: &[String]) -> Result<String> {
    let output = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Scheduler(format!("`{program}` is not installed here; submit from a Slurm login node, or run the grid on this machine with `tlab grid run`"))
        } else {
            Error::Scheduler(format!("could not start `{program}`: {e}"))
        }
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(Error::Scheduler(format!("`{program} {}` failed ({}): {}", args.join(" "), output.status, stderr.trim())));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Every submission of the grid in `out`, oldest first.
pub fn submissions(out: &Path) -> Result<Vec<Submission>> {
    let path = submissions_path(out);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Format { path, format: "submission record (JSON)", reason: e.to_string() })
}

/// Add `submission` to the grid's record (the whole file rewritten atomically).
pub(crate) fn record(out: &Path, submission: Submission) -> Result<()> {
    let mut all = submissions(out)?;
    all.push(submission);
    let text = serde_json::to_string_pretty(&all).expect("submissions serialise");
    crate::fsutil::write_bytes_atomic(&submissions_path(out), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_notation_expands() {
        assert_eq!(expand_indices("1-3,5"), vec![1, 2, 3, 5]);
        assert_eq!(expand_indices("0,2%1"), vec![0, 2]);
        assert!(expand_indices("x").is_empty());
    }

    #[test]
    fn the_script_asks_for_the_spec_resources() {
        let spec = GridSpec::from_json(r#"{"device": "cuda", "out": "/shared/grid", "resources": {"cpus": 8, "gpus": 1, "mem": "32G", "time": "2:00:00", "partition": "gpu", "sbatch_args": ["--account=lab"]}}"#, "/").unwrap();
        let s = batch_script(&spec, Path::new("/shared/grid/slurm/spec.json"), Path::new("/home/me/tlab"));
        for line in ["#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G", "#SBATCH --time=2:00:00", "#SBATCH --gres=gpu:1", "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --output=/shared/grid/slurm/logs/%A_%a.out"] {
            assert!(s.lines().any(|l| l == line), "{line} missing from\n{s}");
        }
        assert!(s.ends_with("exec '/home/me/tlab' grid task '/shared/grid/slurm/spec.json' --index \"$SLURM_ARRAY_TASK_ID\"\n"), "{s}");
    }
}
