//! Seeded randomness.
//!
//! Every random choice in transferlab (initialisation, shuffling, augmentation, poisoning,
//! synthetic data) draws from a [`SeededRng`] derived from a user seed and a named stream, so
//! the same seed gives the same numbers bit for bit, and adding a new random consumer in one
//! place does not shift the numbers drawn anywhere else.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The generator used everywhere: ChaCha8, portable and reproducible across platforms.
pub type SeededRng = ChaCha8Rng;

/// A generator for `stream` under `seed`. Different streams are independent.
///
/// ```
/// use transferlab::rng::stream;
/// use rand::Rng;
/// let a: u32 = stream(7, "shuffle").random();
/// let b: u32 = stream(7, "shuffle").random();
/// assert_eq!(a, b);
/// ```
pub fn stream(seed: u64, name: &str) -> SeededRng {
    ChaCha8Rng::seed_from_u64(mix(seed, fnv1a(name.as_bytes())))
}

/// A generator for `stream` under `seed`, further split by an index (epoch, model number...).
pub fn stream_at(seed: u64, name: &str, index: u64) -> SeededRng {
    ChaCha8Rng::seed_from_u64(mix(mix(seed, fnv1a(name.as_bytes())), index))
}

/// A seeded permutation of `0..n` (Fisher-Yates).
pub fn permutation(rng: &mut SeededRng, n: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        p.swap(i, j);
    }
    p
}

/// A standard normal sample (Box-Muller), so that results do not depend on rand_distr.
pub fn normal(rng: &mut SeededRng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// 64-bit FNV-1a hash of `bytes`: stable across runs and machines (std's hasher is not).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// SplitMix64 finaliser over the pair: decorrelates nearby seeds.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a.wrapping_add(b.wrapping_mul(0x9e3779b97f4a7c15)).wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u32> = (0..4).map(|_| 0).scan(stream(1, "x"), |r, _| Some(r.random())).collect();
        let b: Vec<u32> = (0..4).map(|_| 0).scan(stream(1, "x"), |r, _| Some(r.random())).collect();
        let c: Vec<u32> = (0..4).map(|_| 0).scan(stream(1, "y"), |r, _| Some(r.random())).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(stream_at(1, "x", 0).random::<u64>(), stream_at(1, "x", 1).random::<u64>());
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = permutation(&mut stream(3, "p"), 100);
        assert_ne!(p, (0..100).collect::<Vec<_>>());
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
    }
}
