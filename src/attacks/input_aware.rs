//! Input-aware dynamic backdoor (Nguyen & Tran 2020, "Input-Aware Dynamic Backdoor Attack"):
//! the attacker controls training and makes every image its own trigger. A mask generator,
//! trained first, says where a trigger goes (a few percent of the pixels, different for each
//! image); a pattern generator, trained with the classifier, says what goes there. A diversity
//! loss keeps different images' triggers different, and cross-trigger samples (an image with
//! another image's trigger, keeping its own label) teach the classifier that a trigger works
//! only on the image it was made for.

use super::input_aware_generator::InputAwareGenerator;
use super::metrics::{attack_sentence, metrics_figure, metrics_on_triggered, metrics_table, percent, BackdoorMetrics};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{Arch, ModelSpec, Network};
use crate::report::{Figure, Outcome};
use crate::rng::{permutation, stream};
use crate::train::evaluate::fraction_equal;
use crate::train::{cross_entropy, predict, train_with, LrSchedule, Objective, Optimizer, OptimizerConfig, Progress, Step, TrainConfig};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use polars::prelude::{Column, DataFrame};
use rand::Rng;

/// The Input-aware dynamic attack's settings. Defaults from the authors' `config.py` as
/// BackdoorBench merged it (`config/attack/inputaware/default.yaml`, `attack/inputaware.py`):
/// a tenth of every batch poisoned (`p_attack`, target class 0) and a tenth cross-triggered
/// (`p_cross`); diversity weight 1; the mask generator trained alone first for 25 epochs
/// (`clean_train_epochs`; Adam lr 0.01, betas (0.5, 0.9), decayed 10x at epochs 10 and 20) to
/// cover 3.2 % of the image (`mask_density`, norm weight 100); then the classifier (SGD lr
/// 0.01, momentum 0.9, weight decay 5e-4, batch 128) and the pattern generator (Adam lr 0.01,
/// betas (0.5, 0.9)) trained together on one loss for 100 epochs (BackdoorBench's CIFAR-10
/// setting; the authors ran 600; their first learning-rate decays, at epochs 100 and 200, fall
/// after BackdoorBench's 100); generators 32 channels wide, 3 stages deep.
///
/// Deviations: the victim is this crate's small ConvNet unless `arch` says otherwise
/// (authors: PreAct-ResNet-18 on CIFAR-10), trained without augmentation unless `train.augment`
/// says otherwise (authors: random crop 5, rotation 10); the generators as
/// [`InputAwareGenerator`] documents.
///
/// ```
/// let cfg = transferlab::attacks::InputAwareConfig::default();
/// assert_eq!((cfg.attack_fraction, cfg.cross_fraction, cfg.mask_density, cfg.train.epochs), (0.1, 0.1, 0.032, 100));
/// ```
#[derive(Debug, Clone)]
pub struct InputAwareConfig {
    /// Fraction of every batch given its own trigger and the target label.
    pub attack_fraction: f64,
    /// Fraction of every batch given another image's trigger, keeping its label.
    pub cross_fraction: f64,
    /// Weight of the diversity loss (image distance over trigger distance).
    pub diversity_weight: f64,
    /// Weight of the mask-size penalty while the mask generator trains.
    pub mask_norm_weight: f64,
    /// Mean mask value above which the penalty applies (fraction of the image covered).
    pub mask_density: f64,
    /// Epochs of the mask generator, trained alone before the classifier.
    pub mask_epochs: usize,
    /// Adam learning rate of the mask generator (10x lower at epochs 10 and 20).
    pub mask_lr: f64,
    /// Adam learning rate of the pattern generator.
    pub generator_lr: f64,
    /// The classifier's recipe; the pattern generator takes a step with every one of its steps.
    pub train: TrainConfig,
    /// The attack's target class (all-to-one).
    pub target: u32,
    /// Channels of the generators' first stage (doubling at each further stage).
    pub generator_width: usize,
    /// Down (and up) stages of the generators; the image sides must divide by 2^depth.
    pub generator_depth: usize,
    /// The victim's architecture (input shape and classes come from the data).
    pub arch: Arch,
    /// The mask stage's batches and the pairing of images with other images' triggers.
    pub seed: u64,
    /// Initialisation seed of the victim, the clean reference and the generators.
    pub model_seed: u64,
    pub device: Device,
}

