//! Evaluation over whole datasets: logits, predictions, accuracy, per-sample losses.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::Network;
use candle_core::{Device, Tensor, D};

/// Batch size used for evaluation passes.
pub const EVAL_BATCH: usize = 256;

fn check_compatible(net: &Network, ds: &Dataset) -> Result<()> {
    if ds.shape != net.spec().input {
        return Err(Error::shape(
            "evaluation",
            format!("the model takes {:?} images but the dataset has {:?}", net.spec().input, ds.shape),
        ));
    }
    Ok(())
}

/// Eval-mode logits for every sample, (N, classes), on the CPU. No autograd graph is recorded
/// ([`Network::inference`]): memory is one batch's activations, whatever the dataset size.
///
/// ```
/// use transferlab::prelude::*;
/// let data = digits().unwrap().select(&(0..300).collect::<Vec<_>>()).unwrap();
/// let net = Network::new(&ModelSpec::named("convnet-bn", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let l = transferlab::train::logits(&net, &data).unwrap();
/// assert_eq!(l.dims(), &[300, 10]);
/// assert!(!l.track_op());
/// ```
pub fn logits(net: &Network, ds: &Dataset) -> Result<Tensor> {
    let view = net.inference()?;
    over_batches(net, ds, |x| view.forward(x))
}

/// Eval-mode penultimate features for every sample, (N, feature_dim), on the CPU; no graph.
pub fn features(net: &Network, ds: &Dataset) -> Result<Tensor> {
    let view = net.inference()?;
    over_batches(net, ds, |x| view.features(x))
}

/// `f` applied to the dataset in evaluation batches, the results stacked on the CPU.
fn over_batches(net: &Network, ds: &Dataset, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    check_compatible(net, ds)?;
    if ds.is_empty() {
        return Err(Error::invalid("dataset", "cannot evaluate on an empty dataset"));
    }
    let idx: Vec<usize> = (0..ds.len()).collect();
    let parts = idx
        .chunks(EVAL_BATCH)
        .map(|chunk| f(&ds.batch(chunk, net.device())?.0)?.to_device(&Device::Cpu).map_err(Into::into))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// Predicted class of every sample.
pub fn predict(net: &Network, ds: &Dataset) -> Result<Vec<u32>> {
    Ok(logits(net, ds)?.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

/// Fraction of samples whose prediction equals their label.
pub fn accuracy(net: &Network, ds: &Dataset) -> Result<f64> {
    let pred = predict(net, ds)?;
    Ok(fraction_equal(&pred, &ds.labels))
}

/// Fraction of positions where `a` and `b` agree (0 for empty input).
pub fn fraction_equal(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// Eval-mode cross-entropy of every sample against its label.
pub fn per_sample_losses(net: &Network, ds: &Dataset) -> Result<Vec<f32>> {
    let l = logits(net, ds)?;
    let y = Tensor::from_slice(&ds.labels, ds.len(), &Device::Cpu)?;
    Ok(per_sample_cross_entropy(&l, &y)?.to_vec1::<f32>()?)
}

/// Cross-entropy of each row of `logits` (N, K) against `targets` (N, u32): (N,).
pub fn per_sample_cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
}
