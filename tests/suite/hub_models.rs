//! The model registry against a loopback hub, and `tlab fetch`.

use candle_core::{Device, Tensor};
use transferlab::hub::{Hub, HubConfig, LoopbackHub, ModelRegistry, Preprocess, Repo, HALF, IMAGENET_MEAN, IMAGENET_STD};
use transferlab::models::{ModelSpec, Network};
use transferlab::weights::write_safetensors;

fn hub(server: &LoopbackHub, cache: &std::path::Path) -> Hub {
    let mut c = HubConfig::new(&server.endpoint(), cache);
    c.progress = false;
    Hub::new(c)
}

fn input(shape: (usize, usize, usize)) -> Tensor {
    let n = 2 * shape.0 * shape.1 * shape.2;
    let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 / 101.0) - 0.5).collect();
    Tensor::from_vec(v, (2, shape.0, shape.1, shape.2), &Device::Cpu).unwrap()
}

#[test]
fn resnet18_from_the_hub_matches_the_saved_network() {
    let server = LoopbackHub::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = ModelSpec::named("resnet18", (3, 224, 224), 1000).unwrap();
    let net = Network::new(&spec, 7, &Device::Cpu).unwrap();
    let p = dir.path().join("w.safetensors");
    write_safetensors(&p, &net.named_tensors().unwrap(), None).unwrap();
    server.add_model_file("timm/resnet18.a1_in1k", "model.safetensors", std::fs::read(&p).unwrap());
    // The repository's own statistics (timm's pretrained_cfg) win over the registry's.
    let config = br#"{"architecture": "resnet18", "pretrained_cfg": {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.5]}}"#;
    server.add_model_file("timm/resnet18.a1_in1k", "config.json", config.to_vec());
    let reg = ModelRegistry::builtin();
    let got = reg.load_network(&hub(&server, &dir.path().join("cache")), "timm/resnet18.a1_in1k", &Device::Cpu).unwrap();
    let norm = got.spec().normalize.clone().expect("hub models carry their input statistics");
    assert_eq!((norm.mean.clone(), norm.std.clone()), (vec![0.5, 0.4, 0.3], vec![0.25, 0.2, 0.5]));
    // The loaded model takes [0, 1] pixels: equal to the saved network on normalised inputs.
    let x = input((3, 224, 224));
    assert_close(&got.forward(&x, false).unwrap(), &net.forward(&normalised(&x, &norm.mean, &norm.std), false).unwrap());
}

fn normalised(x: &Tensor, mean: &[f32], std: &[f32]) -> Tensor {
    let c = mean.len();
    let m = Tensor::from_slice(mean, (1, c, 1, 1), &Device::Cpu).unwrap();
    let s = Tensor::from_slice(std, (1, c, 1, 1), &Device::Cpu).unwrap();
    x.broadcast_sub(&m).unwrap().broadcast_div(&s).unwrap()
}

fn assert_close(a: &Tensor, b: &Tensor) {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-4 * scale, "max difference {worst} (scale {scale})");
}

