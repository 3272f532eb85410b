//! Failure directions: SVM ranking finds the under-represented subgroup.

use transferlab::analysis::failure_directions::{run, FailureDirectionsConfig};
use transferlab::data::{generate, Dataset, Subgroup, SubgroupKind, SyntheticConfig};
use transferlab::report::Outcome;
use transferlab::train::{LrSchedule, OptimizerConfig, ProgressMode, TrainConfig};

fn data(spc: usize, fraction: f32, seed: u64) -> Dataset {
    generate(&SyntheticConfig {
        num_classes: 3,
        samples_per_class: spc,
        size: 8,
        seed,
        subgroup: Some(Subgroup { class: 0, fraction, kind: SubgroupKind::Colour }),
        ..Default::default()
    })
    .unwrap()
}

fn config() -> FailureDirectionsConfig {
    FailureDirectionsConfig {
        train: TrainConfig {
            epochs: 6,
            batch_size: 32,
            optimizer: OptimizerConfig::sgd_momentum(),
            schedule: LrSchedule::Constant { lr: 0.05 },
            progress: ProgressMode::Hidden,
            ..TrainConfig::default()
        },
        budget_per_class: 10,
        ..FailureDirectionsConfig::default()
    }
}

#[test]
fn lowest_scores_are_enriched_for_the_subgroup_and_runs_repeat() {
    let (train, val, test, pool) = (data(60, 0.03, 1), data(60, 0.25, 2), data(60, 0.25, 3), data(60, 0.25, 4));
    let cfg = config();
    let r = run(&train, &val, &test, &pool, &cfg).unwrap();
    assert!(r.classes[0].c.is_some(), "class 0 should have enough errors for an SVM: {:?}", r.classes[0]);
    assert!(r.enrichment > 1.5, "enrichment {} (bottom {} base {})", r.enrichment, r.bottom_subgroup_fraction, r.base_subgroup_fraction);
    assert!(r.subgroup_auc > 0.6, "subgroup AUC {}", r.subgroup_auc);
    let df = r.to_dataframe().unwrap();
    assert_eq!(df.height(), 3);
    assert_eq!(r.classes_dataframe().unwrap().height(), 3);
    assert!(r.figure().unwrap().to_png().unwrap().len() > 1000);
    let again = run(&train, &val, &test, &pool, &cfg).unwrap();
    // Debug text compares NaN scores (classes without an SVM) as equal.
    assert_eq!(format!("{r:?}"), format!("{again:?}"));
    assert!(r.interventions[2].added_subgroup > r.interventions[1].added_subgroup, "{:?}", r.interventions);
}

#[test]
fn bad_configuration_is_refused() {
    let d = data(10, 0.2, 1);
    let e = run(&d, &d, &d, &d, &FailureDirectionsConfig { bottom_fraction: 0.0, ..config() }).unwrap_err();
    assert!(e.to_string().contains("bottom_fraction"), "{e}");
    let e = run(&d, &d, &d, &d, &FailureDirectionsConfig { c_grid: vec![], ..config() }).unwrap_err();
    assert!(e.to_string().contains("c_grid"), "{e}");
    let plain = generate(&SyntheticConfig { num_classes: 3, samples_per_class: 10, size: 8, ..Default::default() }).unwrap();
    let e = run(&d, &d, &plain, &d, &config()).unwrap_err();
    assert!(e.to_string().contains("attributes.group"), "{e}");
}
