//! Hidden-trigger backdoor: configuration errors, the poisons' budget and labels, the pairing,
//! and determinism.

use candle_core::{Device, Tensor};
use transferlab::attacks::hidden_trigger::{contains_patch, greedy_pairing, random_patch};
use transferlab::attacks::{hidden_trigger, HiddenTriggerConfig, Trigger};
use transferlab::data::digits;
use transferlab::train::ProgressMode;

fn tiny() -> HiddenTriggerConfig {
    let mut cfg = HiddenTriggerConfig { iterations: 30, num_poisons: 12, batch: 8, progress: ProgressMode::Hidden, ..Default::default() };
    cfg.pretrain.epochs = 2;
    cfg.pretrain.progress = ProgressMode::Hidden;
    cfg.finetune.epochs = 2;
    cfg.finetune.progress = ProgressMode::Hidden;
    cfg
}

#[test]
fn bad_configurations_are_refused_with_a_reason() {
    let data = digits().unwrap();
    let err = |cfg: HiddenTriggerConfig| hidden_trigger::run(&data, &cfg).unwrap_err().to_string();
    let e = err(HiddenTriggerConfig { eps: 0.0, ..tiny() });
    assert!(e.contains("eps") && e.contains("outside (0, 1]"), "{e}");
    let e = err(HiddenTriggerConfig { eps: 1.5, ..tiny() });
    assert!(e.contains("outside (0, 1]"), "{e}");
    let e = err(HiddenTriggerConfig { trigger: Trigger::badnets(9), ..tiny() });
    assert!(e.contains("larger than the 8x8 image"), "{e}");
    let e = err(HiddenTriggerConfig { target: 12, ..tiny() });
    assert!(e.contains("target class") && e.contains("12 does not exist"), "{e}");
    let e = err(HiddenTriggerConfig { source: 8, target: 8, ..tiny() });
    assert!(e.contains("must differ"), "{e}");
    let e = err(HiddenTriggerConfig { num_poisons: 500, ..tiny() });
    assert!(e.contains("number of poisons"), "{e}");
    let e = err(HiddenTriggerConfig { trigger: Trigger::blend_noise(1, 0.2), ..tiny() });
    assert!(e.contains("blended triggers are not supported"), "{e}");
}

#[test]
fn poisons_keep_their_labels_respect_the_budget_and_hide_the_trigger() {
    let data = digits().unwrap();
    let cfg = tiny();
    let r = hidden_trigger::run(&data, &cfg).unwrap();
    assert_eq!(r.poisons.len(), 12);
    assert!(r.poisons.labels.iter().all(|&y| y == cfg.target), "clean labels: every poison is labelled as the target class");
    assert_eq!(r.poisons.labels, r.originals.labels);
    assert!(r.poisons.poisoned_flags().iter().all(|&f| f));
    for (p, o) in r.poisons.pixels().iter().zip(r.originals.pixels()) {
        assert!((p - o).abs() <= cfg.eps + 1e-6, "|{p} - {o}| exceeds eps");
        assert!((0.0..=1.0).contains(p));
    }
    assert!(r.max_perturbation > 0.0, "the optimisation moved the poisons");
    assert_eq!(r.poisons_with_trigger, 0);
    for i in 0..r.poisons.len() {
        assert!(!contains_patch(r.poisons.image(i), r.poisons.shape, &cfg.trigger));
    }
    assert!(r.feature_distance.1 < r.feature_distance.0, "{:?}", r.feature_distance);
    let again = hidden_trigger::run(&data, &cfg).unwrap();
    assert_eq!(r.poisons.pixels(), again.poisons.pixels());
    assert_eq!((r.clean, r.poisoned), (again.clean, again.poisoned));
}

#[test]
fn the_trigger_detector_finds_a_pasted_patch_anywhere() {
    let t = random_patch(3, 7);
    let ds = transferlab::data::Dataset::new(vec![0.5; 5 * 64], (1, 8, 8), vec![0; 5], vec!["a".into()]).unwrap();
    let stamped = t.apply_to(&ds, &[0, 1, 2, 3, 4], 3).unwrap();
    for i in 0..5 {
        assert!(contains_patch(stamped.image(i), (1, 8, 8), &t));
        assert!(!contains_patch(ds.image(i), (1, 8, 8), &t));
    }
}

#[test]
fn greedy_pairing_takes_closest_pairs_without_replacement() {
    let dev = Device::Cpu;
    let sources = Tensor::new(&[[0f32, 0.0], [10.0, 0.0], [0.0, 10.0]], &dev).unwrap();
    let poisons = Tensor::new(&[[9f32, 1.0], [1.0, 0.0], [1.0, 1.0]], &dev).unwrap();
    // Closest pair: poison 1 <-> source 0; then poison 0 <-> source 1; poison 2 gets source 2.
    assert_eq!(greedy_pairing(&sources, &poisons).unwrap(), vec![1, 0, 2]);
    assert!(greedy_pairing(&poisons.narrow(0, 0, 2).unwrap(), &sources).is_err());
}
