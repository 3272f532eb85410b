//! Linear probes across models: the protocol, the correlation, determinism and config errors.

use transferlab::analysis::linear_probe::{log_grid, log_odds, probe, run, LinearProbeConfig, SourceRecipe};
use transferlab::analysis::logistic::LbfgsOptions;
use transferlab::data::{digits, Dataset};
use transferlab::models::Arch;
use transferlab::report::Outcome;
use transferlab::train::ProgressMode;

fn data() -> (Dataset, Dataset, Dataset, Dataset) {
    let d = digits().unwrap();
    let (a, b) = d.class_subset(&[0, 1, 2, 3, 4], true).unwrap().split(0.7, 0, true).unwrap();
    let (c, e) = d.class_subset(&[5, 6, 7, 8, 9], true).unwrap().split(0.5, 0, true).unwrap();
    (a, b, c, e)
}

fn quick() -> LinearProbeConfig {
    let mut cfg = LinearProbeConfig::default();
    cfg.recipes = vec![
        SourceRecipe::new("tiny", Arch::Mlp { hidden: vec![4] }, 1, 0.0),
        SourceRecipe::new("small", Arch::Mlp { hidden: vec![16] }, 2, 0.0),
        SourceRecipe::new("big", Arch::Mlp { hidden: vec![64] }, 6, 0.0),
    ];
    cfg.l2_grid = log_grid(1e-4, 1.0, 3);
    cfg.finetune.as_mut().unwrap().epochs = 2;
    cfg.progress = ProgressMode::Hidden;
    cfg
}

#[test]
fn better_sources_probe_better_and_runs_are_reproducible() {
    let (st, ss, tt, ts) = data();
    let cfg = quick();
    let r = run(&st, &ss, &tt, &ts, &cfg).unwrap();
    assert_eq!(r.rows.len(), 3);
    let (tiny, big) = (&r.rows[0], &r.rows[2]);
    assert!(big.source_accuracy > tiny.source_accuracy, "{r:?}");
    assert!(big.probe_accuracy > tiny.probe_accuracy, "{r:?}");
    assert!(r.probe_r.unwrap() > 0.5, "r = {:?}", r.probe_r);
    assert!(r.rows.iter().all(|row| cfg.l2_grid.contains(&row.l2) && row.finetune_accuracy.is_some()));
    assert_eq!(r.to_dataframe().unwrap().height(), 3);
    assert!(r.figure().unwrap().to_png().unwrap().len() > 1000);
    assert_eq!(run(&st, &ss, &tt, &ts, &cfg).unwrap(), r);
}

#[test]
fn the_probe_chooses_a_penalty_on_validation_and_refits() {
    // Two noisy blobs in 5-d: a tiny penalty and a large one must both be tried.
    let n = 80;
    let x: Vec<f32> = (0..n * 5).map(|i| ((i * 37 % 23) as f32 / 23.0) + if (i / 5) % 2 == 0 { 0.6 } else { 0.0 }).collect();
    let y: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
    let grid = [1e-4, 1e-2, 1.0, 100.0];
    let fit = probe(&x, 5, &y, 2, &grid, 0.25, &LbfgsOptions::default(), 0).unwrap();
    assert_eq!(fit.validation.len(), 4);
    assert!(grid.contains(&fit.l2));
    let best = fit.validation.iter().map(|v| v.1).fold(0.0, f64::max);
    assert_eq!(fit.validation.iter().find(|v| v.0 == fit.l2).unwrap().1, best);
    assert!(fit.model.converged);
    assert!(fit.model.accuracy(&x, &y) > 0.9);
    assert!(probe(&x[..10], 5, &y[..2], 2, &grid, 0.25, &LbfgsOptions::default(), 0).is_err());
}

#[test]
fn log_odds_stay_finite_and_grids_are_log_spaced() {
    assert!(log_odds(1.0, 100).is_finite() && log_odds(0.0, 100).is_finite());
    assert!((log_odds(0.5, 10)).abs() < 1e-12);
    let g = log_grid(1e-6, 1e2, 9);
    assert_eq!(g.len(), 9);
    assert!((g[0] - 1e-6).abs() < 1e-18 && (g[8] - 1e2).abs() < 1e-9 && (g[1] / g[0] - 10.0).abs() < 1e-9);
}

