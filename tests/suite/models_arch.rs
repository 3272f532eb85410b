//! Every registered architecture: shapes, PyTorch parameter names and counts, batch-norm modes,
//! seeding, head replacement, freezing, and numerical equivalence with the PyTorch references
//! (fixtures from tests/fixtures/make_model_fixtures.py; no Python needed here).

use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use transferlab::models::{is_buffer, LoadMode, ModelSpec, Network, MODEL_NAMES};
use transferlab::weights::{write_safetensors, NamedTensors};
use transferlab::Error;

/// An input shape each model accepts and is quick at.
fn input_for(name: &str) -> (usize, usize, usize) {
    match name {
        "mlp" | "badnets-cnn" => (1, 28, 28),
        "resnet18" | "resnet50" => (3, 64, 64),
        _ => (3, 32, 32),
    }
}

fn build(name: &str, classes: usize, seed: u64) -> Network {
    let spec = ModelSpec::named(name, input_for(name), classes).unwrap();
    Network::new(&spec, seed, &Device::Cpu).unwrap()
}

fn images(name: &str, n: usize) -> Tensor {
    let (c, h, w) = input_for(name);
    let v = unit("input", n * c * h * w);
    Tensor::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap()
}

fn trainable_count(net: &Network) -> usize {
    net.named_shapes().iter().filter(|(k, _)| !is_buffer(k)).map(|(_, s)| s.iter().product::<usize>()).sum()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

/// max |a - b| / max |b|: one number for how far logits are from the reference, insensitive to
/// their overall scale.
fn relative_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    diff / scale
}

#[test]
fn every_registered_model_builds_and_gives_logits_and_features() {
    for (name, _) in MODEL_NAMES {
        let net = build(name, 7, 0);
        let x = images(name, 2);
        assert_eq!(net.forward(&x, false).unwrap().dims(), &[2, 7], "{name}");
        let f = net.features(&x, false).unwrap();
        assert_eq!(f.dims(), &[2, net.feature_dim()], "{name}");
        let expected_dim = match *name {
            "badnets-cnn" => Some(512),
            "resnet20" | "resnet32" | "resnet44" | "resnet56" => Some(64),
            "preact-resnet18" | "resnet18" => Some(512),
            "resnet50" => Some(2048),
            _ => None,
        };
        if let Some(d) = expected_dim {
            assert_eq!(net.feature_dim(), d, "{name}");
        }
        assert!(values(&f).iter().all(|v| v.is_finite()), "{name}");
    }
}

#[test]
fn badnets_cnn_flatten_follows_the_input_size() {
    let mnist = Network::new(&ModelSpec::named("badnets-cnn", (1, 28, 28), 10).unwrap(), 0, &Device::Cpu).unwrap();
    assert_eq!(mnist.named_shapes()["fc1.weight"], vec![512, 512]);
    let cifar = Network::new(&ModelSpec::named("badnets-cnn", (3, 32, 32), 10).unwrap(), 0, &Device::Cpu).unwrap();
    assert_eq!(cifar.named_shapes()["fc1.weight"], vec![512, 800]);
    assert_eq!(cifar.named_shapes()["conv1.weight"], vec![16, 3, 5, 5]);
}

