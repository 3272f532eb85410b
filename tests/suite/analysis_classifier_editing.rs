//! Classifier editing: a rank-one rewrite of a conv layer maps the transformed concept's keys
//! to the original values, helps held-out transformed images and leaves clean accuracy alone.

use candle_core::{Device, Tensor};
use transferlab::analysis::classifier_editing::{
    choose_exemplars, concept_pairs, concept_rows, layer_input, layer_io, rank_one_edit, rank_one_edit_with, run, ClassifierEditingConfig, ConceptPairs, KeyStatistics,
};
use transferlab::data::{generate, Dataset, SubgroupKind, SyntheticConfig};
use transferlab::models::{Arch, ModelSpec, Network, Norm};
use transferlab::report::Outcome;
use transferlab::train::{self, LrSchedule, OptimizerConfig, ProgressMode, TrainConfig};

fn data_cfg(seed: u64, spc: usize) -> SyntheticConfig {
    SyntheticConfig { num_classes: 6, samples_per_class: spc, size: 16, seed, noise: 0.05, ..Default::default() }
}

fn trained(spec: &ModelSpec, train_set: &Dataset, epochs: usize) -> Network {
    let mut net = Network::new(spec, 0, &Device::Cpu).unwrap();
    let cfg = TrainConfig {
        epochs,
        batch_size: 32,
        optimizer: OptimizerConfig::sgd_momentum(),
        schedule: LrSchedule::Cosine { lr: 0.05, min_lr: 0.0, epochs: epochs as f64 },
        progress: ProgressMode::Hidden,
        ..TrainConfig::default()
    };
    train::train(&mut net, train_set, None, &cfg).unwrap();
    net
}

