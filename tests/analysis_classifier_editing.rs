//! Classifier editing: a rank-one rewrite maps transformed-concept keys to the original values.

use transferlab::analysis::classifier_editing::{choose_exemplars, concept_pairs, layer_io, rank_one_edit, run, ClassifierEditingConfig, ConceptPairs};
use transferlab::data::{generate, Dataset, SubgroupKind, SyntheticConfig};
use transferlab::models::{ModelSpec, Network};
use transferlab::report::Outcome;
use transferlab::train::{self, LrSchedule, OptimizerConfig, ProgressMode, TrainConfig};

fn data_cfg(seed: u64, spc: usize) -> SyntheticConfig {
    SyntheticConfig { num_classes: 6, samples_per_class: spc, size: 12, seed, noise: 0.05, ..Default::default() }
}

fn setup() -> (Network, Dataset, ConceptPairs, Dataset, ConceptPairs) {
    let train_set = generate(&data_cfg(1, 60)).unwrap();
    let test = generate(&data_cfg(2, 40)).unwrap();
    let exemplars = concept_pairs(&data_cfg(3, 10), 0, SubgroupKind::Colour).unwrap();
    let held_out = concept_pairs(&data_cfg(4, 60), 0, SubgroupKind::Colour).unwrap();
    let spec = ModelSpec::named("mlp", train_set.shape, 6).unwrap();
    let mut net = Network::new(&spec, 0, &candle_core::Device::Cpu).unwrap();
    let cfg = TrainConfig {
        epochs: 15,
        batch_size: 32,
        optimizer: OptimizerConfig::sgd_momentum(),
        schedule: LrSchedule::Cosine { lr: 0.05, min_lr: 0.0, epochs: 15.0 },
        progress: ProgressMode::Hidden,
        ..TrainConfig::default()
    };
    train::train(&mut net, &train_set, None, &cfg).unwrap();
    (net, train_set, exemplars, test, held_out)
}

fn config() -> ClassifierEditingConfig {
    let mut cfg = ClassifierEditingConfig::default();
    cfg.finetune.progress = ProgressMode::Hidden;
    cfg
}

#[test]
fn edit_is_rank_one_maps_keys_and_helps_the_concept() {
    let (net, train_set, exemplars, test, held_out) = setup();
    let cfg = config();
    let layer = 1;
    let chosen = choose_exemplars(&exemplars, &cfg).unwrap();
    let edit = rank_one_edit(&net, &train_set, &chosen, layer, cfg.ridge).unwrap();
    let edited = edit.apply(&net).unwrap();
    // W' - W read back from the networks has rank one: every row is parallel to the largest.
    let name = edit.weight_name();
    let delta = (&edited.named_tensors().unwrap()[&name] - &net.named_tensors().unwrap()[&name]).unwrap();
    let rows = delta.to_vec2::<f32>().unwrap();
    let big = rows.iter().max_by(|a, b| norm(a).total_cmp(&norm(b))).unwrap().clone();
    assert!(norm(&big) > 1e-4, "the edit changed nothing");
    for r in &rows {
        let proj: f32 = r.iter().zip(&big).map(|(a, b)| a * b).sum::<f32>() / norm(&big).powi(2);
        let resid: Vec<f32> = r.iter().zip(&big).map(|(a, b)| a - proj * b).collect();
        assert!(norm(&resid) <= 1e-3 * norm(&big), "W' - W has rank above one");
    }
    // One exemplar: the edited layer maps its key exactly to its value.
    let one = ClassifierEditingConfig { num_exemplars: 1, ..config() };
    let single = choose_exemplars(&exemplars, &one).unwrap();
    let e1 = rank_one_edit(&net, &train_set, &single, layer, one.ridge).unwrap().apply(&net).unwrap();
    let (_, want) = layer_io(&net, layer, &single.original).unwrap();
    let (_, got) = layer_io(&e1, layer, &single.transformed).unwrap();
    let (_, before) = layer_io(&net, layer, &single.transformed).unwrap();
    let err = |a: &candle_core::Tensor| (a - &want).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(err(&got) <= 1e-4 * err(&before).max(1e-6), "exact map failed: {} vs {}", err(&got), err(&before));

    let r = run(&net, &train_set, &exemplars, &test, &held_out.transformed, &cfg).unwrap();
    eprintln!("original {:?}\nedited {:?}\nfinetuned {:?}\nexemplar err {} -> {}", r.original, r.edited, r.finetuned, r.exemplar_error_before, r.exemplar_error_after);
    assert!(r.exemplar_error_after < 0.5 * r.exemplar_error_before);
    assert!(r.edited.transformed_accuracy > r.original.transformed_accuracy + 0.1, "{:?} -> {:?}", r.original, r.edited);
    assert!(r.original.clean_accuracy - r.edited.clean_accuracy <= 0.05);
    assert_eq!(r.to_dataframe().unwrap().height(), 3);
    r.figure().unwrap();
    // Determinism: the same seed gives the same numbers.
    let again = run(&net, &train_set, &exemplars, &test, &held_out.transformed, &cfg).unwrap();
    assert_eq!(r, again);
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[test]
fn config_errors_say_what_to_fix() {
    let ds = generate(&data_cfg(1, 4)).unwrap();
    let pairs = concept_pairs(&data_cfg(3, 4), 0, SubgroupKind::Texture).unwrap();
    let net = Network::new(&ModelSpec::named("mlp", ds.shape, 6).unwrap(), 0, &candle_core::Device::Cpu).unwrap();
    let err = |cfg: ClassifierEditingConfig, p: &ConceptPairs, n: &Network| run(n, &ds, p, &ds, &p.transformed, &cfg).unwrap_err().to_string();
    assert!(err(ClassifierEditingConfig { num_exemplars: 0, ..config() }, &pairs, &net).contains("num_exemplars"));
    assert!(err(ClassifierEditingConfig { num_exemplars: 5, ..config() }, &pairs, &net).contains("num_exemplars"));
    assert!(err(ClassifierEditingConfig { ridge: 0.0, ..config() }, &pairs, &net).contains("ridge"));
    assert!(err(ClassifierEditingConfig { layer: Some(2), ..config() }, &pairs, &net).contains("out of range"));
    let bad = ConceptPairs { original: pairs.original.clone(), transformed: pairs.original.select(&[0, 1]).unwrap() };
    assert!(err(config(), &bad, &net).contains("pair by pair"));
    let conv = Network::new(&ModelSpec::named("convnet", ds.shape, 6).unwrap(), 0, &candle_core::Device::Cpu).unwrap();
    assert!(err(config(), &pairs, &conv).contains("mlp"));
}