impl Default for InputAwareConfig {
    fn default() -> Self {
        Self {
            attack_fraction: 0.1,
            cross_fraction: 0.1,
            diversity_weight: 1.0,
            mask_norm_weight: 100.0,
            mask_density: 0.032,
            mask_epochs: 25,
            mask_lr: 0.01,
            generator_lr: 0.01,
            train: TrainConfig {
                epochs: 100,
                batch_size: 128,
                optimizer: OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay: 5e-4 },
                schedule: LrSchedule::Constant { lr: 0.01 },
                ..TrainConfig::default()
            },
            target: 0,
            generator_width: 32,
            generator_depth: 3,
            arch: super::poisoning::victim_arch(),
            seed: 0,
            model_seed: 0,
            device: Device::Cpu,
        }
    }
}

/// The generators' Adam, as the authors configure it.
fn generator_adam() -> Result<Optimizer> {
    Optimizer::new(OptimizerConfig::AdamW { beta1: 0.5, beta2: 0.9, eps: 1e-8, weight_decay: 0.0 })
}

impl InputAwareConfig {
    /// Refuse settings that cannot run, saying what to change.
    pub fn validate(&self, train: &Dataset) -> Result<()> {
        let b = self.train.batch_size as f64;
        if !(self.attack_fraction > 0.0 && self.cross_fraction >= 0.0 && self.attack_fraction + self.cross_fraction < 1.0) || (self.attack_fraction * b) < 1.0 {
            return Err(Error::invalid(
                "Input-aware fractions",
                format!(
                    "attack {} and cross {} of a batch of {}: use fractions that together stay below 1 and give at least one poisoned image per batch (authors: 0.1 and 0.1 of 128)",
                    self.attack_fraction, self.cross_fraction, self.train.batch_size
                ),
            ));
        }
        if !(self.mask_density > 0.0 && self.mask_density < 1.0) {
            return Err(Error::invalid("Input-aware mask density", format!("{}; use a fraction of the image in (0, 1) (authors: 0.032)", self.mask_density)));
        }
        if self.mask_epochs == 0 {
            return Err(Error::invalid("Input-aware mask epochs", "0; an untrained mask covers about half the image (authors: 25)"));
        }
        if self.train.epochs == 0 {
            return Err(Error::invalid("Input-aware epochs", "0; the pattern generator learns only with the classifier (BackdoorBench: 100)"));
        }
        if self.target as usize >= train.num_classes() {
            return Err(Error::invalid("Input-aware target", format!("class {} of {} classes", self.target, train.num_classes())));
        }
        ModelSpec::new(self.arch.clone(), train.shape, train.num_classes())?;
        Ok(())
    }
}

/// Per image, the root mean square difference of `a` and `b` (the authors' distance).
fn rms_distance(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok((a - b)?.sqr()?.flatten_from(1)?.mean(1)?.sqrt()?)
}

/// Mean over pairs of (image distance / trigger distance): small when different images get
/// different triggers.
fn diversity_loss(images: (&Tensor, &Tensor), triggers: (&Tensor, &Tensor)) -> Result<Tensor> {
    Ok((rms_distance(images.0, images.1)? / (rms_distance(triggers.0, triggers.1)? + 1e-7)?)?.mean_all()?)
}

/// `x` with the trigger made from `source`: where the mask of `source` is 1, the pattern of
/// `source`; elsewhere `x`.
fn stamp(x: &Tensor, pattern: &Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok((x + (pattern - x)?.broadcast_mul(mask)?)?)
}

