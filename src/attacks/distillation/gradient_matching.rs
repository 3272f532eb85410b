//! Gradient-matching dataset distillation (Zhao, Mopuri and Bilen 2021, "Dataset Condensation
//! with Gradient Matching", DC) over a functional ConvNet whose second derivatives candle can
//! take.
//!
//! DC learns a few synthetic images per class such that, for many random networks, the
//! gradient of the loss on the synthetic images of a class points the same way as the
//! gradient on real images of that class. Stepping the images needs the derivative of that
//! gradient with respect to the images: a second-order derivative. candle's backward builds
//! every gradient from differentiable candle ops, but detaches each one unless the
//! thread-local `CANDLE_GRAD_DO_NOT_DETACH` was true when the thread first ran a backward
//! pass; [`with_second_order`] runs work on a thread where it is. Our fast custom kernels in
//! `models` have no differentiable backward, hence the plain functional network here.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::rng::{permutation, stream, stream_at, SeededRng};
use crate::train::{Progress, ProgressMode};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::Rng;
use std::sync::Mutex;

/// The variable candle reads, once per thread, to decide whether gradients stay differentiable.
const NO_DETACH: &str = "CANDLE_GRAD_DO_NOT_DETACH";

/// Serialises our own set/restore windows of [`NO_DETACH`].
static ENV_WINDOW: Mutex<()> = Mutex::new(());

/// Run `work` on a fresh thread whose backward passes keep gradients differentiable, and
/// return its result.
///
/// candle reads `CANDLE_GRAD_DO_NOT_DETACH` into a thread-local on a thread's first backward
/// pass. We set the variable, spawn the thread, make it run a trivial backward pass (which
/// fixes its thread-local to "do not detach"), then restore the variable before `work`
/// starts, so no other thread (in particular the ordinary trainer, whose custom kernels
/// cannot be differentiated twice) is affected for longer than that window. Setting an
/// environment variable while another thread reads the environment is a data race in libc;
/// the window is a few microseconds and is serialised against itself, which is as tight as
/// the mechanism allows. A thread that happened to run its first backward pass inside the
/// window would keep its gradients' graphs: slower and hungrier, never wrong.
pub fn with_second_order<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<bool>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let handle = {
        let _guard = ENV_WINDOW.lock().unwrap_or_else(|p| p.into_inner());
        let previous = std::env::var_os(NO_DETACH);
        std::env::set_var(NO_DETACH, "1");
        let handle = std::thread::Builder::new()
            .name("gradient-matching".into())
            .spawn(move || -> Result<T> {
                let ok = keeps_gradient_graph().unwrap_or(false);
                let _ = ready_tx.send(ok);
                let _ = go_rx.recv();
                if !ok {
                    return Err(Error::invalid(
                        "second-order gradients",
                        "candle detached the gradient graph on the distillation thread; is CANDLE_GRAD_DO_NOT_DETACH handled by this candle version?",
                    ));
                }
                work()
            });
        let ready = ready_rx.recv();
        match previous {
            Some(v) => std::env::set_var(NO_DETACH, v),
            None => std::env::remove_var(NO_DETACH),
        }
        let _ = go_tx.send(());
        let handle = handle.map_err(|e| Error::invalid("distillation thread", format!("could not start it: {e}")))?;
        if ready.is_err() {
            return Err(join(handle).err().unwrap_or_else(|| Error::invalid("distillation thread", "it stopped before starting")));
        }
        handle
    };
    join(handle)
}

fn join<T>(handle: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    handle.join().map_err(|_| Error::invalid("distillation thread", "it panicked; this is a bug in transferlab"))?
}

/// Whether this thread's backward passes keep gradients differentiable. For y = exp(exp(x))
/// at x = 0, d/dx (dy/dx) = 2e; a detaching thread still builds part of the gradient's graph
/// (through the forward values it multiplies by) but drops the path through the incoming
/// gradient, and gets e. Running the probe also fixes this thread's reading of [`NO_DETACH`].
fn keeps_gradient_graph() -> Result<bool> {
    let x = Var::new(&[0f32], &Device::Cpu)?;
    let y = x.as_tensor().exp()?.exp()?.sum_all()?;
    let g = y.backward()?.get(x.as_tensor()).cloned().ok_or_else(|| Error::invalid("probe", "no gradient"))?;
    let gg = g.sum_all()?.backward()?;
    Ok(match gg.get(x.as_tensor()) {
        Some(t) => (t.to_vec1::<f32>()?[0] as f64 - 2.0 * std::f64::consts::E).abs() < 1e-3,
        None => false,
    })
}

