//! Bias transfer: the study's shape, its determinism, the de-biasing and config errors.

use transferlab::analysis::bias_transfer::{debias, run, BiasTransferConfig};
use transferlab::attacks::Trigger;
use transferlab::data::{digits, Dataset};
use transferlab::models::Arch;
use transferlab::report::Outcome;
use transferlab::train::ProgressMode;

fn data() -> (Dataset, Dataset, Dataset) {
    let d = digits().unwrap();
    let source = d.class_subset(&[0, 1, 2, 3, 4], true).unwrap();
    let (train, test) = d.class_subset(&[5, 6, 7, 8, 9], true).unwrap().split(0.7, 0, true).unwrap();
    (source, train, test)
}

fn quick() -> BiasTransferConfig {
    let mut cfg = BiasTransferConfig::default();
    cfg.arch = Arch::Mlp { hidden: vec![64] };
    cfg.pretrain.epochs = 6;
    cfg.pretrain.schedule = transferlab::train::LrSchedule::Constant { lr: 0.05 };
    cfg.finetune.epochs = 4;
    cfg.progress = ProgressMode::Hidden;
    cfg
}

#[test]
fn the_bias_transfers_to_fixed_feature_models_and_not_to_scratch_ones() {
    let (source, train, test) = data();
    let cfg = quick();
    let result = run(&source, &train, &test, &cfg).unwrap();
    assert_eq!(result.rows.len(), 10);
    assert!(result.source_trigger_rate > 0.8, "the biased source did not learn the trigger: {}", result.source_trigger_rate);
    let scratch = result.row("none", "scratch", false).unwrap();
    let fixed = result.row("biased", "fixed-feature", false).unwrap();
    let fixed_clean = result.row("clean", "fixed-feature", false).unwrap();
    assert!(scratch.accuracy > 0.7 && fixed.accuracy > 0.7, "{scratch:?} {fixed:?}");
    assert!(fixed.shift > scratch.shift + 0.1, "fixed-feature shift {} vs scratch {}", fixed.shift, scratch.shift);
    assert!(fixed.shift > fixed_clean.shift, "biased {} vs clean source {}", fixed.shift, fixed_clean.shift);
    let df = result.to_dataframe().unwrap();
    assert_eq!(df.height(), 10);
    assert!(result.figure().unwrap().to_png().unwrap().len() > 1000);

    let again = run(&source, &train, &test, &cfg).unwrap();
    assert_eq!(again, result, "same seed, different numbers");
}

#[test]
fn debiasing_spreads_the_trigger_evenly_over_classes() {
    let (_, train, _) = data();
    let t = Trigger::badnets(3);
    let d = debias(&train, &t, 0.2, 0).unwrap();
    let counts = train.class_counts();
    for c in 0..5u32 {
        let changed = (0..train.len()).filter(|&i| train.labels[i] == c && train.image(i) != d.image(i)).count();
        let want = (0.2 * counts[c as usize] as f64).round() as usize;
        // A digit can already be white where the patch goes; then stamping changes nothing.
        assert!(changed <= want && changed + 2 >= want, "class {c}: {changed} of {want}");
    }
    assert_eq!(d.labels, train.labels);
}

#[test]
fn bad_configurations_are_refused() {
    let (source, train, test) = data();
    let mut cfg = quick();
    cfg.bias_class = 7;
    let e = run(&source, &train, &test, &cfg).unwrap_err().to_string();
    assert!(e.contains("bias class"), "{e}");
    let mut cfg = quick();
    cfg.bias_rate = 0.0;
    assert!(run(&source, &train, &test, &cfg).unwrap_err().to_string().contains("bias rate"));
    let mut cfg = quick();
    cfg.trigger = Trigger::badnets(9);
    assert!(run(&source, &train, &test, &cfg).is_err());
}

#[test]
fn the_debiasing_sweep_keeps_the_study_rows_and_more_debiasing_means_less_fixed_feature_bias() {
    use transferlab::analysis::bias_transfer::debias_sweep;
    let (source, train, test) = data();
    let cfg = quick();
    let sweep = debias_sweep(&source, &train, &test, &cfg, &[0.0, 0.3]).unwrap();
    assert_eq!(sweep.rows.len(), 6);
    // The sweep's row at a rate is the study's de-biased row at that rate.
    let study = run(&source, &train, &test, &BiasTransferConfig { debias_rate: 0.3, ..cfg.clone() }).unwrap();
    let at = sweep.rows.iter().find(|(r, row)| *r == 0.3 && row.mode == "fixed-feature").unwrap();
    assert_eq!(&at.1, study.row("biased", "fixed-feature", true).unwrap());
    let fixed = sweep.shifts("fixed-feature (biased source)");
    assert!(fixed[1].1 < fixed[0].1, "{fixed:?}");
    assert_eq!(sweep.to_dataframe().unwrap().height(), 6);
    assert!(debias_sweep(&source, &train, &test, &cfg, &[]).unwrap_err().to_string().contains("rates"));
    assert!(debias_sweep(&source, &train, &test, &cfg, &[1.0]).unwrap_err().to_string().contains("de-bias rate"));
}