#[test]
fn parameter_names_follow_the_pytorch_references() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("badnets-cnn", &["conv1.weight", "conv1.bias", "conv2.weight", "fc1.weight", "fc2.weight", "fc2.bias"], &[]),
        (
            "resnet20",
            &["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer3.2.bn2.running_var", "linear.weight", "linear.bias"],
            &["conv1.bias", "layer3.3.conv1.weight", "layer2.0.shortcut.0.weight", "fc.weight"],
        ),
        (
            "resnet56",
            &["layer1.8.conv2.weight", "layer3.8.bn2.bias"],
            &["layer1.9.conv1.weight"],
        ),
        (
            "preact-resnet18",
            &["conv1.weight", "layer1.0.bn1.weight", "layer2.0.shortcut.0.weight", "layer4.1.conv2.weight", "linear.weight"],
            &["bn1.weight", "layer1.0.shortcut.0.weight", "layer2.1.shortcut.0.weight", "bn.weight"],
        ),
        (
            "resnet18",
            &["conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.bias", "layer4.1.bn2.weight", "fc.weight"],
            &["layer1.0.downsample.0.weight", "layer1.0.conv3.weight", "conv1.bias"],
        ),
        (
            "resnet50",
            &["layer4.2.conv3.weight", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean", "layer3.5.bn3.weight", "fc.bias"],
            &["layer1.1.downsample.0.weight", "layer3.6.conv1.weight"],
        ),
    ];
    for (name, present, absent) in cases {
        let shapes = build(name, 10, 0).named_shapes();
        for p in *present {
            assert!(shapes.contains_key(*p), "{name} should have {p}");
        }
        for a in *absent {
            assert!(!shapes.contains_key(*a), "{name} should not have {a}");
        }
    }
    // torchvision v1.5: the bottleneck's stride sits on the 3x3 convolution, where the shape says so.
    let r50 = build("resnet50", 10, 0).named_shapes();
    assert_eq!(r50["layer2.0.conv1.weight"], vec![128, 256, 1, 1]);
    assert_eq!(r50["layer2.0.conv2.weight"], vec![128, 128, 3, 3]);
    assert_eq!(r50["layer2.0.conv3.weight"], vec![512, 128, 1, 1]);
    assert_eq!(r50["fc.weight"], vec![10, 2048]);
}

#[test]
fn parameter_counts_match_the_references() {
    // Trainable parameters only (running statistics excluded), as `sum(p.numel() for p in
    // model.parameters())` counts them.
    let cases = [
        ("resnet20", (3, 32, 32), 10, 269_722),
        ("badnets-cnn", (1, 28, 28), 10, 281_034),
        ("preact-resnet18", (3, 32, 32), 10, 11_171_146),
        ("resnet18", (3, 224, 224), 1000, 11_689_512),
        ("resnet50", (3, 224, 224), 1000, 25_557_032),
    ];
    for (name, input, classes, want) in cases {
        let net = Network::new(&ModelSpec::named(name, input, classes).unwrap(), 0, &Device::Cpu).unwrap();
        assert_eq!(trainable_count(&net), want, "{name}");
    }
}

#[test]
fn batch_norm_updates_running_statistics_in_training_only() {
    let net = build("resnet20", 10, 1);
    let x = images("resnet20", 4);
    let before = net.named_tensors().unwrap();
    net.forward(&x, false).unwrap();
    let after_eval = net.named_tensors().unwrap();
    for k in ["bn1.running_mean", "bn1.running_var", "layer3.2.bn2.running_var"] {
        assert_eq!(values(&before[k]), values(&after_eval[k]), "eval changed {k}");
    }
    net.forward(&x, true).unwrap();
    let after_train = net.named_tensors().unwrap();
    for k in ["bn1.running_mean", "bn1.running_var", "layer3.2.bn2.running_var"] {
        assert_ne!(values(&before[k]), values(&after_train[k]), "training left {k} unchanged");
    }
}

#[test]
fn seeds_decide_the_weights() {
    let a = build("resnet20", 10, 3).named_tensors().unwrap();
    let b = build("resnet20", 10, 3).named_tensors().unwrap();
    let c = build("resnet20", 10, 4).named_tensors().unwrap();
    for (k, t) in &a {
        assert_eq!(values(t), values(&b[k]), "{k} differs under the same seed");
    }
    for k in ["conv1.weight", "layer2.0.conv1.weight", "linear.weight", "linear.bias"] {
        assert_ne!(values(&a[k]), values(&c[k]), "{k} is the same under different seeds");
    }
}

