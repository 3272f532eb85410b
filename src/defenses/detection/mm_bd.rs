//! MM-BD (Wang et al. 2024, "MM-BD: Post-Training Detection of Backdoor Attacks with Arbitrary
//! Backdoor Pattern Types Using a Maximum Margin Statistic"): data-free. A backdoor target can
//! be reached with an unusually large logit margin over the other classes, so the largest
//! achievable margin of each class, found by gradient ascent from random images, is an outlier
//! for the target.

use crate::defenses::trigger_inversion::anomaly_indices;
use crate::error::{Error, Result};
use crate::models::Network;
use crate::progress::{Progress, ProgressMode};
use crate::report::{BarChart, Chart, Figure, Outcome};
use crate::rng::stream_at;
use crate::stats::{mean_and_variance, normal_cdf, Gamma};
use candle_core::{Tensor, Var, D};
use polars::prelude::{DataFrame, NamedFrom, Series};
use rand::Rng;

/// MM-BD's settings. Defaults from the authors' code (`univ_bd.py`): per class, 30 uniform
/// random images optimised for at most 300 steps of gradient ascent on the margin at rate
/// 0.01 (inputs clipped to [0, 1] in the forward pass), stopped early when the objective
/// changes by less than 1e-5 relatively; the largest class statistic is tested against a
/// gamma null fitted to the others, a backdoor declared at p < 0.05.
///
/// Deviations: the authors' optimiser is SGD with momentum 0.2 re-created every step, so the
/// momentum never acts: plain gradient ascent here. Their null is scipy's three-parameter
/// maximum-likelihood gamma fit; here the three-parameter method-of-moments fit (shape,
/// scale and location from mean, variance and skewness), which needs no numerical optimiser
/// on nine values and, like theirs, takes margins of any sign (a model whose maximised
/// margins are negative for some class, as an undertrained one has, still gets a p-value).
/// Where the nine values are not right-skewed no gamma fits; the test then uses the
/// gamma's limit as the skewness falls to 0, the normal of their mean and spread.
#[derive(Debug, Clone)]
pub struct MmBdConfig {
    /// Random starting images per class.
    pub starts: usize,
    pub max_steps: usize,
    pub lr: f64,
    /// Declare a backdoor when the p-value of the largest statistic is below this.
    pub significance: f64,
    pub seed: u64,
    pub progress: ProgressMode,
}

impl Default for MmBdConfig {
    fn default() -> Self {
        Self { starts: 30, max_steps: 300, lr: 0.01, significance: 0.05, seed: 0, progress: ProgressMode::Hidden }
    }
}

/// What MM-BD found.
#[derive(Debug, Clone)]
pub struct MmBdResult {
    /// The largest logit margin reached for each class.
    pub max_margins: Vec<f64>,
    /// Each class's median-absolute-deviation anomaly index (as Neural Cleanse's).
    pub anomaly_index: Vec<f64>,
    /// The p-value of the largest statistic under the gamma null of the others.
    pub p_value: f64,
    /// The class with the largest statistic when its p-value is below the significance level.
    pub flagged: Option<u32>,
    /// Ascent steps each class ran before stopping.
    pub steps: Vec<usize>,
}

impl Outcome for MmBdResult {
    /// One row per class: label, max_margin, anomaly_index, steps, flagged, p_value (of the
    /// test, on every row).
    fn to_dataframe(&self) -> Result<DataFrame> {
        let k = self.max_margins.len();
        Ok(DataFrame::new_infer_height(vec![
            Series::new("label".into(), (0..k as u32).collect::<Vec<_>>()).into(),
            Series::new("max_margin".into(), self.max_margins.clone()).into(),
            Series::new("anomaly_index".into(), self.anomaly_index.clone()).into(),
            Series::new("steps".into(), self.steps.iter().map(|&s| s as u64).collect::<Vec<_>>()).into(),
            Series::new("flagged".into(), (0..k as u32).map(|c| self.flagged == Some(c)).collect::<Vec<_>>()).into(),
            Series::new("p_value".into(), vec![self.p_value; k]).into(),
        ])?)
    }

