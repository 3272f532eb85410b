//! The transferlab side of `just bench`: one model, one mode, one measurement per process
//! (so peak memory is the model's own), printed as JSON for benches/compare.py.
//!
//! Usage: cargo bench --bench throughput -- MODEL MODE BATCH STEPS
//! MODEL: cnn3 | resnet20 | resnet56 | preact-resnet18 | badnets-cnn.
//! MODE: train | infer (one batch, STEPS times; infer records no graph), or the real-scale
//! measurements, where STEPS is a number of images:
//! - `evaluate`: `train::accuracy` over STEPS images in evaluation batches (no graph);
//! - `evaluate-graph`: the same with the graph-recording forward pass, outputs kept, as
//!   evaluation worked before it had a no-grad path (the "before" of that change);
//! - `epoch`: one `train()` epoch over STEPS images (shuffling, batch assembly, crop + flip,
//!   an evaluation of STEPS / 5 images at its end), reported with the bare step's rate
//!   measured in the same process for the ratio.

use candle_core::{Device, Tensor};
use std::time::Instant;
use transferlab::data::{Augment, Dataset};
use transferlab::models::{ModelSpec, Network};
use transferlab::rng::stream;
use transferlab::train::evaluate::EVAL_BATCH;
use transferlab::train::{accuracy, cross_entropy, train, Optimizer, OptimizerConfig, ProgressMode, TrainConfig};

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> transferlab::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.is_empty() {
        // `cargo test --all-targets` runs benches without arguments: a quick smoke run.
        args = ["cnn3", "train", "2", "1"].map(String::from).to_vec();
    }
    if args.len() != 4 {
        eprintln!("usage: throughput MODEL MODE BATCH STEPS");
        std::process::exit(2);
    }
    let (name, mode) = (args[0].as_str(), args[1].as_str());
    let batch: usize = args[2].parse().expect("batch is a number");
    let steps: usize = args[3].parse().expect("steps is a number");
    let input = if name == "badnets-cnn" { (1, 28, 28) } else { (3, 32, 32) };
    let spec = ModelSpec::named(name, input, 10)?;
    if matches!(mode, "evaluate" | "evaluate-graph" | "epoch") {
        return real_scale(&spec, mode, batch, steps);
    }
    let net = Network::new(&spec, 0, &Device::Cpu)?;
    let n = batch * input.0 * input.1 * input.2;
    let mut rng = stream(0, "bench.input");
    let pixels: Vec<f32> = (0..n).map(|_| rand::Rng::random::<f32>(&mut rng)).collect();
    let x = Tensor::from_vec(pixels, (batch, input.0, input.1, input.2), &Device::Cpu)?;
    let y = Tensor::from_vec((0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(), batch, &Device::Cpu)?;
    let vars = net.trainable_vars();
    let mut opt = Optimizer::new(OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay: 5e-4 })?;
    let mut step = || -> transferlab::Result<()> {
        if mode == "train" {
            let loss = cross_entropy(&net.forward(&x, true)?, &y, 0.0)?;
            let grads = loss.backward()?;
            opt.step(&vars, &grads, 0.01)?;
        } else {
            net.inference()?.forward(&x)?.to_vec2::<f32>()?;
        }
        Ok(())
    };
    for _ in 0..2 {
        step()?;
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("{{\"images_per_s\": {}, \"peak_rss_mb\": {}}}", (batch * steps) as f64 / secs, peak_rss_mb());
    Ok(())
}

fn random_dataset(n: usize, input: (usize, usize, usize), seed: u64) -> transferlab::Result<Dataset> {
    let mut rng = stream(seed, "bench.dataset");
    let pixels: Vec<f32> = (0..n * input.0 * input.1 * input.2).map(|_| rand::Rng::random::<f32>(&mut rng)).collect();
    Dataset::new(pixels, input, (0..n as u32).map(|i| i % 10).collect(), Dataset::numbered_classes(10))
}

/// The real-scale measurements (see the module docs): images/s and peak memory of whole-dataset
/// evaluation, or of a training epoch against the bare step.
fn real_scale(spec: &ModelSpec, mode: &str, batch: usize, images: usize) -> transferlab::Result<()> {
    let data = random_dataset(images, spec.input, 1)?;
    let mut net = Network::new(spec, 0, &Device::Cpu)?;
    match mode {
        "evaluate" => {
            let t0 = Instant::now();
            accuracy(&net, &data)?;
            let secs = t0.elapsed().as_secs_f64();
            println!("{{\"images_per_s\": {}, \"peak_rss_mb\": {}}}", images as f64 / secs, peak_rss_mb());
        }
        "evaluate-graph" => {
            let t0 = Instant::now();
            let idx: Vec<usize> = (0..data.len()).collect();
            let mut kept = Vec::new();
            for chunk in idx.chunks(EVAL_BATCH) {
                kept.push(net.forward(&data.batch(chunk, &Device::Cpu)?.0, false)?);
            }
            Tensor::cat(&kept, 0)?.argmax(1)?.to_vec1::<u32>()?;
            let secs = t0.elapsed().as_secs_f64();
            println!("{{\"images_per_s\": {}, \"peak_rss_mb\": {}}}", images as f64 / secs, peak_rss_mb());
        }
        _ => {
            // The bare step on one fixed batch, then a whole epoch of the trainer.
            let x = data.batch(&(0..batch).collect::<Vec<_>>(), &Device::Cpu)?;
            let vars = net.trainable_vars();
            let mut opt = Optimizer::new(OptimizerConfig::sgd_momentum())?;
            let steps = (images / batch).clamp(3, 20);
            let mut step = || -> transferlab::Result<()> {
                let loss = cross_entropy(&net.forward(&x.0, true)?, &x.1, 0.0)?;
                opt.step(&vars, &loss.backward()?, 0.01)
            };
            step()?;
            let t0 = Instant::now();
            for _ in 0..steps {
                step()?;
            }
            let step_rate = (steps * batch) as f64 / t0.elapsed().as_secs_f64();
            let eval = random_dataset(images / 5, spec.input, 2)?;
            let cfg = TrainConfig { epochs: 1, batch_size: batch, augment: Augment::cifar(), progress: ProgressMode::Hidden, ..TrainConfig::default() };
            let t0 = Instant::now();
            train(&mut net, &data, Some(&eval), &cfg)?;
            let epoch_rate = images as f64 / t0.elapsed().as_secs_f64();
            println!(
                "{{\"images_per_s\": {epoch_rate}, \"step_images_per_s\": {step_rate}, \"epoch_over_step\": {}, \"peak_rss_mb\": {}}}",
                epoch_rate / step_rate,
                peak_rss_mb()
            );
        }
    }
    Ok(())
}
