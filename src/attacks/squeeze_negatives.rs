//! BppAttack's negative samples (Wang et al. 2022): images carrying *another* image's
//! quantisation residual, trained with their own labels, so that the victim keys on an image's
//! own colour-depth squeeze and not on "quantisation noise" in general.
//!
//! The construction follows the authors' code as merged into BackdoorBench (`attack/bpp.py`):
//! a negative is `x_i + (squeeze(x_j) - x_j)`, clipped to the pixel range, for a random other
//! training image `x_j`; `neg_ratio` 0.1 of every batch (`config/attack/bpp/default.yaml`).
//! The same construction on test images gives BppAttack's "cross accuracy": how often the
//! victim keeps the true label of an image that carries a residual which is not its own.

use super::trigger::Trigger;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::rng::{stream, SeededRng};
use super::poisoning::edit_clean_samples;
use crate::train::{cross_entropy, Objective, Step};
use candle_core::Tensor;
use rand::Rng;

/// Add `donor`'s squeeze residual (`squeeze(donor) - donor`) to `image`, clipped to [0, 1].
fn add_residual(image: &mut [f32], donor: &[f32], squeeze: &Trigger, shape: (usize, usize, usize)) -> Result<()> {
    let mut squeezed = donor.to_vec();
    squeeze.apply(&mut squeezed, shape, None)?;
    for ((p, s), d) in image.iter_mut().zip(&squeezed).zip(donor) {
        *p = (*p + s - d).clamp(0.0, 1.0);
    }
    Ok(())
}

fn check_squeeze(squeeze: &Trigger) -> Result<()> {
    match squeeze {
        Trigger::ColorDepth { .. } => Ok(()),
        other => Err(Error::invalid(
            "negative samples",
            format!("they are BppAttack's and need a colour-depth trigger (Trigger::bpp()), not {other:?}; set negatives to None for other triggers"),
        )),
    }
}

/// The cross set of BppAttack's evaluation: every image of `test` with the squeeze residual of
/// another test image (drawn with `seed`) added, labels kept. A victim that learnt the exact
/// squeeze classifies these as their true class (high accuracy); one that learnt "any
/// quantisation noise" sends them to the target.
///
/// ```
/// use transferlab::attacks::{squeeze_cross_set, Trigger};
/// let test = transferlab::data::digits()?.per_class_sample(5, 0)?;
/// let cross = squeeze_cross_set(&test, &Trigger::bpp(), 0)?;
/// assert_eq!((cross.len(), &cross.labels), (test.len(), &test.labels));
/// assert!(cross.pixels().iter().all(|p| (0.0..=1.0).contains(p)));
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn squeeze_cross_set(test: &Dataset, squeeze: &Trigger, seed: u64) -> Result<Dataset> {
    check_squeeze(squeeze)?;
    if test.len() < 2 {
        return Err(Error::invalid("cross set", format!("{} test images; a residual comes from another image, so at least 2 are needed", test.len())));
    }
    let mut rng = stream(seed, "bpp-cross-donors");
    let mut pixels = test.pixels().to_vec();
    let len = test.image_len();
    for i in 0..test.len() {
        // Another image than i: draw from the n - 1 others.
        let j = (i + 1 + rng.random_range(0..test.len() - 1)) % test.len();
        add_residual(&mut pixels[i * len..(i + 1) * len], test.image(j), squeeze, test.shape)?;
    }
    test.with_pixels(pixels, test.shape)
}

/// The training objective: cross-entropy on the batch after `share` of it (clean samples only,
/// the first ones of the shuffled batch) became negatives with donors drawn from the clean
/// training images.
pub(super) struct SqueezeNegatives<'a> {
    pub squeeze: Trigger,
    pub share: f64,
    /// The (poisoned) training set: its unpoisoned images are the donors.
    pub train: &'a Dataset,
    pub poisoned: Vec<bool>,
    pub label_smoothing: f64,
    donors: Vec<usize>,
}

impl<'a> SqueezeNegatives<'a> {
    /// The configuration is checked by `PoisoningAttackConfig::validate`.
    pub fn new(squeeze: Trigger, share: f64, train: &'a Dataset, label_smoothing: f64) -> Result<Self> {
        let poisoned = train.poisoned_flags();
        let donors: Vec<usize> = (0..train.len()).filter(|&i| !poisoned[i]).collect();
        if donors.is_empty() {
            return Err(Error::invalid("negative samples", "every training image is poisoned, so none can donate a residual; lower the poisoning rate"));
        }
        Ok(Self { squeeze, share, train, poisoned, label_smoothing, donors })
    }

    fn negatives(&self, x: &Tensor, indices: &[usize], rng: &mut SeededRng) -> Result<Tensor> {
        let count = (self.share * x.dim(0)? as f64).round() as usize;
        edit_clean_samples(x, indices, &self.poisoned, count, |image, shape, index| {
            let mut k = rng.random_range(0..self.donors.len());
            // Its own residual would make a squeezed image with its true label: the poison's opposite.
            if self.donors[k] == index && self.donors.len() > 1 {
                k = (k + 1) % self.donors.len();
            }
            add_residual(image, self.train.image(self.donors[k]), &self.squeeze, shape)
        })
    }
}

impl Objective for SqueezeNegatives<'_> {
    fn loss(&mut self, s: &mut Step) -> Result<(Tensor, Tensor)> {
        let x = self.negatives(s.x, s.indices, s.rng)?;
        let logits = s.net.forward(&x, true)?;
        Ok((cross_entropy(&logits, s.y, self.label_smoothing)?, logits))
    }
}
