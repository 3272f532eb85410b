//! Hidden-trigger backdoors (Saha et al. 2020, "Hidden trigger backdoor attacks"): clean-label
//! poisons that never show the trigger.
//!
//! The attacker perturbs target-class images within an L-inf budget so that their features
//! (in a feature extractor the victim will reuse) collide with the features of source images
//! carrying the trigger. The poisons look like, and are labelled as, ordinary target images;
//! a victim that fine-tunes the last layer on data containing them learns to put the region of
//! feature space where patched source images live into the target class. At test time,
//! pasting the trigger on a source image sends it to the target class.

use super::metrics::{metrics_figure, metrics_table, percent, BackdoorMetrics};
use super::trigger::{PatchFill, Placement, Trigger};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{Arch, ModelSpec, Network};
use crate::report::{Figure, Outcome};
use crate::rng::{permutation, stream};
use crate::train::evaluate::{fraction_equal, predict};
use crate::train::{train, LrSchedule, OptimizerConfig, Progress, ProgressMode, TrainConfig};
use candle_core::{Device, Tensor, Var};
use polars::prelude::{Column, DataFrame, NamedFrom, Series};
use rand::Rng;

/// The attack's configuration. Defaults follow the paper and its code: L-inf budget
/// eps = 16/255, perturbation updated by plain gradient steps at lr 0.01 halved every 1000
/// iterations, at most 5000 iterations per batch (stopping early once every pair's squared
/// feature distance is below `stop_loss`), poisons crafted in batches of 100 with a greedy
/// closest-pair matching of poisons to patched source images, a trigger pasted at a random
/// location, and a victim that fine-tunes only the last layer on top of a frozen feature
/// extractor.
///
/// Deviations, for a CPU-sized miniature: the feature extractor is an MLP (64-256-256)
/// trained on half of the digits (the paper: ImageNet AlexNet), the victim's task is
/// the ten digit classes on the other half (the paper: pairs or ten ImageNet classes), the
/// trigger is a 3x3 random patch (the paper: 30x30 on 224x224 images) and the lr is scaled
/// to our features (see [`HiddenTriggerConfig::lr`]); the greedy pairing removes a matched
/// source as well as a matched poison, so that no patched source is used twice (the paper's
/// code masks only the matched pair).
#[derive(Debug, Clone)]
pub struct HiddenTriggerConfig {
    /// The feature extractor's architecture (default: the MLP, 2 x 256 hidden units).
    pub arch: Arch,
    /// Class whose patched images should go to `target`.
    pub source: u32,
    /// Class the poisons are drawn from and keep as their label.
    pub target: u32,
    /// The trigger pasted on source images (never on a poison).
    pub trigger: Trigger,
    /// L-inf budget of the perturbation, in (0, 1] (pixels are in [0, 1]).
    pub eps: f32,
    /// Step size of the perturbation's gradient steps (the paper: 0.01 on AlexNet fc7
    /// features; it depends on the scale of the features' gradients).
    pub lr: f64,
    /// The step size is halved every this many iterations.
    pub lr_halving: usize,
    /// At most this many iterations per batch.
    pub iterations: usize,
    /// Stop a batch once every pair's squared feature distance is below this (0 disables).
    pub stop_loss: f64,
    /// Poisons crafted (target-class images of the attacker's data).
    pub num_poisons: usize,
    /// Poisons crafted together, each batch matched against as many patched source images.
    pub batch: usize,
    /// Fraction of the data the attacker's feature extractor is trained on (the rest is the
    /// victim's fine-tuning data and test set).
    pub pretrain_fraction: f64,
    /// Fraction of the victim's data held out for testing.
    pub test_fraction: f64,
    /// Training of the feature extractor.
    pub pretrain: TrainConfig,
    /// The victim's fine-tuning of a fresh last layer (the body frozen).
    pub finetune: TrainConfig,
    pub seed: u64,
    pub progress: ProgressMode,
    /// Where the networks are built and trained: `Device::Cpu` by default; a GPU with the
    /// `cuda` feature (`Device::cuda_if_available(0)`).
    pub device: Device,
}

