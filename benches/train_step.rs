//! Training and inference throughput of a small CNN, candle's own CPU ops against
//! `transferlab::kernels`, plus the single ops that dominate a training step.
//!
//! The network (the one of issue 4): three blocks of 3x3 conv (padding 1, bias) -> ReLU ->
//! 2x2 max-pool, with 32, 64 and 128 channels, then a linear head 2048 -> 10; batch 128 of
//! 32x32 RGB, f32. A training step is forward, mean cross-entropy, backward and a plain SGD
//! update. The implementations run interleaved (A, B, C, A, B, C, ...) so that load from other
//! processes falls on all alike; the tables show the median of the runs.
//!
//! `cargo bench --profile dev --bench train_step [-- runs]` (default 7 runs after one warm-up
//! of each) reuses the dev build; plain `cargo bench` builds every dependency again in
//! release mode. `-- --profile-candle|--profile-ours|--profile-fused [steps]` runs only one
//! variant's training step, for a profiler.
//!
//! Two settings outside this crate move the numbers a lot (see `kernels`' module docs): the
//! dev profile compiles dependencies (gemm included) with debug assertions, which halves
//! gemm's speed, and glibc's default malloc returns large blocks to the OS, so every
//! activation-sized allocation page-faults (try
//! `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967295`).

use candle_core::{DType, Device, Result, Tensor, Var};
use std::time::Instant;
use transferlab::kernels;
use transferlab::rng::{normal, stream};

const BATCH: usize = 128;
const CLASSES: usize = 10;

/// Which implementation of the layers to run.
#[derive(Clone, Copy, PartialEq)]
enum Ops {
    /// candle's conv2d, relu, max_pool2d and candle-nn's cross_entropy.
    Candle,
    /// `transferlab::kernels`, op for op.
    Ours,
    /// `transferlab::kernels` with ReLU and max-pooling as one op (`max_pool2d_relu`).
    OursFused,
}

fn randn(shape: &[usize], scale: f32, name: &str) -> Tensor {
    let mut rng = stream(4, name);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| normal(&mut rng) * scale).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

struct Net {
    convs: Vec<(Var, Var)>,
    head: (Var, Var),
}