fn config() -> ClassifierEditingConfig {
    let mut cfg = ClassifierEditingConfig::default();
    cfg.finetune.progress = ProgressMode::Hidden;
    cfg
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Every row of `rows` is a multiple of the largest one.
fn assert_rank_one(rows: &[Vec<f32>]) {
    let big = rows.iter().max_by(|a, b| norm(a).total_cmp(&norm(b))).unwrap().clone();
    assert!(norm(&big) > 1e-4, "the edit changed nothing");
    for r in rows {
        let proj: f32 = r.iter().zip(&big).map(|(a, b)| a * b).sum::<f32>() / norm(&big).powi(2);
        let resid: Vec<f32> = r.iter().zip(&big).map(|(a, b)| a - proj * b).collect();
        assert!(norm(&resid) <= 1e-3 * norm(&big), "W' - W has rank above one");
    }
}

#[test]
fn conv_edit_is_rank_one_spares_clean_keys_and_helps_the_concept() {
    let train_set = generate(&data_cfg(1, 60)).unwrap();
    let test = generate(&data_cfg(2, 30)).unwrap();
    let exemplars = concept_pairs(&data_cfg(3, 10), 0, SubgroupKind::Colour).unwrap();
    let held_out = concept_pairs(&data_cfg(4, 50), 0, SubgroupKind::Colour).unwrap();
    let spec = ModelSpec::new(Arch::ConvNet { width: 32, depth: 3, norm: Norm::Batch }, train_set.shape, 6).unwrap();
    let net = trained(&spec, &train_set, 6);
    let cfg = config();
    let layer = 1;
    let chosen = choose_exemplars(&exemplars, &cfg).unwrap();
    let stats = KeyStatistics::measure(&net, &train_set, layer, false, cfg.ridge).unwrap();
    let edit = rank_one_edit_with(&net, &stats, &chosen, cfg.mask_threshold).unwrap();
    assert_eq!(edit.weight, "features.4.weight");
    let edited = edit.apply(&net).unwrap();

    // W' - W, read back from the networks as an (out, in·3·3) matrix, has rank one.
    let name = edit.weight_name();
    let delta = (&edited.named_tensors().unwrap()[&name] - &net.named_tensors().unwrap()[&name]).unwrap();
    assert_rank_one(&delta.flatten_from(1).unwrap().to_vec2::<f32>().unwrap());

    // The edit moves the exemplars' concept positions towards the original values...
    let (_, want, hw) = layer_io(&net, layer, &chosen.original).unwrap();
    let rows = concept_rows(&chosen, hw, cfg.mask_threshold).unwrap();
    assert_eq!(rows.len(), edit.num_keys);
    let idx = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), &Device::Cpu).unwrap();
    let err = |n: &Network| {
        let (_, got, _) = layer_io(n, layer, &chosen.transformed).unwrap();
        (got.index_select(&idx, 0).unwrap() - want.index_select(&idx, 0).unwrap()).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap()
    };
    let (before, after) = (err(&net), err(&edited));
    assert!(after < 0.3 * before, "exemplar error {before} -> {after}");
    // ...while clean keys, whose whitened direction differs, barely move: |dᵀk| over all clean
    // positions is small next to the exemplar keys'.
    let d = Tensor::from_slice(&edit.direction, (edit.direction.len(), 1), &Device::Cpu).unwrap();
    let response = |ds: &Dataset, pick: Option<&Tensor>| {
        let (k, _, _) = layer_io(&net, layer, ds).unwrap();
        let k = match pick { Some(i) => k.index_select(i, 0).unwrap(), None => k };
        k.matmul(&d).unwrap().abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap()
    };
    let clean_response = response(&test, None);
    let concept_response = response(&chosen.transformed, Some(&idx));
    eprintln!("exemplar error {before} -> {after}; clean response {clean_response} vs concept {concept_response}");
    assert!(clean_response < 0.1 * concept_response, "clean |dᵀk| {clean_response} vs concept {concept_response}");

    let r = run(&net, &train_set, &exemplars, &test, &held_out.transformed, &cfg).unwrap();
    eprintln!("original {:?}\nedited {:?}\nfinetuned {:?}\nexemplar err {} -> {}", r.original, r.edited, r.finetuned, r.exemplar_error_before, r.exemplar_error_after);
    assert_eq!(r.edit, edit, "run edits the default (last-but-one) conv layer with the same exemplars");
    assert!(r.exemplar_error_after < 0.3 * r.exemplar_error_before);
    assert!(r.edited.transformed_accuracy > r.original.transformed_accuracy + 0.3, "{:?} -> {:?}", r.original, r.edited);
    assert!(r.original.clean_accuracy - r.edited.clean_accuracy <= 0.01, "{:?} -> {:?}", r.original, r.edited);
    let df = r.to_dataframe().unwrap();
    assert_eq!(df.height(), 3);
    r.figure().unwrap();
    // Determinism: the same seed gives the same numbers.
    let again = run(&net, &train_set, &exemplars, &test, &held_out.transformed, &cfg).unwrap();
    assert_eq!(r, again);
}

#[test]
fn mlp_edit_with_one_exemplar_maps_its_key_exactly() {
    let train_set = generate(&data_cfg(1, 30)).unwrap();
    let exemplars = concept_pairs(&data_cfg(3, 10), 0, SubgroupKind::Colour).unwrap();
    let net = trained(&ModelSpec::named("mlp", train_set.shape, 6).unwrap(), &train_set, 3);
    let cfg = ClassifierEditingConfig { num_exemplars: 1, centre_keys: true, layer: Some(1), ..config() };
    let single = choose_exemplars(&exemplars, &cfg).unwrap();
    let edit = rank_one_edit(&net, &train_set, &single, &cfg).unwrap();
    assert_eq!(edit.num_keys, 1);
    assert!(edit.key_mean.is_some());
    let e1 = edit.apply(&net).unwrap();
    let name = edit.weight_name();
    let delta = (&e1.named_tensors().unwrap()[&name] - &net.named_tensors().unwrap()[&name]).unwrap();
    assert_rank_one(&delta.to_vec2::<f32>().unwrap());
    let (_, want, _) = layer_io(&net, 1, &single.original).unwrap();
    let (_, got, _) = layer_io(&e1, 1, &single.transformed).unwrap();
    let (_, before, _) = layer_io(&net, 1, &single.transformed).unwrap();
    let err = |a: &Tensor| (a - &want).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(err(&got) <= 1e-4 * err(&before).max(1e-6), "exact map failed: {} vs {}", err(&got), err(&before));
}

