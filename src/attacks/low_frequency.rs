//! Low Frequency (Zeng et al. 2021, "Rethinking the Backdoor Attacks' Triggers: A Frequency
//! Perspective"): the triggers of earlier attacks carry high-frequency artefacts that a
//! detector in the frequency domain sees; a trigger confined to low frequencies has none and
//! still implants. The attacker fits a targeted universal adversarial perturbation on a clean
//! model of its own, passing every update through a Gaussian low-pass filter, and poisons the
//! training set with that smooth perturbation, dirty-label, to the class it pushes images to.

use super::frequency_trigger::dct_basis;
use super::poisoning::{self, PoisoningAttackConfig, PoisoningAttackResult};
use super::poison::{PoisonConfig, TargetMode};
use super::metrics::{attack_sentence, percent};
use super::trigger::Trigger;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{Inference, Network};
use crate::report::{Figure, Outcome};
use crate::rng::{permutation, stream};
use crate::train::{train, Progress, ProgressMode};
use candle_core::{IndexOp, Tensor, Var};
use polars::prelude::{DataFrame, NamedFrom, Series};

/// How Low Frequency fits its trigger. Defaults from the authors' code (`Sec5_Smooth_Trigger`:
/// `universal_pert.py`, `deepfool.py`, `gauss_smooth.py`): the universal perturbation is fitted
/// on 100 training images by targeted DeepFool (overshoot 0.02, at most 200 steps per image);
/// each image's step and the running perturbation pass through a Gaussian low-pass filter of
/// standard deviation 6 pixels (30 taps, on 32x32 images), and the perturbation is min-max
/// rescaled into [0, 0.2] after every update; passes over the images stop once 20 % of them
/// are fooled (the code's `delta = 0.8`), keeping the pass that fooled most; the target follows
/// the class most fooled images go to, once they are more than 5 %.
///
/// Deviations: DeepFool steps on logit differences (the authors' TensorFlow graph exposes its
/// softmax); the passes are capped (`max_passes`; the code loops until the fooling rate is
/// reached).
///
/// ```
/// use transferlab::attacks::low_frequency::LowFrequencyFit;
/// let fit = LowFrequencyFit::default();
/// assert_eq!((fit.fit_images, fit.fooling_rate, fit.smoothing_sigma, fit.amplitude), (100, 0.2, 6.0, 0.2));
/// assert_eq!(LowFrequencyFit::scaled_to(8).smoothing_sigma, 1.5);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LowFrequencyFit {
    /// Training images the universal perturbation is fitted on (the first of a seeded shuffle).
    pub fit_images: usize,
    /// Stop once this fraction of the fitted images changes class under the perturbation.
    pub fooling_rate: f64,
    /// At most this many passes over the fitted images.
    pub max_passes: usize,
    /// DeepFool's step cap per image and its overshoot.
    pub deepfool_steps: usize,
    pub overshoot: f64,
    /// Standard deviation of the Gaussian low-pass filter in pixels (6 on 32x32 images; see
    /// [`Self::scaled_to`]); the kernel has 5 x this many taps.
    pub smoothing_sigma: f64,
    /// Pass every update through the low-pass filter. `false`: the same universal perturbation
    /// without it, the ablation that keeps high frequencies.
    pub smooth: bool,
    /// The perturbation is rescaled into [0, amplitude] after every update.
    pub amplitude: f32,
    /// The class DeepFool aims at first.
    pub initial_target: u32,
    /// Follow the class most fooled images go to (the authors' code); `false` keeps
    /// `initial_target`.
    pub follow_dominant_class: bool,
    /// Seeds the choice and order of the fitted images.
    pub seed: u64,
}

impl Default for LowFrequencyFit {
    fn default() -> Self {
        Self {
            fit_images: 100,
            fooling_rate: 0.2,
            max_passes: 10,
            deepfool_steps: 200,
            overshoot: 0.02,
            smoothing_sigma: 6.0,
            smooth: true,
            amplitude: 0.2,
            initial_target: 0,
            follow_dominant_class: true,
            seed: 0,
        }
    }
}

