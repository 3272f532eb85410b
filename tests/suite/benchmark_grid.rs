//! The attacks x defences x seeds grid (`benchmark::backdoorbench`) on a small CIFAR-10 subset:
//! every cell finishes, a rerun recomputes nothing and gives the same table, the grid figures
//! are written. Needs CIFAR-10 by its hub id (`just test` serves it offline).

use transferlab::benchmark::{backdoorbench, detector_table, BackdoorBenchConfig, BenchAttack, BenchDefence, CellStatus, DetectorTableConfig};
use transferlab::defenses::detection::MmBdConfig;
use transferlab::attacks::{TargetMode, Trigger};
use transferlab::defenses::FstConfig;
use transferlab::report::Outcome;
use transferlab::train::{LrSchedule, ProgressMode};

#[test]
fn the_grid_runs_every_cell_once_and_resumes_to_the_same_table() {
    if std::env::var("TLAB_CIFAR_HUB").is_err() {
        eprintln!("skipped: CIFAR-10 is not served (run through tests/with_cifar_hub.sh, as `just test` does)");
        return;
    }
    let out_dir = std::env::temp_dir().join(format!("transferlab_grid_test_{}", std::process::id()));
    std::fs::remove_dir_all(&out_dir).ok();
    let mut cfg = BackdoorBenchConfig {
        train_per_class: Some(20),
        test_per_class: Some(10),
        model: "resnet8".into(),
        attacks: vec![BenchAttack::badnets()],
        defences: vec![
            BenchDefence::by_name("clp").unwrap(),
            BenchDefence::Fst(FstConfig { epochs: 1, ..FstConfig::default() }),
            BenchDefence::by_name("spectral").unwrap(),
        ],
        seeds: vec![0, 1],
        out_dir: out_dir.clone(),
        progress: ProgressMode::Hidden,
        ..BackdoorBenchConfig::default()
    };
    cfg.train.epochs = 2;
    cfg.train.batch_size = 32;
    cfg.train.schedule = LrSchedule::Cosine { lr: 0.05, min_lr: 0.0, epochs: 2.0 };

    let e = cfg.attack_cell(&cfg.attacks[0]).unwrap_err().to_string();
    assert!(e.contains("not trained yet"), "{e}");
    let mismatched = BenchAttack { name: "badnets-negatives".into(), negatives: Some(0.1), ..BenchAttack::badnets() };
    let e = backdoorbench::run(&BackdoorBenchConfig { attacks: vec![mismatched], ..cfg.clone() }).unwrap_err().to_string();
    assert!(e.contains("badnets-negatives") && e.contains("colour-depth"), "refused before any training: {e}");
    assert!(!out_dir.join("table.csv").exists(), "nothing written for a refused configuration");
    let first = backdoorbench::run(&cfg).unwrap();
    assert_eq!(first.cells.len(), 2 * 4, "2 seeds x (none + 3 defences)");
    assert!(first.cells.iter().all(|c| c.status == CellStatus::Done), "{:?}", first.cells);
    assert_eq!(first.histories.len(), 2, "one model trained per seed");
    for file in ["table.parquet", "table.csv", "figure.png", "asr_heatmap.png", "ca_vs_asr.png"] {
        assert!(out_dir.join(file).exists(), "{file} was not written");
    }
    // The detector's cells say how well it found the poison; the others have no such score.
    for c in &first.cells {
        assert_eq!(c.detection.is_some(), c.defence == "spectral", "{c:?}");
    }
    let scores = first.cells.iter().find_map(|c| c.detection).unwrap();
    for rate in [scores.auroc, scores.tpr_at_5_fpr, scores.recall, scores.false_positive_rate] {
        assert!((0.0..=1.0).contains(&rate), "{scores:?}");
    }
    // The two seeds are two different experiments.
    let ca = |seed: u64| first.cells.iter().find(|c| c.seed == seed && c.defence == "none").unwrap().metrics.unwrap();
    assert_ne!(ca(0), ca(1));
    // The grid's model, data and probe, for methods outside the grid: the same numbers.
    let cell = cfg.attack_cell(&cfg.attacks[0]).unwrap();
    assert_eq!(cell.probe.measure(&cell.net).unwrap(), ca(0));
    assert_eq!(cell.poisoned.poisoned_flags().iter().filter(|&&f| f).count(), 20);

    // The detection table: the grid's Spectral Signatures cell as it is, SCALE-UP and MM-BD run
    // on the seed-0 model.
    let budget = DetectorTableConfig { mm_bd: MmBdConfig { starts: 2, max_steps: 5, ..MmBdConfig::default() }, ..DetectorTableConfig::default() };
    let detectors = detector_table(&cfg, &first, &budget).unwrap();
    let names: Vec<&str> = detectors.rows.iter().map(|r| r.detector.as_str()).collect();
    assert_eq!(names, ["MM-BD", "SCALE-UP", "Spectral Signatures"], "sorted by what each screens: model, test inputs, training set");
    let grid_spectral = first.cells.iter().find(|c| c.seed == 0 && c.defence == "spectral").unwrap().detection.unwrap();
    let spectral = detectors.rows.iter().find(|r| r.detector == "Spectral Signatures").unwrap();
    assert_eq!((spectral.auroc, spectral.recall), (Some(grid_spectral.auroc), Some(grid_spectral.recall)));
    let scale_up = detectors.rows.iter().find(|r| r.detector == "SCALE-UP").unwrap();
    assert!(scale_up.auroc.is_some_and(|a| (0.0..=1.0).contains(&a)), "{scale_up:?}");
    let mm_bd = detectors.rows.iter().find(|r| r.detector == "MM-BD").unwrap();
    assert!(mm_bd.auroc.is_none() && mm_bd.p_value.is_some_and(|p| (0.0..=1.0).contains(&p)), "{mm_bd:?}");
    assert_eq!(detectors.target, Some(0));
    assert_eq!(detectors.to_dataframe().unwrap().shape(), (3, 8));
    assert!(detectors.summary().contains("badnets: "), "{}", detectors.summary());
    assert!(detectors.figure().unwrap().to_png().is_ok());

    // A rerun finds every cell in the log and every model on disk: nothing is trained again.
    let second = backdoorbench::run(&cfg).unwrap();
    assert!(second.histories.is_empty(), "a finished grid retrained a model");
    let table = first.to_dataframe().unwrap();
    assert!(table.equals_missing(&second.to_dataframe().unwrap()), "a rerun changed the table");
    assert!(table.equals_missing(&backdoorbench::status(&cfg).unwrap().to_dataframe().unwrap()));

    // A results folder from before per-task logs (one cells.jsonl) keeps its rows.
    let cells = out_dir.join("cells");
    let mut single = String::new();
    for task in ["badnets-seed0", "badnets-seed1"] {
        single.push_str(&std::fs::read_to_string(cells.join(format!("{task}.jsonl"))).unwrap());
        std::fs::remove_file(cells.join(format!("{task}.jsonl"))).unwrap();
    }
    std::fs::write(out_dir.join("cells.jsonl"), single).unwrap();
    assert!(table.equals_missing(&backdoorbench::status(&cfg).unwrap().to_dataframe().unwrap()), "the single log's rows were lost");
    assert!(out_dir.join("cells.jsonl.split").exists() && !out_dir.join("cells.jsonl").exists());

    // Another recipe is another experiment: its cells are pending, never the old numbers.
    cfg.train.epochs = 3;
    let other = backdoorbench::status(&cfg).unwrap();
    assert!(other.cells.iter().all(|c| c.status == CellStatus::Pending));
    std::fs::remove_dir_all(&out_dir).ok();
}