#[test]
fn replace_head_changes_the_output_width() {
    let mut net = build("resnet18", 10, 0);
    let x = images("resnet18", 2);
    let features = values(&net.features(&x, false).unwrap());
    net.replace_head(5, 9).unwrap();
    assert_eq!(net.forward(&x, false).unwrap().dims(), &[2, 5]);
    assert_eq!(net.named_shapes()["fc.weight"], vec![5, 512]);
    assert_eq!(values(&net.features(&x, false).unwrap()), features);
}

#[test]
fn a_frozen_body_keeps_its_features_through_a_training_forward() {
    for name in ["resnet20", "preact-resnet18"] {
        let mut net = build(name, 10, 2);
        net.freeze_body();
        let x = images(name, 4);
        let before = values(&net.features(&x, false).unwrap());
        let stats_before = values(&net.named_tensors().unwrap()["layer1.0.bn1.running_mean"]);
        net.forward(&x, true).unwrap();
        assert_eq!(values(&net.features(&x, false).unwrap()), before, "{name}");
        assert_eq!(values(&net.named_tensors().unwrap()["layer1.0.bn1.running_mean"]), stats_before, "{name}");
        assert!(net.trainable_vars().iter().all(|(k, _)| net.is_head(k)), "{name}");
    }
}

#[test]
fn resnets_train_through_the_max_pool_stem() {
    // candle's own max pooling has no backward pass for overlapping windows (3x3, stride 2).
    let net = Network::new(&ModelSpec::named("resnet18", (3, 32, 32), 10).unwrap(), 0, &Device::Cpu).unwrap();
    let x = Tensor::from_vec(unit("input", 2 * 3 * 32 * 32), (2, 3, 32, 32), &Device::Cpu).unwrap();
    let loss = net.forward(&x, true).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    for (k, var) in net.trainable_vars() {
        if k == "conv1.weight" || k == "fc.weight" {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {k}"));
            assert!(values(g).iter().any(|v| *v != 0.0), "zero gradient for {k}");
        }
    }
}

// --- numerical equivalence with PyTorch -------------------------------------------------------

/// The fixtures' weight generator, as tests/fixtures/make_model_fixtures.py writes it:
/// SplitMix64 at counters 1..=n from FNV-1a of `name`, top 24 bits mapped to [-1, 1).
fn unit(name: &str, n: usize) -> Vec<f32> {
    let mut seed: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        seed = (seed ^ b as u64).wrapping_mul(0x100000001b3);
    }
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E3779B97F4A7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            (z >> 40) as f32 * 2f32.powi(-23) - 1.0
        })
        .collect()
}

/// The value the fixture script gives a state-dict entry.
fn synthetic(name: &str, shape: &[usize], dtype: &str) -> Tensor {
    let n: usize = shape.iter().product();
    if dtype == "int64" {
        return Tensor::zeros(shape, DType::I64, &Device::Cpu).unwrap();
    }
    let leaf = name.rsplit('.').next().unwrap();
    let v = unit(name, n);
    let out: Vec<f32> = match leaf {
        "running_mean" | "bias" => v.iter().map(|x| 0.1 * x).collect(),
        "running_var" => v.iter().map(|x| 0.5 * x + 1.0).collect(),
        "weight" if shape.len() == 1 => v.iter().map(|x| 0.25 * x + 0.75).collect(),
        _ if shape.len() >= 2 => {
            let fan_in: usize = shape[1..].iter().product();
            let bound = (6.0f32 / fan_in as f32).sqrt();
            v.iter().map(|x| bound * x).collect()
        }
        _ => v.iter().map(|x| 0.1 * x).collect(),
    };
    Tensor::from_vec(out, shape, &Device::Cpu).unwrap()
}

struct Reference {
    json: serde_json::Value,
    file: PathBuf,
    dir: tempfile::TempDir,
}