/// DC's ConvNet, functional: `depth` x (3x3 conv with padding 1, instance norm with affine
/// parameters, ReLU, 2x2 average pooling), then a linear classifier. Every op is a candle op
/// whose backward is itself differentiable.
#[derive(Debug, Clone)]
pub struct MatchNet {
    /// Per block: conv weight (out, 9 x in), conv bias, norm scale, norm shift.
    blocks: Vec<[Var; 4]>,
    head_w: Var,
    head_b: Var,
}

impl MatchNet {
    /// A freshly initialised network for `shape` (C, H, W) inputs and `classes` outputs, with
    /// PyTorch's default initialisation (uniform in +-1/sqrt(fan_in)), as DC's networks are.
    pub fn new(shape: (usize, usize, usize), width: usize, depth: usize, classes: usize, rng: &mut SeededRng) -> Result<Self> {
        let dev = Device::Cpu;
        let mut uniform = |n: usize, fan_in: usize, dims: &[usize]| -> Result<Var> {
            let b = 1.0 / (fan_in as f32).sqrt();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-b..b)).collect();
            Ok(Var::from_tensor(&Tensor::from_vec(v, dims, &dev)?)?)
        };
        let (mut c, mut h, mut w) = shape;
        let mut blocks = Vec::with_capacity(depth);
        for _ in 0..depth {
            let fan = c * 9;
            let weight = uniform(width * fan, fan, &[width, fan])?;
            let bias = uniform(width, fan, &[width])?;
            let scale = Var::from_tensor(&Tensor::ones(width, DType::F32, &dev)?)?;
            let shift = Var::from_tensor(&Tensor::zeros(width, DType::F32, &dev)?)?;
            blocks.push([weight, bias, scale, shift]);
            c = width;
            h /= 2;
            w /= 2;
        }
        let feat = c * h * w;
        let head_w = uniform(classes * feat, feat, &[classes, feat])?;
        let head_b = uniform(classes, feat, &[classes])?;
        Ok(Self { blocks, head_w, head_b })
    }

    /// Every parameter.
    pub fn vars(&self) -> Vec<Var> {
        let mut v: Vec<Var> = self.blocks.iter().flat_map(|b| b.iter().cloned()).collect();
        v.push(self.head_w.clone());
        v.push(self.head_b.clone());
        v
    }

    /// The parameters whose gradients DC matches: convolution and linear weights (its
    /// distance ignores one-dimensional parameters: biases and norm affine terms).
    pub fn matched(&self) -> Vec<Var> {
        let mut v: Vec<Var> = self.blocks.iter().map(|b| b[0].clone()).collect();
        v.push(self.head_w.clone());
        v
    }

    /// The last block's convolution weight (width x 9 inputs per channel).
    pub fn last_conv_weight(&self) -> Option<&Var> {
        self.blocks.last().map(|b| &b[0])
    }

    /// The classifier's weight (classes x features).
    pub fn head_weight(&self) -> &Var {
        &self.head_w
    }

    /// Penultimate-layer activations (the flattened output of the last block) of NCHW input.
    /// Inside, activations are channel-last (NHWC): a 3x3 convolution is then nine shifted
    /// views concatenated along channels and one matrix product, with no transposes.
    pub fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.permute((0, 2, 3, 1))?;
        for [weight, bias, scale, shift] in &self.blocks {
            h = conv3x3_nhwc(&h, weight.as_tensor())?.broadcast_add(bias.as_tensor())?;
            h = instance_norm(&h, scale, shift)?;
            h = avg_pool2_nhwc(&h.relu()?)?;
        }
        h.flatten_from(1)
    }

    pub fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.features(x)?.matmul(&self.head_w.as_tensor().t()?)?.broadcast_add(self.head_b.as_tensor())
    }
}

