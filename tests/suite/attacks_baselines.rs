//! The standard poison-only baselines (SIG, FTrojan): what the poisoned set promises, the
//! trigger's exact form, bad configurations, and that each attack backdoors a victim.

use crate::attacks_poisoning::{data, quick};
use transferlab::attacks::{poison, poisoning, FrequencyTrigger, PoisonConfig, PoisoningAttackConfig, Trigger};

/// SIG on the digits: the target class (0) holds just under 10 % of the training images, so
/// 10 % asks for more than exist; 9 % is nearly all of them.
fn sig_on_digits() -> PoisoningAttackConfig {
    let mut cfg = PoisoningAttackConfig::sig();
    cfg.poison.rate = 0.09;
    cfg
}

#[test]
fn sig_poisons_only_the_target_class_keeps_labels_and_adds_the_sinusoid() {
    let (train, _) = data();
    let cfg = sig_on_digits();
    let p = poison(&train, &cfg.poison).unwrap();
    let flags = p.poisoned_flags();
    assert_eq!(flags.iter().filter(|&&f| f).count(), (0.09 * train.len() as f64).round() as usize);
    assert_eq!(p.labels, train.labels, "clean-label: no label changes");
    let Trigger::Sinusoid { delta, frequency } = cfg.poison.trigger else { panic!("SIG's trigger") };
    let (_, h, w) = train.shape;
    for i in 0..train.len() {
        let (a, b) = (train.image(i), p.image(i));
        if !flags[i] {
            assert_eq!(a, b, "unpoisoned image {i} changed");
            continue;
        }
        assert_eq!(train.labels[i], 0, "a poisoned image outside the target class");
        for r in 0..h {
            for j in 0..w {
                let want = delta * (2.0 * std::f32::consts::PI * j as f32 * frequency / w as f32).sin();
                let (x, y) = (a[r * w + j], b[r * w + j]);
                assert!((y - (x + want).clamp(0.0, 1.0)).abs() < 1e-6, "image {i} ({r}, {j}): {x} -> {y}, want +{want}");
                assert!((y - x).abs() <= delta + 1e-6);
            }
        }
    }
    // Asking for more target-class images than exist says so.
    let e = poison(&train, &PoisoningAttackConfig::sig().poison).unwrap_err().to_string();
    assert!(e.contains("eligible") && e.contains("clean-label"), "{e}");
}

/// RGB -> YCrCb as OpenCV computes it (without the 128 offsets, which cancel in a difference).
fn ycrcb(r: f64, g: f64, b: f64) -> (f64, f64, f64) {
    let y = 0.299 * r + 0.587 * g + 0.114 * b;
    (y, 0.713 * (r - y), 0.564 * (b - y))
}

fn dct_coefficient(block: &[f64], n: usize, p: usize, q: usize) -> f64 {
    let a = |k: usize| if k == 0 { (1.0 / n as f64).sqrt() } else { (2.0 / n as f64).sqrt() };
    let c = |k: usize, i: usize| a(k) * (std::f64::consts::PI * (2 * i + 1) as f64 * k as f64 / (2 * n) as f64).cos();
    let mut s = 0.0;
    for i in 0..n {
        for j in 0..n {
            s += c(p, i) * c(q, j) * block[i * n + j];
        }
    }
    s
}

#[test]
fn ftrojan_raises_exactly_its_dct_coefficients_in_the_chrominance() {
    let shape = (3, 32, 32);
    let trigger = Trigger::ftrojan();
    let mut image = vec![0.5f32; 3 * 32 * 32];
    trigger.apply(&mut image, shape, None).unwrap();
    let plane = 32 * 32;
    let (mut y, mut cr, mut cb) = (vec![0.0; plane], vec![0.0; plane], vec![0.0; plane]);
    for k in 0..plane {
        let d = |c: usize| 255.0 * (image[c * plane + k] as f64 - 0.5);
        (y[k], cr[k], cb[k]) = ycrcb(d(0), d(1), d(2));
    }
    // Magnitude 30 at (15, 15) and (31, 31) of Cr and Cb, nothing else anywhere (to within
    // the 3-digit colour matrices and f32 pixels).
    for (name, channel, raised) in [("Y", &y, false), ("Cr", &cr, true), ("Cb", &cb, true)] {
        for p in 0..32 {
            for q in 0..32 {
                let want = if raised && ((p, q) == (15, 15) || (p, q) == (31, 31)) { 30.0 } else { 0.0 };
                let got = dct_coefficient(channel, 32, p, q);
                assert!((got - want).abs() < 0.1, "{name} ({p}, {q}): {got}, want {want}");
            }
        }
    }
    let peak = image.iter().map(|v| (v - 0.5).abs()).fold(0.0f32, f32::max);
    assert!(peak > 0.01 && peak < 0.12, "L-inf of the pattern: {peak}");
}