/// The mask generator alone: small masks (penalty above the density) that differ between
/// images. Returns each epoch's mean loss.
fn train_mask(mask: &InputAwareGenerator, train: &Dataset, cfg: &InputAwareConfig) -> Result<Vec<f64>> {
    let mut adam = generator_adam()?;
    let batch = cfg.train.batch_size;
    let steps = train.len().div_ceil(batch);
    let progress = Progress::new("Input-aware mask", (cfg.mask_epochs * steps) as u64, cfg.train.progress);
    let mut losses = Vec::with_capacity(cfg.mask_epochs);
    for epoch in 0..cfg.mask_epochs {
        let lr = cfg.mask_lr * 0.1f64.powi([10, 20].iter().filter(|&&m| epoch >= m).count() as i32);
        let mut rng = stream(cfg.seed, &format!("input_aware.mask.{epoch}"));
        let (first, second) = (permutation(&mut rng, train.len()), permutation(&mut rng, train.len()));
        let mut sum = 0.0;
        for (a, b) in first.chunks(batch).zip(second.chunks(batch)) {
            let (x1, _) = train.batch(a, &cfg.device)?;
            let (x2, _) = train.batch(b, &cfg.device)?;
            let (m1, m2) = (mask.mask(&x1, true)?, mask.mask(&x2, true)?);
            let size = (m1.clone() - cfg.mask_density)?.relu()?.mean_all()?;
            let loss = ((size * cfg.mask_norm_weight)? + (diversity_loss((&x1, &x2), (&m1, &m2))? * cfg.diversity_weight)?)?;
            sum += loss.to_scalar::<f32>()? as f64;
            adam.step(&mask.vars(), &loss.backward()?, lr)?;
            progress.inc(1);
        }
        losses.push(sum / steps as f64);
    }
    progress.finish();
    Ok(losses)
}

/// One batch: the first `attack_fraction` of it carries its own trigger and the target label,
/// the next `cross_fraction` another batch image's trigger and its own label, the rest is
/// clean; cross-entropy over all of it plus the diversity loss. The pattern generator steps on
/// the same gradients as the classifier ([`Objective::after_backward`]).
struct InputAwareObjective<'a> {
    cfg: &'a InputAwareConfig,
    pattern: &'a InputAwareGenerator,
    mask: &'a InputAwareGenerator,
    optimizer: Optimizer,
    /// Per epoch: the diversity loss's sum and count.
    diversity: Vec<(f64, usize)>,
}

impl Objective for InputAwareObjective<'_> {
    fn loss(&mut self, s: &mut Step) -> Result<(Tensor, Tensor)> {
        let n = s.x.dim(0)?;
        let attacked = ((self.cfg.attack_fraction * n as f64) as usize).min(n);
        let crossed = ((self.cfg.cross_fraction * n as f64) as usize).min(n - attacked);
        if attacked == 0 || n < 3 {
            // A last batch too small to poison trains on clean images only.
            let logits = s.net.forward(s.x, true)?;
            return Ok((cross_entropy(&logits, s.y, self.cfg.train.label_smoothing)?, logits));
        }
        // Partners: the batch shifted by a random offset, so that no image is paired with
        // itself, neither for its cross trigger (offset) nor in the diversity loss (offset +
        // attacked).
        let forbidden = (n - attacked % n) % n;
        let shift = loop {
            let k = s.rng.random_range(1..n);
            if k != forbidden {
                break k;
            }
        };
        let order: Vec<u32> = (0..n).map(|i| ((i + shift) % n) as u32).collect();
        let partners = s.x.index_select(&Tensor::from_vec(order, n, s.x.device())?, 0)?;

        let x_attacked = s.x.narrow(0, 0, attacked)?;
        let own_pattern = self.pattern.forward(&x_attacked, true)?;
        let own_mask = self.mask.mask(&x_attacked, false)?.detach();
        let mut inputs = vec![stamp(&x_attacked, &own_pattern, &own_mask)?];
        let mut diversity = None;
        if crossed > 0 {
            let sources = partners.narrow(0, attacked, crossed)?;
            let other_pattern = self.pattern.forward(&sources, true)?;
            let other_mask = self.mask.mask(&sources, false)?.detach();
            inputs.push(stamp(&s.x.narrow(0, attacked, crossed)?, &other_pattern, &other_mask)?);
            let k = attacked.min(crossed);
            diversity = Some(diversity_loss((&x_attacked.narrow(0, 0, k)?, &sources.narrow(0, 0, k)?), (&own_pattern.narrow(0, 0, k)?, &other_pattern.narrow(0, 0, k)?))?);
        }
        if attacked + crossed < n {
            inputs.push(s.x.narrow(0, attacked + crossed, n - attacked - crossed)?);
        }
        let targets = Tensor::cat(&[Tensor::full(self.cfg.target, attacked, s.x.device())?, s.y.narrow(0, attacked, n - attacked)?], 0)?;
        let logits = s.net.forward(&Tensor::cat(&inputs, 0)?, true)?;
        let mut loss = cross_entropy(&logits, &targets, self.cfg.train.label_smoothing)?;
        if let Some(d) = diversity {
            if self.diversity.len() <= s.epoch {
                self.diversity.resize(s.epoch + 1, (0.0, 0));
            }
            self.diversity[s.epoch].0 += d.to_scalar::<f32>()? as f64;
            self.diversity[s.epoch].1 += 1;
            loss = (loss + (d * self.cfg.diversity_weight)?)?;
        }
        Ok((loss, logits))
    }

    fn after_backward(&mut self, grads: &GradStore) -> Result<()> {
        self.optimizer.step(&self.pattern.vars(), grads, self.cfg.generator_lr)
    }
}

