//! CLIP zero-shot through the hub: a tiny CLIP pre-trained here, published in HF's layout to a
//! loopback hub, loaded back by hub id; prompt ensembling, the linear probe, determinism, and
//! the errors for bad input.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use transferlab::analysis::clip_pretrain::{captions, class_phrase, pretrain, ContrastiveConfig, TRAIN_TEMPLATES};
use transferlab::analysis::zero_shot::{run, ZeroShotConfig};
use transferlab::data::{generate, SyntheticConfig};
use transferlab::hub::{Family, Hub, HubConfig, LoopbackHub, ModelRegistry, Preprocess, Repo, RepoKind, HALF};
use transferlab::models::{ClipConfig, Vit, VitConfig};
use transferlab::report::Outcome;
use transferlab::train::ProgressMode;

fn hub(server: &LoopbackHub, cache: &std::path::Path) -> Hub {
    let mut c = HubConfig::new(&server.endpoint(), cache);
    c.progress = false;
    Hub::new(c)
}

fn small() -> ContrastiveConfig {
    ContrastiveConfig { width: 32, steps: 120, batch_size: 32, progress: ProgressMode::Hidden, ..Default::default() }
}

fn data(seed: u64, per_class: usize) -> transferlab::data::Dataset {
    generate(&SyntheticConfig { num_classes: 4, samples_per_class: per_class, size: 16, seed, ..Default::default() }).unwrap()
}

fn placeholder_preprocess() -> Preprocess {
    Preprocess { resize: 1, crop: 1, interpolation: "bilinear", mean: HALF, std: HALF }
}