    /// The maximum margin per class, the verdict in the title.
    fn figure(&self) -> Result<Figure> {
        let verdict = match self.flagged {
            Some(c) => format!("backdoor, target {c} (p = {:.2e})", self.p_value),
            None => format!("no backdoor detected (p = {:.3})", self.p_value),
        };
        let labels = (0..self.max_margins.len()).map(|c| c.to_string()).collect();
        let chart = BarChart::new(&format!("MM-BD: {verdict}"), "maximum logit margin", labels).series("margin", self.max_margins.clone());
        Ok(Figure::new(Chart::Bars(chart)))
    }

    fn summary(&self) -> String {
        let k = self.max_margins.len();
        match self.flagged {
            Some(c) => {
                let margin = self.max_margins.get(c as usize).copied().unwrap_or(f64::NAN);
                let index = self.anomaly_index.get(c as usize).copied().unwrap_or(f64::NAN);
                format!(
                    "MM-BD (data-free) flagged class {c} of {k} as the backdoor target: its maximum logit margin {margin:.2} (anomaly index {index:.1}) is an outlier under the gamma null of the others (p = {:.2e}).",
                    self.p_value
                )
            }
            None => {
                let top = self.max_margins.iter().copied().fold(f64::NAN, f64::max);
                format!("MM-BD (data-free) detected no backdoor: the largest maximum logit margin of the {k} classes, {top:.2}, is no outlier (p = {:.3}).", self.p_value)
            }
        }
    }
}

/// Run MM-BD on `net`; it needs no data, only the input shape the model declares.
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::detection::mm_bd;
/// let net = Network::new(&ModelSpec::named("mlp", (1, 8, 8), 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let cfg = mm_bd::MmBdConfig { starts: 4, max_steps: 5, ..Default::default() };
/// let r = mm_bd::run(&net, &cfg).unwrap();
/// assert_eq!(r.max_margins.len(), 10);
/// let bad = mm_bd::MmBdConfig { starts: 0, ..Default::default() };
/// assert!(mm_bd::run(&net, &bad).unwrap_err().to_string().contains("starts"));
/// ```
pub fn run(net: &Network, cfg: &MmBdConfig) -> Result<MmBdResult> {
    if cfg.starts == 0 || cfg.max_steps == 0 {
        return Err(Error::invalid("MM-BD", format!("{} starts x {} steps optimise nothing; the paper uses 30 x 300", cfg.starts, cfg.max_steps)));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) || !(cfg.significance > 0.0 && cfg.significance < 1.0) {
        return Err(Error::invalid("MM-BD", format!("rate {} must be positive and significance {} in (0, 1)", cfg.lr, cfg.significance)));
    }
    let k = net.spec().num_classes;
    if k < 3 {
        return Err(Error::invalid("MM-BD", format!("a model of {k} classes leaves fewer than 2 classes for the null distribution; MM-BD needs 3 or more")));
    }
    // A private copy, for the same reason as Neural Cleanse's: tensor ids in notebooks.
    let net = &net.duplicate()?;
    let progress = Progress::new("MM-BD", k as u64, cfg.progress);
    let mut max_margins = Vec::with_capacity(k);
    let mut steps = Vec::with_capacity(k);
    for class in 0..k {
        let (m, s) = max_margin(net, class, cfg)?;
        max_margins.push(m);
        steps.push(s);
        progress.inc(1);
    }
    progress.finish();
    let top = (0..k).max_by(|&a, &b| max_margins[a].total_cmp(&max_margins[b])).unwrap_or(0);
    let null: Vec<f64> = (0..k).filter(|&c| c != top).map(|c| max_margins[c]).collect();
    // P(the largest of k draws from the null >= the observed largest).
    let p_value = null_cdf(&null).map_or(f64::NAN, |cdf| 1.0 - cdf(max_margins[top]).powi(k as i32));
    let flagged = (p_value < cfg.significance).then_some(top as u32);
    Ok(MmBdResult { anomaly_index: anomaly_indices(&max_margins), max_margins, p_value, flagged, steps })
}