impl Default for HiddenTriggerConfig {
    fn default() -> Self {
        let sgd = TrainConfig {
            epochs: 15,
            batch_size: 64,
            optimizer: OptimizerConfig::sgd_momentum(),
            schedule: LrSchedule::Cosine { lr: 0.05, min_lr: 0.0, epochs: 15.0 },
            ..TrainConfig::default()
        };
        Self {
            device: Device::Cpu,
            arch: Arch::Mlp { hidden: vec![256, 256] },
            source: 3,
            target: 8,
            trigger: random_patch(3, 7),
            eps: 16.0 / 255.0,
            lr: 0.01,
            lr_halving: 1000,
            iterations: 5000,
            stop_loss: 0.0,
            num_poisons: 60,
            batch: 100,
            pretrain_fraction: 0.5,
            test_fraction: 0.3,
            pretrain: sgd.clone(),
            finetune: TrainConfig { epochs: 20, schedule: LrSchedule::Constant { lr: 0.01 }, seed: 1, ..sgd },
            seed: 0,
            progress: ProgressMode::Bar,
        }
    }
}

/// A `size` x `size` patch of uniform random grey levels drawn from `seed`, pasted at a
/// random location (the paper's triggers are random patterns at random locations).
pub fn random_patch(size: usize, seed: u64) -> Trigger {
    let mut rng = stream(seed, "hidden_trigger.patch");
    let pixels = (0..size * size).map(|_| rng.random::<f32>()).collect();
    Trigger::Patch { size, fill: PatchFill::Image { channels: 1, pixels }, placement: Placement::Random }
}

/// What [`run`] measured.
#[derive(Debug, Clone)]
pub struct HiddenTriggerResult {
    /// The victim fine-tuned on clean data only: CA on the victim's test set; ASR/RA on its
    /// patched source-class test images.
    pub clean: BackdoorMetrics,
    /// The victim fine-tuned on the same data plus the poisons.
    pub poisoned: BackdoorMetrics,
    /// The poisons (labels: the target class; `attributes.poisoned` all true).
    pub poisons: Dataset,
    /// The target images the poisons were made from, in the same order.
    pub originals: Dataset,
    /// Largest |poison - original| over every pixel.
    pub max_perturbation: f32,
    /// Poisons in which the trigger appears anywhere (should be 0).
    pub poisons_with_trigger: usize,
    /// Mean squared feature distance of matched pairs before and after the optimisation.
    pub feature_distance: (f64, f64),
    /// The budget used.
    pub eps: f32,
}

impl Outcome for HiddenTriggerResult {
    /// The standard metrics table (clean fine-tuning, poisoned fine-tuning) plus the number
    /// of poisons, the budget, the largest perturbation and the poisons containing the trigger.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let mut df = metrics_table(&self.rows())?;
        let n = self.poisons.len() as u64;
        let extra: Vec<Column> = vec![
            Series::new("poisons".into(), vec![0u64, n]).into(),
            Series::new("eps".into(), vec![self.eps as f64; 2]).into(),
            Series::new("max_linf".into(), vec![0.0, self.max_perturbation as f64]).into(),
            Series::new("poisons_with_trigger".into(), vec![0u64, self.poisons_with_trigger as u64]).into(),
        ];
        df = df.hstack(&extra)?;
        Ok(df)
    }

    fn figure(&self) -> Result<Figure> {
        Ok(metrics_figure("Hidden-trigger backdoor: CA, and ASR on patched source images", &self.rows()))
    }

    fn summary(&self) -> String {
        format!(
            "Hidden-trigger backdoor: {} clean-label poisons within L-inf {} (largest change {:.4}, {} of them showing the trigger; the matched pairs' mean squared feature distance {:.3} before the optimisation, {:.3} after) give ASR {} against {} for the model fine-tuned without them, at CA {} (clean {}).",
            self.poisons.len(),
            self.eps,
            self.max_perturbation,
            self.poisons_with_trigger,
            self.feature_distance.0,
            self.feature_distance.1,
            percent(self.poisoned.attack_success_rate),
            percent(self.clean.attack_success_rate),
            percent(self.poisoned.clean_accuracy),
            percent(self.clean.clean_accuracy)
        )
    }
}

