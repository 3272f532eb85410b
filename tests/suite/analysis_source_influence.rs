//! Source influence: influence shape, resume after interruption, determinism, errors.

use transferlab::analysis::source_influence::{run, SourceInfluenceConfig};
use transferlab::data::{digits, Dataset};
use transferlab::report::Outcome;
use transferlab::train::ProgressMode;

fn data() -> (Dataset, Dataset, Dataset) {
    let d = digits().unwrap();
    let source = d.class_subset(&[0, 1, 2, 3, 4, 5, 6], true).unwrap();
    let (train, test) = d.class_subset(&[7, 8, 9], true).unwrap().split(0.5, 0, true).unwrap();
    (source, train, test)
}

fn quick() -> SourceInfluenceConfig {
    let mut cfg = SourceInfluenceConfig::default();
    cfg.models = 8;
    cfg.pretrain.epochs = 2;
    cfg.random_repeats = 2;
    cfg.counterfactual_seeds = 1;
    cfg.progress = ProgressMode::Hidden;
    cfg
}

#[test]
fn an_interrupted_study_resumes_and_gives_the_same_numbers() {
    let (source, train, test) = data();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quick();
    let full = run(&source, &train, &test, &cfg).unwrap();
    assert_eq!(full.influence.len(), 7);
    assert_eq!(full.influence[0].len(), test.len());
    assert_eq!(full.harmful.len(), 2);
    let inf = full.class_influence();
    assert!(full.harmful.iter().all(|&h| inf.iter().filter(|&&v| v < inf[h as usize]).count() < 2));
    assert_eq!(full.to_dataframe().unwrap().height(), 7);
    assert_eq!(full.counterfactual_table().unwrap().height(), 4);
    assert!(full.figure().unwrap().to_png().unwrap().len() > 1000);

    // Interrupt: keep 3 finished models and a line cut off mid-write, then resume.
    let log = dir.path().join("influence.jsonl");
    cfg.log = Some(log.clone());
    cfg.workers = 1;
    run(&source, &train, &test, &cfg).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8);
    let cut = format!("{}\n{}", lines[..3].join("\n"), &lines[3][..lines[3].len() / 2]);
    std::fs::write(&log, cut).unwrap();
    let resumed = run(&source, &train, &test, &cfg).unwrap();
    assert_eq!(resumed, full, "resumed (and single-worker) study differs");
    let readable = std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.ends_with('}')).count();
    assert_eq!(readable, 8, "the resumed run should add exactly the 5 missing models");

    // Another target task must not resume the first study's models from the same log.
    let few = train.per_class_sample(5, 0).unwrap();
    let other = run(&source, &few, &test, &cfg).unwrap();
    let lines = std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.ends_with('}')).count();
    assert_eq!(lines, 16, "a study on other data must train its own models");
    cfg.log = None;
    assert_eq!(other, run(&source, &few, &test, &cfg).unwrap());
}

/// The paper's claim at notebook 02's setting (32 subset models on digits 0-6, target 7-9 with
/// ten labelled examples per class): removing the most harmful source classes transfers
/// better than removing as many random ones (the notebook: 91.5 vs 85.5 %).
#[test]
fn removing_harmful_source_classes_beats_removing_random_ones() {
    let d = digits().unwrap();
    let source = d.class_subset(&[0, 1, 2, 3, 4, 5, 6], true).unwrap();
    let (pool, test) = d.class_subset(&[7, 8, 9], true).unwrap().split(0.5, 0, true).unwrap();
    let train = pool.per_class_sample(10, 0).unwrap();
    let cfg = SourceInfluenceConfig { progress: ProgressMode::Hidden, ..SourceInfluenceConfig::default() };
    let r = run(&source, &train, &test, &cfg).unwrap();
    eprintln!("all {:.3}, harmful removed {:.3}, random removed {:.3}", r.accuracy_full, r.accuracy_without_harmful, r.accuracy_without_random);
    assert!(r.accuracy_without_harmful > r.accuracy_without_random + 0.02, "harmful removal {} vs random removal {}", r.accuracy_without_harmful, r.accuracy_without_random);
}

#[test]
fn bad_configurations_are_refused() {
    let (source, train, test) = data();
    let mut cfg = quick();
    cfg.models = 1;
    assert!(run(&source, &train, &test, &cfg).unwrap_err().to_string().contains("number of models"));
    let mut cfg = quick();
    cfg.subset_fraction = 1.0;
    assert!(run(&source, &train, &test, &cfg).unwrap_err().to_string().contains("subset fraction"));
    let mut cfg = quick();
    cfg.remove_k = 7;
    assert!(run(&source, &train, &test, &cfg).unwrap_err().to_string().contains("remove_k"));
    let mut cfg = quick();
    cfg.counterfactual_seeds = 0;
    assert!(run(&source, &train, &test, &cfg).unwrap_err().to_string().contains("counterfactual seeds"));
}