/// 3x3 convolution with zero padding 1 of channel-last input (N, H, W, C) by a weight of shape
/// (O, 9C) (columns ordered row offset, column offset, channel), as nine shifted views and one
/// matrix product.
///
/// candle's conv2d is differentiable twice, but its backward runs conv_transpose2d, a direct
/// loop on the CPU; views, concatenation and gemm differentiate twice at gemm speed.
pub fn conv3x3_nhwc(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let o = weight.dim(0)?;
    let xp = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let mut views = Vec::with_capacity(9);
    for di in 0..3 {
        for dj in 0..3 {
            views.push(xp.narrow(1, di, h)?.narrow(2, dj, w)?);
        }
    }
    let cols = Tensor::cat(&views, 3)?.reshape((n * h * w, 9 * c))?;
    cols.matmul(&weight.t()?)?.reshape((n, h, w, o))
}

/// [`conv3x3_nhwc`] for NCHW input and a (O, C, 3, 3) weight, for comparison with candle's conv2d.
pub fn conv3x3(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let (o, c, _, _) = weight.dims4()?;
    let w = weight.permute((0, 2, 3, 1))?.reshape((o, 9 * c))?;
    conv3x3_nhwc(&x.permute((0, 2, 3, 1))?, &w)?.permute((0, 3, 1, 2))
}

/// 2x2 average pooling with stride 2 of channel-last input, as a reshape and a mean.
pub fn avg_pool2_nhwc(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    x.reshape((n, h / 2, 2, w / 2, 2, c))?.mean(4)?.mean(2)
}

/// [`avg_pool2_nhwc`] for NCHW input.
pub fn avg_pool2(x: &Tensor) -> candle_core::Result<Tensor> {
    avg_pool2_nhwc(&x.permute((0, 2, 3, 1))?)?.permute((0, 3, 1, 2))
}

/// Instance norm of channel-last input (PyTorch's GroupNorm with one group per channel, eps
/// 1e-5) from plain ops.
fn instance_norm(x: &Tensor, scale: &Var, shift: &Var) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim((1, 2))?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim((1, 2))?;
    let normed = centred.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
    normed.broadcast_mul(scale.as_tensor())?.broadcast_add(shift.as_tensor())
}

/// Mean cross-entropy from logits and one-hot targets, with ops that differentiate twice (the
/// row maximum is a constant shift, so it is detached). Not [`crate::kernels::cross_entropy`]:
/// gradient matching differentiates the gradient of this loss, and the fused kernel's
/// backward pass is not itself differentiable.
pub fn onehot_cross_entropy(logits: &Tensor, onehot: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let n = logits.dim(0)? as f64;
    (logp * onehot)?.sum_all()?.affine(-1.0 / n, 0.0)
}

/// One-hot rows for `labels` among `k` classes.
pub fn onehot(labels: &[u32], k: usize) -> Result<Tensor> {
    let mut v = vec![0f32; labels.len() * k];
    for (i, &y) in labels.iter().enumerate() {
        v[i * k + y as usize] = 1.0;
    }
    Ok(Tensor::from_vec(v, (labels.len(), k), &Device::Cpu)?)
}

/// DC's layer-wise distance ("ours"): for each output unit, 1 - cosine between the real and
/// synthetic gradient rows, summed. A small constant inside each norm keeps the norm's own
/// derivative finite when a row is all zeros (a dead unit); DC has it only outside.
pub fn gradient_distance(real: &Tensor, syn: &Tensor) -> candle_core::Result<Tensor> {
    let out = real.dim(0)?;
    let (r, s) = (real.reshape((out, ()))?, syn.reshape((out, ()))?);
    let dot = (&r * &s)?.sum(1)?;
    let nr = (r.sqr()?.sum(1)? + 1e-12)?.sqrt()?;
    let ns = (s.sqr()?.sum(1)? + 1e-12)?.sqrt()?;
    let cos = dot.div(&((nr * ns)? + 1e-6)?)?;
    (1.0 - cos)?.sum_all()
}

/// Gradients of `loss` with respect to `vars`, in order (zeros for a variable it does not reach).
pub fn grads_of(loss: &Tensor, vars: &[Var]) -> Result<Vec<Tensor>> {
    let store = loss.backward()?;
    vars.iter()
        .map(|v| Ok(match store.get(v.as_tensor()) {
            Some(g) => g.clone(),
            None => v.as_tensor().zeros_like()?,
        }))
        .collect()
}