#[test]
fn layer_recomputation_matches_the_network() {
    let ds = generate(&data_cfg(5, 2)).unwrap();
    let x = ds.images_tensor(&Device::Cpu).unwrap();
    for (name, depth) in [("convnet", 3), ("convnet-bn", 3), ("cnn3", 3), ("mlp", 2)] {
        let net = Network::new(&ModelSpec::named(name, ds.shape, 6).unwrap(), 1, &Device::Cpu).unwrap();
        let mine = layer_input(&net, depth, &ds).unwrap().flatten_from(1).unwrap();
        let theirs = net.features(&x, false).unwrap();
        let diff = (mine - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{name}: features differ by {diff}");
    }
    // The unfolded keys times the weight matrix are the convolution's output.
    let net = Network::new(&ModelSpec::named("convnet", ds.shape, 6).unwrap(), 1, &Device::Cpu).unwrap();
    let input = layer_input(&net, 1, &ds).unwrap();
    let (keys, values, hw) = layer_io(&net, 1, &ds).unwrap();
    assert_eq!(hw, (8, 8));
    assert_eq!(keys.dims(), &[ds.len() * 64, 128 * 9]);
    let t = net.named_tensors().unwrap();
    let conv = input.conv2d(&t["features.4.weight"], 1, 1, 1, 1).unwrap().broadcast_add(&t["features.4.bias"].reshape((1, 128, 1, 1)).unwrap()).unwrap();
    let conv = conv.permute((0, 2, 3, 1)).unwrap().reshape((ds.len() * 64, 128)).unwrap();
    let diff = (conv - values).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-3, "unfolded keys disagree with the convolution by {diff}");
}

#[test]
fn config_errors_say_what_to_fix() {
    let ds = generate(&data_cfg(1, 4)).unwrap();
    let pairs = concept_pairs(&data_cfg(3, 4), 0, SubgroupKind::Texture).unwrap();
    let net = Network::new(&ModelSpec::new(Arch::ConvNet { width: 8, depth: 3, norm: Norm::Batch }, ds.shape, 6).unwrap(), 0, &Device::Cpu).unwrap();
    let err = |cfg: ClassifierEditingConfig, p: &ConceptPairs, n: &Network| run(n, &ds, p, &ds, &p.transformed, &cfg).unwrap_err().to_string();
    assert!(err(ClassifierEditingConfig { num_exemplars: 0, ..config() }, &pairs, &net).contains("num_exemplars"));
    assert!(err(ClassifierEditingConfig { num_exemplars: 5, ..config() }, &pairs, &net).contains("num_exemplars"));
    assert!(err(ClassifierEditingConfig { ridge: 0.0, ..config() }, &pairs, &net).contains("ridge"));
    assert!(err(ClassifierEditingConfig { mask_threshold: 0.0, ..config() }, &pairs, &net).contains("mask_threshold"));
    assert!(err(ClassifierEditingConfig { layer: Some(3), ..config() }, &pairs, &net).contains("out of range"));
    let bad = ConceptPairs { transformed: pairs.original.select(&[0, 1]).unwrap(), ..pairs.clone() };
    assert!(err(config(), &bad, &net).contains("pair by pair"));
    let unmasked = ConceptPairs { masks: vec![], ..pairs.clone() };
    assert!(err(config(), &unmasked, &net).contains("mask"));
    // A mask that covers no layer position leaves nothing to edit.
    let empty = ConceptPairs { masks: vec![vec![false; 16 * 16]; 4], ..pairs.clone() };
    assert!(err(config(), &empty, &net).contains("mask_threshold"));
    let other = Network::new(&ModelSpec::named("badnets-cnn", ds.shape, 6).unwrap(), 0, &Device::Cpu).unwrap();
    assert!(err(config(), &pairs, &other).contains("convnet"));
}
