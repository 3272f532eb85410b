//! Channel Lipschitzness-based Pruning (Zheng et al. 2022, "Data-Free Backdoor Removal Based
//! on Channel Lipschitzness"): a backdoor channel must respond strongly to a small trigger, so
//! its upper bound on the channel Lipschitz constant (UCLC) is an outlier in its layer. Prune
//! those channels; no data needed.

use super::probe::{before_after_sentence, BackdoorProbe};
use crate::attacks::{defence_effectiveness_rate, defence_table, metrics_figure, BackdoorMetrics};
use crate::error::{Error, Result};
use crate::models::{Arch, LoadMode, Network};
use crate::report::{Figure, Outcome};
use crate::stats::largest_singular_value;
use candle_core::Tensor;
use polars::prelude::{DataFrame, NamedFrom, Series};

/// CLP's settings. Default from Zheng et al. 2022: a channel is pruned when its UCLC exceeds
/// its layer's mean by more than u = 3 standard deviations (the paper's CIFAR-10 setting;
/// BackdoorBench's default too).
///
/// How a channel's UCLC is computed, as in the authors' code: the largest singular value of
/// the channel's kernel (input channels x kernel positions), times |gamma / sigma| of the batch
/// norm that follows the convolution; a pruned channel has that batch norm's weight and bias
/// set to zero. Deviations: sigma includes the batch norm's eps (1e-5; the authors' code uses
/// the bare running standard deviation, infinite for a dead channel). A convolution with no
/// batch norm right after it (the pre-activation ResNets' second convolutions, batch-norm-free
/// networks) is judged on its kernel alone and pruned by zeroing the channel's kernel and bias.
#[derive(Debug, Clone)]
pub struct ClpConfig {
    /// Standard deviations above the layer mean at which a channel is pruned.
    pub u: f64,
}

impl Default for ClpConfig {
    fn default() -> Self {
        Self { u: 3.0 }
    }
}

/// The channels CLP pruned in one convolution.
#[derive(Debug, Clone, PartialEq)]
pub struct PrunedLayer {
    /// The convolution's parameter name prefix (`layer2.1.conv1`).
    pub conv: String,
    /// The batch norm that was zeroed, if the convolution has one.
    pub norm: Option<String>,
    pub channels: usize,
    pub pruned: Vec<usize>,
    /// Every channel's UCLC, in channel order.
    pub uclc: Vec<f64>,
}

/// What CLP did.
#[derive(Debug, Clone)]
pub struct ClpResult {
    pub before: BackdoorMetrics,
    pub after: BackdoorMetrics,
    pub layers: Vec<PrunedLayer>,
}

impl ClpResult {
    /// Channels pruned over all layers.
    pub fn pruned_channels(&self) -> usize {
        self.layers.iter().map(|l| l.pruned.len()).sum()
    }
}

impl Outcome for ClpResult {
    /// [`defence_table`] rows plus `pruned_channels` (0 for the undefended row).
    fn to_dataframe(&self) -> Result<DataFrame> {
        let mut df = defence_table(&("no defence".to_string(), self.before), &[("CLP".to_string(), self.after)])?;
        df.with_column(Series::new("pruned_channels".into(), vec![0u64, self.pruned_channels() as u64]).into())?;
        Ok(df)
    }

    fn figure(&self) -> Result<Figure> {
        Ok(metrics_figure(
            &format!("Channel Lipschitzness-based Pruning (data-free): {} channels pruned", self.pruned_channels()),
            &[("no defence".to_string(), self.before), ("CLP".to_string(), self.after)],
        ))
    }

    fn summary(&self) -> String {
        let channels: usize = self.layers.iter().map(|l| l.channels).sum();
        format!(
            "CLP (data-free) pruned {} of {} channels in {} convolutions: {} (DER {:.2}).",
            self.pruned_channels(),
            channels,
            self.layers.len(),
            before_after_sentence(&self.before, &self.after),
            defence_effectiveness_rate(&self.before, &self.after)
        )
    }
}

/// The batch norm that normalises the output of convolution `conv` in `arch`, by the
/// architectures' parameter names, if there is one.
fn norm_after(arch: &Arch, conv: &str) -> Option<String> {
    let (prefix, last) = conv.rsplit_once('.').map_or(("", conv), |(p, l)| (p, l));
    let join = |name: String| if prefix.is_empty() { name } else { format!("{prefix}.{name}") };
    match arch {
        Arch::Backdoored { base, .. } => norm_after(base, conv),
        // Pre-activation: a block's bn2 follows its conv1; what follows conv2 is the next
        // block's bn1 after the residual sum, not a normalisation of conv2 alone.
        Arch::PreActResNet18 => (last == "conv1" && !prefix.is_empty()).then(|| join("bn2".into())),
        Arch::ResNetV2 { .. } => None,
        // `features.{4d}` conv, `features.{4d+1}` norm.
        Arch::ConvNet { .. } => last.parse::<usize>().ok().map(|i| join((i + 1).to_string())),
        _ => {
            if let Some(n) = last.strip_prefix("conv") {
                Some(join(format!("bn{n}")))
            } else if last == "0" && (prefix.ends_with("downsample") || prefix.ends_with("shortcut")) {
                Some(join("1".into()))
            } else {
                None
            }
        }
    }
}