/// The label-consistent attack in the grid: its surrogate is the seed's clean model, trained
/// once under the clean task's name (the `clean` attack reuses it), and its poisons are the
/// hardened originals with the four-corner trigger. Low Frequency fits its trigger on the same
/// clean model.
#[test]
fn label_consistent_and_low_frequency_cells_use_the_seeds_clean_model() {
    if std::env::var("TLAB_CIFAR_HUB").is_err() {
        eprintln!("skipped: CIFAR-10 is not served (run through tests/with_cifar_hub.sh, as `just test` does)");
        return;
    }
    let out_dir = std::env::temp_dir().join(format!("transferlab_grid_lc_{}", std::process::id()));
    std::fs::remove_dir_all(&out_dir).ok();
    let mut cfg = BackdoorBenchConfig {
        train_per_class: Some(20),
        test_per_class: Some(10),
        model: "resnet8".into(),
        attacks: vec![BenchAttack::by_name("lc").unwrap(), BenchAttack::clean(), BenchAttack::by_name("lf").unwrap()],
        defences: vec![],
        out_dir: out_dir.clone(),
        progress: ProgressMode::Hidden,
        ..BackdoorBenchConfig::default()
    }
    .with_epochs(2);
    cfg.train.batch_size = 32;
    cfg.attacks[0].hardening.as_mut().unwrap().steps = 10;
    cfg.attacks[2].low_frequency.as_mut().unwrap().max_passes = 2;
    let r = backdoorbench::run(&cfg).unwrap();
    assert!(r.cells.iter().all(|c| c.status == CellStatus::Done), "{:?}", r.cells);
    // The clean model was trained for the surrogate; the clean task found it on disk.
    assert_eq!(r.histories.iter().map(|h| h.0.as_str()).collect::<Vec<_>>(), ["lc", "lf"]);
    let clean_models = std::fs::read_dir(out_dir.join("models")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("clean-seed0") && e.path().extension().is_some_and(|x| x == "safetensors")).count();
    assert_eq!(clean_models, 1);
    let cell = cfg.attack_cell(&cfg.attacks[0]).unwrap();
    let clean_set = cfg.attack_cell(&cfg.attacks[1]).unwrap().poisoned;
    let flagged: Vec<usize> = cell.poisoned.poisoned_flags().iter().enumerate().filter(|(_, &f)| f).map(|(i, _)| i).collect();
    assert_eq!(flagged.len(), 20, "10 % of 200 images, all of class 0");
    assert!(flagged.iter().all(|&i| cell.poisoned.labels[i] == 0));
    // Away from the corners the poison differs from the original by at most eps (plus 8-bit rounding), and does differ.
    let (c, h, w) = cell.poisoned.shape;
    let centre = |img: &[f32]| (0..c).flat_map(move |ch| (4..h - 4).flat_map(move |y| (4..w - 4).map(move |x| (ch * h + y) * w + x))).map(|k| img[k]).collect::<Vec<f32>>();
    let moved = flagged.iter().map(|&i| centre(cell.poisoned.image(i)).iter().zip(centre(clean_set.image(i))).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)).fold(0f32, f32::max);
    assert!(moved > 0.0 && moved <= 8.5 / 255.0 + 1e-6, "largest change {moved}");
    // Low Frequency: its trigger fitted on the same clean model, one smooth additive pattern
    // in [0, 0.2] on 10 % of the images, relabelled to the fitted target; the probe carries it.
    let lf = cfg.attack_cell(&cfg.attacks[2]).unwrap();
    let Trigger::Additive { pixels, .. } = &lf.probe.trigger else { panic!("the probe carries the fitted trigger: {:?}", lf.probe.trigger) };
    assert!(pixels.iter().all(|v| (0.0..=0.2 + 1e-6).contains(v)) && pixels.iter().any(|&v| v > 0.1));
    let TargetMode::AllToOne { target } = lf.probe.target else { panic!("all-to-one") };
    let lf_flagged: Vec<usize> = lf.poisoned.poisoned_flags().iter().enumerate().filter(|(_, &f)| f).map(|(i, _)| i).collect();
    assert_eq!(lf_flagged.len(), 20);
    assert!(lf_flagged.iter().all(|&i| lf.poisoned.labels[i] == target));
    assert_eq!(lf.probe.trigger, cfg.attack_cell(&cfg.attacks[2]).unwrap().probe.trigger, "refitted identically");
    std::fs::remove_dir_all(&out_dir).ok();
}

