//! Watermarking by backdooring (Adi et al. 2018): trigger set, threshold, verification, removal.

use transferlab::attacks::watermark::{self, trigger_set, verification_threshold};
use transferlab::attacks::{Removal, WatermarkConfig};
use transferlab::data::{digits, Dataset};
use transferlab::report::Outcome;
use transferlab::train::{ProgressMode, TrainConfig};

fn data() -> (Dataset, Dataset) {
    let (test, train) = digits().unwrap().split(0.2, 0, true).unwrap();
    (train, test)
}

#[test]
fn threshold_is_the_binomial_tail_bound() {
    // Binomial(100, 0.1): P[X >= 27] ~ 1.4e-6 > 1e-6, P[X >= 28] ~ 4.5e-7.
    assert_eq!(verification_threshold(100, 10, 1e-6).unwrap(), 28);
    // P[X >= 1] = 1 - 0.9^100 ~ 0.99997, so a loose alpha still needs more than chance.
    assert!(verification_threshold(100, 10, 0.5).unwrap() >= 10);
    assert!(verification_threshold(100, 10, 1e-9).unwrap() > verification_threshold(100, 10, 1e-3).unwrap());
    // Two classes: chance is 1/2.
    assert!(verification_threshold(100, 2, 1e-6).unwrap() > 70);
    assert!(verification_threshold(100, 10, 0.0).is_err());
    assert!(verification_threshold(100, 1, 0.1).is_err());
}

#[test]
fn trigger_sets_are_seeded_abstract_and_randomly_labelled() {
    let a = trigger_set((3, 8, 8), 10, 100, 0).unwrap();
    let b = trigger_set((3, 8, 8), 10, 100, 0).unwrap();
    let c = trigger_set((3, 8, 8), 10, 100, 1).unwrap();
    assert_eq!(a.pixels(), b.pixels());
    assert_eq!(a.labels, b.labels);
    assert_ne!(a.pixels(), c.pixels());
    assert!(a.pixels().iter().all(|v| (0.0..=1.0).contains(v)));
    // Random labels: every class used, none dominating.
    let counts = a.class_counts();
    assert!(counts.iter().all(|&n| n > 0 && n < 25), "{counts:?}");
    assert_ne!(a.image(0), a.image(1));
}

#[test]
fn bad_configurations_are_refused() {
    let (train, test) = data();
    let cases = [
        (WatermarkConfig { trigger_set_size: 0, ..Default::default() }, "trigger set size"),
        (WatermarkConfig { trigger_per_batch: 101, ..Default::default() }, "per batch"),
        (WatermarkConfig { false_claim_probability: 1.5, ..Default::default() }, "false-claim"),
        (WatermarkConfig { adversary_fraction: 0.0, ..Default::default() }, "adversary fraction"),
    ];
    for (cfg, what) in cases {
        let e = watermark::run(&train, &test, &cfg).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
    }
}

#[test]
fn watermark_verifies_the_marked_model_only() {
    let (train, test) = data();
    let mut cfg = WatermarkConfig { removals: vec![Removal::Ftll, Removal::Rtal], ..Default::default() };
    cfg.train.progress = ProgressMode::Hidden;
    cfg.finetune = TrainConfig { epochs: 5, progress: ProgressMode::Hidden, ..cfg.finetune };
    let r = watermark::run(&train, &test, &cfg).unwrap();
    let clean = r.row("clean model").unwrap();
    let marked = r.row("watermarked").unwrap();
    assert!(marked.trigger_accuracy >= 0.95 && marked.verified, "{:?}", r.rows);
    assert!(clean.trigger_accuracy < 0.25 && !clean.verified, "{:?}", r.rows);
    assert!(marked.clean_accuracy > 0.9, "{:?}", r.rows);
    // Fine-tuning the last layer alone cannot move the features the watermark lives in much.
    assert!(r.row("FTLL").unwrap().trigger_accuracy > 0.5, "{:?}", r.rows);
    let df = r.to_dataframe().unwrap();
    assert_eq!(df.height(), 4);
    assert_eq!(df.column("verified").unwrap().bool().unwrap().get(1), Some(true));
    assert!(r.figure().unwrap().to_png().unwrap().len() > 1000);
}

#[test]
fn same_seed_same_numbers() {
    let (train, test) = data();
    let train = train.per_class_sample(40, 0).unwrap();
    let mut cfg = WatermarkConfig { trigger_set_size: 20, trigger_per_batch: 4, removals: vec![Removal::Rtll], ..Default::default() };
    cfg.train = TrainConfig { epochs: 2, progress: ProgressMode::Hidden, ..cfg.train };
    cfg.finetune = TrainConfig { epochs: 1, progress: ProgressMode::Hidden, ..cfg.finetune };
    let a = watermark::run(&train, &test, &cfg).unwrap();
    let b = watermark::run(&train, &test, &cfg).unwrap();
    assert_eq!(a.rows, b.rows);
}
