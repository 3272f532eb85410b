//! Dataset artifacts: probes find a planted colour cast and nothing without it.

use transferlab::analysis::dataset_artifacts::{plant_colour_shift, random_attribute, run, synthetic_foreground, DatasetArtifactsConfig, View};
use transferlab::data::{generate, SyntheticConfig};
use transferlab::report::Outcome;

fn config() -> DatasetArtifactsConfig {
    DatasetArtifactsConfig { resamples: 200, folds: 3, permutations: 49, ..Default::default() }
}

#[test]
fn probes_find_a_planted_background_cast_and_only_where_it_is() {
    let syn = SyntheticConfig { num_classes: 4, samples_per_class: 60, size: 16, ..Default::default() };
    let ds = generate(&syn).unwrap();
    let fg = synthetic_foreground(&ds, &syn);
    let attr = random_attribute(ds.len(), 0.5, 1);
    let planted = plant_colour_shift(&ds, &attr, &[0.05, 0.0, -0.05], Some(&fg)).unwrap();
    let r = run(&planted, &attr, Some(&fg), &config()).unwrap();
    assert_eq!(r.probes.len(), 9);
    for p in &r.probes {
        assert!(p.ci_low <= p.auc && p.auc <= p.ci_high, "{p:?}");
        match p.view {
            View::Full | View::ObjectRemoved => {
                assert!(p.auc > 0.65 && p.ci_low > 0.55, "artifact missed: {p:?}");
                // No shuffled attribute reaches a real artifact's AUC: the smallest p-value.
                assert_eq!(p.p_value, 1.0 / 50.0, "{p:?}");
            }
            View::BackgroundRemoved => assert!(p.auc < 0.7, "artifact found where there is none: {p:?}"),
        }
    }
    let clean = run(&ds, &attr, Some(&fg), &config()).unwrap();
    for p in &clean.probes {
        assert!((p.auc - 0.5).abs() < 0.15 && p.ci_low < 0.5 + 0.05, "{p:?}");
        assert!(p.p_value > 0.02, "chance AUC called significant: {p:?}");
    }
    assert_eq!(r.to_dataframe().unwrap().height(), 9);
    assert!(r.figure().unwrap().to_png().unwrap().len() > 1000);
    assert_eq!(r, run(&planted, &attr, Some(&fg), &config()).unwrap());
}

#[test]
fn bad_inputs_are_refused() {
    let syn = SyntheticConfig { num_classes: 2, samples_per_class: 10, size: 8, ..Default::default() };
    let ds = generate(&syn).unwrap();
    let attr = random_attribute(ds.len(), 0.5, 0);
    let e = run(&ds, &attr, None, &config()).unwrap_err();
    assert!(e.to_string().contains("foreground masks"), "{e}");
    let e = run(&ds, &attr[..5], None, &config()).unwrap_err();
    assert!(e.to_string().contains("5 values for 20 samples"), "{e}");
    let e = run(&ds, &vec![true; 20], None, &DatasetArtifactsConfig { views: vec![View::Full], ..config() }).unwrap_err();
    assert!(e.to_string().contains("each value needs"), "{e}");
    assert!(plant_colour_shift(&ds, &attr, &[0.1], None).is_err());
}
