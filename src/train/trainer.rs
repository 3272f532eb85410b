//! The training loop: seeded, resumable, with per-epoch evaluation and a pluggable objective.

use super::checkpoint::{self, CheckpointMeta};
use super::evaluate::accuracy;
use crate::kernels::cross_entropy;
use super::optim::{clip_grad_norm, Optimizer, OptimizerConfig};
use crate::progress::{Progress, ProgressMode};
use super::schedule::LrSchedule;
use crate::data::transforms::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{LoadMode, Network};
use crate::rng::{permutation, stream_at, SeededRng};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, D};
use polars::prelude::{DataFrame, NamedFrom, Series};
use std::path::PathBuf;
use std::time::Instant;

/// How to train. [`TrainConfig::default`] is a short SGD run suited to small data.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerConfig,
    pub schedule: LrSchedule,
    /// Per-batch augmentation (random crop with padding, horizontal flip).
    pub augment: Augment,
    /// MixUp with Beta(alpha, alpha) mixing weights (Zhang et al. 2018), off when `None`.
    pub mixup_alpha: Option<f64>,
    /// Label smoothing for the default cross-entropy objective.
    pub label_smoothing: f64,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f64>,
    /// Drop the last incomplete batch of each epoch.
    pub drop_last: bool,
    /// Seeds shuffling, augmentation and MixUp; initialisation is seeded by [`Network::new`].
    pub seed: u64,
    /// Write a checkpoint here after every epoch and resume from it if it exists.
    pub checkpoint: Option<PathBuf>,
    pub progress: ProgressMode,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 128,
            optimizer: OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay: 5e-4 },
            schedule: LrSchedule::Constant { lr: 0.01 },
            augment: Augment::none(),
            mixup_alpha: None,
            label_smoothing: 0.0,
            grad_clip: None,
            drop_last: false,
            seed: 0,
            checkpoint: None,
            progress: ProgressMode::Bar,
        }
    }
}

impl TrainConfig {
    /// A constant-rate run without augmentation: how the defences fine-tune a model on the
    /// defender's clean data.
    pub fn constant_rate(epochs: usize, batch_size: usize, optimizer: OptimizerConfig, lr: f64, seed: u64, progress: ProgressMode) -> Self {
        Self { epochs, batch_size, optimizer, schedule: LrSchedule::Constant { lr }, seed, progress, ..Self::default() }
    }

    /// SGD with momentum 0.9 and `weight_decay`, the rate cosine-annealed from `lr` to 0 over
    /// the run: how the fine-tuning defences (FST, FT-SAM, NAD) train on the defender's data.
    pub fn sgd_cosine(epochs: usize, batch_size: usize, lr: f64, weight_decay: f64, augment: Augment, seed: u64, progress: ProgressMode) -> Self {
        Self {
            epochs,
            batch_size,
            optimizer: OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay },
            schedule: LrSchedule::Cosine { lr, min_lr: 0.0, epochs: epochs as f64 },
            augment,
            seed,
            progress,
            ..Self::default()
        }
    }

    fn validate(&self, n: usize) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("batch size", "must be at least 1"));
        }
        if n == 0 {
            return Err(Error::invalid("training data", "the dataset is empty"));
        }
        if self.drop_last && n < self.batch_size {
            return Err(Error::invalid(
                "batch size",
                format!("{} with drop_last leaves no batch from {n} samples", self.batch_size),
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::invalid("label smoothing", format!("{} is outside [0, 1)", self.label_smoothing)));
        }
        if let Some(a) = self.mixup_alpha {
            if a <= 0.0 {
                return Err(Error::invalid("MixUp alpha", format!("{a}; it must be positive")));
            }
        }
        Ok(())
    }

    fn steps_per_epoch(&self, n: usize) -> usize {
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }
}

/// One training step as an objective sees it.
pub struct Step<'a> {
    pub net: &'a Network,
    /// The (augmented) batch images.
    pub x: &'a Tensor,
    /// The batch labels (u32).
    pub y: &'a Tensor,
    /// Indices of the batch samples in the training dataset.
    pub indices: &'a [usize],
    pub epoch: usize,
    pub step: usize,
    /// A generator private to this step (reproducible from the seed).
    pub rng: &'a mut SeededRng,
}

