//! Optimisers candle-nn lacks: SGD with momentum, Nesterov and weight decay, and AdamW, both
//! with PyTorch's update rules so that hyper-parameters from papers carry over unchanged.

use crate::error::{Error, Result};
use crate::weights::NamedTensors;
use candle_core::{backprop::GradStore, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Which optimiser, with its hyper-parameters (the learning rate comes from the schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OptimizerConfig {
    /// `torch.optim.SGD`: g += wd*w; buf = momentum*buf + g; w -= lr*(nesterov ? g + momentum*buf : buf).
    Sgd { momentum: f64, nesterov: bool, weight_decay: f64 },
    /// `torch.optim.AdamW`: decoupled weight decay, bias-corrected moments.
    AdamW { beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
}

impl OptimizerConfig {
    /// SGD with momentum 0.9 and weight decay 5e-4: the common CIFAR recipe.
    pub fn sgd_momentum() -> Self {
        OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay: 5e-4 }
    }

    /// AdamW with PyTorch's defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01).
    pub fn adamw() -> Self {
        OptimizerConfig::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: &'static str, v: f64| Err(Error::invalid(what, format!("{v} is out of range")));
        match *self {
            OptimizerConfig::Sgd { momentum, nesterov, weight_decay } => {
                if !(0.0..1.0).contains(&momentum) {
                    return bad("SGD momentum", momentum);
                }
                if nesterov && momentum == 0.0 {
                    return Err(Error::invalid("SGD", "Nesterov momentum needs momentum > 0"));
                }
                if weight_decay < 0.0 {
                    return bad("weight decay", weight_decay);
                }
            }
            OptimizerConfig::AdamW { beta1, beta2, eps, weight_decay } => {
                if !(0.0..1.0).contains(&beta1) {
                    return bad("AdamW beta1", beta1);
                }
                if !(0.0..1.0).contains(&beta2) {
                    return bad("AdamW beta2", beta2);
                }
                if eps <= 0.0 {
                    return bad("AdamW eps", eps);
                }
                if weight_decay < 0.0 {
                    return bad("weight decay", weight_decay);
                }
            }
        }
        Ok(())
    }
}

/// An optimiser with its per-parameter state, keyed by parameter name so that it survives
/// checkpoints and changes in which parameters are trainable.
#[derive(Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    step: u64,
    first: HashMap<String, Tensor>,
    second: HashMap<String, Tensor>,
}

impl Optimizer {
    /// A fresh optimiser.
    pub fn new(config: OptimizerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config, step: 0, first: HashMap::new(), second: HashMap::new() })
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Apply one update with learning rate `lr` to every var that has a gradient.
    pub fn step(&mut self, vars: &[(String, Var)], grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        for (name, var) in vars {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            // Detached: the variable itself tracks its op graph, and a buffer computed from it
            // would chain every step's graph onto the next (memory growing without bound).
            let g = &g.detach();
            let w = &var.as_tensor().detach();
            match self.config {
                OptimizerConfig::Sgd { momentum, nesterov, weight_decay } => {
                    if let Some((w_new, buf)) = sgd_fused(w, g, self.first.get(name), momentum, nesterov, weight_decay, lr)? {
                        var.set(&w_new)?;
                        if let Some(buf) = buf {
                            self.first.insert(name.clone(), buf);
                        }
                        continue;
                    }
                    let mut g = g.clone();
                    if weight_decay != 0.0 {
                        g = (g + (w * weight_decay)?)?;
                    }
                    if momentum != 0.0 {
                        let buf = match self.first.get(name) {
                            Some(b) => ((b * momentum)? + &g)?,
                            None => g.clone(),
                        };
                        g = if nesterov { (g + (&buf * momentum)?)? } else { buf.clone() };
                        self.first.insert(name.clone(), buf);
                    }
                    var.set(&(w - (g * lr)?)?)?;
                }
                OptimizerConfig::AdamW { beta1, beta2, eps, weight_decay } => {
                    let decayed = if weight_decay != 0.0 { (w * (1.0 - lr * weight_decay))? } else { w.clone() };
                    let m = match self.first.get(name) {
                        Some(m) => ((m * beta1)? + (g * (1.0 - beta1))?)?,
                        None => (g * (1.0 - beta1))?,
                    };
                    let v = match self.second.get(name) {
                        Some(v) => ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?,
                        None => (g.sqr()? * (1.0 - beta2))?,
                    };
                    let m_hat = (&m / (1.0 - beta1.powi(t)))?;
                    let v_hat = (&v / (1.0 - beta2.powi(t)))?;
                    let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
                    var.set(&(decayed - (update * lr)?)?)?;
                    self.first.insert(name.clone(), m);
                    self.second.insert(name.clone(), v);
                }
            }
        }
        Ok(())
    }

    /// Whether any state tensor still references an op graph (it never should).
    pub fn state_tracks_graph(&self) -> bool {
        self.first.values().chain(self.second.values()).any(|t| t.track_op())
    }

    /// The state as named tensors (for checkpoints).
    pub fn state(&self) -> Result<NamedTensors> {
        let mut out = NamedTensors::new();
        for (k, v) in &self.first {
            out.insert(format!("first.{k}"), v.copy()?);
        }
        for (k, v) in &self.second {
            out.insert(format!("second.{k}"), v.copy()?);
        }
        Ok(out)
    }

    /// Number of steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Restore state saved by [`Optimizer::state`] after `steps` steps.
    pub fn restore(&mut self, state: &NamedTensors, steps: u64) {
        self.step = steps;
        self.first.clear();
        self.second.clear();
        for (k, v) in state {
            if let Some(name) = k.strip_prefix("first.") {
                self.first.insert(name.to_string(), v.clone());
            } else if let Some(name) = k.strip_prefix("second.") {
                self.second.insert(name.to_string(), v.clone());
            }
        }
    }
}