/// Blind in the grid: its model is trained with the compromised loss on the unpoisoned set
/// (backdoored all the same), and the defences that work on the poisoned training set have no
/// cell against it (its training set holds no poison).
#[test]
fn blind_cells_train_with_the_compromised_loss_and_skip_data_defences() {
    if std::env::var("TLAB_CIFAR_HUB").is_err() {
        eprintln!("skipped: CIFAR-10 is not served (run through tests/with_cifar_hub.sh, as `just test` does)");
        return;
    }
    let out_dir = std::env::temp_dir().join(format!("transferlab_grid_blind_{}", std::process::id()));
    std::fs::remove_dir_all(&out_dir).ok();
    let mut cfg = BackdoorBenchConfig {
        train_per_class: Some(20),
        test_per_class: Some(10),
        model: "resnet8".into(),
        attacks: vec![BenchAttack::by_name("blind").unwrap(), BenchAttack::clean()],
        defences: vec![BenchDefence::by_name("ft-sam").unwrap(), BenchDefence::by_name("spectral").unwrap()],
        out_dir: out_dir.clone(),
        progress: ProgressMode::Hidden,
        ..BackdoorBenchConfig::default()
    }
    .with_epochs(6);
    cfg.train.batch_size = 32;
    if let BenchDefence::FtSam(c) = &mut cfg.defences[0] {
        c.epochs = 1;
    }
    let r = backdoorbench::run(&cfg).unwrap();
    let cells: Vec<(&str, &str)> = r.cells.iter().map(|c| (c.attack.as_str(), c.defence.as_str())).collect();
    assert_eq!(cells, [("blind", "none"), ("blind", "ft-sam"), ("clean", "none")]);
    assert!(r.cells.iter().all(|c| c.status == CellStatus::Done), "{:?}", r.cells);
    let asr = |a: &str| r.cells.iter().find(|c| c.attack == a && c.defence == "none").unwrap().metrics.unwrap().attack_success_rate;
    println!("blind ASR {} vs clean {}", asr("blind"), asr("clean"));
    assert!(asr("blind") > asr("clean") + 0.3, "{:?}", r.cells);
    assert_eq!(cfg.attack_cell(&cfg.attacks[0]).unwrap().poisoned.poisoned_flags().iter().filter(|&&f| f).count(), 0);
    std::fs::remove_dir_all(&out_dir).ok();
}