/// What training minimises. The default is cross-entropy; attacks and defences plug in their
/// own (ABL's LGA loss, NeuBA's trigger loss, watermark mixing...).
pub trait Objective {
    /// The scalar loss of one batch and the batch's logits (for the running accuracy).
    fn loss(&mut self, step: &mut Step) -> Result<(Tensor, Tensor)>;

    /// Called after the loss's gradients are computed and before the optimiser applies them:
    /// where an objective that moved the weights to take its gradient elsewhere (SAM's
    /// ascent step) puts them back, so that the step starts from the weights it left, and
    /// where one that trains a network of its own on the same loss (the Input-aware attack's
    /// trigger generator) steps it: `grads` holds the gradient of every variable the loss
    /// depends on.
    fn after_backward(&mut self, _grads: &GradStore) -> Result<()> {
        Ok(())
    }

    /// Whether training ends after an epoch with this record (early stopping: RNP's unlearning
    /// stops once the clean accuracy has fallen far enough). A decision of the record alone, so
    /// that a run resumed from that epoch's checkpoint stops too.
    fn stop_after(&mut self, _epoch: &EpochRecord) -> bool {
        false
    }
}

/// Cross-entropy with optional label smoothing and MixUp.
#[derive(Debug, Clone, Copy)]
pub struct CrossEntropy {
    pub label_smoothing: f64,
    pub mixup_alpha: Option<f64>,
}

impl Objective for CrossEntropy {
    fn loss(&mut self, s: &mut Step) -> Result<(Tensor, Tensor)> {
        match self.mixup_alpha {
            None => {
                let logits = s.net.forward(s.x, true)?;
                Ok((cross_entropy(&logits, s.y, self.label_smoothing)?, logits))
            }
            Some(alpha) => {
                use rand_distr::{Beta, Distribution};
                let beta = Beta::new(alpha, alpha).map_err(|e| Error::invalid("MixUp alpha", e.to_string()))?;
                let lam: f64 = beta.sample(s.rng);
                let n = s.x.dim(0)?;
                let perm: Vec<u32> = permutation(s.rng, n).into_iter().map(|i| i as u32).collect();
                let perm = Tensor::from_vec(perm, n, s.x.device())?;
                let x2 = s.x.index_select(&perm, 0)?;
                let y2 = s.y.index_select(&perm, 0)?;
                let mixed = ((s.x * lam)? + (x2 * (1.0 - lam))?)?;
                let logits = s.net.forward(&mixed, true)?;
                let l1 = cross_entropy(&logits, s.y, self.label_smoothing)?;
                let l2 = cross_entropy(&logits, &y2, self.label_smoothing)?;
                Ok((((l1 * lam)? + (l2 * (1.0 - lam))?)?, logits))
            }
        }
    }
}

/// One epoch of the training history.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub eval_accuracy: Option<f64>,
    pub seconds: f64,
}

/// What [`train`] returns: one record per epoch.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct History {
    pub epochs: Vec<EpochRecord>,
}

impl History {
    /// One row per epoch: epoch, lr, train_loss, train_accuracy, eval_accuracy, seconds.
    pub fn to_dataframe(&self) -> Result<DataFrame> {
        let e = &self.epochs;
        let cols = vec![
            Series::new("epoch".into(), e.iter().map(|r| r.epoch as u32).collect::<Vec<_>>()).into(),
            Series::new("lr".into(), e.iter().map(|r| r.lr).collect::<Vec<_>>()).into(),
            Series::new("train_loss".into(), e.iter().map(|r| r.train_loss).collect::<Vec<_>>()).into(),
            Series::new("train_accuracy".into(), e.iter().map(|r| r.train_accuracy).collect::<Vec<_>>()).into(),
            Series::new("eval_accuracy".into(), e.iter().map(|r| r.eval_accuracy).collect::<Vec<_>>()).into(),
            Series::new("seconds".into(), e.iter().map(|r| r.seconds).collect::<Vec<_>>()).into(),
        ];
        Ok(DataFrame::new_infer_height(cols)?)
    }