/// The largest margin `class` reaches from `cfg.starts` random images, and the steps taken.
fn max_margin(net: &Network, class: usize, cfg: &MmBdConfig) -> Result<(f64, usize)> {
    let (c, h, w) = net.spec().input;
    let k = net.spec().num_classes;
    let dev = net.device().clone();
    let view = net.inference()?;
    let mut rng = stream_at(cfg.seed, "mm-bd", class as u64);
    let init: Vec<f32> = (0..cfg.starts * c * h * w).map(|_| rng.random::<f32>()).collect();
    let images = Var::from_tensor(&Tensor::from_vec(init, (cfg.starts, c, h, w), &dev)?)?;
    let own: Vec<f32> = (0..k).map(|j| if j == class { 1.0 } else { 0.0 }).collect();
    let own = Tensor::from_vec(own, (1, k), &dev)?;
    // Other classes' logits with the own class pushed out of the max.
    let mask_out = ((&own * -1e4)?).to_dtype(candle_core::DType::F32)?;
    let margins = |logits: &Tensor| -> candle_core::Result<Tensor> {
        let mine = logits.broadcast_mul(&own)?.sum(D::Minus1)?;
        let others = logits.broadcast_mul(&(1.0 - &own)?)?.broadcast_add(&mask_out)?.max(D::Minus1)?;
        mine - others
    };
    let mut last = f64::INFINITY;
    let mut taken = cfg.max_steps;
    for step in 0..cfg.max_steps {
        let logits = view.forward(&images.as_tensor().clamp(0f32, 1f32)?)?;
        // The authors' objective: the negated sum of the margins, minimised.
        let loss = margins(&logits)?.sum_all()?.neg()?;
        let value = loss.to_scalar::<f32>()? as f64;
        let grads = loss.backward()?;
        let g = grads.get(images.as_tensor()).ok_or_else(|| Error::invalid("MM-BD", "the model's output does not depend on its input"))?;
        images.set(&(images.as_tensor() - (g * cfg.lr)?)?)?;
        if last.is_finite() && ((last - value).abs() / last.abs().max(f64::MIN_POSITIVE)) < 1e-5 {
            taken = step + 1;
            break;
        }
        last = value;
    }
    let best = margins(&view.forward(&images.as_tensor().clamp(0f32, 1f32)?)?)?.max(0)?.to_scalar::<f32>()?;
    Ok((best as f64, taken))
}

/// The CDF of the null fitted to the other classes' statistics: the shifted gamma, or the
/// normal where they are not right-skewed (or so little that the gamma's shape is beyond
/// 10^4, where the two agree); `None` when they do not vary.
fn null_cdf(null: &[f64]) -> Option<Box<dyn Fn(f64) -> f64>> {
    match Gamma::fit_moments_shifted(null) {
        Some(g) if g.shape <= 1e4 => Some(Box::new(move |x| g.cdf(x))),
        _ => {
            let (mean, var) = mean_and_variance(null);
            let sd = var.sqrt();
            (sd > 0.0 && sd.is_finite()).then(|| Box::new(move |x| normal_cdf(x, mean, sd)) as Box<dyn Fn(f64) -> f64>)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_null_takes_margins_of_any_sign() {
        // Right-skewed, some negative (an undertrained model): the shifted gamma.
        let skewed = [-0.5, -0.2, 0.1, 0.2, 0.4, 0.9, 1.5, 3.0, 6.0];
        let cdf = null_cdf(&skewed).expect("a null");
        assert!(cdf(-0.6) < cdf(0.0) && cdf(0.0) < cdf(10.0) && cdf(10.0) <= 1.0);
        // Symmetric: no gamma fits; the normal limit, centred on the mean.
        let symmetric = [-2.0, -1.0, 0.0, 1.0, 2.0];
        assert!((null_cdf(&symmetric).expect("a null")(0.0) - 0.5).abs() < 1e-12);
        assert!(null_cdf(&[1.0, 1.0, 1.0]).is_none());
    }
}