#[test]
fn bit_head_convolution_is_reshaped_and_local_files_register() {
    let server = LoopbackHub::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = ModelSpec::named("resnetv2-tiny", (3, 32, 32), 5).unwrap();
    let net = Network::new(&spec, 3, &Device::Cpu).unwrap();
    let mut t = net.named_tensors().unwrap();
    let w = t["head.fc.weight"].clone();
    let (k, f) = w.dims2().unwrap();
    t.insert("head.fc.weight".into(), w.reshape((k, f, 1, 1)).unwrap());
    let p = dir.path().join("bit.safetensors");
    write_safetensors(&p, &t, None).unwrap();
    server.add_model_file("org/bit-tiny", "model.safetensors", std::fs::read(&p).unwrap());

    let pre = Preprocess::timm(32, 0.875, "bilinear", HALF, HALF);
    let mut reg = ModelRegistry::builtin();
    reg.register_hub("org/bit-tiny", Repo::model("org/bit-tiny"), "model.safetensors", spec.clone(), pre.clone()).unwrap();
    reg.register_local("local/bit-tiny", &p, spec.clone(), pre.clone()).unwrap();
    assert!(reg.register_local("local/bit-tiny", &p, spec, pre).is_err());
    let h = hub(&server, &dir.path().join("cache"));
    // No config.json in these repositories: the registry's statistics (HALF) go inside.
    let x = input((3, 32, 32));
    let want = net.forward(&normalised(&x, &HALF, &HALF), false).unwrap();
    for name in ["org/bit-tiny", "local/bit-tiny"] {
        let got = reg.load_network(&h, name, &Device::Cpu).unwrap();
        assert_eq!(got.spec().normalize.as_ref().map(|n| n.mean.clone()), Some(HALF.to_vec()), "{name}");
        assert_close(&got.forward(&x, false).unwrap(), &want);
    }
    let err = reg.get("timm/resnet19").unwrap_err().to_string();
    assert!(err.contains("timm/resnet18.a1_in1k"), "{err}");
}

#[test]
fn documented_preprocessing() {
    let reg = ModelRegistry::builtin();
    let r50 = reg.get("timm/resnet50.a1_in1k").unwrap();
    assert_eq!((r50.preprocess.resize, r50.preprocess.crop), (235, 224));
    assert_eq!(r50.preprocess.mean, IMAGENET_MEAN);
    assert_eq!(r50.preprocess.std, IMAGENET_STD);
    let bit = reg.get("timm/resnetv2_50x1_bit.goog_in21k").unwrap();
    assert_eq!((bit.preprocess.resize, bit.preprocess.crop), (256, 224));
    // A 32x48 image: shorter side to 235, centre crop 224.
    let ds = transferlab::data::Dataset::new(vec![0.485; 3 * 32 * 48], (3, 32, 48), vec![0], vec!["a".into()]).unwrap();
    let out = r50.preprocess.apply(&ds).unwrap();
    assert_eq!(out.shape, (3, 224, 224));
    assert!(out.image(0)[..224 * 224].iter().all(|x| x.abs() < 1e-5));
}

#[test]
fn tlab_fetch_fills_the_cache_for_offline_use() {
    let server = LoopbackHub::start().unwrap();
    server.add_model_file("org/tiny", "model.safetensors", vec![7u8; 3000]);
    server.add_model_file("org/tiny", "config.json", b"{}".to_vec());
    server.add_model_file("org/tiny", "pytorch_model.bin", vec![1u8; 3000]);
    server.add_dataset_file("org/data", "README.md", b"---\n---\n".to_vec());
    server.add_dataset_file("org/data", "cfg/test-00000-of-00001.parquet", vec![2u8; 2000]);
    server.add_dataset_file("org/data", "cfg/train-00000-of-00001.parquet", vec![3u8; 2000]);
    let home = tempfile::tempdir().unwrap();
    let tlab = |args: &[&str], offline: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tlab"));
        c.args(args).env("HF_HOME", home.path()).env("HF_ENDPOINT", server.endpoint()).env("HF_HUB_DISABLE_PROGRESS_BARS", "1");
        c.env_remove("HF_HUB_CACHE").env_remove("HF_TOKEN");
        if offline {
            c.env("HF_HUB_OFFLINE", "1");
        } else {
            c.env_remove("HF_HUB_OFFLINE");
        }
        c.output().unwrap()
    };
    let out = tlab(&["fetch", "org/tiny"], false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 files of org/tiny"), "{stdout}");
    assert!(home.path().join("hub/models--org--tiny/refs/main").is_file());
    let out = tlab(&["fetch", "datasets/org/data", "--split", "test"], false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 files of datasets/org/data"));
    // Offline: a second fetch of what is there succeeds, of what is not fails with advice.
    assert!(tlab(&["fetch", "org/tiny"], true).status.success());
    let out = tlab(&["fetch", "datasets/org/data"], true);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("train-00000-of-00001.parquet") && err.contains("HF_HUB_OFFLINE"), "{err}");
}