#[test]
fn bad_configurations_are_refused() {
    let (st, ss, tt, ts) = data();
    let mut cfg = quick();
    cfg.l2_grid = vec![];
    assert!(run(&st, &ss, &tt, &ts, &cfg).unwrap_err().to_string().contains("L2 grid"));
    let mut cfg = quick();
    cfg.val_fraction = 1.0;
    assert!(run(&st, &ss, &tt, &ts, &cfg).unwrap_err().to_string().contains("validation"));
    let mut cfg = quick();
    cfg.recipes[0].label_smoothing = 1.5;
    assert!(run(&st, &ss, &tt, &ts, &cfg).unwrap_err().to_string().contains("label smoothing"));
}

#[test]
fn pretrained_sources_transfer_exactly_as_the_trained_ones() {
    use transferlab::analysis::linear_probe::{run_pretrained, PretrainedSource};
    use transferlab::models::{ModelSpec, Network};
    use transferlab::train::{accuracy, train, TrainConfig};
    let (st, ss, tt, ts) = data();
    let cfg = quick();
    let trained = run(&st, &ss, &tt, &ts, &cfg).unwrap();
    // The same source models, trained outside the study, then handed in as "pretrained".
    let mut sources = Vec::new();
    for (m, recipe) in cfg.recipes.iter().enumerate() {
        let seed = cfg.seed + m as u64;
        let spec = ModelSpec::new(recipe.arch.clone(), st.shape, st.num_classes()).unwrap();
        let mut net = Network::new(&spec, seed, &candle_core::Device::Cpu).unwrap();
        let tc = TrainConfig { epochs: recipe.epochs, label_smoothing: recipe.label_smoothing, seed, ..cfg.pretrain.clone() };
        train(&mut net, &st, None, &tc).unwrap();
        let source_accuracy = accuracy(&net, &ss).unwrap();
        sources.push(PretrainedSource { name: recipe.name.clone(), network: net, source_accuracy, source_test_size: ss.len() });
    }
    let pretrained = run_pretrained(sources, &tt, &ts, &cfg).unwrap();
    assert_eq!(pretrained, trained);
}

#[test]
fn pretrained_sources_are_checked_and_the_hub_path_is_off_without_a_hub() {
    use transferlab::analysis::linear_probe::{hub_sources_available, run_pretrained, PretrainedSource, HUB_SOURCES};
    use transferlab::hub::{Hub, HubConfig, LoopbackHub, ModelRegistry};
    use transferlab::models::{ModelSpec, Network};
    let (_, _, tt, ts) = data();
    let cfg = quick();
    let source = |input: (usize, usize, usize), acc: f64| PretrainedSource {
        name: "m".into(),
        network: Network::new(&ModelSpec::named("mlp", input, 10).unwrap(), 0, &candle_core::Device::Cpu).unwrap(),
        source_accuracy: acc,
        source_test_size: 100,
    };
    assert!(run_pretrained(vec![], &tt, &ts, &cfg).unwrap_err().to_string().contains("at least one"));
    let e = run_pretrained(vec![source((3, 8, 8), 0.5)], &tt, &ts, &cfg).unwrap_err().to_string();
    assert!(e.contains("Preprocess"), "{e}");
    assert!(run_pretrained(vec![source(tt.shape, 1.5)], &tt, &ts, &cfg).unwrap_err().to_string().contains("[0, 1]"));
    // Every hub source is a registered model, and an empty hub offers none of them.
    let reg = ModelRegistry::builtin();
    assert!(HUB_SOURCES.iter().all(|(id, _)| reg.get(id).is_ok()));
    let server = LoopbackHub::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = HubConfig::new(&server.endpoint(), dir.path());
    c.progress = false;
    assert!(!hub_sources_available(&Hub::new(c)));
}