impl HiddenTriggerResult {
    fn rows(&self) -> Vec<(String, BackdoorMetrics)> {
        vec![("clean fine-tuning".to_string(), self.clean), ("with hidden-trigger poisons".to_string(), self.poisoned)]
    }
}

impl HiddenTriggerConfig {
    fn validate(&self, data: &Dataset) -> Result<()> {
        let k = data.num_classes();
        for (what, c) in [("source class", self.source), ("target class", self.target)] {
            if c as usize >= k {
                return Err(Error::invalid(what, format!("{c} does not exist: the dataset has {k} classes (0..{})", k - 1)));
            }
        }
        if self.source == self.target {
            return Err(Error::invalid("source class", "must differ from the target class"));
        }
        self.trigger.validate(data.shape)?;
        if !matches!(self.trigger, Trigger::Patch { .. }) {
            return Err(Error::invalid("trigger", "the hidden-trigger attack pastes a patch; blended triggers are not supported"));
        }
        if !(self.eps > 0.0 && self.eps <= 1.0) {
            return Err(Error::invalid("eps", format!("{} is outside (0, 1]; pixels are in [0, 1] (the paper uses 16/255)", self.eps)));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::invalid("lr", format!("{}; it must be positive", self.lr)));
        }
        if self.iterations == 0 || self.batch == 0 || self.num_poisons == 0 || self.lr_halving == 0 {
            return Err(Error::invalid("hidden-trigger settings", "iterations, batch, num_poisons and lr_halving must all be at least 1"));
        }
        for (what, f) in [("pretrain fraction", self.pretrain_fraction), ("test fraction", self.test_fraction)] {
            if !(f > 0.0 && f < 1.0) {
                return Err(Error::invalid(what, format!("{f} is outside (0, 1)")));
            }
        }
        Ok(())
    }
}

/// Run the attack on `data`: train the feature extractor on the attacker's share, craft the
/// poisons from its target images, then fine-tune a fresh last layer on the victim's share
/// with and without the poisons and measure CA and the ASR on patched source test images.
///
/// ```no_run
/// use transferlab::attacks::{hidden_trigger, HiddenTriggerConfig};
/// let r = hidden_trigger::run(&transferlab::data::digits()?, &HiddenTriggerConfig::default())?;
/// assert!(r.max_perturbation <= 16.0 / 255.0 + 1e-6);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn run(data: &Dataset, cfg: &HiddenTriggerConfig) -> Result<HiddenTriggerResult> {
    cfg.validate(data)?;
    let device = cfg.device.clone();
    let (attacker, victim) = data.split(cfg.pretrain_fraction, cfg.seed, true)?;
    let (test, victim_train) = victim.split(cfg.test_fraction, cfg.seed.wrapping_add(1), true)?;
    let by_class = attacker.indices_by_class();
    let target_pool = &by_class[cfg.target as usize];
    let source_pool = &by_class[cfg.source as usize];
    if cfg.num_poisons > target_pool.len() {
        return Err(Error::invalid(
            "number of poisons",
            format!("{} asked for, but the attacker's share has only {} target-class images", cfg.num_poisons, target_pool.len()),
        ));
    }

    let spec = ModelSpec::new(cfg.arch.clone(), data.shape, data.num_classes())?;
    let mut extractor = Network::new(&spec, cfg.seed, &device)?;
    train(&mut extractor, &attacker, None, &cfg.pretrain)?;

    let order = permutation(&mut stream(cfg.seed, "hidden_trigger.targets"), target_pool.len());
    let chosen: Vec<usize> = order[..cfg.num_poisons].iter().map(|&j| target_pool[j]).collect();
    let originals = attacker.select(&chosen)?;
    let (poisons, feature_distance) = craft_poisons(&extractor, &attacker, &originals, source_pool, cfg)?;

    let max_perturbation = poisons.pixels().iter().zip(originals.pixels()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let poisons_with_trigger = (0..poisons.len()).filter(|&i| contains_patch(poisons.image(i), poisons.shape, &cfg.trigger)).count();

    let clean = fine_tune_and_measure(&extractor, &victim_train, &test, cfg)?;
    let poisoned = fine_tune_and_measure(&extractor, &victim_train.concat(&poisons)?, &test, cfg)?;
    Ok(HiddenTriggerResult { clean, poisoned, poisons, originals, max_perturbation, poisons_with_trigger, feature_distance, eps: cfg.eps })
}