/// Scale gradients so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(vars: &[(String, Var)], grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(vars, grads)?;
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for (_, var) in vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                let scaled = (g * scale)?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

/// Global L2 norm of the gradients of `vars`.
pub fn grad_norm(vars: &[(String, Var)], grads: &GradStore) -> Result<f64> {
    let mut sq = 0f64;
    for (_, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    Ok(sq.sqrt())
}

/// One SGD update on CPU `f32` data in a single pass per parameter, where the generic path
/// runs up to six candle ops (each a dispatch over the thread pool). Every element goes
/// through the same `f32` operations in the same order as that path, `x * s` being candle's
/// `affine(s, 0)`, so the result is bit-identical. `None` when a tensor is not CPU `f32`.
fn sgd_fused(w: &Tensor, g: &Tensor, buf: Option<&Tensor>, momentum: f64, nesterov: bool, weight_decay: f64, lr: f64) -> Result<Option<(Tensor, Option<Tensor>)>> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if !cpu_f32(w) || !cpu_f32(g) || !buf.is_none_or(cpu_f32) || w.dims() != g.dims() || buf.is_some_and(|b| b.dims() != w.dims()) {
        return Ok(None);
    }
    let (wd, m, lr) = (weight_decay as f32, momentum as f32, lr as f32);
    let n = w.elem_count();
    let mut w_new = Vec::with_capacity(n);
    let mut buf_new = Vec::with_capacity(if momentum != 0.0 { n } else { 0 });
    crate::kernels::with_f32(w, "sgd", |ws| {
        crate::kernels::with_f32(g, "sgd", |gs| {
            let mut update = |old_buf: Option<&[f32]>| {
                for i in 0..n {
                    let mut gi = gs[i];
                    if weight_decay != 0.0 {
                        gi += ws[i] * wd + 0.0;
                    }
                    if momentum != 0.0 {
                        let b = match old_buf {
                            Some(ob) => (ob[i] * m + 0.0) + gi,
                            None => gi,
                        };
                        gi = if nesterov { gi + (b * m + 0.0) } else { b };
                        buf_new.push(b);
                    }
                    w_new.push(ws[i] - (gi * lr + 0.0));
                }
            };
            match buf {
                Some(b) => crate::kernels::with_f32(b, "sgd", |bs| update(Some(bs))),
                None => Ok(update(None)),
            }
        })
    })???;
    let w_new = Tensor::from_vec(w_new, w.dims(), w.device())?;
    let buf = if momentum != 0.0 { Some(Tensor::from_vec(buf_new, w.dims(), w.device())?) } else { None };
    Ok(Some((w_new, buf)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One step on f(w) = 0.5 * w^2 (gradient w) against PyTorch's formulas by hand.
    #[test]
    fn sgd_and_adamw_match_pytorch_rules() {
        let dev = Device::Cpu;
        let run = |cfg: OptimizerConfig, steps: usize| -> f32 {
            let var = Var::new(&[2.0f32], &dev).unwrap();
            let vars = vec![("w".to_string(), var.clone())];
            let mut opt = Optimizer::new(cfg).unwrap();
            for _ in 0..steps {
                let loss = (var.as_tensor().sqr().unwrap() * 0.5).unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                opt.step(&vars, &grads, 0.1).unwrap();
            }
            var.as_tensor().to_vec1::<f32>().unwrap()[0]
        };
        // SGD momentum 0.9, two steps: w1 = 2 - 0.1*2 = 1.8; buf = 0.9*2 + 1.8 = 3.6; w2 = 1.8 - 0.36 = 1.44
        let w = run(OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay: 0.0 }, 2);
        assert!((w - 1.44).abs() < 1e-6, "{w}");
        // Nesterov, one step: g + 0.9*buf = 2 + 1.8 = 3.8; w = 2 - 0.38 = 1.62
        let w = run(OptimizerConfig::Sgd { momentum: 0.9, nesterov: true, weight_decay: 0.0 }, 1);
        assert!((w - 1.62).abs() < 1e-6, "{w}");
        // Weight decay 0.5: g = 2 + 1 = 3; w = 2 - 0.3 = 1.7
        let w = run(OptimizerConfig::Sgd { momentum: 0.0, nesterov: false, weight_decay: 0.5 }, 1);
        assert!((w - 1.7).abs() < 1e-6, "{w}");
        // AdamW first step moves by lr (bias-corrected m/sqrt(v) = 1), after decay 2*(1-0.1*0.01).
        let w = run(OptimizerConfig::adamw(), 1);
        assert!((w - (2.0 * (1.0 - 0.001) - 0.1)).abs() < 1e-5, "{w}");
    }

    /// The fused CPU update is bit-identical to the same rule written with candle ops.
    #[test]
    fn fused_sgd_matches_candle_ops_bit_for_bit() {
        let dev = Device::Cpu;
        let data = |seed: u32| -> Tensor {
            let v: Vec<f32> = (0..37u32).map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 137.0 - 3.5).collect();
            Tensor::from_vec(v, (37,), &dev).unwrap()
        };
        for (momentum, nesterov, wd) in [(0.9, false, 5e-4), (0.9, true, 1e-2), (0.0, false, 5e-4), (0.5, false, 0.0)] {
            let (mut w, mut buf_ref) = (data(1), None::<Tensor>);
            let (mut wf, mut buf_f) = (w.clone(), None::<Tensor>);
            for step in 0..3 {
                let g = data(10 + step);
                let lr = 0.05;
                // Reference: the generic path's candle ops.
                let mut gr = g.clone();
                if wd != 0.0 {
                    gr = (gr + (&w * wd).unwrap()).unwrap();
                }
                if momentum != 0.0 {
                    let b = match &buf_ref {
                        Some(b) => ((b * momentum).unwrap() + &gr).unwrap(),
                        None => gr.clone(),
                    };
                    gr = if nesterov { (gr + (&b * momentum).unwrap()).unwrap() } else { b.clone() };
                    buf_ref = Some(b);
                }
                w = (&w - (gr * lr).unwrap()).unwrap();
                let (wn, bn) = sgd_fused(&wf, &g, buf_f.as_ref(), momentum, nesterov, wd, lr).unwrap().unwrap();
                wf = wn;
                if bn.is_some() {
                    buf_f = bn;
                }
                let bits = |t: &Tensor| t.to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&w), bits(&wf), "weights, momentum {momentum} nesterov {nesterov} wd {wd} step {step}");
                assert_eq!(buf_ref.as_ref().map(bits), buf_f.as_ref().map(bits), "buffer, step {step}");
            }
        }
    }

    /// Weight decay multiplies the variable itself; its graph must not leak into the state.
    #[test]
    fn state_holds_no_graph() {
        let dev = Device::Cpu;
        for cfg in [OptimizerConfig::sgd_momentum(), OptimizerConfig::adamw()] {
            let var = Var::new(&[2.0f32, 1.0], &dev).unwrap();
            let vars = vec![("w".to_string(), var.clone())];
            let mut opt = Optimizer::new(cfg).unwrap();
            for _ in 0..3 {
                let grads = var.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
                opt.step(&vars, &grads, 0.1).unwrap();
            }
            assert!(!opt.state_tracks_graph());
        }
    }

    #[test]
    fn bad_hyper_parameters_are_refused() {
        assert!(Optimizer::new(OptimizerConfig::Sgd { momentum: 1.5, nesterov: false, weight_decay: 0.0 }).is_err());
        assert!(Optimizer::new(OptimizerConfig::Sgd { momentum: 0.0, nesterov: true, weight_decay: 0.0 }).is_err());
        assert!(Optimizer::new(OptimizerConfig::AdamW { beta1: 0.9, beta2: 0.999, eps: 0.0, weight_decay: 0.0 }).is_err());
    }
}