impl LowFrequencyFit {
    /// The defaults with the filter scaled from 32 pixels to images `width` wide.
    pub fn scaled_to(width: usize) -> Self {
        Self { smoothing_sigma: 6.0 * width as f64 / 32.0, ..Self::default() }
    }

    fn validate(&self, data: &Dataset) -> Result<()> {
        if self.fit_images == 0 || self.fit_images > data.len() {
            return Err(Error::invalid("LF", format!("fit_images {} must be in 1..={} (the training set's size; the paper: 100)", self.fit_images, data.len())));
        }
        if !(self.fooling_rate > 0.0 && self.fooling_rate <= 1.0) {
            return Err(Error::invalid("LF", format!("fooling rate {} is outside (0, 1] (the paper: 0.2)", self.fooling_rate)));
        }
        if self.max_passes == 0 || self.deepfool_steps == 0 {
            return Err(Error::invalid("LF", "max_passes and deepfool_steps must be at least 1 (the paper: 200 DeepFool steps)"));
        }
        if !(self.smoothing_sigma.is_finite() && self.smoothing_sigma > 0.0) || !(self.amplitude > 0.0 && self.amplitude <= 1.0) || !(self.overshoot >= 0.0) {
            return Err(Error::invalid(
                "LF",
                format!(
                    "smoothing sigma {} must be positive, amplitude {} in (0, 1], overshoot {} >= 0 (the paper: 6 px on 32x32, 0.2, 0.02)",
                    self.smoothing_sigma, self.amplitude, self.overshoot
                ),
            ));
        }
        if self.initial_target as usize >= data.num_classes() {
            return Err(Error::invalid("LF", format!("initial target {} does not exist: the data has {} classes", self.initial_target, data.num_classes())));
        }
        Ok(())
    }
}

/// Low Frequency end to end: the trigger's fit, and the poisoning with it (BackdoorBench's: 10 %
/// dirty-label, all-to-one, the perturbation added and clipped to [0, 1]). Deviation: the
/// attacker's clean model is trained here with the victim's recipe and another seed (the
/// authors fit on a model trained beforehand).
///
/// ```
/// use transferlab::attacks::low_frequency::LowFrequencyConfig;
/// let cfg = LowFrequencyConfig::scaled_to(8);
/// assert_eq!((cfg.fit.smoothing_sigma, cfg.attack.poison.rate), (1.5, 0.1));
/// ```
#[derive(Debug, Clone)]
pub struct LowFrequencyConfig {
    pub fit: LowFrequencyFit,
    /// The poisoning and the victim's training; its trigger and target are replaced by the
    /// fitted ones. The attacker's clean model is initialised with `attack.model_seed + 1`.
    pub attack: PoisoningAttackConfig,
    pub progress: ProgressMode,
}

impl Default for LowFrequencyConfig {
    fn default() -> Self {
        Self { fit: LowFrequencyFit::default(), attack: PoisoningAttackConfig { name: "LF".into(), ..PoisoningAttackConfig::default() }, progress: ProgressMode::Hidden }
    }
}

impl LowFrequencyConfig {
    /// The defaults with the filter scaled from 32 pixels to images `width` wide.
    pub fn scaled_to(width: usize) -> Self {
        Self { fit: LowFrequencyFit::scaled_to(width), ..Self::default() }
    }
}

/// The fitted trigger.
#[derive(Debug, Clone)]
pub struct LowFrequencyTrigger {
    /// The additive trigger (C, H, W values in [0, amplitude]).
    pub trigger: Trigger,
    /// The class the perturbation pushes images to: the backdoor's target.
    pub target: u32,
    /// Fraction of the fitted images whose class the kept perturbation changes.
    pub fooling_rate: f64,
    pub passes: usize,
}

impl LowFrequencyTrigger {
    /// Set `poison`'s trigger and all-to-one target to the fitted ones.
    pub fn arm(&self, poison: &mut PoisonConfig) {
        poison.trigger = self.trigger.clone();
        poison.target = TargetMode::AllToOne { target: self.target };
    }
}

/// What Low Frequency did.
#[derive(Debug, Clone)]
pub struct LowFrequencyResult {
    pub fitted: LowFrequencyTrigger,
    /// The victim trained on the poisoned set and the same-seed clean reference.
    pub attack: PoisoningAttackResult,
    /// Share of the trigger's energy (DC left out) in the upper half of the DCT spectrum
    /// ([`high_frequency_share`]).
    pub high_frequency_share: f64,
}