/// Perturb `originals` (target images) within the budget so that their features collide
/// with those of patched source images, batch by batch.
fn craft_poisons(net: &Network, attacker: &Dataset, originals: &Dataset, source_pool: &[usize], cfg: &HiddenTriggerConfig) -> Result<(Dataset, (f64, f64))> {
    let device = net.device().clone();
    let n = originals.len();
    let mut out = Vec::with_capacity(n * originals.image_len());
    let mut rng = stream(cfg.seed, "hidden_trigger.sources");
    // Gradients flow to the poisons only: the weights are a graph-free view.
    let view = net.inference()?;
    let batches: Vec<Vec<usize>> = (0..n).collect::<Vec<_>>().chunks(cfg.batch).map(|b| b.to_vec()).collect();
    let progress = Progress::new("hidden-trigger poisons", (batches.len() * cfg.iterations) as u64, cfg.progress);
    let (mut before, mut after) = (0.0, 0.0);
    for (bi, idx) in batches.iter().enumerate() {
        let b = idx.len();
        // A fresh draw of patched source images for each batch, as in the paper.
        let src: Vec<usize> = (0..b).map(|_| source_pool[rng.random_range(0..source_pool.len())]).collect();
        let patched = cfg.trigger.apply_to(&attacker.select(&src)?, &(0..b).collect::<Vec<_>>(), cfg.seed.wrapping_add(bi as u64))?;
        let fs = view.features(&patched.images_tensor(&device)?)?;
        let t = originals.batch(idx, &device)?.0;
        let delta = Var::from_tensor(&t.zeros_like()?)?;
        let mut last = 0.0;
        let mut done = 0;
        for it in 0..cfg.iterations {
            let lr = cfg.lr * 0.5f64.powi((it / cfg.lr_halving) as i32);
            let z = (&t + delta.as_tensor())?;
            let fz = view.features(&z)?;
            let pairing = greedy_pairing(&fs, &fz.detach())?;
            let matched = fs.index_select(&Tensor::from_vec(pairing, b, &device)?, 0)?;
            let per_pair = (&fz - &matched)?.sqr()?.sum(1)?;
            let loss = per_pair.sum_all()?;
            let pairs: Vec<f32> = per_pair.to_vec1()?;
            last = pairs.iter().map(|&v| v as f64).sum::<f64>() / b as f64;
            if it == 0 {
                before += last * b as f64;
            }
            if cfg.stop_loss > 0.0 && pairs.iter().all(|&v| (v as f64) < cfg.stop_loss) {
                done = it;
                break;
            }
            let grads = loss.backward()?;
            let g = grads.get(delta.as_tensor()).ok_or_else(|| Error::invalid("hidden-trigger", "no gradient reached the perturbation"))?;
            let stepped = (delta.as_tensor() - (g * lr)?)?.clamp(-cfg.eps, cfg.eps)?;
            let next = ((&t + stepped)?.clamp(0f32, 1f32)? - &t)?;
            delta.set(&next)?;
            progress.inc(1);
            done = it + 1;
        }
        progress.inc((cfg.iterations - done.min(cfg.iterations)) as u64);
        after += last * b as f64;
        let poison = (&t + delta.as_tensor())?.clamp(0f32, 1f32)?;
        out.extend(poison.flatten_all()?.to_vec1::<f32>()?);
    }
    progress.finish();
    let mut poisons = originals.with_pixels(out, originals.shape)?;
    poisons.attributes.poisoned = Some(vec![true; n]);
    Ok((poisons, (before / n as f64, after / n as f64)))
}

