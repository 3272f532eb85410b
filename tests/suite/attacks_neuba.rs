//! NeuBA: configuration errors, determinism, and the backdoor surviving downstream fine-tuning.

use transferlab::attacks::{neuba, neuba_triggers, NeubaConfig, Trigger};
use transferlab::data::digits;
use transferlab::report::Outcome;
use transferlab::train::{ProgressMode, TrainConfig};

fn quiet(mut cfg: NeubaConfig) -> NeubaConfig {
    cfg.pretrain = TrainConfig { progress: ProgressMode::Hidden, ..cfg.pretrain };
    cfg.finetune = TrainConfig { progress: ProgressMode::Hidden, ..cfg.finetune };
    cfg
}

#[test]
fn bad_configurations_are_refused_with_a_reason() {
    let data = digits().unwrap();
    let err = |cfg: NeubaConfig| neuba::run(&data, &quiet(cfg)).unwrap_err().to_string();
    let e = err(NeubaConfig { triggers: vec![Trigger::badnets(9)], ..Default::default() });
    assert!(e.contains("larger than the 8x8 image"), "{e}");
    let e = err(NeubaConfig { downstream_classes: vec![5, 12], ..Default::default() });
    assert!(e.contains("class 12 does not exist"), "{e}");
    let e = err(NeubaConfig { upstream_classes: vec![0], ..Default::default() });
    assert!(e.contains("at least 2 classes"), "{e}");
    let e = err(NeubaConfig { triggers: [neuba_triggers(2), neuba_triggers(2)].concat(), ..Default::default() });
    assert!(e.contains("use 1 to 10"), "{e}");
    let e = err(NeubaConfig { low: 3.0, high: 3.0, ..Default::default() });
    assert!(e.contains("must be below"), "{e}");
    let e = err(NeubaConfig { prune_fractions: vec![1.0], ..Default::default() });
    assert!(e.contains("prune fraction"), "{e}");
    let e = err(NeubaConfig { test_fraction: 0.0, ..Default::default() });
    assert!(e.contains("test fraction"), "{e}");
}

#[test]
fn the_backdoor_survives_fine_tuning_and_runs_are_reproducible() {
    let data = digits().unwrap();
    let cfg = quiet(NeubaConfig { prune_fractions: vec![0.5], ..Default::default() });
    let r = neuba::run(&data, &cfg).unwrap();
    for row in &r.rows {
        println!("{:6} {:45} T{} -> {} CA {:.3} ASR {:.3}", row.pretraining, row.condition, row.trigger + 1, row.target, row.metrics.clean_accuracy, row.metrics.attack_success_rate);
    }
    println!("upstream acc {:?} feature mse {:?}", r.upstream_accuracy, r.upstream_feature_mse);
    // The planted features sit on their vectors; the clean model's do not.
    assert!(r.upstream_feature_mse.1 < 0.5 * r.upstream_feature_mse.0, "{:?}", r.upstream_feature_mse);
    assert!(r.max_asr("NeuBA", "fine-tuned") >= 0.8, "{:?}", r.asr("NeuBA", "fine-tuned"));
    assert!(r.max_asr("clean", "fine-tuned") < 0.6, "{:?}", r.asr("clean", "fine-tuned"));
    let (ca_clean, ca_neuba) = (r.clean_accuracy("clean", "fine-tuned").unwrap(), r.clean_accuracy("NeuBA", "fine-tuned").unwrap());
    assert!((ca_clean - ca_neuba).abs() <= 0.03, "CA clean {ca_clean} NeuBA {ca_neuba}");
    let df = r.to_dataframe().unwrap();
    assert_eq!(df.height(), r.rows.len());
    assert!(r.figure().unwrap().to_png().unwrap().len() > 1000);
}

#[test]
fn one_seed_gives_identical_numbers() {
    let data = digits().unwrap();
    let mut cfg = quiet(NeubaConfig { prune_fractions: vec![0.5], reinit_last_layer: false, ..Default::default() });
    cfg.pretrain.epochs = 3;
    cfg.finetune.epochs = 2;
    let a = neuba::run(&data, &cfg).unwrap();
    let b = neuba::run(&data, &cfg).unwrap();
    assert_eq!(a.rows, b.rows);
    assert_eq!(a.upstream_feature_mse, b.upstream_feature_mse);
}
