//! Deterministic weight initialisation.
//!
//! candle's CPU random generator cannot be seeded, so every parameter is re-drawn here from a
//! stream named after the parameter: the same seed gives the same weights bit for bit, and the
//! weights of one layer do not depend on how many layers were created before it.

use crate::error::Result;
use crate::rng::{normal, stream};
use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use rand::Rng;

/// How convolution and linear weights are drawn. Norm layers always start at weight 1, bias 0
/// and running statistics (0, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitScheme {
    /// PyTorch's layer defaults: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    /// (kaiming_uniform with a = sqrt(5)).
    TorchDefault,
    /// He et al. normal init for convolutions, N(0, 2/fan_out), as torchvision's ResNets and
    /// the CIFAR ResNet reference use; linear layers keep PyTorch's default.
    KaimingNormalFanOut,
}

/// Re-initialise every variable of `varmap` whose name starts with `prefix` (all when empty).
pub fn initialise(varmap: &VarMap, scheme: InitScheme, seed: u64, prefix: &str) -> Result<()> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let mut names: Vec<&String> = data.keys().filter(|k| k.starts_with(prefix)).collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let values = initial_values(name, var, &data, scheme, seed);
        let t = Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

fn initial_values(
    name: &str,
    var: &Var,
    all: &std::collections::HashMap<String, Var>,
    scheme: InitScheme,
    seed: u64,
) -> Vec<f32> {
    let dims = var.dims().to_vec();
    let n: usize = dims.iter().product();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let mut rng = stream(seed, name);
    let uniform = |rng: &mut crate::rng::SeededRng, bound: f32| -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-bound..=bound)).collect()
    };
    match (leaf, dims.len()) {
        ("running_mean", _) | ("num_batches_tracked", _) => vec![0.0; n],
        ("running_var", _) => vec![1.0; n],
        ("weight", 1) => vec![1.0; n],
        ("bias", _) => {
            // A bias belongs to a conv/linear layer when its sibling weight is a matrix or kernel.
            let sibling = format!("{}weight", &name[..name.len() - leaf.len()]);
            match all.get(&sibling).map(|w| w.dims().to_vec()) {
                Some(w) if w.len() >= 2 => {
                    let fan_in: usize = w[1..].iter().product();
                    uniform(&mut rng, 1.0 / (fan_in as f32).sqrt())
                }
                _ => vec![0.0; n],
            }
        }
        (_, r) if r >= 2 => {
            let fan_in: usize = dims[1..].iter().product();
            let fan_out: usize = dims[0] * dims[2..].iter().product::<usize>();
            match (scheme, r) {
                (InitScheme::KaimingNormalFanOut, 4) => {
                    let std = (2.0 / fan_out as f32).sqrt();
                    (0..n).map(|_| normal(&mut rng) * std).collect()
                }
                _ => uniform(&mut rng, 1.0 / (fan_in as f32).sqrt()),
            }
        }
        _ => uniform(&mut rng, 0.1),
    }
}
