//! Cross-entropy: log-softmax and negative log-likelihood in one op.

use super::{cpu_slice, cpu_tensor, fast_path, with_f32};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};
use std::sync::OnceLock;

/// Mean cross-entropy of `logits` (N, classes) against integer class `targets` (N), as a
/// scalar tensor, with label smoothing `eps` (0 for none): the target distribution puts
/// `1 - eps` on the label and spreads `eps` uniformly over all classes. PyTorch's
/// `cross_entropy(logits, targets, label_smoothing=eps)` with mean reduction. The one
/// implementation every training loop uses (re-exported as `train::cross_entropy`).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, eps: f64) -> Result<Tensor> {
    let (n, classes) = logits.dims2()?;
    if targets.dims() != [n] {
        bail!("cross_entropy: targets have shape {:?}, expected [{n}]", targets.dims())
    }
    if !targets.dtype().is_int() {
        bail!("cross_entropy: targets must be integer class indices, got {:?}", targets.dtype())
    }
    if n == 0 || classes == 0 {
        bail!("cross_entropy: empty logits {:?}", logits.dims())
    }
    if !(0.0..=1.0).contains(&eps) {
        bail!("cross_entropy: label smoothing {eps} is outside [0, 1]")
    }
    if !(fast_path(logits) && targets.device().is_cpu()) {
        let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let nll = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?.mean_all()?;
        if eps == 0.0 {
            return Ok(nll);
        }
        let uniform = logp.mean(D::Minus1)?.neg()?.mean_all()?;
        return (nll * (1.0 - eps))? + (uniform * eps)?;
    }
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy { eps: eps as f32, softmax: OnceLock::new() })
}

struct CrossEntropy {
    eps: f32,
    /// The softmax of the logits, kept for the backward pass (N x classes: small).
    softmax: OnceLock<Vec<f32>>,
}

/// Reads integer class indices whatever their integer dtype.
fn class_indices(storage: &CpuStorage, layout: &Layout) -> Result<Vec<i64>> {
    let Some((a, b)) = layout.contiguous_offsets() else {
        bail!("cross_entropy: targets are not contiguous")
    };
    Ok(match storage {
        CpuStorage::U8(v) => v[a..b].iter().map(|&t| t as i64).collect(),
        CpuStorage::U32(v) => v[a..b].iter().map(|&t| t as i64).collect(),
        CpuStorage::I64(v) => v[a..b].to_vec(),
        other => bail!("cross_entropy: unsupported target dtype {:?}", other.dtype()),
    })
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "transferlab-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = cpu_slice(s1, l1, "cross_entropy")?;
        let t = class_indices(s2, l2)?;
        let (n, classes) = l1.shape().dims2()?;
        let mut p = vec![0f32; n * classes];
        let mut total = 0f64;
        for (i, (row, prow)) in z.chunks_exact(classes).zip(p.chunks_exact_mut(classes)).enumerate() {
            let label = t[i];
            if label < 0 || label as usize >= classes {
                bail!("cross_entropy: target {label} at row {i} is not a class index below {classes}")
            }
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut denom = 0f64;
            for (q, &v) in prow.iter_mut().zip(row) {
                let e = ((v - max) as f64).exp();
                *q = e as f32;
                denom += e;
            }
            let log_denom = denom.ln();
            prow.iter_mut().for_each(|q| *q = (*q as f64 / denom) as f32);
            // -log p_j = log_denom - (z_j - max)
            let nll = log_denom - (row[label as usize] - max) as f64;
            let mean_nll = log_denom - row.iter().map(|&v| (v - max) as f64).sum::<f64>() / classes as f64;
            total += (1.0 - self.eps as f64) * nll + self.eps as f64 * mean_nll;
        }
        let _ = self.softmax.set(p);
        Ok((CpuStorage::F32(vec![(total / n as f64) as f32]), Shape::from(())))
    }

    fn bwd(&self, logits: &Tensor, targets: &Tensor, _loss: &Tensor, dloss: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some(p) = self.softmax.get() else {
            bail!("cross_entropy backward: the forward pass did not run on the CPU")
        };
        let (n, classes) = logits.dims2()?;
        let g = with_f32(dloss, "cross_entropy backward", |d| d[0])?;
        let t = targets.to_dtype(candle_core::DType::I64)?.to_vec1::<i64>()?;
        // d loss / d z_j = (p_j - (1 - eps) [j = t] - eps / classes) / n
        let scale = g / n as f32;
        let (hit, spread) = (1.0 - self.eps, self.eps / classes as f32);
        let mut dz: Vec<f32> = p.iter().map(|&q| (q - spread) * scale).collect();
        for (row, &label) in dz.chunks_exact_mut(classes).zip(&t) {
            row[label as usize] -= hit * scale;
        }
        Ok((Some(cpu_tensor(dz, logits.dims())?), None))
    }
}