    /// The last epoch's evaluation accuracy, if any.
    pub fn final_eval_accuracy(&self) -> Option<f64> {
        self.epochs.last().and_then(|r| r.eval_accuracy)
    }
}

/// Train `net` on `data` with cross-entropy, evaluating on `eval` after every epoch.
///
/// ```no_run
/// use transferlab::prelude::*;
/// let data = transferlab::data::digits().unwrap();
/// let (train_set, test_set) = data.split(0.8, 0, true).unwrap();
/// let spec = ModelSpec::named("convnet", train_set.shape, 10).unwrap();
/// let mut net = Network::new(&spec, 0, &candle_core::Device::Cpu).unwrap();
/// let history = train(&mut net, &train_set, Some(&test_set), &TrainConfig::default()).unwrap();
/// println!("{}", history.to_dataframe().unwrap());
/// ```
pub fn train(net: &mut Network, data: &Dataset, eval: Option<&Dataset>, cfg: &TrainConfig) -> Result<History> {
    let mut objective = CrossEntropy { label_smoothing: cfg.label_smoothing, mixup_alpha: cfg.mixup_alpha };
    train_with(net, data, eval, cfg, &mut objective)
}

/// Train with a custom objective.
pub fn train_with(
    net: &mut Network,
    data: &Dataset,
    eval: Option<&Dataset>,
    cfg: &TrainConfig,
    objective: &mut dyn Objective,
) -> Result<History> {
    cfg.validate(data.len())?;
    // A network built in an earlier notebook cell is rebuilt here first, so that the whole
    // backward graph draws tensor ids from one counter.
    net.make_local()?;
    if data.shape != net.spec().input {
        return Err(Error::shape(
            "training",
            format!("the model takes {:?} images but the dataset has {:?}", net.spec().input, data.shape),
        ));
    }
    if data.num_classes() > net.spec().num_classes {
        return Err(Error::invalid(
            "training data",
            format!(
                "the dataset has {} classes but the model's head has {}; call replace_head first",
                data.num_classes(),
                net.spec().num_classes
            ),
        ));
    }
    let steps_per_epoch = cfg.steps_per_epoch(data.len());
    let fingerprint = fingerprint(net, data, cfg);
    let mut optimizer = Optimizer::new(cfg.optimizer.clone())?;
    let mut history = History::default();
    let mut start_epoch = 0;
    if let Some(path) = cfg.checkpoint.as_ref().filter(|p| p.exists()) {
        let (model, optim, meta) = checkpoint::load(path)?;
        if meta.fingerprint != fingerprint {
            return Err(Error::invalid(
                "checkpoint",
                format!(
                    "{} belongs to a different run (model, data or configuration changed); \
                     delete it or choose another checkpoint path",
                    path.display()
                ),
            ));
        }
        net.set_tensors(&model, LoadMode::Strict)?;
        optimizer.restore(&optim, meta.steps);
        history = serde_json::from_str(&meta.history)
            .map_err(|e| Error::format(path, "transferlab checkpoint", format!("history unreadable: {e}")))?;
        start_epoch = meta.epoch;
    }
    if history.epochs.last().is_some_and(|r| objective.stop_after(r)) {
        return Ok(history);
    }
    let vars = net.trainable_vars();
    if vars.is_empty() {
        return Err(Error::invalid("model", "every parameter is frozen; unfreeze something to train"));
    }
    // Real-scale epochs (hundreds of steps) report in every epoch; short ones every tenth of
    // the run, so a notebook training 50 tiny epochs prints ten lines, not fifty.
    let progress = Progress::new("train", (cfg.epochs * steps_per_epoch) as u64, cfg.progress);
    let progress = if steps_per_epoch >= 100 { progress.report_every(steps_per_epoch as u64) } else { progress };
    progress.set_position((start_epoch * steps_per_epoch) as u64);
    if start_epoch > 0 {
        // A log should show that a run picked up where it stopped.
        progress.note(&format!("resumed at epoch {start_epoch} of {}", cfg.epochs));
    }
    let (c, h, w) = data.shape;
    let img = data.image_len();
    for epoch in start_epoch..cfg.epochs {
        let started = Instant::now();
        let order = permutation(&mut stream_at(cfg.seed, "train.shuffle", epoch as u64), data.len());
        let mut aug_rng = stream_at(cfg.seed, "train.augment", epoch as u64);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = 0.0;
        for (step, indices) in order.chunks(cfg.batch_size).take(steps_per_epoch).enumerate() {
            lr = cfg.schedule.lr_at(epoch as f64 + step as f64 / steps_per_epoch as f64);
            let mut pixels = Vec::with_capacity(indices.len() * img);
            for &i in indices {
                pixels.extend_from_slice(data.image(i));
            }
            cfg.augment.apply_batch(&mut pixels, data.shape, &mut aug_rng)?;
            let x = Tensor::from_vec(pixels, (indices.len(), c, h, w), net.device())?;
            let labels: Vec<u32> = indices.iter().map(|&i| data.labels[i]).collect();
            let y = Tensor::from_vec(labels.clone(), indices.len(), net.device())?;
            let mut step_rng = stream_at(cfg.seed, &format!("train.step.{epoch}"), step as u64);
            let mut s = Step { net, x: &x, y: &y, indices, epoch, step, rng: &mut step_rng };
            let (loss, logits) = objective.loss(&mut s)?;
            let loss_value = loss.to_scalar::<f32>()?;
            if !loss_value.is_finite() {
                return Err(Error::NonFinite { epoch, step, what: "loss", value: loss_value });
            }
            let mut grads = loss.backward()?;
            if let Some(max) = cfg.grad_clip {
                let norm = clip_grad_norm(&vars, &mut grads, max)?;
                if !norm.is_finite() {
                    return Err(Error::NonFinite { epoch, step, what: "gradient norm", value: norm as f32 });
                }
            }
            objective.after_backward(&grads)?;
            optimizer.step(&vars, &grads, lr)?;
            let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            correct += pred.iter().zip(&labels).filter(|(p, y)| p == y).count();
            seen += indices.len();
            loss_sum += loss_value as f64 * indices.len() as f64;
            progress.inc(1);
        }
        let eval_accuracy = match eval {
            Some(e) => Some(accuracy(net, e)?),
            None => None,
        };
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            eval_accuracy,
            seconds: started.elapsed().as_secs_f64(),
        };
        progress.message(match eval_accuracy {
            Some(a) => format!("epoch {} loss {:.3} eval {:.1}%", epoch + 1, record.train_loss, 100.0 * a),
            None => format!("epoch {} loss {:.3} acc {:.1}%", epoch + 1, record.train_loss, 100.0 * record.train_accuracy),
        });
        let stop = objective.stop_after(&record);
        history.epochs.push(record);
        if let Some(path) = &cfg.checkpoint {
            let meta = CheckpointMeta {
                epoch: epoch + 1,
                steps: optimizer.steps(),
                fingerprint: fingerprint.clone(),
                history: serde_json::to_string(&history).expect("history serialises"),
            };
            checkpoint::save(path, &net.named_tensors()?, &optimizer.state()?, &meta)?;
        }
        if stop {
            break;
        }
    }
    progress.finish();
    Ok(history)
}

fn fingerprint(net: &Network, data: &Dataset, cfg: &TrainConfig) -> String {
    let mut frozen: Vec<String> = net.parameter_names();
    frozen.retain(|n| !net.trainable_vars().iter().any(|(t, _)| t == n));
    format!(
        "numerics={}|{}|n={}|classes={}|epochs={}|batch={}|opt={:?}|sched={:?}|aug={:?}|mixup={:?}|ls={}|clip={:?}|seed={}|frozen={}",
        super::NUMERICS_VERSION,
        serde_json::to_string(net.spec()).unwrap_or_default(),
        data.len(),
        data.num_classes(),
        cfg.epochs,
        cfg.batch_size,
        cfg.optimizer,
        cfg.schedule,
        cfg.augment,
        cfg.mixup_alpha,
        cfg.label_smoothing,
        cfg.grad_clip,
        cfg.seed,
        frozen.len()
    )
}