/// What the Input-aware attack did: the victim and the same-seed clean reference on the learnt
/// triggers, their accuracy on cross-triggered images, the mask's coverage, the generators and
/// the losses of both stages.
#[derive(Debug)]
pub struct InputAwareResult {
    pub config: InputAwareConfig,
    pub victim: BackdoorMetrics,
    pub clean_reference: BackdoorMetrics,
    /// The victim's accuracy (own labels) on test images carrying another test image's
    /// trigger: high when a trigger works only on the image it was made for (the paper's
    /// cross-trigger test).
    pub victim_cross_accuracy: f64,
    pub clean_reference_cross_accuracy: f64,
    /// Mean mask value over the test images: the fraction of each image the trigger replaces.
    pub mask_coverage: f64,
    /// The mask stage's loss per epoch (size penalty and diversity).
    pub mask_loss: Vec<f64>,
    /// The diversity loss per joint epoch.
    pub diversity_loss: Vec<f64>,
    pub pattern_generator: InputAwareGenerator,
    pub mask_generator: InputAwareGenerator,
}

impl InputAwareResult {
    fn rows(&self) -> Vec<(String, BackdoorMetrics)> {
        vec![("clean model".to_string(), self.clean_reference), ("Input-aware".to_string(), self.victim)]
    }

    /// `images` each with the trigger made from `sources` (the same images: their own
    /// triggers), as the trained generators make it.
    pub fn stamp_dataset(&self, images: &Dataset, sources: &Dataset) -> Result<Dataset> {
        stamp_with(&self.pattern_generator, &self.mask_generator, images, sources, &self.config.device)
    }
}

fn stamp_with(pattern: &InputAwareGenerator, mask: &InputAwareGenerator, images: &Dataset, sources: &Dataset, device: &Device) -> Result<Dataset> {
    if images.shape != sources.shape || images.len() != sources.len() {
        return Err(Error::invalid("Input-aware trigger sources", format!("{} images {:?} for {} images {:?}; give one source per image", sources.len(), sources.shape, images.len(), images.shape)));
    }
    let (p, m) = (pattern.outputs(sources, false, device)?, mask.outputs(sources, true, device)?);
    let plane = images.shape.1 * images.shape.2;
    let per_image = images.shape.0 * plane;
    let mut pixels = images.pixels().to_vec();
    for (i, px) in pixels.iter_mut().enumerate() {
        let (img, within) = (i / per_image, i % per_image);
        let w = m.pixels()[img * plane + within % plane];
        *px += (p.pixels()[i] - *px) * w;
    }
    images.with_pixels(pixels, images.shape)
}

impl Outcome for InputAwareResult {
    /// The standard metrics table, on the learnt triggers, with each model's cross-trigger
    /// accuracy.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let mut df = metrics_table(&self.rows())?;
        df.with_column(Column::new("cross_accuracy".into(), vec![self.clean_reference_cross_accuracy, self.victim_cross_accuracy]))?;
        Ok(df)
    }

    fn figure(&self) -> Result<Figure> {
        Ok(metrics_figure(&format!("Input-aware dynamic (mask {:.1} % of the image)", 100.0 * self.mask_coverage), &self.rows()))
    }

    fn summary(&self) -> String {
        format!(
            "Input-aware dynamic backdoor (masks covering {} of each image): {}; with another image's trigger the victim keeps the true label of {} of test images (clean model {}).",
            percent(self.mask_coverage),
            attack_sentence(&self.victim, &self.clean_reference),
            percent(self.victim_cross_accuracy),
            percent(self.clean_reference_cross_accuracy)
        )
    }
}