/// Gradient-matching distillation (DC, Zhao et al. 2021). Defaults are DC's for 10 images per
/// class: 1000 iterations, outer loop 10, inner loop 50, real batches of 256 per class,
/// synthetic images stepped by SGD at lr 0.1 with momentum 0.5, the network by SGD at lr 0.01,
/// ConvNet width 128 and depth 3 with instance norm.
///
/// Deviations: synthetic images are kept in [0, 1] after every step (DC works on normalised
/// images without bounds; ours must stay images that a model and a figure can take); there is
/// no differentiable augmentation (neither has DC).
#[derive(Debug, Clone)]
pub struct DistillationConfig {
    /// Synthetic images per class (IPC).
    pub ipc: usize,
    /// Outer iterations, each with a freshly initialised network.
    pub iterations: usize,
    /// Image updates per iteration.
    pub outer_loop: usize,
    /// Network training epochs on the synthetic set between image updates.
    pub inner_loop: usize,
    /// Real images per class in each matching step.
    pub batch_real: usize,
    /// Batch size of the network's training on the synthetic set.
    pub batch_train: usize,
    pub lr_img: f64,
    pub momentum_img: f64,
    pub lr_net: f64,
    /// ConvNet channels.
    pub width: usize,
    /// ConvNet blocks; each halves the image side, so 2^depth must divide it.
    pub depth: usize,
}

impl Default for DistillationConfig {
    fn default() -> Self {
        Self {
            ipc: 10,
            iterations: 1000,
            outer_loop: 10,
            inner_loop: 50,
            batch_real: 256,
            batch_train: 256,
            lr_img: 0.1,
            momentum_img: 0.5,
            lr_net: 0.01,
            width: 128,
            depth: 3,
        }
    }
}

/// What happens to the real data during the distillation (DOORPING re-optimises its trigger
/// there). Called before every image update, with the network as trained so far.
pub trait IterationHook: Send {
    /// `step` counts image updates from 0 over the whole distillation; `outer` is the update's
    /// place within its iteration (0: the network is freshly initialised; above 0: it has just
    /// been trained on the synthetic set). Returns `true` when the hook changed the real data.
    fn before_update(&mut self, step: usize, outer: usize, net: &MatchNet, real: &mut Dataset) -> Result<bool>;
}

/// Distilled images with their labels, and the mean matching distance per iteration.
#[derive(Debug, Clone)]
pub struct Distilled {
    pub images: Dataset,
    pub matching_loss: Vec<f64>,
}

