//! Triggers, poisoning and the CA/ASR/RA metrics.

use crate::common;

use candle_core::Device;
use transferlab::attacks::*;
use transferlab::data::Dataset;
use transferlab::models::{ModelSpec, Network};
use transferlab::train::{train, LrSchedule, ProgressMode, TrainConfig};

fn blank(n: usize, classes: usize) -> Dataset {
    Dataset::new(vec![0.0; n * 3 * 6 * 6], (3, 6, 6), (0..n).map(|i| (i % classes) as u32).collect(), Dataset::numbered_classes(classes)).unwrap()
}

#[test]
fn patches_land_where_asked() {
    let shape = (3, 6, 6);
    let mut img = vec![0.0f32; 3 * 36];
    Trigger::checkerboard(2).at(Placement::TopLeft).apply(&mut img, shape, None).unwrap();
    for ch in 0..3 {
        let p = |r: usize, c: usize| img[ch * 36 + r * 6 + c];
        assert_eq!((p(0, 0), p(0, 1), p(1, 0), p(1, 1)), (1.0, 0.0, 0.0, 1.0));
        assert_eq!(p(2, 2), 0.0);
    }
    let mut img = vec![0.5f32; 3 * 36];
    Trigger::badnets(3).apply(&mut img, shape, None).unwrap();
    assert_eq!(img.iter().filter(|&&v| v == 1.0).count(), 27);
    assert_eq!(img[3 * 6 + 3], 1.0);
    assert_eq!(img[2 * 6 + 3], 0.5);
}

#[test]
fn random_placement_is_seeded() {
    let ds = blank(20, 2);
    let t = Trigger::badnets(2).at(Placement::Random);
    let all: Vec<usize> = (0..20).collect();
    let a = t.apply_to(&ds, &all, 1).unwrap();
    let b = t.apply_to(&ds, &all, 1).unwrap();
    let c = t.apply_to(&ds, &all, 2).unwrap();
    assert_eq!(a.pixels(), b.pixels());
    assert_ne!(a.pixels(), c.pixels());
    // Different images get different locations.
    assert_ne!(a.image(0), a.image(1));
}

#[test]
fn blend_mixes_with_alpha() {
    let pattern = vec![1.0f32; 36];
    let t = Trigger::Blend { pattern: BlendPattern::Image { channels: 1, pixels: pattern }, alpha: 0.2 };
    let mut img = vec![0.5f32; 3 * 36];
    t.apply(&mut img, (3, 6, 6), None).unwrap();
    assert!(img.iter().all(|&v| (v - 0.6).abs() < 1e-6));
    let noise = Trigger::blend_noise(3, 0.1);
    assert_eq!(noise.preview((3, 6, 6)).unwrap(), noise.preview((3, 6, 6)).unwrap());
}

#[test]
fn bad_triggers_and_targets_are_refused() {
    let shape = (3, 6, 6);
    let e = Trigger::badnets(7).validate(shape).unwrap_err().to_string();
    assert!(e.contains("larger than the 6x6 image"), "{e}");
    let e = Trigger::badnets(3).at(Placement::At(4, 0)).validate(shape).unwrap_err().to_string();
    assert!(e.contains("extends past"), "{e}");
    let e = Trigger::blend_noise(0, 1.5).validate(shape).unwrap_err().to_string();
    assert!(e.contains("alpha"), "{e}");
    let ds = blank(20, 4);
    let e = poison(&ds, &PoisonConfig::badnets(2, 0.1, 4)).unwrap_err().to_string();
    assert!(e.contains("target class") && e.contains("4 classes"), "{e}");
    assert!(poison(&ds, &PoisonConfig::badnets(2, -0.1, 0)).is_err());
    assert!(poison(&ds, &PoisonConfig::badnets(2, f64::NAN, 0)).is_err());
    let mut clean_label = PoisonConfig::badnets(2, 0.5, 0);
    clean_label.clean_label = true;
    let e = poison(&ds, &clean_label).unwrap_err().to_string();
    assert!(e.contains("only 5 are eligible"), "{e}");
}

