//! An architecture with a backdoor in its structure (Bober-Irizar et al. 2022, "Architectural
//! backdoors in neural networks"): a parameter-free trigger detector, built only from pooling
//! and fixed non-linearities, whose response is added to the activations of an otherwise
//! ordinary network. It has no weights, so training from scratch on clean data cannot remove
//! it; on clean inputs its response is zero, so it does not change what the network learns.

use super::Body;
use candle_core::{DType, Result, Tensor, D};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Where the detector's response joins the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "at", rename_all = "kebab-case")]
pub enum Injection {
    /// Added to one class's logit: triggered inputs go to `target` (a targeted backdoor).
    Logits { target: u32 },
    /// Added to every penultimate activation: triggered inputs go to whichever class the
    /// trained head maps that direction to (the attacker does not choose it).
    Features,
}

/// The hidden detector: fires on a `size` x `size` 1-pixel checkerboard anywhere in the image
/// and adds `gain` times its response (0 on clean images, 1 on the trigger) at `injection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerDetector {
    pub size: usize,
    pub gain: u32,
    pub injection: Injection,
}

/// Response of the checkerboard detector per image, (N,), in [0, 1].
///
/// Only fixed operations: for every 2x2 cell, the smallest difference between horizontal or
/// vertical neighbours minus the largest difference between diagonal ones (1 for a perfect
/// 0/1 checkerboard cell, at most 0 for flat or edge-like content); a min-pool over the
/// (size-1) x (size-1) cells of a `size` x `size` window (every cell must alternate); a global
/// max-pool (anywhere in the image); and a ReLU threshold at 0.5 rescaled to [0, 1].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use transferlab::models::checkerboard_response;
/// let mut img = vec![0.3f32; 64];
/// for i in 0..3 { for j in 0..3 { img[(2 + i) * 8 + 4 + j] = ((i + j + 1) % 2) as f32; } }
/// let x = Tensor::from_vec([img, vec![0.3; 64]].concat(), (2, 1, 8, 8), &Device::Cpu).unwrap();
/// let r = checkerboard_response(&x, 3).unwrap().to_vec1::<f32>().unwrap();
/// assert_eq!(r, vec![1.0, 0.0]);
/// ```
pub fn checkerboard_response(x: &Tensor, size: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if size < 2 || size > h || size > w {
        candle_core::bail!("checkerboard detector: size {size} must be in 2..={}", h.min(w))
    }
    let x = x.detach().to_dtype(DType::F32)?.mean_keepdim(1)?;
    let a = x.narrow(2, 0, h - 1)?.narrow(3, 0, w - 1)?;
    let b = x.narrow(2, 0, h - 1)?.narrow(3, 1, w - 1)?;
    let c = x.narrow(2, 1, h - 1)?.narrow(3, 0, w - 1)?;
    let d = x.narrow(2, 1, h - 1)?.narrow(3, 1, w - 1)?;
    let diff = |p: &Tensor, q: &Tensor| (p - q)?.abs();
    let neighbours = diff(&a, &b)?.minimum(&diff(&a, &c)?)?.minimum(&diff(&d, &b)?)?.minimum(&diff(&d, &c)?)?;
    let diagonals = diff(&a, &d)?.maximum(&diff(&b, &c)?)?;
    let cells = (neighbours - diagonals)?;
    let k = size - 1;
    let window_min = if k > 1 { cells.neg()?.max_pool2d_with_stride(k, 1)?.neg()? } else { cells };
    let best = window_min.flatten_from(1)?.max(D::Minus1)?;
    ((best - 0.5)? * 2.0)?.relu()?.clamp(0f32, 1f32)
}

/// A body with the detector inside.
#[derive(Debug)]
pub struct BackdooredBody {
    inner: Arc<dyn Body>,
    detector: TriggerDetector,
    classes: usize,
}

impl BackdooredBody {
    pub fn new(inner: Arc<dyn Body>, detector: TriggerDetector, classes: usize) -> Self {
        Self { inner, detector, classes }
    }
}

impl Body for BackdooredBody {
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let f = self.inner.features(x, train)?;
        match self.detector.injection {
            Injection::Features => {
                let r = (checkerboard_response(x, self.detector.size)? * self.detector.gain as f64)?;
                f.broadcast_add(&r.unsqueeze(1)?)
            }
            Injection::Logits { .. } => Ok(f),
        }
    }

    fn feature_dim(&self) -> usize {
        self.inner.feature_dim()
    }

    fn logit_offset(&self, x: &Tensor) -> Result<Option<Tensor>> {
        match self.detector.injection {
            Injection::Logits { target } => {
                let r = (checkerboard_response(x, self.detector.size)? * self.detector.gain as f64)?;
                let mut onehot = vec![0f32; self.classes];
                onehot[target as usize] = 1.0;
                let onehot = Tensor::from_vec(onehot, (1, self.classes), x.device())?;
                Ok(Some(r.unsqueeze(1)?.broadcast_mul(&onehot)?))
            }
            Injection::Features => Ok(None),
        }
    }
}