impl Net {
    fn new() -> Self {
        let mut convs = Vec::new();
        let mut cin = 3;
        for (i, cout) in [32, 64, 128].into_iter().enumerate() {
            let fan_in = (cin * 9) as f32;
            let w = randn(&[cout, cin, 3, 3], (2.0 / fan_in).sqrt(), &format!("conv{i}.weight"));
            convs.push((Var::from_tensor(&w).unwrap(), Var::from_tensor(&Tensor::zeros(cout, DType::F32, &Device::Cpu).unwrap()).unwrap()));
            cin = cout;
        }
        let w = randn(&[CLASSES, 2048], (1.0 / 2048f32).sqrt(), "head.weight");
        let head = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&Tensor::zeros(CLASSES, DType::F32, &Device::Cpu).unwrap()).unwrap());
        Self { convs, head }
    }

    fn vars(&self) -> Vec<&Var> {
        self.convs.iter().flat_map(|(w, b)| [w, b]).chain([&self.head.0, &self.head.1]).collect()
    }

    /// Logits; `train` keeps the autograd graph, otherwise parameters enter detached.
    fn forward(&self, x: &Tensor, ops: Ops, train: bool) -> Result<Tensor> {
        let p = |v: &Var| if train { v.as_tensor().clone() } else { v.as_detached_tensor() };
        let mut h = x.clone();
        for (w, b) in &self.convs {
            let (w, b) = (p(w), p(b));
            h = match ops {
                Ops::Candle => {
                    let y = h.conv2d(&w, 1, 1, 1, 1)?.broadcast_add(&b.reshape((1, (), 1, 1))?)?;
                    y.relu()?.max_pool2d(2)?
                }
                Ops::Ours => kernels::max_pool2d(&kernels::relu(&kernels::conv2d(&h, &w, Some(&b), 1, 1)?)?, 2, 2, 0)?,
                Ops::OursFused => kernels::max_pool2d_relu(&kernels::conv2d(&h, &w, Some(&b), 1, 1)?, 2, 2, 0)?,
            };
        }
        let h = h.flatten_from(1)?;
        h.matmul(&p(&self.head.0).t()?)?.broadcast_add(&p(&self.head.1))
    }

    fn train_step(&self, x: &Tensor, y: &Tensor, ops: Ops) -> Result<f32> {
        let logits = self.forward(x, ops, true)?;
        let loss = match ops {
            Ops::Candle => candle_nn::loss::cross_entropy(&logits, y)?,
            Ops::Ours | Ops::OursFused => kernels::cross_entropy(&logits, y, 0.0)?,
        };
        let grads = loss.backward()?;
        for v in self.vars() {
            let g = grads.get(v).expect("every parameter has a gradient");
            v.set(&(v.as_tensor() - (g * 0.01)?)?)?;
        }
        loss.to_scalar::<f32>()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median seconds per call of each function, run in turn `runs` times after one warm-up each,
/// so that load from other processes falls on all of them alike.
fn interleaved(runs: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    fs.iter_mut().for_each(|f| f());
    let mut times = vec![Vec::new(); fs.len()];
    for _ in 0..runs {
        for (f, t) in fs.iter_mut().zip(times.iter_mut()) {
            let start = Instant::now();
            f();
            t.push(start.elapsed().as_secs_f64());
        }
    }
    times.into_iter().map(median).collect()
}

/// [`interleaved`] for two functions.
fn ab(runs: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    let t = interleaved(runs, &mut [&mut a, &mut b]);
    (t[0], t[1])
}

/// Forward + backward of `f` alone: the backward pass is seeded with ones (candle's
/// `backward` on a non-scalar) and accumulates into a zero gradient, bookkeeping both sides pay.
fn fwd_bwd(v: &Var, f: impl Fn(&Tensor) -> Result<Tensor>) {
    let y = f(v.as_tensor()).unwrap();
    let g = y.backward().unwrap();
    assert!(g.get(v).is_some());
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_else(|_| "?".into())
}

fn row(name: &str, unit_per_call: Option<f64>, (tc, to): (f64, f64)) {
    match unit_per_call {
        Some(imgs) => println!("| {name} | {:.0} img/s | {:.0} img/s | {:.2}x |", imgs / tc, imgs / to, tc / to),
        None => println!("| {name} | {:.2} ms | {:.2} ms | {:.2}x |", tc * 1e3, to * 1e3, tc / to),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(7);
    if let Some(ops) = args.iter().find_map(|a| match a.as_str() {
        "--profile-candle" => Some(Ops::Candle),
        "--profile-ours" => Some(Ops::Ours),
        "--profile-fused" => Some(Ops::OursFused),
        _ => None,
    }) {
        // Only one variant's training step, for `perf record`.
        let x = randn(&[BATCH, 3, 32, 32], 1.0, "images");
        let y = Tensor::from_vec((0..BATCH as u32).map(|i| i % CLASSES as u32).collect::<Vec<_>>(), BATCH, &Device::Cpu).unwrap();
        let net = Net::new();
        for _ in 0..runs {
            let t = Instant::now();
            net.train_step(&x, &y, ops).unwrap();
            println!("step {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        }
        return;
    }
    println!("transferlab kernels benchmark: {} rayon threads, {runs} runs (median), load average before: {}", rayon::current_num_threads(), loadavg());
    println!();
    let x = randn(&[BATCH, 3, 32, 32], 1.0, "images");
    let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % CLASSES as u32).collect();
    let y = Tensor::from_vec(labels, BATCH, &Device::Cpu).unwrap();
    let nets = [Net::new(), Net::new(), Net::new()];
    let variants = [Ops::Candle, Ops::Ours, Ops::OursFused];
    println!("| 3-conv net, batch {BATCH} | candle ops | kernels, op for op | kernels, ReLU fused into pooling | speed-up (op for op / fused) |");
    println!("|---|---|---|---|---|");
    for (name, train) in [("training step", true), ("inference", false)] {
        let mut fs: Vec<Box<dyn FnMut()>> = nets
            .iter()
            .zip(variants)
            .map(|(net, ops)| -> Box<dyn FnMut()> {
                let (x, y) = (&x, &y);
                if train {
                    Box::new(move || {
                        net.train_step(x, y, ops).unwrap();
                    })
                } else {
                    Box::new(move || {
                        net.forward(x, ops, false).unwrap();
                    })
                }
            })
            .collect();
        let mut refs: Vec<&mut dyn FnMut()> = fs.iter_mut().map(|f| f.as_mut() as &mut dyn FnMut()).collect();
        let t = interleaved(runs, &mut refs);
        let ips = |s: f64| BATCH as f64 / s;
        println!("| {name} | {:.0} img/s | {:.0} img/s | {:.0} img/s | {:.2}x / {:.2}x |", ips(t[0]), ips(t[1]), ips(t[2]), t[0] / t[1], t[0] / t[2]);
    }
    println!();
    println!("| single ops, batch {BATCH}, f32 | candle ops | transferlab::kernels | speed-up |");
    println!("|---|---|---|---|");
    let h = randn(&[BATCH, 32, 16, 16], 1.0, "conv.in");
    let hv = Var::from_tensor(&h).unwrap();
    let w = randn(&[64, 32, 3, 3], 0.1, "conv.w");
    let b = randn(&[64], 0.1, "conv.b");
    let (wv, bv) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
    row(
        "conv 32->64 3x3 on 16x16, fwd+bwd",
        None,
        ab(
            runs,
            || fwd_bwd(&hv, |t| t.conv2d(wv.as_tensor(), 1, 1, 1, 1)?.broadcast_add(&bv.as_tensor().reshape((1, (), 1, 1))?)),
            || fwd_bwd(&hv, |t| kernels::conv2d(t, wv.as_tensor(), Some(bv.as_tensor()), 1, 1)),
        ),
    );
    row(
        "conv 32->64 3x3 on 16x16, forward",
        None,
        ab(
            runs,
            || {
                h.conv2d(&w, 1, 1, 1, 1).unwrap().broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap();
            },
            || {
                kernels::conv2d(&h, &w, Some(&b), 1, 1).unwrap();
            },
        ),
    );
    let a = Var::from_tensor(&randn(&[BATCH, 64, 16, 16], 1.0, "relu.in")).unwrap();
    row("ReLU on 128x64x16x16, fwd+bwd", None, ab(runs, || fwd_bwd(&a, |t| t.relu()), || fwd_bwd(&a, kernels::relu)));
    let m = Var::from_tensor(&randn(&[BATCH, 32, 32, 32], 1.0, "pool.in")).unwrap();
    row(
        "max-pool 2x2 on 128x32x32x32, fwd+bwd",
        None,
        ab(runs, || fwd_bwd(&m, |t| t.max_pool2d(2)), || fwd_bwd(&m, |t| kernels::max_pool2d(t, 2, 2, 0))),
    );
    let (g, beta) = (Var::from_tensor(&randn(&[64], 1.0, "bn.w")).unwrap(), Var::from_tensor(&randn(&[64], 1.0, "bn.b")).unwrap());
    let bn_candle = |t: &Tensor| -> Result<Tensor> {
        let mean = t.mean_keepdim((0, 2, 3))?;
        let c = t.broadcast_sub(&mean)?;
        let var = c.sqr()?.mean_keepdim((0, 2, 3))?;
        c.broadcast_div(&(var + 1e-5)?.sqrt()?)?.broadcast_mul(&g.as_tensor().reshape((1, (), 1, 1))?)?.broadcast_add(&beta.as_tensor().reshape((1, (), 1, 1))?)
    };
    row(
        "batch norm (train) on 128x64x16x16, fwd+bwd",
        None,
        ab(runs, || fwd_bwd(&a, bn_candle), || fwd_bwd(&a, |t| Ok(kernels::batch_norm_train(t, g.as_tensor(), beta.as_tensor(), 1e-5)?.output))),
    );
    row(
        "batch norm (train) + ReLU on 128x64x16x16, fwd+bwd (ours fused)",
        None,
        ab(runs, || fwd_bwd(&a, |t| bn_candle(t)?.relu()), || fwd_bwd(&a, |t| Ok(kernels::batch_norm_train_relu(t, g.as_tensor(), beta.as_tensor(), 1e-5)?.output))),
    );
    let z = Var::from_tensor(&randn(&[BATCH, CLASSES], 1.0, "logits")).unwrap();
    row(
        "cross-entropy 128x10, fwd+bwd",
        None,
        ab(runs, || fwd_bwd(&z, |t| candle_nn::loss::cross_entropy(t, &y)), || fwd_bwd(&z, |t| kernels::cross_entropy(t, &y, 0.0))),
    );
    println!();
    println!("load average after: {}", loadavg());
}