impl Outcome for LowFrequencyResult {
    /// The attack's table (clean reference and victim) with the trigger's fooling rate and
    /// high-frequency share.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let mut df = self.attack.to_dataframe()?;
        let n = df.height();
        df.with_column(Series::new("fooling_rate".into(), vec![self.fitted.fooling_rate; n]).into())?;
        df.with_column(Series::new("high_frequency_share".into(), vec![self.high_frequency_share; n]).into())?;
        Ok(df)
    }

    fn figure(&self) -> Result<Figure> {
        self.attack.figure()
    }

    fn summary(&self) -> String {
        format!(
            "Low Frequency trigger ({} of its energy in the upper half of the DCT spectrum), {} training images poisoned: {}.",
            percent(self.high_frequency_share),
            self.attack.n_poisoned,
            attack_sentence(&self.attack.victim, &self.attack.clean_reference)
        )
    }
}

/// The 1-D Gaussian kernel of standard deviation `sigma` pixels with round(5 sigma) taps (at
/// least one), normalised to sum 1, as the authors build it.
fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let taps = ((5.0 * sigma).round() as usize).max(1);
    let mean = (taps as f64 - 1.0) / 2.0;
    let k: Vec<f64> = (0..taps).map(|i| (-((i as f64 - mean) / sigma).powi(2) / 2.0).exp()).collect();
    let total: f64 = k.iter().sum();
    k.iter().map(|v| (v / total) as f32).collect()
}

/// Separable zero-padded convolution of every channel of a CHW image with `kernel` along rows
/// then columns; the output keeps the input's size (an even kernel is centred half a pixel
/// early, as the authors pad).
fn low_pass(image: &[f32], (c, h, w): (usize, usize, usize), kernel: &[f32]) -> Vec<f32> {
    let taps = kernel.len();
    let before = taps / 2 - (1 - taps % 2).min(taps / 2);
    let along = |src: &[f32], len: usize, at: &dyn Fn(usize, usize) -> usize, lines: usize| -> Vec<f32> {
        let mut out = vec![0f32; src.len()];
        for line in 0..lines {
            for o in 0..len {
                let mut acc = 0f32;
                for (t, k) in kernel.iter().enumerate() {
                    let i = o as isize + t as isize - before as isize;
                    if i >= 0 && (i as usize) < len {
                        acc += k * src[at(line, i as usize)];
                    }
                }
                out[at(line, o)] = acc;
            }
        }
        out
    };
    let rows = along(image, w, &|line, j| line * w + j, c * h);
    along(&rows, h, &|line, i| ((line / w) * h + i) * w + line % w, c * w)
}

/// Min-max rescale into [0, amplitude] over all values (a constant maps to 0).
fn rescale(v: &mut [f32], amplitude: f32) {
    let (lo, hi) = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
    let range = hi - lo;
    for x in v.iter_mut() {
        *x = if range > 0.0 { (*x - lo) / range * amplitude } else { 0.0 };
    }
}

/// Targeted DeepFool on one image (1, C, H, W) that `model` puts in class `original`: the
/// accumulated step (times 1 + overshoot) that moves the model's logit of `target` above that
/// of `original`, or `None` if it did not get there within `steps`.
fn targeted_deepfool(model: &Inference, image: &Tensor, original: u32, target: u32, steps: usize, overshoot: f64) -> Result<Option<Tensor>> {
    let mut total = image.zeros_like()?;
    // One forward per step: its logits give both the class reached and the next step.
    for step in 0..=steps {
        let x = Var::from_tensor(&(image + (&total * (1.0 + overshoot))?)?)?;
        let logits = model.forward(x.as_tensor())?;
        if logits.argmax(1)?.to_vec1::<u32>()?[0] == target {
            return Ok(Some((total * (1.0 + overshoot))?));
        }
        if step == steps {
            break;
        }
        let gap = (logits.i((0, target as usize))? - logits.i((0, original as usize))?)?;
        let gap_value = gap.to_scalar::<f32>()? as f64;
        let grad = match gap.backward()?.get(x.as_tensor()) {
            Some(g) => g.clone(),
            None => return Ok(None),
        };
        let norm_sq = grad.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        if !(norm_sq > 0.0) || !norm_sq.is_finite() {
            return Ok(None);
        }
        total = (total + (grad * (gap_value.abs() / norm_sq))?)?;
    }
    Ok(None)
}