/// Prune a copy of `net` with CLP; score with `probe` (CLP itself reads no data).
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::{clp, BackdoorProbe};
/// let data = digits().unwrap().select(&(0..40).collect::<Vec<_>>()).unwrap();
/// let probe = BackdoorProbe::new(data.clone(), Trigger::badnets(2), TargetMode::AllToOne { target: 0 });
/// let mlp = Network::new(&ModelSpec::named("mlp", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let err = clp::run(&mlp, &probe, &Default::default()).unwrap_err();
/// assert!(err.to_string().contains("no convolution"));
/// ```
pub fn run(net: &Network, probe: &BackdoorProbe, cfg: &ClpConfig) -> Result<ClpResult> {
    if !(cfg.u.is_finite() && cfg.u > 0.0) {
        return Err(Error::invalid("CLP u", format!("{}; it must be positive (the paper uses 3)", cfg.u)));
    }
    let before = probe.measure(net)?;
    let mut tensors = net.named_tensors()?;
    let head = format!("{}.weight", net.spec().head_name());
    let mut convs: Vec<String> = tensors
        .iter()
        .filter(|(name, t)| name.ends_with(".weight") && **name != head && t.rank() == 4)
        .map(|(name, _)| name.trim_end_matches(".weight").to_string())
        .collect();
    convs.sort();
    if convs.is_empty() {
        return Err(Error::invalid("model for CLP", "it has no convolution to prune; CLP needs a CNN (convnet, cnn3, a ResNet)"));
    }
    let mut layers = Vec::with_capacity(convs.len());
    for conv in convs {
        let w = tensors[&format!("{conv}.weight")].to_dtype(candle_core::DType::F64)?;
        let (out, cin, kh, kw) = w.dims4()?;
        let kernels: Vec<f64> = w.flatten_all()?.to_vec1()?;
        let norm = norm_after(&net.spec().arch, &conv).filter(|n| tensors.contains_key(&format!("{n}.running_var")));
        let gain: Vec<f64> = match &norm {
            Some(n) => {
                let gamma: Vec<f64> = tensors[&format!("{n}.weight")].to_dtype(candle_core::DType::F64)?.to_vec1()?;
                let var: Vec<f64> = tensors[&format!("{n}.running_var")].to_dtype(candle_core::DType::F64)?.to_vec1()?;
                gamma.iter().zip(&var).map(|(g, v)| (g / (v + 1e-5).sqrt()).abs()).collect()
            }
            None => vec![1.0; out],
        };
        if gain.len() != out {
            return Err(Error::shape("CLP", format!("{conv} has {out} channels but its batch norm {norm:?} has {}", gain.len())));
        }
        let per = cin * kh * kw;
        let uclc: Vec<f64> = (0..out).map(|c| largest_singular_value(&kernels[c * per..(c + 1) * per], cin, kh * kw) * gain[c]).collect();
        let mean = uclc.iter().sum::<f64>() / out as f64;
        // The sample standard deviation, as torch's `std()`.
        let sd = (uclc.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (out.max(2) - 1) as f64).sqrt();
        let pruned: Vec<usize> = (0..out).filter(|&c| uclc[c] > mean + cfg.u * sd).collect();
        if !pruned.is_empty() {
            let targets: Vec<String> = match &norm {
                Some(n) => vec![format!("{n}.weight"), format!("{n}.bias")],
                None => vec![format!("{conv}.weight"), format!("{conv}.bias")],
            };
            for name in targets {
                let zeroed = tensors.get(&name).map(|t| zero_channels(t, &pruned)).transpose()?;
                if let Some(z) = zeroed {
                    tensors.insert(name, z);
                }
            }
        }
        layers.push(PrunedLayer { conv, norm, channels: out, pruned, uclc });
    }
    let mut model = net.duplicate()?;
    model.set_tensors(&tensors, LoadMode::Strict)?;
    let after = probe.measure(&model)?;
    Ok(ClpResult { before, after, layers })
}

/// `t` with the slices `channels` of its first dimension set to zero.
fn zero_channels(t: &Tensor, channels: &[usize]) -> Result<Tensor> {
    let n = t.dim(0)?;
    let keep: Vec<f32> = (0..n).map(|c| if channels.contains(&c) { 0.0 } else { 1.0 }).collect();
    let mut shape = vec![1usize; t.rank()];
    shape[0] = n;
    let mask = Tensor::from_vec(keep, shape, t.device())?.to_dtype(t.dtype())?;
    Ok(t.broadcast_mul(&mask)?)
}
