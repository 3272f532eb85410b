//! Spurious patterns: masking flips, SPIRE augmentation reduces them.

use transferlab::analysis::spurious_patterns::{mask_regions, run, synthetic_object_regions, Region, SpuriousPatternsConfig};
use transferlab::data::{generate, to_grayscale, Spurious, SpuriousKind, SyntheticConfig};
use transferlab::report::Outcome;
use transferlab::train::{LrSchedule, OptimizerConfig, ProgressMode, TrainConfig};

fn configs(spc: usize) -> (SyntheticConfig, SyntheticConfig) {
    let train = SyntheticConfig {
        num_classes: 4,
        samples_per_class: spc,
        size: 16,
        seed: 1,
        noise: 0.1,
        spurious: Some(Spurious { class: 0, rate: 0.95, other_rate: 0.05, kind: SpuriousKind::Object }),
        ..Default::default()
    };
    let test = SyntheticConfig {
        samples_per_class: 60,
        seed: 2,
        spurious: Some(Spurious { class: 0, rate: 0.5, other_rate: 0.5, kind: SpuriousKind::Object }),
        ..train.clone()
    };
    (train, test)
}

fn config() -> SpuriousPatternsConfig {
    SpuriousPatternsConfig {
        train: TrainConfig {
            epochs: 20,
            batch_size: 32,
            optimizer: OptimizerConfig::sgd_momentum(),
            schedule: LrSchedule::Cosine { lr: 0.05, min_lr: 0.0, epochs: 20.0 },
            progress: ProgressMode::Hidden,
            ..TrainConfig::default()
        },
        ..SpuriousPatternsConfig::default()
    }
}

#[test]
fn masking_fills_exactly_the_object_box() {
    let (cfg, _) = configs(4);
    let ds = generate(&cfg).unwrap();
    let regions = synthetic_object_regions(&ds, &cfg);
    assert!(regions[0].is_some());
    let with: Vec<usize> = (0..ds.len()).filter(|&i| regions[i].is_some()).collect();
    let masked = mask_regions(&ds, &regions, &with, 0.5).unwrap();
    let r = regions[with[0]].unwrap();
    let img = masked.image(0);
    for (k, &v) in img.iter().enumerate() {
        let (x, y) = (k % 16, (k / 16) % 16);
        let inside = x >= r.x && x < r.x + r.width && y >= r.y && y < r.y + r.height;
        if inside {
            assert_eq!(v, 0.5);
        } else {
            assert_eq!(v, ds.image(with[0])[k]);
        }
    }
    let bad = vec![Some(Region { x: 15, y: 0, width: 4, height: 4 }); ds.len()];
    assert!(mask_regions(&ds, &bad, &[0], 0.5).unwrap_err().to_string().contains("outside"));
}

#[test]
fn augmentation_lowers_the_flip_score_and_the_gap() {
    let (tc, sc) = configs(60);
    let (train, test) = (to_grayscale(&generate(&tc).unwrap()).unwrap(), to_grayscale(&generate(&sc).unwrap()).unwrap());
    let (tr, sr) = (synthetic_object_regions(&train, &tc), synthetic_object_regions(&test, &sc));
    let r = run(&train, &tr, &test, &sr, &config()).unwrap();
    assert!((r.rate_after - 0.5).abs() < 0.02, "P(S|M) after {}", r.rate_after);
    assert!(r.before.flip_main > 0.3, "before {:?}", r.before);
    assert!(r.after.flip_main < r.before.flip_main, "before {:?} after {:?}", r.before, r.after);
    assert!(r.after.main_gap() < r.before.main_gap(), "before {:?} after {:?}", r.before, r.after);
    assert_eq!(r.to_dataframe().unwrap().height(), 2);
    assert!(r.figure().unwrap().to_png().unwrap().len() > 1000);
    assert_eq!(r, run(&train, &tr, &test, &sr, &config()).unwrap());
}

#[test]
fn bad_inputs_are_refused() {
    let (tc, _) = configs(4);
    let ds = generate(&tc).unwrap();
    let regions = synthetic_object_regions(&ds, &tc);
    let e = run(&ds, &regions[..3], &ds, &regions, &config()).unwrap_err();
    assert!(e.to_string().contains("one (optional) region per sample"), "{e}");
    let e = run(&ds, &regions, &ds, &regions, &SpuriousPatternsConfig { main_class: 9, ..config() }).unwrap_err();
    assert!(e.to_string().contains("main_class"), "{e}");
    let e = run(&ds, &regions, &ds, &regions, &SpuriousPatternsConfig { target_rate: 1.0, ..config() }).unwrap_err();
    assert!(e.to_string().contains("target_rate"), "{e}");
}