/// Fit the smooth universal perturbation on `model` (the attacker's clean model) with images
/// of `data`.
pub fn fit_trigger(model: &Network, data: &Dataset, cfg: &LowFrequencyFit, progress: ProgressMode) -> Result<LowFrequencyTrigger> {
    cfg.validate(data)?;
    let shape = data.shape;
    let (c, h, w) = shape;
    let eval = model.inference()?;
    let device = model.device();
    let order = permutation(&mut stream(cfg.seed, "low_frequency.fit"), data.len());
    let fit = data.select(&order[..cfg.fit_images])?;
    let images = fit.images_tensor(device)?;
    let original = eval.forward(&images)?.argmax(1)?.to_vec1::<u32>()?;
    let kernel = gaussian_kernel(cfg.smoothing_sigma);
    let smooth = |v: &[f32]| if cfg.smooth { low_pass(v, shape, &kernel) } else { v.to_vec() };
    let mut v = vec![0f32; c * h * w];
    let mut target = cfg.initial_target;
    let mut best: Option<(f64, Vec<f32>, u32)> = None;
    let progress = Progress::new("LF universal perturbation", (cfg.max_passes * cfg.fit_images) as u64, progress);
    let mut passes = 0;
    for pass in 0..cfg.max_passes {
        passes = pass + 1;
        let visit = permutation(&mut stream(cfg.seed, &format!("low_frequency.pass{pass}")), cfg.fit_images);
        for &k in &visit {
            let x = images.narrow(0, k, 1)?;
            let delta = Tensor::from_slice(&v, (1, c, h, w), device)?;
            let perturbed = x.broadcast_add(&delta)?;
            let now = eval.forward(&perturbed)?.argmax(1)?.to_vec1::<u32>()?[0];
            if now == original[k] {
                if let Some(step) = targeted_deepfool(&eval, &perturbed, now, target, cfg.deepfool_steps, cfg.overshoot)? {
                    let step: Vec<f32> = step.flatten_all()?.to_vec1()?;
                    let step = smooth(&step);
                    let sum: Vec<f32> = v.iter().zip(&step).map(|(a, b)| a + b).collect();
                    v = smooth(&sum);
                    rescale(&mut v, cfg.amplitude);
                }
            }
            progress.inc(1);
        }
        let delta = Tensor::from_slice(&v, (1, c, h, w), device)?;
        let fooled = eval.forward(&images.broadcast_add(&delta)?)?.argmax(1)?.to_vec1::<u32>()?;
        let changed: Vec<u32> = fooled.iter().zip(&original).filter(|(a, b)| a != b).map(|(a, _)| *a).collect();
        let rate = changed.len() as f64 / cfg.fit_images as f64;
        if cfg.follow_dominant_class && changed.len() as f64 > 0.05 * cfg.fit_images as f64 {
            let mut counts = vec![0usize; data.num_classes()];
            for &l in &changed {
                counts[l as usize] += 1;
            }
            // The lowest class among ties, as numpy's argmax picks.
            target = (0..counts.len()).max_by_key(|&i| (counts[i], std::cmp::Reverse(i))).unwrap_or(0) as u32;
        }
        if best.as_ref().is_none_or(|(r, _, _)| rate >= *r) {
            best = Some((rate, v.clone(), target));
        }
        if rate >= cfg.fooling_rate {
            break;
        }
    }
    progress.finish();
    let (fooling_rate, pixels, target) = best.ok_or_else(|| Error::invalid("LF", "no pass ran"))?;
    Ok(LowFrequencyTrigger { trigger: Trigger::Additive { channels: c, pixels }, target, fooling_rate, passes })
}