/// Distil `real` into `ipc` images per class with DC's algorithm: images initialised from
/// random real images of their class; per iteration a fresh random network; `outer_loop`
/// times: the hook, one SGD-with-momentum step on the images against the summed per-class
/// gradient distance, then `inner_loop` epochs of the network on the synthetic set. Must run on a
/// thread set up by [`with_second_order`].
pub fn distill(mut real: Dataset, s: &DistillationConfig, seed: u64, progress_mode: ProgressMode, hook: &mut dyn IterationHook) -> Result<Distilled> {
    let dev = Device::Cpu;
    let k = real.num_classes();
    let shape = real.shape;
    let per = real.image_len();
    let mut by_class = real.indices_by_class();
    if let Some(c) = by_class.iter().position(|p| p.len() < s.ipc) {
        return Err(Error::invalid(
            "images per class",
            format!("{} asked for, but class {c} has only {} training images; lower ipc", s.ipc, by_class[c].len()),
        ));
    }
    let mut rng = stream(seed, "distill.init");
    let mut init = Vec::with_capacity(k * s.ipc * per);
    for pool in &by_class {
        let order = permutation(&mut rng, pool.len());
        for &j in &order[..s.ipc] {
            init.extend_from_slice(real.image(pool[j]));
        }
    }
    let (c, h, w) = shape;
    let syn: Vec<Var> = (0..k)
        .map(|cls| Ok(Var::from_tensor(&Tensor::from_slice(&init[cls * s.ipc * per..(cls + 1) * s.ipc * per], (s.ipc, c, h, w), &dev)?)?))
        .collect::<Result<_>>()?;
    let mut momentum: Vec<Tensor> = syn.iter().map(|v| v.as_tensor().zeros_like()).collect::<candle_core::Result<_>>()?;
    let syn_labels: Vec<u32> = (0..k as u32).flat_map(|y| std::iter::repeat_n(y, s.ipc)).collect();
    let class_onehot: Vec<Tensor> = (0..k as u32).map(|y| onehot(&vec![y; s.ipc], k)).collect::<Result<_>>()?;

    let progress = Progress::new("gradient matching", s.iterations as u64, progress_mode);
    let mut batch_rng = stream(seed, "distill.batches");
    let mut matching_loss = Vec::with_capacity(s.iterations);
    for it in 0..s.iterations {
        let net = MatchNet::new(shape, s.width, s.depth, k, &mut stream_at(seed, "distill.net", it as u64))?;
        let params = net.vars();
        let matched = net.matched();
        let mut it_loss = 0.0;
        for ol in 0..s.outer_loop {
            if hook.before_update(it * s.outer_loop + ol, ol, &net, &mut real)? {
                by_class = real.indices_by_class();
            }
            let mut total: Option<Tensor> = None;
            for (cls, pool) in by_class.iter().enumerate() {
                let take = s.batch_real.min(pool.len());
                let order = permutation(&mut batch_rng, pool.len());
                let idx: Vec<usize> = order[..take].iter().map(|&j| pool[j]).collect();
                let (x_real, _) = real.batch(&idx, &dev)?;
                let y_real = onehot(&vec![cls as u32; take], k)?;
                let g_real: Vec<Tensor> =
                    grads_of(&onehot_cross_entropy(&net.logits(&x_real)?, &y_real)?, &matched)?.into_iter().map(|g| g.detach()).collect();
                let g_syn = grads_of(&onehot_cross_entropy(&net.logits(syn[cls].as_tensor())?, &class_onehot[cls])?, &matched)?;
                for (gr, gs) in g_real.iter().zip(&g_syn) {
                    let d = gradient_distance(gr, gs)?;
                    total = Some(match total {
                        None => d,
                        Some(t) => (t + d)?,
                    });
                }
            }
            let total = total.ok_or_else(|| Error::invalid("distillation", "no class to match"))?;
            it_loss += total.to_scalar::<f32>()? as f64 / k as f64;
            let store = total.backward()?;
            for (v, m) in syn.iter().zip(momentum.iter_mut()) {
                let g = store.get(v.as_tensor()).map(|g| g.detach()).unwrap_or(v.as_tensor().zeros_like()?);
                *m = ((&*m * s.momentum_img)? + g)?.detach();
                v.set(&(v.as_tensor() - (&*m * s.lr_img)?)?.clamp(0f32, 1f32)?.detach())?;
            }
            if ol + 1 == s.outer_loop {
                break;
            }
            let x_syn = Tensor::cat(&syn.iter().map(|v| v.as_tensor().detach()).collect::<Vec<_>>(), 0)?;
            for _ in 0..s.inner_loop {
                let order = permutation(&mut batch_rng, syn_labels.len());
                for chunk in order.chunks(s.batch_train.max(1)) {
                    let ids = Tensor::from_vec(chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(), chunk.len(), &dev)?;
                    let labels: Vec<u32> = chunk.iter().map(|&i| syn_labels[i]).collect();
                    let loss = onehot_cross_entropy(&net.logits(&x_syn.index_select(&ids, 0)?)?, &onehot(&labels, k)?)?;
                    let grads = grads_of(&loss, &params)?;
                    for (p, g) in params.iter().zip(grads) {
                        p.set(&(p.as_tensor() - (g.detach() * s.lr_net)?)?.detach())?;
                    }
                }
            }
        }
        matching_loss.push(it_loss / s.outer_loop as f64);
        progress.inc(1);
    }
    progress.finish();
    let pixels: Vec<f32> = syn.iter().map(|v| v.as_tensor().flatten_all()?.to_vec1::<f32>()).collect::<candle_core::Result<Vec<_>>>()?.concat();
    let images = Dataset::new(pixels, shape, syn_labels, real.class_names.clone())?;
    Ok(Distilled { images, matching_loss })
}

/// A hook that does nothing (clean distillation, NAIVEATTACK).
pub struct NoHook;

impl IterationHook for NoHook {
    fn before_update(&mut self, _: usize, _: usize, _: &MatchNet, _: &mut Dataset) -> Result<bool> {
        Ok(false)
    }
}