/// Load a fixture and write the weights PyTorch had as a safetensors file, names, shapes
/// and dtypes from its state dict (step counters included).
fn reference(name: &str) -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/ref_{name}.json"));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut tensors = NamedTensors::new();
    for e in json["state_dict"].as_array().unwrap() {
        let k = e["name"].as_str().unwrap();
        let shape: Vec<usize> = e["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        tensors.insert(k.to_string(), synthetic(k, &shape, e["dtype"].as_str().unwrap()));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.safetensors"));
    write_safetensors(&file, &tensors, None).unwrap();
    Reference { json, file, dir }
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Array(a) => a.iter().flat_map(floats).collect(),
        other => vec![other.as_f64().unwrap()],
    }
}

fn check_against_pytorch(name: &str) {
    let r = reference(name);
    let shape: Vec<usize> = r.json["input_shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let classes = r.json["num_classes"].as_u64().unwrap() as usize;
    let spec = ModelSpec::named(name, (shape[1], shape[2], shape[3]), classes).unwrap();
    let mut net = Network::new(&spec, 0, &Device::Cpu).unwrap();
    net.load(&r.file, LoadMode::Strict).unwrap();
    assert_eq!(trainable_count(&net) as u64, r.json["trainable_parameters"].as_u64().unwrap(), "{name}");

    let x = Tensor::from_vec(unit("input", shape.iter().product()), shape.as_slice(), &Device::Cpu).unwrap();
    let eval = relative_diff(&values(&net.forward(&x, false).unwrap()), &floats(&r.json["logits_eval"]));
    let train = relative_diff(&values(&net.forward(&x, true).unwrap()), &floats(&r.json["logits_train"]));
    eprintln!("{name}: relative max logit difference vs PyTorch: eval {eval:.2e}, train {train:.2e}");
    assert!(eval < 1e-4, "{name}: eval logits differ from PyTorch by {eval:.2e} (relative)");
    // Batch statistics over few values per channel (8 in ResNet-50's layer4) are poorly
    // conditioned: PyTorch's own float32 train-mode logits are 4.5e-5 from its float64 ones.
    assert!(train < 5e-4, "{name}: train-mode logits differ from PyTorch by {train:.2e} (relative)");

    let now = net.named_tensors().unwrap();
    for (k, want) in r.json["running_after_train"].as_object().unwrap() {
        let d = relative_diff(&values(&now[k]), &floats(want));
        assert!(d < 1e-4, "{name}: {k} after one training step differs from PyTorch by {d:.2e}");
    }
}

#[test]
fn badnets_cnn_matches_pytorch() {
    check_against_pytorch("badnets-cnn");
}

#[test]
fn resnet20_matches_pytorch() {
    check_against_pytorch("resnet20");
}

#[test]
fn preact_resnet18_matches_pytorch() {
    check_against_pytorch("preact-resnet18");
}

#[test]
fn resnet18_matches_torchvision() {
    check_against_pytorch("resnet18");
}

#[test]
fn resnet50_matches_torchvision() {
    check_against_pytorch("resnet50");
}

#[test]
fn a_wrong_shaped_tensor_is_named_in_the_error() {
    let r = reference("resnet20");
    let mut tensors = transferlab::weights::read_weights(&r.file).unwrap();
    tensors.insert("layer2.0.conv1.weight".into(), Tensor::zeros((32, 16, 1, 1), DType::F32, &Device::Cpu).unwrap());
    let bad = r.dir.path().join("bad.safetensors");
    write_safetensors(&bad, &tensors, None).unwrap();
    let mut net = build("resnet20", 10, 0);
    let before: BTreeMap<String, Vec<f32>> = net.named_tensors().unwrap().iter().map(|(k, t)| (k.clone(), values(t))).collect();
    match net.load(&bad, LoadMode::Strict) {
        Err(Error::WeightMismatch(msg)) => {
            assert!(msg.contains("layer2.0.conv1.weight"), "{msg}");
            assert!(msg.contains("[32, 16, 3, 3]") && msg.contains("[32, 16, 1, 1]"), "{msg}");
        }
        other => panic!("expected a weight mismatch, got {other:?}"),
    }
    // A refused file leaves the model as it was.
    let after = net.named_tensors().unwrap();
    assert!(after.iter().all(|(k, t)| values(t) == before[k]));
}
