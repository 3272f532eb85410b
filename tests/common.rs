//! Helpers shared by the integration tests.
#![allow(dead_code)]

use transferlab::data::Dataset;
use transferlab::rng::{normal, stream};

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
