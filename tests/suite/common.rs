//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use transferlab::data::Dataset;
use transferlab::rng::{normal, stream, stream_at};

/// A small learnable dataset: each class brightens a different horizontal band, plus noise.
pub fn bands(n_per_class: usize, classes: usize, side: usize, seed: u64) -> Dataset {
    let mut rng = stream(seed, "test.bands");
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n_per_class * classes {
        let y = i % classes;
        for r in 0..side {
            for _ in 0..side {
                let band = r * classes / side == y;
                let base = if band { 0.8 } else { 0.2 };
                pixels.push((base + 0.1 * normal(&mut rng)).clamp(0.0, 1.0));
            }
        }
        labels.push(y as u32);
    }
    Dataset::new(pixels, (1, side, side), labels, Dataset::numbered_classes(classes)).unwrap()
}

/// A standard-normal tensor from the named stream `stream` (each test file keeps its own
/// stream, so its inputs do not change when another file's do).
pub fn randn_in(stream: &str, shape: &[usize], seed: u64) -> Tensor {
    let mut rng = stream_at(seed, stream, shape.iter().product::<usize>() as u64);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| normal(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

/// Element-wise relative tolerance 1e-4, each element's magnitude floored at the tensor's RMS
/// so that values that are near zero by cancellation are judged on the tensor's own scale.
pub fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (values(got), values(want));
    let rms = (w.iter().map(|v| (v * v) as f64).sum::<f64>() / w.len().max(1) as f64).sqrt() as f32;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let tol = 1e-4 * b.abs().max(rms).max(1e-30);
        assert!((a - b).abs() <= tol, "{what}: element {i}: got {a}, want {b} (tol {tol})");
    }
}

fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// n values in [-0.5, 0.5): the crosscheck script's `uniform`.
/// `n` values in [-0.5, 0.5) from a splitmix64-style hash of (`name`, index): what
/// tests/crosscheck/formula.py's `uniform` computes, so fixtures written in Python can be
/// checked against inputs rebuilt here.
pub fn uniform(name: &str, n: usize) -> Vec<f64> {
    let seed = fnv1a64(name);
    (0..n as u64)
        .map(|i| {
            let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(seed);
            x ^= x >> 33;
            x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
            x ^= x >> 33;
            x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            x ^= x >> 33;
            (x >> 40) as f64 / (1u64 << 24) as f64 - 0.5
        })
        .collect()
}
