//! A grid described in a file: what a researcher writes once and runs anywhere, on this
//! machine (`tlab grid run`) or as a job array on a cluster (`tlab grid submit --slurm`).

use crate::benchmark::{BackdoorBenchConfig, BenchAttack, BenchDefence};
use crate::error::{Error, Result};
use crate::models::InputNorm;
use crate::progress::ProgressMode;
use crate::train::LrSchedule;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The grid: data, model, recipe, attacks, defences, seeds, device, where results go, and
/// what each cluster task asks the scheduler for. Read from JSON; every field is optional and
/// defaults to [`BackdoorBenchConfig::default`] (BackdoorBench's CIFAR-10 setting on 2 cores).
///
/// ```
/// use transferlab::benchmark::grid::GridSpec;
/// let spec = GridSpec::from_json(r#"{
///     "attacks": ["badnets", "wanet"], "defences": ["ft", "clp"], "seeds": [0, 1],
///     "model": "resnet20", "epochs": 20, "out": "runs/grid",
///     "resources": {"cpus": 8, "mem": "16G", "time": "12:00:00"}
/// }"#, ".").unwrap();
/// assert_eq!(spec.config().unwrap().tasks().len(), 4); // 2 attacks x 2 seeds
/// assert!(GridSpec::from_json(r#"{"epoch": 3}"#, ".").unwrap_err().to_string().contains("unknown field `epoch`"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GridSpec {
    /// Hub id of an image-classification dataset with `train` and `test` splits.
    pub dataset: String,
    /// Training images per class (a stratified, seeded sample); all when absent.
    pub train_per_class: Option<usize>,
    /// Test images per class; all when absent.
    pub test_per_class: Option<usize>,
    /// Registry name of the victim (`tlab models`).
    pub model: String,
    /// Input normalisation inside the model: `cifar10`, `imagenet`, `MEANS/STDS`, or null.
    pub normalize: Option<String>,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate of the cosine schedule (SGD, momentum 0.9, weight decay 5e-4).
    pub lr: f64,
    /// Attack names ([`BenchAttack::NAMES`]).
    pub attacks: Vec<String>,
    /// Defence names ([`BenchDefence::NAMES`]).
    pub defences: Vec<String>,
    pub seeds: Vec<u64>,
    /// Fraction of the clean training set the defender holds.
    pub defender_fraction: f64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`, as seen by each task.
    pub device: String,
    /// The results folder: cell logs, models, the table and figures. A relative path is taken
    /// from the spec file's folder, so every node resolves it alike on a shared file system.
    pub out: PathBuf,
    /// What each cluster task asks for.
    pub resources: Resources,
}

/// The scheduler resources of one task (one attack's model for one seed, with its defences).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    pub cpus: usize,
    pub gpus: usize,
    /// Memory per task in Slurm's syntax (`8G`, `16000M`).
    pub mem: String,
    /// Time limit per task in Slurm's syntax (`HH:MM:SS`, `D-HH:MM:SS`).
    pub time: String,
    pub partition: Option<String>,
    /// Further `sbatch` options, passed as they are (`--account=...`, `--qos=...`).
    pub sbatch_args: Vec<String>,
}

impl Default for Resources {
    fn default() -> Self {
        // One ResNet-20 model for 20 epochs plus six defences on 2 cores: about 4 hours.
        Self { cpus: 2, gpus: 0, mem: "8G".into(), time: "12:00:00".into(), partition: None, sbatch_args: Vec::new() }
    }
}

impl Default for GridSpec {
    fn default() -> Self {
        let d = BackdoorBenchConfig::default();
        let lr = match d.train.schedule {
            LrSchedule::Cosine { lr, .. } => lr,
            _ => 0.1,
        };
        Self {
            dataset: d.dataset,
            train_per_class: d.train_per_class,
            test_per_class: d.test_per_class,
            model: d.model,
            normalize: Some("cifar10".into()),
            epochs: d.train.epochs,
            batch_size: d.train.batch_size,
            lr,
            attacks: d.attacks.iter().map(|a| a.name.clone()).collect(),
            defences: d.defences.iter().map(|x| x.name().to_string()).collect(),
            seeds: d.seeds,
            defender_fraction: d.defender_fraction,
            device: "cpu".into(),
            out: PathBuf::from("grid-results"),
            resources: Resources::default(),
        }
    }
}

impl GridSpec {
    /// Read a spec file (JSON). Its `out` is resolved against the file's folder.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read grid spec", path, e))?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Self::from_json(&text, base).map_err(|e| match e {
            Error::InvalidArgument { reason, .. } => Error::Format { path: path.to_path_buf(), format: "grid spec (JSON)", reason },
            other => other,
        })
    }

    /// Parse a spec from JSON text; a relative `out` is taken from `base`. The spec is checked
    /// (names, seeds, resources) without touching data or devices.
    pub fn from_json(text: &str, base: impl AsRef<Path>) -> Result<Self> {
        let mut spec: GridSpec = serde_json::from_str(text).map_err(|e| {
            Error::invalid("grid spec", format!("{e}; fields: dataset, train_per_class, test_per_class, model, normalize, epochs, batch_size, lr, attacks, defences, seeds, defender_fraction, device, out, resources {{cpus, gpus, mem, time, partition, sbatch_args}}"))
        })?;
        if spec.out.is_relative() {
            let base = base.as_ref();
            let base = if base.is_absolute() { base.to_path_buf() } else { std::env::current_dir().map_err(|e| Error::io("read current directory", base, e))?.join(base) };
            spec.out = lexically_normal(&base.join(&spec.out));
        }
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<()> {
        self.planning_config()?;
        let r = &self.resources;
        if r.cpus == 0 {
            return Err(Error::invalid("grid spec", "resources.cpus is 0; give each task at least one CPU"));
        }
        let on_gpu = self.device != "cpu";
        if on_gpu && r.gpus == 0 && self.device != "auto" {
            return Err(Error::invalid("grid spec", format!("device is {:?} but resources.gpus is 0: the tasks would get no GPU; set resources.gpus to 1", self.device)));
        }
        if !on_gpu && r.gpus > 0 {
            return Err(Error::invalid("grid spec", format!("resources.gpus is {} but device is \"cpu\": the tasks would hold GPUs and not use them; set device to \"cuda\"", r.gpus)));
        }
        for (what, value) in [("resources.mem", &r.mem), ("resources.time", &r.time)] {
            if value.is_empty() || value.contains(char::is_whitespace) {
                return Err(Error::invalid("grid spec", format!("{what} is {value:?}; give it in Slurm's syntax (mem: 8G; time: 12:00:00)")));
            }
        }
        Ok(())
    }

    /// The benchmark configuration on the spec's device (each task calls this).
    pub fn config(&self) -> Result<BackdoorBenchConfig> {
        Ok(BackdoorBenchConfig { device: crate::runtime::parse_device(&self.device)?, ..self.planning_config()? })
    }

    /// The benchmark configuration on the CPU: tasks, cells and results without the device
    /// (a cluster's login node has no GPU; no fingerprint depends on the device).
    pub fn planning_config(&self) -> Result<BackdoorBenchConfig> {
        let normalize = self.normalize.as_deref().map(InputNorm::parse).transpose()?;
        let mut cfg = BackdoorBenchConfig {
            dataset: self.dataset.clone(),
            train_per_class: self.train_per_class,
            test_per_class: self.test_per_class,
            model: self.model.clone(),
            normalize,
            attacks: self.attacks.iter().map(|n| BenchAttack::by_name(n)).collect::<Result<_>>()?,
            defences: self.defences.iter().map(|n| BenchDefence::by_name(n)).collect::<Result<_>>()?,
            defender_fraction: self.defender_fraction,
            seeds: self.seeds.clone(),
            out_dir: self.out.clone(),
            progress: ProgressMode::Bar,
            ..BackdoorBenchConfig::default()
        }
        .with_epochs(self.epochs);
        cfg.train.batch_size = self.batch_size;
        if let LrSchedule::Cosine { lr, .. } = &mut cfg.train.schedule {
            *lr = self.lr;
        }
        cfg.validated()
    }

    /// The spec as JSON (what a submission freezes beside the results).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a spec always serialises")
    }
}

/// `a/b/../c` as `a/c`, without touching the file system (the folder may not exist yet).
fn lexically_normal(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_resolves_its_results_folder_from_its_own_folder() {
        let spec = GridSpec::from_json(r#"{"out": "results"}"#, "/shared/grids").unwrap();
        assert_eq!(spec.out, PathBuf::from("/shared/grids/results"));
        assert_eq!(GridSpec::from_json(r#"{"out": "../runs/./g"}"#, "/shared/grids").unwrap().out, PathBuf::from("/shared/runs/g"));
        assert_eq!(spec.planning_config().unwrap().tasks().len(), 2, "the default grid: BadNets and Blended, seed 0");
        let round_trip = GridSpec::from_json(&spec.to_json(), "/elsewhere").unwrap();
        assert_eq!(round_trip, spec, "a frozen spec reads back the same");
    }

    #[test]
    fn mistakes_in_a_spec_are_named() {
        let err = |json: &str| GridSpec::from_json(json, "/g").unwrap_err().to_string();
        assert!(err(r#"{"attacks": ["badnet"]}"#).contains("\"badnet\"; use one of badnets"));
        assert!(err(r#"{"defences": ["dbd"]}"#).contains("use one of ft, fp"));
        assert!(err(r#"{"seeds": [1, 1]}"#).contains("distinct seeds"));
        assert!(err(r#"{"epochs": 0}"#).contains("at least 1"));
        assert!(err(r#"{"device": "cuda"}"#).contains("set resources.gpus to 1"));
        assert!(err(r#"{"resources": {"gpus": 2}}"#).contains("set device to \"cuda\""));
        assert!(err(r#"{"resources": {"cpus": 0}}"#).contains("at least one CPU"));
        assert!(err(r#"{"resources": {"time": "12 h"}}"#).contains("Slurm's syntax"));
        assert!(err(r#"{"seeds": "0"}"#).contains("invalid type"));
    }
}