#[test]
fn tiny_clip_through_the_hub_classifies_zero_shot() {
    let train = data(1, 64);
    let test = data(2, 16);
    let phrases: Vec<String> = train.class_names.iter().map(|c| class_phrase(c)).collect();
    let caps = captions(&train, &phrases, &TRAIN_TEMPLATES, 0).unwrap();
    let trained = pretrain(&train, &caps, &small()).unwrap();
    assert!(trained.losses.last().unwrap().1 < trained.losses[0].1, "{:?}", trained.losses);

    let dir = tempfile::tempdir().unwrap();
    trained.save_hf(&dir.path().join("repo")).unwrap();
    let server = LoopbackHub::start().unwrap();
    server.add_dir(RepoKind::Model, "local/tiny-clip", &dir.path().join("repo")).unwrap();
    let mut reg = ModelRegistry::builtin();
    // The registry's preprocessing is replaced by the repository's preprocessor_config.json.
    reg.register_hub_transformer("local/tiny-clip", Repo::model("local/tiny-clip"), "model.safetensors", Family::Clip, placeholder_preprocess()).unwrap();
    let bundle = reg.load_clip(&hub(&server, &dir.path().join("cache")), "local/tiny-clip", &Device::Cpu).unwrap();
    assert_eq!(bundle.preprocess, trained.preprocess);

    // Same numbers as the in-memory model.
    let x = trained.preprocess.apply(&test.select(&[0, 1]).unwrap()).unwrap().images_tensor(&Device::Cpu).unwrap();
    let a = trained.model().unwrap().image_embeds(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = bundle.model.image_embeds(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);

    let cfg = ZeroShotConfig { class_names: Some(phrases), progress: ProgressMode::Hidden, l2_grid: vec![1e-4, 1e-2], ..Default::default() };
    let r = run(&bundle, &train, &test, &cfg).unwrap();
    println!("single {:.3} ensemble {:.3} probe {:?}", r.single_accuracy, r.ensemble_accuracy, r.probe);
    assert_eq!(r.per_template.len(), 18);
    assert!(r.single_accuracy > 0.5, "zero-shot {:.3} is not above chance (0.25)", r.single_accuracy);
    assert!(r.probe.unwrap().0 > 0.8);
    let df = r.to_dataframe().unwrap();
    assert_eq!(df.height(), 1 + 18 + 1 + 1);
    assert!(r.figure().unwrap().to_png().unwrap().len() > 1000);
}

#[test]
fn pretraining_is_deterministic() {
    let train = data(3, 16);
    let phrases: Vec<String> = train.class_names.iter().map(|c| class_phrase(c)).collect();
    let caps = captions(&train, &phrases, &TRAIN_TEMPLATES, 5).unwrap();
    let cfg = ContrastiveConfig { steps: 6, batch_size: 16, width: 16, ..small() };
    let a = pretrain(&train, &caps, &cfg).unwrap();
    let b = pretrain(&train, &caps, &cfg).unwrap();
    assert_eq!(a.losses, b.losses);
    let c = pretrain(&train, &caps, &ContrastiveConfig { seed: 1, ..cfg }).unwrap();
    assert_ne!(a.losses, c.losses);
}

#[test]
fn bad_inputs_are_clear_errors() {
    // Config: heads that do not divide the width.
    let err = ClipConfig::from_json(r#"{"text_config": {"hidden_size": 30, "num_attention_heads": 4}}"#).unwrap_err().to_string();
    assert!(err.contains("num_attention_heads"), "{err}");
    assert!(ContrastiveConfig { image_size: 15, ..small() }.validate().is_err());
    let err = ZeroShotConfig { templates: vec!["a photo".into()], ..Default::default() }.validate().unwrap_err().to_string();
    assert!(err.contains("{}"), "{err}");

    let train = data(4, 16);
    let phrases: Vec<String> = train.class_names.iter().map(|c| class_phrase(c)).collect();
    let caps = captions(&train, &phrases, &TRAIN_TEMPLATES, 0).unwrap();
    let trained = pretrain(&train, &caps, &ContrastiveConfig { steps: 1, batch_size: 16, width: 16, ..small() }).unwrap();
    let clip = trained.model().unwrap();
    // Images of the wrong size.
    let err = clip.image_embeds(&Tensor::zeros((1, 3, 20, 20), DType::F32, &Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(err.contains("16, 16") && err.contains("reprocess"), "{err}");
    // Text longer than the context: the tokenizer truncates, the model refuses raw overlong ids.
    let ids = trained.tokenizer.encode_batch(&[&"solid circle ".repeat(50)]).unwrap();
    assert_eq!(ids.dims(), &[1, 16]);
    assert!(clip.text_embeds(&ids).is_ok());
    let err = clip.text_embeds(&Tensor::zeros((1, 40), DType::U32, &Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(err.contains("truncates"), "{err}");

    // A hub repository without the tokenizer files.
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    trained.save_hf(&repo).unwrap();
    std::fs::remove_file(repo.join("vocab.json")).unwrap();
    let server = LoopbackHub::start().unwrap();
    server.add_dir(RepoKind::Model, "local/no-vocab", &repo).unwrap();
    let mut reg = ModelRegistry::builtin();
    reg.register_hub_transformer("local/no-vocab", Repo::model("local/no-vocab"), "model.safetensors", Family::Clip, placeholder_preprocess()).unwrap();
    let err = reg.load_clip(&hub(&server, &dir.path().join("cache")), "local/no-vocab", &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("vocab.json"), "{err}");
    // Loading a CLIP as a Network, or a ViT as a CLIP, says what to use instead.
    let err = reg.load_network(&hub(&server, &dir.path().join("cache")), "local/no-vocab", &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("load_clip"), "{err}");
    assert!(reg.load_clip(&hub(&server, &dir.path().join("cache")), "google/vit-base-patch16-224", &Device::Cpu).is_err());
}

#[test]
fn vit_loads_by_hub_id_with_its_preprocessing() {
    let config_json = r#"{"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        "image_size": 16, "patch_size": 8, "id2label": {"0": "cat", "1": "dog", "2": "car"}}"#;
    let cfg = VitConfig::from_json(config_json).unwrap();
    let varmap = VarMap::new();
    let vit = Vit::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tensors = varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    transferlab::weights::write_safetensors(&dir.path().join("model.safetensors"), &tensors, None).unwrap();
    let server = LoopbackHub::start().unwrap();
    server.add_model_file("org/vit-tiny", "model.safetensors", std::fs::read(dir.path().join("model.safetensors")).unwrap());
    server.add_model_file("org/vit-tiny", "config.json", config_json.as_bytes().to_vec());
    server.add_model_file(
        "org/vit-tiny",
        "preprocessor_config.json",
        br#"{"do_normalize": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 16}"#.to_vec(),
    );
    let mut reg = ModelRegistry::builtin();
    reg.register_hub_transformer("org/vit-tiny", Repo::model("org/vit-tiny"), "model.safetensors", Family::Vit, placeholder_preprocess()).unwrap();
    let (got, pre) = reg.load_vit(&hub(&server, &dir.path().join("cache")), "org/vit-tiny", &Device::Cpu).unwrap();
    assert_eq!((pre.resize, pre.crop, pre.mean), (16, 16, HALF));
    assert_eq!(got.config().labels(), vec!["cat", "dog", "car"]);
    let x = pre.apply(&data(5, 1).select(&[0, 1]).unwrap()).unwrap().images_tensor(&Device::Cpu).unwrap();
    assert_eq!(vit.forward(&x).unwrap().to_vec2::<f32>().unwrap(), got.forward(&x).unwrap().to_vec2::<f32>().unwrap());
    assert_eq!(got.predict(&x).unwrap().len(), 2);
    let err = got.forward(&Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(err.contains("(N, 3, 16, 16)"), "{err}");
    assert!(VitConfig::from_json(r#"{"image_size": 20, "patch_size": 8}"#).is_err());
}