/// Greedy matching (the paper's "closest pair without replacement"): repeatedly take the
/// closest remaining (source, poison) pair in feature space. Returns, for each poison, the
/// index of its source.
pub fn greedy_pairing(sources: &Tensor, poisons: &Tensor) -> Result<Vec<u32>> {
    let s: Vec<Vec<f32>> = sources.to_vec2()?;
    let p: Vec<Vec<f32>> = poisons.to_vec2()?;
    if s.len() < p.len() {
        return Err(Error::invalid("pairing", format!("{} sources cannot be matched to {} poisons", s.len(), p.len())));
    }
    let mut pairs: Vec<(f32, usize, usize)> = Vec::with_capacity(s.len() * p.len());
    for (i, si) in s.iter().enumerate() {
        for (j, pj) in p.iter().enumerate() {
            pairs.push((si.iter().zip(pj).map(|(a, b)| (a - b) * (a - b)).sum(), i, j));
        }
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let (mut used_s, mut out) = (vec![false; s.len()], vec![u32::MAX; p.len()]);
    for (_, i, j) in pairs {
        if !used_s[i] && out[j] == u32::MAX {
            used_s[i] = true;
            out[j] = i as u32;
        }
    }
    Ok(out)
}

/// Whether a patch trigger's pixels appear (within 1/255) anywhere in `image`.
pub fn contains_patch(image: &[f32], shape: (usize, usize, usize), trigger: &Trigger) -> bool {
    let Trigger::Patch { size, .. } = trigger else { return false };
    let s = *size;
    let (c, h, w) = shape;
    if s > h || s > w {
        return false;
    }
    let mut stamp = vec![0f32; c * h * w];
    if trigger.clone().at(Placement::TopLeft).apply(&mut stamp, shape, None).is_err() {
        return false;
    }
    for r0 in 0..=h - s {
        for c0 in 0..=w - s {
            let hit = (0..c).all(|ch| {
                (0..s).all(|i| (0..s).all(|j| (image[(ch * h + r0 + i) * w + c0 + j] - stamp[(ch * h + i) * w + j]).abs() <= 1.0 / 255.0))
            });
            if hit {
                return true;
            }
        }
    }
    false
}

/// Fine-tune a fresh last layer on `train_set` over the frozen extractor; CA on `test`, ASR
/// and RA on its patched source-class images.
fn fine_tune_and_measure(extractor: &Network, train_set: &Dataset, test: &Dataset, cfg: &HiddenTriggerConfig) -> Result<BackdoorMetrics> {
    let mut victim = extractor.duplicate()?;
    victim.replace_head(test.num_classes(), cfg.seed.wrapping_add(100))?;
    victim.freeze_body();
    train(&mut victim, train_set, None, &cfg.finetune)?;
    let clean_accuracy = fraction_equal(&predict(&victim, test)?, &test.labels);
    let sources: Vec<usize> = (0..test.len()).filter(|&i| test.labels[i] == cfg.source).collect();
    if sources.is_empty() {
        return Err(Error::invalid("test set", "no source-class image in the victim's test set; ASR is undefined"));
    }
    let patched = cfg.trigger.apply_to(&test.select(&sources)?, &(0..sources.len()).collect::<Vec<_>>(), cfg.seed.wrapping_add(7))?;
    let pred = predict(&victim, &patched)?;
    Ok(BackdoorMetrics {
        clean_accuracy,
        attack_success_rate: pred.iter().filter(|&&p| p == cfg.target).count() as f64 / pred.len() as f64,
        robust_accuracy: pred.iter().filter(|&&p| p == cfg.source).count() as f64 / pred.len() as f64,
        n_clean: test.len(),
        n_triggered: pred.len(),
    })
}
