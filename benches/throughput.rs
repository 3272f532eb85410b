//! The transferlab side of `just bench`: one model, one mode, one measurement per process
//! (so peak memory is the model's own), printed as JSON for benches/compare.py.
//!
//! Usage: cargo bench --bench throughput -- MODEL MODE BATCH STEPS
//! MODEL: cnn3 | resnet20 | badnets-cnn; MODE: train | infer.

use candle_core::{Device, Tensor};
use std::time::Instant;
use transferlab::models::{ModelSpec, Network};
use transferlab::rng::stream;
use transferlab::train::{cross_entropy, Optimizer, OptimizerConfig};

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
            net.forward(&x, false)?.to_vec2::<f32>()?;
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