#[test]
fn all_to_one_poisoning() {
    let ds = blank(100, 4);
    let p = poison(&ds, &PoisonConfig::badnets(2, 0.1, 0)).unwrap();
    let flags = p.poisoned_flags();
    assert_eq!(flags.iter().filter(|&&f| f).count(), 10);
    for i in 0..100 {
        if flags[i] {
            assert_ne!(ds.labels[i], 0, "a target-class sample was chosen");
            assert_eq!(p.labels[i], 0);
            assert_eq!(p.image(i)[5 * 6 + 5], 1.0);
        } else {
            assert_eq!(p.labels[i], ds.labels[i]);
            assert_eq!(p.image(i), ds.image(i));
        }
    }
    assert_eq!(p.pixels(), poison(&ds, &PoisonConfig::badnets(2, 0.1, 0)).unwrap().pixels());
}

#[test]
fn all_to_all_and_clean_label_poisoning() {
    let ds = blank(100, 4);
    let cfg = PoisonConfig { target: TargetMode::AllToAll, ..PoisonConfig::badnets(2, 0.2, 0) };
    let p = poison(&ds, &cfg).unwrap();
    let flags = p.poisoned_flags();
    assert_eq!(flags.iter().filter(|&&f| f).count(), 20);
    for i in (0..100).filter(|&i| flags[i]) {
        assert_eq!(p.labels[i], (ds.labels[i] + 1) % 4);
    }
    let cfg = PoisonConfig { clean_label: true, ..PoisonConfig::badnets(2, 0.1, 3) };
    let p = poison(&ds, &cfg).unwrap();
    let flags = p.poisoned_flags();
    assert_eq!(flags.iter().filter(|&&f| f).count(), 10);
    for i in (0..100).filter(|&i| flags[i]) {
        assert_eq!(ds.labels[i], 3);
        assert_eq!(p.labels[i], 3);
    }
}

#[test]
fn a_poisoned_model_has_high_asr_and_a_clean_one_does_not() {
    let train_set = common::bands(60, 4, 12, 1);
    let test_set = common::bands(25, 4, 12, 2);
    // A checkerboard, so the trigger differs from the bright band that marks class 3 at the
    // bottom of the image (a white square there would look like class 3 itself).
    let attack = PoisonConfig { trigger: Trigger::checkerboard(3), ..PoisonConfig::badnets(3, 0.1, 0) };
    let poisoned = poison(&train_set, &attack).unwrap();
    let spec = ModelSpec::named("convnet", train_set.shape, 4).unwrap();
    let cfg = TrainConfig { epochs: 10, batch_size: 32, schedule: LrSchedule::Constant { lr: 0.05 }, progress: ProgressMode::Hidden, ..TrainConfig::default() };
    let mut rows = Vec::new();
    for (name, set) in [("clean", &train_set), ("badnets", &poisoned)] {
        let mut net = Network::new(&spec, 0, &Device::Cpu).unwrap();
        train(&mut net, set, None, &cfg).unwrap();
        rows.push((name.to_string(), evaluate_backdoor(&net, &test_set, &attack.trigger, &attack.target, 0).unwrap()));
    }
    let (clean, bad) = (rows[0].1, rows[1].1);
    assert!(clean.clean_accuracy > 0.9 && bad.clean_accuracy > 0.9, "{rows:?}");
    assert!(bad.attack_success_rate > 0.9, "{rows:?}");
    assert!(clean.attack_success_rate < 0.5, "{rows:?}");
    assert_eq!(bad.n_triggered, 75);
    assert!((bad.attack_success_rate + bad.robust_accuracy) <= 1.0 + 1e-9);
    let df = metrics_table(&rows).unwrap();
    assert_eq!(df.height(), 2);
}
