//! The BadNets-family runner: validation, determinism, and that the attack works.

use transferlab::attacks::{poisoning, PoisoningAttackConfig, TargetMode, Trigger};
use transferlab::data::{digits, Dataset};
use transferlab::report::Outcome;
use transferlab::train::{LrSchedule, ProgressMode, TrainConfig};

/// The digits split 80/20 (training, test), shared with the other attack tests.
pub(crate) fn data() -> (Dataset, Dataset) {
    let (test, train) = digits().unwrap().split(0.2, 0, true).unwrap();
    (train, test)
}

/// `cfg` trained for `epochs` (cosine from 0.05), silently.
pub(crate) fn quick(mut cfg: PoisoningAttackConfig, epochs: usize) -> PoisoningAttackConfig {
    cfg.train = TrainConfig {
        epochs,
        schedule: LrSchedule::Cosine { lr: 0.05, min_lr: 0.0, epochs: epochs as f64 },
        progress: ProgressMode::Hidden,
        ..cfg.train
    };
    cfg
}

#[test]
fn bad_configurations_are_refused_before_training() {
    let (train, test) = data();
    let mut big = PoisoningAttackConfig::default();
    big.poison.trigger = Trigger::badnets(9);
    let e = poisoning::run(&train, &test, &big).unwrap_err().to_string();
    assert!(e.contains("9x9 patch is larger than the 8x8 image"), "{e}");
    for rate in [1.5, -0.1, f64::NAN] {
        let mut cfg = PoisoningAttackConfig::default();
        cfg.poison.rate = rate;
        let e = poisoning::run(&train, &test, &cfg).unwrap_err().to_string();
        assert!(e.contains("poison rate") && e.contains("outside [0, 1]"), "{e}");
    }
    let mut cfg = PoisoningAttackConfig::default();
    cfg.poison.target = TargetMode::AllToOne { target: 10 };
    let e = poisoning::run(&train, &test, &cfg).unwrap_err().to_string();
    assert!(e.contains("target class") && e.contains("10 classes"), "{e}");
    // compare() checks every configuration before training the first.
    let e = poisoning::compare(&train, &test, &[PoisoningAttackConfig::default(), cfg]).unwrap_err().to_string();
    assert!(e.contains("target class"), "{e}");
    assert!(poisoning::compare(&train, &test, &[]).is_err());
    let small = test.select(&[0, 1, 2]).unwrap().with_pixels(vec![0.0; 3 * 16], (1, 4, 4)).unwrap();
    let e = poisoning::run(&train, &small, &PoisoningAttackConfig::default()).unwrap_err().to_string();
    assert!(e.contains("test set"), "{e}");
}

#[test]
fn badnets_backdoors_the_victim_and_not_the_clean_reference() {
    let (train, test) = data();
    let r = poisoning::run(&train, &test, &quick(PoisoningAttackConfig::badnets(), 8)).unwrap();
    assert_eq!(r.n_poisoned, (0.1 * train.len() as f64).round() as usize);
    assert!(r.victim.attack_success_rate > 0.9, "{r:?}");
    assert!(r.clean_reference.attack_success_rate < 0.3, "{r:?}");
    assert!(r.victim.clean_accuracy > 0.9 && r.clean_reference.clean_accuracy > 0.9, "{r:?}");
    assert!((r.victim.clean_accuracy - r.clean_reference.clean_accuracy).abs() < 0.03, "{r:?}");
    let df = r.to_dataframe().unwrap();
    assert_eq!(df.height(), 2);
    assert!(r.figure().unwrap().to_png().unwrap().len() > 1000);
}

#[test]
fn same_seed_same_numbers_and_one_shared_reference() {
    let (train, test) = data();
    let train = train.per_class_sample(40, 0).unwrap();
    let cfgs = [quick(PoisoningAttackConfig::all_to_all(), 2), quick(PoisoningAttackConfig::random_location(), 2)];
    let a = poisoning::compare(&train, &test, &cfgs).unwrap();
    let b = poisoning::compare(&train, &test, &cfgs).unwrap();
    for (x, y) in a.runs.iter().zip(&b.runs) {
        assert_eq!(x.victim, y.victim);
        assert_eq!(x.clean_reference, y.clean_reference);
    }
    // Both configurations share architecture, training and seed: one clean model, same CA.
    assert_eq!(a.runs[0].clean_reference.clean_accuracy, a.runs[1].clean_reference.clean_accuracy);
    let df = a.to_dataframe().unwrap();
    let names: Vec<&str> = df.get_column_names().iter().map(|s| s.as_str()).collect();
    assert_eq!(names, ["run", "ca", "asr", "ra", "n_clean", "n_triggered", "clean_ca", "clean_asr", "n_poisoned"]);
    assert_eq!(df.height(), 2);
    // All-to-all is measured against (y + 1) mod K on every test image.
    assert_eq!(a.runs[0].victim.n_triggered, test.len());
}