/// Train an Input-aware victim on `train` (mask generator first, then the pattern generator
/// with the classifier), a clean reference of the same seed and recipe, and measure both on
/// `test`: ASR and RA on the non-target images with their own triggers, cross accuracy on all
/// test images with another test image's trigger.
///
/// ```
/// use transferlab::attacks::{input_aware, InputAwareConfig};
/// use transferlab::report::Outcome;
/// use transferlab::train::{ProgressMode, TrainConfig};
/// let data = transferlab::data::digits()?.per_class_sample(20, 0)?;
/// let (test, train) = data.split(0.25, 0, true)?;
/// let d = InputAwareConfig::default();
/// let train_cfg = TrainConfig { epochs: 1, batch_size: 32, progress: ProgressMode::Hidden, ..d.train.clone() };
/// let cfg = InputAwareConfig { mask_epochs: 1, generator_width: 8, generator_depth: 2, train: train_cfg, ..d };
/// let result = input_aware::run(&train, &test, &cfg)?;
/// assert!((0.0..=1.0).contains(&result.mask_coverage));
/// assert_eq!(result.to_dataframe()?.height(), 2);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn run(train: &Dataset, test: &Dataset, cfg: &InputAwareConfig) -> Result<InputAwareResult> {
    cfg.validate(train)?;
    if test.shape != train.shape {
        return Err(Error::invalid("Input-aware test set", format!("images {:?}, the training set's are {:?}", test.shape, train.shape)));
    }
    let spec = ModelSpec::new(cfg.arch.clone(), train.shape, train.num_classes())?;
    let (w, d) = (cfg.generator_width, cfg.generator_depth);
    let mask = InputAwareGenerator::new(train.shape, 1, w, d, cfg.model_seed.wrapping_add(1), &cfg.device)?;
    let pattern = InputAwareGenerator::new(train.shape, train.shape.0, w, d, cfg.model_seed, &cfg.device)?;
    let mask_loss = train_mask(&mask, train, cfg)?;

    let mut victim = Network::new(&spec, cfg.model_seed, &cfg.device)?;
    let mut objective = InputAwareObjective { cfg, pattern: &pattern, mask: &mask, optimizer: generator_adam()?, diversity: Vec::new() };
    train_with(&mut victim, train, None, &cfg.train, &mut objective)?;
    let diversity_loss = objective.diversity.iter().map(|&(sum, n)| sum / n.max(1) as f64).collect();
    let mut reference = Network::new(&spec, cfg.model_seed, &cfg.device)?;
    crate::train::train(&mut reference, train, None, &cfg.train)?;

    // Own triggers on the non-target test images; for the cross test, every test image with
    // the trigger of its successor in a seeded shuffle (never its own).
    let victims: Vec<usize> = (0..test.len()).filter(|&i| test.labels[i] != cfg.target).collect();
    let chosen = test.select(&victims)?;
    let triggered = stamp_with(&pattern, &mask, &chosen, &chosen, &cfg.device)?;
    let order = permutation(&mut stream(cfg.seed, "input_aware.cross"), test.len());
    let mut partner = vec![0; test.len()];
    for (k, &i) in order.iter().enumerate() {
        partner[i] = order[(k + 1) % order.len()];
    }
    let crossed = stamp_with(&pattern, &mask, test, &test.select(&partner)?, &cfg.device)?;
    let mask_coverage = {
        let m = mask.outputs(test, true, &cfg.device)?;
        m.pixels().iter().map(|&v| v as f64).sum::<f64>() / m.pixels().len().max(1) as f64
    };
    let measure = |net: &Network| -> Result<(BackdoorMetrics, f64)> {
        Ok((metrics_on_triggered(net, test, &triggered, cfg.target)?, fraction_equal(&predict(net, &crossed)?, &crossed.labels)))
    };
    let ((victim_metrics, victim_cross), (clean_metrics, clean_cross)) = (measure(&victim)?, measure(&reference)?);
    Ok(InputAwareResult {
        config: cfg.clone(),
        victim: victim_metrics,
        clean_reference: clean_metrics,
        victim_cross_accuracy: victim_cross,
        clean_reference_cross_accuracy: clean_cross,
        mask_coverage,
        mask_loss,
        diversity_loss,
        pattern_generator: pattern,
        mask_generator: mask,
    })
}