#[test]
fn bad_configurations_say_what_to_change() {
    let (train, test) = data();
    let e = poisoning::run(&train, &test, &PoisoningAttackConfig::ftrojan()).unwrap_err().to_string();
    assert!(e.contains("32x32 DCT window does not tile a 8x8 image") && e.contains("scaled_to(8"), "{e}");
    let e = poisoning::run(&train, &test, &PoisoningAttackConfig::ftrojan_scaled(8, true)).unwrap_err().to_string();
    assert!(e.contains("YCrCb needs RGB images") && e.contains("yuv to false"), "{e}");
    let mut t = FrequencyTrigger::scaled_to(8, false);
    t.positions.push((8, 0));
    assert!(t.validate(train.shape).unwrap_err().to_string().contains("outside the 8x8 window"));
    t = FrequencyTrigger { channels: vec![2], ..FrequencyTrigger::scaled_to(8, false) };
    assert!(t.validate(train.shape).unwrap_err().to_string().contains("channel 2 does not exist"));
    for delta in [0.0, -0.1, 1.5, f32::NAN] {
        let e = Trigger::Sinusoid { delta, frequency: 6.0 }.validate(train.shape).unwrap_err().to_string();
        assert!(e.contains("delta") && e.contains("40/255"), "{e}");
    }
    let e = Trigger::Sinusoid { delta: 0.1, frequency: 0.0 }.validate(train.shape).unwrap_err().to_string();
    assert!(e.contains("frequency"), "{e}");
}

/// SIG's claim (Barni et al. 2019): target-class images carrying the sinusoid, with their true
/// labels, teach the victim to send any image with the sinusoid to the target class. On the
/// CIFAR-10 test setting (500 training images, the default victim, 6 epochs) the victim's ASR is
/// far above the same-seed clean model's. On the 8x8 digits the attack does not take (ASR 0.6 %
/// after 10 epochs, 2 % after 30): class 0 is learnt from its shape before the sinusoid
/// matters, the weakness of clean-label attacks on easy classes that Turner et al. describe.
/// Needs CIFAR-10 by its hub id (`just test` serves it offline); without it the test says so.
#[test]
fn sig_backdoors_a_cifar_victim_and_not_the_clean_model() {
    use transferlab::hub::{load_dataset, DatasetRequest, Hub};
    if std::env::var("TLAB_CIFAR_HUB").is_err() {
        eprintln!("skipped: CIFAR-10 is not served (run through tests/with_cifar_hub.sh, as `just test` does)");
        return;
    }
    let hub = Hub::from_env();
    let train = load_dataset(&hub, &DatasetRequest::new("uoft-cs/cifar10", "train")).unwrap().per_class_sample(50, 0).unwrap();
    let test = load_dataset(&hub, &DatasetRequest::new("uoft-cs/cifar10", "test")).unwrap().per_class_sample(50, 0).unwrap();
    let r = poisoning::run(&train, &test, &quick(PoisoningAttackConfig::sig(), 6)).unwrap();
    assert_eq!(r.n_poisoned, 50, "10 % of 500 images: every target-class image");
    assert!(r.victim.attack_success_rate > r.clean_reference.attack_success_rate + 0.5, "{r:?}");
}

/// The same seed gives the same poisoned set and the same numbers.
#[test]
fn same_seed_same_numbers() {
    let (train, test) = data();
    let small = train.per_class_sample(30, 0).unwrap();
    let cfgs = [
        quick(PoisoningAttackConfig { poison: PoisonConfig { rate: 0.08, ..sig_on_digits().poison }, ..sig_on_digits() }, 2),
        quick(PoisoningAttackConfig::ftrojan_scaled(8, false), 2),
    ];
    let (x, y) = (poisoning::compare(&small, &test, &cfgs).unwrap(), poisoning::compare(&small, &test, &cfgs).unwrap());
    for (a, b) in x.runs.iter().zip(&y.runs) {
        assert_eq!(a.victim, b.victim);
        assert_eq!(a.clean_reference, b.clean_reference);
    }
}
