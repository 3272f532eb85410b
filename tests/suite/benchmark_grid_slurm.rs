//! The grid on a real Slurm (tests/with_slurm.sh starts munged, slurmctld and slurmd on
//! localhost; `just test` runs the suite inside it): a 4-cell grid submitted with
//! `tlab grid submit --slurm`, one task cancelled mid-training, the grid resubmitted; every
//! cell finishes exactly once and the collected table equals a local run's. Also, without a
//! scheduler: a task that fails reports its error and leaves no row.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use transferlab::benchmark::grid::{self, GridSpec, TaskState};
use transferlab::report::Outcome;

fn cifar_served() -> bool {
    std::env::var("TLAB_CIFAR_HUB").is_ok()
}

/// Four cells: BadNets and Blended, each undefended and behind CLP, one seed; two tasks. Long
/// enough (8 epochs) that a task can be cancelled between its first checkpoint and its end.
fn write_spec(dir: &Path, out: &str, lr: f64) -> PathBuf {
    let spec = format!(
        r#"{{"train_per_class": 20, "test_per_class": 10, "model": "resnet8", "epochs": 8, "batch_size": 32, "lr": {lr},
            "attacks": ["badnets", "blended"], "defences": ["clp"], "seeds": [0], "out": "{out}",
            "resources": {{"cpus": 1, "mem": "2G", "time": "00:20:00"}}}}"#
    );
    let path = dir.join(format!("{out}.json"));
    std::fs::write(&path, spec).unwrap();
    path
}

fn tlab(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tlab")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tlab {args:?} failed:\n{text}");
    text
}

fn wait_until(what: &str, timeout_s: u64, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(timeout_s), "timed out after {timeout_s} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn settled(spec: &GridSpec) -> bool {
    grid::status(spec).unwrap().tasks.iter().all(|t| !matches!(t.state, TaskState::Queued | TaskState::Running))
}

/// Logged rows per (task log, cell) across the results folder.
fn logged_cells(out: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for entry in std::fs::read_dir(out.join("cells")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let row: serde_json::Value = serde_json::from_str(line).unwrap();
                *counts.entry(format!("{}/{}", row["attack"], row["defence"])).or_insert(0) += 1;
            }
        }
    }
    counts
}

#[test]
fn a_cancelled_task_resubmitted_finishes_the_grid_as_a_local_run_does() {
    if std::env::var("TLAB_SLURM").is_err() || !cifar_served() {
        assert!(
            std::env::var("TLAB_REQUIRE_SLURM").is_err(),
            "TLAB_REQUIRE_SLURM is set but {}: run the suite through tests/with_cifar_hub.sh and tests/with_slurm.sh (as `just test` does)",
            if std::env::var("TLAB_SLURM").is_err() { "no local Slurm runs" } else { "CIFAR-10 is not served" }
        );
        eprintln!("skipped: needs a local Slurm and CIFAR-10 (run through tests/with_cifar_hub.sh and tests/with_slurm.sh, as `just test` does)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec_path = write_spec(dir.path(), "on-slurm", 0.05);
    let spec = GridSpec::load(&spec_path).unwrap();
    let spec_arg = spec_path.to_str().unwrap();
    assert!(grid::status(&spec).unwrap().tasks.iter().all(|t| t.state == TaskState::NotSubmitted));

    let submitted = tlab(&["grid", "submit", spec_arg, "--slurm"]);
    assert!(submitted.contains("with 2 tasks"), "{submitted}");
    let job = grid::submissions(&spec.out).unwrap()[0].job_id.clone();

    // Cancel the Blended task once it has checkpointed its first epoch: mid-training.
    let models = spec.out.join("models");
    wait_until("the Blended model's first checkpoint", 300, || {
        std::fs::read_dir(&models).is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("blended-seed0") && e.path().extension().is_some_and(|x| x == "ckpt")))
    });
    let cancel = Command::new("scancel").arg(format!("{job}_1")).output().unwrap();
    assert!(cancel.status.success(), "{}", String::from_utf8_lossy(&cancel.stderr));
    wait_until("the first submission to end", 300, || settled(&spec));

    let after_kill = grid::status(&spec).unwrap();
    let (badnets, blended) = (&after_kill.tasks[0], &after_kill.tasks[1]);
    assert_eq!(badnets.state, TaskState::Done, "the other task went on: {badnets:?}");
    assert_eq!(blended.state, TaskState::Failed, "{blended:?}");
    assert_eq!(blended.scheduler_state.as_deref(), Some("CANCELLED"), "{blended:?}");
    assert_eq!(blended.cells_done, 0, "a task killed while training logged a row: {blended:?}");
    assert!(blended.log.as_ref().unwrap().exists(), "the failed task's log {:?} is missing", blended.log);
    let status_text = tlab(&["grid", "status", spec_arg]);
    assert!(status_text.contains("failed: blended-seed0 (CANCELLED), log"), "{status_text}");

    // Resubmitting runs only the failed task; it resumes from its checkpoint.
    let resubmitted = tlab(&["grid", "submit", spec_arg, "--slurm"]);
    assert!(resubmitted.contains("with 1 tasks (1:blended-seed0)"), "{resubmitted}");
    wait_until("the resubmission to end", 300, || settled(&spec));
    assert!(grid::status(&spec).unwrap().tasks.iter().all(|t| t.state == TaskState::Done));
    let rerun = grid::status(&spec).unwrap().tasks[1].log.clone().unwrap();
    let rerun_log = std::fs::read_to_string(&rerun).unwrap();
    assert!(rerun_log.contains("resumed at epoch"), "{} does not show a resumed run:\n{rerun_log}", rerun.display());
    let nothing = tlab(&["grid", "submit", spec_arg, "--slurm"]);
    assert!(nothing.contains("nothing to submit"), "{nothing}");

    let counts = logged_cells(&spec.out);
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "a cell was logged more than once: {counts:?}");

    // The same grid run here, in one process: the same table (wall times aside).
    let local_path = write_spec(dir.path(), "local", 0.05);
    tlab(&["grid", "run", local_path.to_str().unwrap()]);
    let drop_time = |df: polars::prelude::DataFrame| df.drop("seconds").unwrap();
    let on_cluster = drop_time(grid::collect(&spec).unwrap().to_dataframe().unwrap());
    let local = drop_time(grid::collect(&GridSpec::load(&local_path).unwrap()).unwrap().to_dataframe().unwrap());
    assert!(on_cluster.equals_missing(&local), "cluster:\n{on_cluster}\nlocal:\n{local}");
    assert!(spec.out.join("asr_heatmap.png").exists());
}

#[test]
fn a_failing_task_reports_its_error_and_logs_no_row() {
    if !cifar_served() {
        eprintln!("skipped: CIFAR-10 is not served (run through tests/with_cifar_hub.sh, as `just test` does)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A learning rate that diverges at once: the task must stop on NaN, not log a row.
    let spec = GridSpec::load(write_spec(dir.path(), "diverging", 1e12)).unwrap();
    let e = grid::run_task(&spec, 0).unwrap_err().to_string();
    assert!(e.contains("diverged"), "{e}");
    let status = grid::status(&spec).unwrap();
    assert_eq!(status.tasks[0].cells_done, 0);
    assert!(status.tasks[0].error.as_deref().is_some_and(|m| m.contains("diverged")), "{:?}", status.tasks[0]);
    assert_eq!(status.tasks[1].error, None);
    let e = grid::run_task(&spec, 2).unwrap_err().to_string();
    assert!(e.contains("index 2; this grid has tasks 0 to 1"), "{e}");
}
