//! `tlab grid`: a grid from a spec file, on this machine or on a Slurm cluster.

use clap::Subcommand;
use std::path::PathBuf;
use transferlab::benchmark::grid::{self, GridSpec, TaskState};
use transferlab::report::Outcome;
use transferlab::{Error, Result};

#[derive(Subcommand)]
pub enum GridCommand {
    /// Run every unfinished cell on this machine (resumable: finished cells are skipped).
    Run { spec: PathBuf },
    /// Submit the unfinished tasks as a job array, one task per backdoored model; resubmitting
    /// runs only what is missing or failed.
    Submit {
        spec: PathBuf,
        /// Submit to Slurm (`sbatch`), the only scheduler so far.
        #[arg(long)]
        slurm: bool,
        /// Write the batch script and say what would be submitted, without submitting.
        #[arg(long)]
        dry_run: bool,
    },
    /// Done / queued / running / failed tasks, from the scheduler and the results folder.
    Status { spec: PathBuf },
    /// Merge every task's cells into the table and figures of the results folder.
    Collect { spec: PathBuf },
    /// Run one task (one attack's model for one seed, with its defences): what each array task
    /// of a submission runs.
    Task {
        spec: PathBuf,
        #[arg(long)]
        index: usize,
    },
}

pub fn run(command: GridCommand) -> Result<()> {
    match command {
        GridCommand::Run { spec } => {
            let spec = GridSpec::load(&spec)?;
            let result = grid::run(&spec)?;
            println!("{}", result.to_dataframe()?);
            print_outputs(&spec);
        }
        GridCommand::Submit { spec, slurm, dry_run } => {
            if !slurm {
                return Err(Error::invalid("scheduler", "none chosen; add --slurm (Slurm is the scheduler tlab submits to), or run on this machine with `tlab grid run`"));
            }
            let spec = GridSpec::load(&spec)?;
            let tlab = std::env::current_exe().map_err(|e| Error::io("find the tlab binary", "tlab", e))?;
            match grid::submit_slurm(&spec, &tlab, dry_run)? {
                None => println!("nothing to submit: {}", grid::status(&spec)?.summary()),
                Some(s) => {
                    let what = if dry_run { "would submit a job".to_string() } else { format!("submitted job {}", s.job_id) };
                    let ids: Vec<String> = s.tasks.iter().map(|(i, t)| format!("{i}:{t}")).collect();
                    println!("{what} with {} tasks ({})", s.tasks.len(), ids.join(", "));
                    println!("script: {}; logs: {}", s.script.display(), s.log_path(&spec.out, s.tasks[0].0).with_file_name("").display());
                }
            }
        }
        GridCommand::Status { spec } => {
            let spec = GridSpec::load(&spec)?;
            let status = grid::status(&spec)?;
            println!("{}", status.to_dataframe()?);
            println!("{}", status.summary());
            for t in status.tasks.iter().filter(|t| t.state == TaskState::Failed) {
                let log = t.log.as_ref().map_or("no log".into(), |p| p.display().to_string());
                println!("failed: {} ({}), log {log}{}", t.task.id(), t.scheduler_state.as_deref().unwrap_or("no longer queued"), t.error.as_ref().map_or(String::new(), |e| format!(": {e}")));
            }
        }
        GridCommand::Collect { spec } => {
            let spec = GridSpec::load(&spec)?;
            let result = grid::collect(&spec)?;
            println!("{}", result.to_dataframe()?);
            print_outputs(&spec);
        }
        GridCommand::Task { spec, index } => grid::run_task(&GridSpec::load(&spec)?, index)?,
    }
    Ok(())
}

fn print_outputs(spec: &GridSpec) {
    println!("table: {0}/table.parquet, {0}/table.csv; figures: {0}/figure.png, {0}/asr_heatmap.png, {0}/ca_vs_asr.png", spec.out.display());
}