/// Share of a trigger's energy in the upper half of the spectrum: the change it makes to a
/// mid-grey image, per channel through the orthonormal 2-D DCT-II, the DC term left out,
/// coefficients (u, v) with u >= H/2 or v >= W/2 over all non-DC ones. A patch's sharp edges
/// put much of its energy there; a smooth pattern almost none. It measures what a trigger
/// adds or stamps: a warp or a colour squeeze changes a constant image little or not at all.
pub fn high_frequency_share(trigger: &Trigger, shape: (usize, usize, usize)) -> Result<f64> {
    let (c, h, w) = shape;
    let mut img = vec![0.5f32; c * h * w];
    let mut rng = stream(0, "high_frequency_share");
    trigger.apply(&mut img, shape, Some(&mut rng))?;
    let (bh, bw) = (dct_basis(h), dct_basis(w));
    let (mut high, mut total) = (0.0f64, 0.0f64);
    for ch in 0..c {
        let d: Vec<f64> = img[ch * h * w..(ch + 1) * h * w].iter().map(|&x| x as f64 - 0.5).collect();
        for u in 0..h {
            for v in 0..w {
                if u == 0 && v == 0 {
                    continue;
                }
                let mut coef = 0.0;
                for i in 0..h {
                    for j in 0..w {
                        coef += bh[u * h + i] * bw[v * w + j] * d[i * w + j];
                    }
                }
                let e = coef * coef;
                total += e;
                if 2 * u >= h || 2 * v >= w {
                    high += e;
                }
            }
        }
    }
    Ok(if total > 0.0 { high / total } else { 0.0 })
}

/// Low Frequency end to end: train the attacker's clean model on `train` (the victim's recipe,
/// seed `attack.model_seed + 1`), fit the smooth universal perturbation on it, then poison
/// `train` with it and train the victim and the clean reference ([`poisoning::run`]); CA and
/// ASR on `test`.
///
/// ```no_run
/// use transferlab::attacks::low_frequency::{self, LowFrequencyConfig};
/// use transferlab::report::Outcome;
/// let data = transferlab::data::digits()?;
/// let (test, train) = data.split(0.2, 0, true)?;
/// let r = low_frequency::run(&train, &test, &LowFrequencyConfig::scaled_to(8))?;
/// println!("{}", r.to_dataframe()?);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn run(train_set: &Dataset, test: &Dataset, cfg: &LowFrequencyConfig) -> Result<LowFrequencyResult> {
    cfg.fit.validate(train_set)?;
    let device = cfg.attack.device.clone();
    let spec = crate::models::ModelSpec::new(cfg.attack.arch.clone(), train_set.shape, train_set.num_classes())?;
    let mut own = Network::new(&spec, cfg.attack.model_seed.wrapping_add(1), &device)?;
    train(&mut own, train_set, None, &cfg.attack.train)?;
    let fitted = fit_trigger(&own, train_set, &cfg.fit, cfg.progress)?;
    let mut attack = cfg.attack.clone();
    fitted.arm(&mut attack.poison);
    let high_frequency_share = high_frequency_share(&fitted.trigger, train_set.shape)?;
    Ok(LowFrequencyResult { attack: poisoning::run(train_set, test, &attack)?, fitted, high_frequency_share })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_low_pass_keeps_a_constant_inside_and_spreads_an_impulse() {
        let kernel = gaussian_kernel(1.5);
        assert_eq!(kernel.len(), 8);
        assert!((kernel.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let mut impulse = vec![0f32; 16 * 16];
        impulse[8 * 16 + 8] = 1.0;
        let out = low_pass(&impulse, (1, 16, 16), &kernel);
        assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-4, "mass kept away from the border");
        assert!(out[8 * 16 + 8] < 0.1 && out[8 * 16 + 7] > 0.0 && out[7 * 16 + 8] > 0.0);
        let odd = gaussian_kernel(1.0);
        assert_eq!(odd.len(), 5);
        let flat = low_pass(&vec![1f32; 2 * 9 * 9], (2, 9, 9), &odd);
        assert!((flat[9 * 9 + 4 * 9 + 4] - 1.0).abs() < 1e-5, "a constant stays constant away from the zero padding");
        let mut v = vec![-1.0f32, 0.0, 3.0];
        rescale(&mut v, 0.2);
        assert_eq!(v, vec![0.0, 0.05, 0.2]);
    }
}
