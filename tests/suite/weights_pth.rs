//! PyTorch `.pth` reading against fixtures written by real `torch.save`
//! (tests/fixtures/make_pth_fixtures.py); expected values come from the same script.

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::path::{Path, PathBuf};
use transferlab::weights::{self, describe_weights, read_weights, strip_prefix, NamedTensors, WeightFormat};
use transferlab::Error;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pth")
        .join(name)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn candle_dtype(torch: &str) -> DType {
    match torch {
        "float32" => DType::F32,
        "float64" => DType::F64,
        "float16" => DType::F16,
        "bfloat16" => DType::BF16,
        "int64" | "int32" | "int16" | "int8" => DType::I64,
        "uint8" | "bool" => DType::U8,
        other => panic!("fixture dtype {other} not mapped"),
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Equal up to the last bit of an f64: serde_json's default float parser (without the
/// `float_roundtrip` feature) can land one ulp away from Python's shortest repr, and that
/// slack is still far below any f32/f16/bf16 rounding step a wrong read would show.
fn same(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 2.0 * f64::EPSILON * g.abs().max(w.abs()),
            "{what}[{i}]: got {g}, expected {w}"
        );
    }
}

fn close(got: f64, want: f64, scale: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-9 * (1.0 + scale),
        "{what}: got {got}, expected {want}"
    );
}

#[test]
fn every_fixture_matches_torch_values_exactly() {
    let exp = expected();
    let files = exp["files"].as_object().unwrap();
    assert!(files.len() >= 9, "expected.json lists {} files", files.len());
    for (file, tensors) in files {
        let got = read_weights(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let tensors = tensors.as_object().unwrap();
        let names: Vec<&String> = got.keys().collect();
        let mut want_names: Vec<&String> = tensors.keys().collect();
        want_names.sort();
        assert_eq!(names, want_names, "{file}: tensor names");
        for (name, e) in tensors {
            let what = format!("{file}:{name}");
            let t = &got[name];
            assert_eq!(t.dtype(), candle_dtype(e["dtype"].as_str().unwrap()), "{what}: dtype");
            let shape: Vec<usize> = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(t.dims(), shape.as_slice(), "{what}: shape");
            let v = values(t);
            if let Some(all) = e.get("values") {
                same(&v, &floats(all), &format!("{what}: values"));
            } else {
                let first = floats(&e["first"]);
                same(&v[..first.len()], &first, &format!("{what}: leading values"));
            }
            let scale: f64 = v.iter().map(|x| x.abs()).sum();
            close(
                v.iter().sum(),
                e["sum"].as_f64().unwrap(),
                scale,
                &format!("{what}: sum"),
            );
            let wsum: f64 = v.iter().enumerate().map(|(i, x)| x * ((i % 7) + 1) as f64).sum();
            close(
                wsum,
                e["wsum"].as_f64().unwrap(),
                7.0 * scale,
                &format!("{what}: weighted sum"),
            );
        }
    }
}

#[test]
fn zip_legacy_and_protocol_4_files_agree() {
    for (a, b) in [
        ("tiny_zip.pth", "tiny_legacy.pth"),
        ("tiny_zip.pth", "tiny_proto4_zip.pth"),
        ("views_zip.pth", "views_legacy.pth"),
        ("dtypes_zip.pth", "dtypes_legacy.pth"),
    ] {
        let (x, y) = (read_weights(&fixture(a)).unwrap(), read_weights(&fixture(b)).unwrap());
        assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{a} vs {b}");
        for (name, t) in &x {
            assert_eq!(t.dtype(), y[name].dtype(), "{a} vs {b}: {name}");
            assert_eq!(values(t), values(&y[name]), "{a} vs {b}: {name}");
        }
    }
}

#[test]
fn tiny_model_has_the_expected_layout() {
    let sd = read_weights(&fixture("tiny_zip.pth")).unwrap();
    assert_eq!(sd["conv.weight"].dims(), &[4, 3, 3, 3]);
    assert_eq!(sd["fc.weight"].dims(), &[2, 4]);
    let nbt = &sd["bn.num_batches_tracked"];
    assert_eq!((nbt.dtype(), nbt.dims()), (DType::I64, &[][..]));
    assert_eq!(nbt.to_scalar::<i64>().unwrap(), 1);
}

#[test]
fn views_of_one_storage_are_gathered_in_logical_order() {
    for file in ["views_zip.pth", "views_legacy.pth"] {
        let sd = read_weights(&fixture(file)).unwrap();
        let base = &sd["base"];
        assert_eq!(
            values(&sd["t"]),
            values(&base.t().unwrap().contiguous().unwrap()),
            "{file}"
        );
        assert_eq!(values(&sd["row"]), values(&base.get(1).unwrap()), "{file}");
        assert_eq!(values(&sd["col"]), values(&base.narrow(1, 2, 1).unwrap()), "{file}");
        assert_eq!(values(&sd["strided"]), vec![-2.5, -1.5, -0.5, 3.5, 4.5, 5.5], "{file}");
        assert_eq!(values(&sd["expanded"]), vec![0.0, 1.0, 2.0, 0.0, 1.0, 2.0], "{file}");
        // Materialised tensors own their data: no aliasing survives the load.
        assert!(sd["t"].is_contiguous());
    }
}

#[test]
fn dtypes_are_widened_as_documented() {
    let sd = read_weights(&fixture("dtypes_zip.pth")).unwrap();
    assert_eq!(
        sd["i32"].to_vec1::<i64>().unwrap(),
        vec![i32::MIN as i64, 0, i32::MAX as i64]
    );
    assert_eq!(sd["i16"].to_vec1::<i64>().unwrap(), vec![-300, 0, 300]);
    assert_eq!(sd["i8"].to_vec1::<i64>().unwrap(), vec![-128, -1, 127]);
    assert_eq!(sd["u8"].to_vec1::<u8>().unwrap(), vec![0, 1, 255]);
    assert_eq!(sd["bool"].to_vec1::<u8>().unwrap(), vec![1, 0, 1]);
    assert_eq!(sd["i64"].to_vec2::<i64>().unwrap()[1], vec![1 << 40, -(1 << 40), 7]);
    assert_eq!(sd["scalar"].to_scalar::<f32>().unwrap(), 2.5);
    assert_eq!(sd["empty"].dims(), &[0, 3]);
    assert_eq!(sd["f16"].dtype(), DType::F16);
    assert_eq!(sd["bf16"].dtype(), DType::BF16);
}

#[test]
fn checkpoint_dicts_yield_their_state_dict() {
    let sd = read_weights(&fixture("checkpoint_zip.pth")).unwrap();
    assert_eq!(sd.keys().collect::<Vec<_>>(), ["module.bias", "module.weight"]);
    let stripped = strip_prefix(sd, "module.").unwrap();
    assert_eq!(stripped.keys().collect::<Vec<_>>(), ["bias", "weight"]);
    assert_eq!(stripped["weight"].dims(), &[2, 3]);

    let nested = read_weights(&fixture("nested_zip.pth")).unwrap();
    assert_eq!(
        nested.keys().collect::<Vec<_>>(),
        ["encoder.layer.b", "encoder.w", "head.weight"]
    );
}

#[test]
fn strip_prefix_keeps_other_names_and_refuses_collisions() {
    let z = || Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
    let mut t = NamedTensors::new();
    t.insert("module.a".into(), z());
    t.insert("b".into(), z());
    let s = strip_prefix(t.clone(), "module.").unwrap();
    assert_eq!(s.keys().collect::<Vec<_>>(), ["a", "b"]);
    t.insert("a".into(), z());
    assert!(matches!(
        strip_prefix(t, "module.").unwrap_err(),
        Error::InvalidArgument { .. }
    ));
}

#[test]
fn malicious_files_are_refused_naming_the_global() {
    let exp = expected();
    let refused = exp["refused"].as_object().unwrap();
    assert_eq!(refused.len(), 4);
    for (file, global) in refused {
        let global = global.as_str().unwrap();
        let path = fixture(file);
        for result in [read_weights(&path).map(|_| ()), describe_weights(&path).map(|_| ())] {
            match result {
                Err(e @ Error::UnsafePickle { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(global), "{file}: message does not name {global}: {msg}");
                }
                other => panic!("{file}: expected UnsafePickle, got {other:?}"),
            }
        }
    }
    let e = read_weights(&fixture("whole_module_zip.pth")).unwrap_err();
    assert!(e.to_string().contains("torch.nn.modules.linear.Linear"), "{e}");
}

#[test]
fn truncated_files_are_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "tiny_zip.pth",
        "tiny_legacy.pth",
        "views_legacy.pth",
        "dtypes_legacy.pth",
    ] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        let cut = dir.path().join(file);
        let lengths = (0..bytes.len()).step_by(13).chain([bytes.len() - 1, bytes.len() - 8]);
        for n in lengths {
            std::fs::write(&cut, &bytes[..n]).unwrap();
            match read_weights(&cut) {
                Err(Error::Format { .. }) => {}
                other => panic!(
                    "{file} cut to {n} of {} bytes: expected a format error, got {other:?}",
                    bytes.len()
                ),
            }
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    // Every single-byte change of a legacy file (pickles and storages alike) must give a
    // clean result or a clean error.
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("views_legacy.pth")).unwrap();
    let path = dir.path().join("x.pth");
    for i in 0..bytes.len() {
        for v in [0x00, 0xff, bytes[i] ^ 0x01] {
            let mut b = bytes.clone();
            b[i] = v;
            std::fs::write(&path, &b).unwrap();
            let _ = read_weights(&path);
        }
    }
}

#[test]
fn zip_entry_corruption_is_caught_by_crc() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("views_zip.pth")).unwrap();
    // Storage 0 holds base = arange(24) * 0.5 - 3: find its first float and change it.
    let needle = (-3.0f32).to_le_bytes();
    let at = bytes.windows(4).position(|w| w == needle).unwrap();
    bytes[at] ^= 0x01;
    let path = dir.path().join("x.pth");
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(read_weights(&path).unwrap_err(), Error::Format { .. }));
}

#[test]
fn describe_reads_headers_in_file_order() {
    let (format, infos) = describe_weights(&fixture("tiny_zip.pth")).unwrap();
    assert_eq!(format, WeightFormat::PthZip);
    let names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "conv.weight",
            "conv.bias",
            "bn.weight",
            "bn.bias",
            "bn.running_mean",
            "bn.running_var",
            "bn.num_batches_tracked",
            "fc.weight",
            "fc.bias"
        ]
    );
    assert_eq!(
        (infos[0].dtype, infos[0].shape.as_slice()),
        (DType::F32, &[4, 3, 3, 3][..])
    );
    assert_eq!(infos[6].dtype, DType::I64);

    let (format, infos) = describe_weights(&fixture("dtypes_legacy.pth")).unwrap();
    assert_eq!(format, WeightFormat::PthLegacy);
    let loaded = read_weights(&fixture("dtypes_legacy.pth")).unwrap();
    for i in &infos {
        assert_eq!(
            (i.dtype, i.shape.as_slice()),
            (loaded[&i.name].dtype(), loaded[&i.name].dims()),
            "{}",
            i.name
        );
    }
}

#[test]
fn safetensors_round_trip_through_read_and_describe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let dev = Device::Cpu;
    let mut t = NamedTensors::new();
    t.insert(
        "b.weight".into(),
        Tensor::arange(0f32, 6., &dev).unwrap().reshape((2, 3)).unwrap(),
    );
    t.insert("a.steps".into(), Tensor::new(&[3i64, -4], &dev).unwrap());
    t.insert(
        "c.half".into(),
        Tensor::new(&[1.5f32], &dev).unwrap().to_dtype(DType::BF16).unwrap(),
    );
    weights::write_safetensors(&path, &t, None).unwrap();
    let back = read_weights(&path).unwrap();
    assert_eq!(back.keys().collect::<Vec<_>>(), t.keys().collect::<Vec<_>>());
    for (name, x) in &t {
        assert_eq!(back[name].dtype(), x.dtype());
        assert_eq!(values(&back[name]), values(x), "{name}");
    }
    let (format, infos) = describe_weights(&path).unwrap();
    assert_eq!(format, WeightFormat::Safetensors);
    let mut described: Vec<(String, DType, Vec<usize>)> =
        infos.into_iter().map(|i| (i.name, i.dtype, i.shape)).collect();
    described.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        described,
        vec![
            ("a.steps".to_string(), DType::I64, vec![2]),
            ("b.weight".to_string(), DType::F32, vec![2, 3]),
            ("c.half".to_string(), DType::BF16, vec![1]),
        ]
    );
}

#[test]
fn a_safetensors_file_is_not_read_as_pth() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let mut t = NamedTensors::new();
    t.insert("x".into(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap());
    weights::write_safetensors(&path, &t, None).unwrap();
    assert!(matches!(weights::read_pth(&path).unwrap_err(), Error::Format { .. }));
}

/// A published-style checkpoint (akamaster format: `{'state_dict': {'module.*'}}`, legacy
/// serialisation) of a CIFAR ResNet-8 trained on normalised inputs loads with one call plus
/// its normalisation, and fed [0, 1] pixels gives PyTorch's logits, CA and ASR on normalised
/// inputs (tests/fixtures/make_normalized_fixture.py).
mod normalized_checkpoint {
    use base64::Engine;
    use candle_core::Device;
    use serde_json::Value;
    use std::path::Path;
    use transferlab::attacks::{evaluate_backdoor, TargetMode, Trigger};
    use transferlab::data::Dataset;
    use transferlab::models::{InputNorm, ModelSpec, Network};

    fn fixture() -> (Value, Dataset) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/normalized");
        let e: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD.decode(e["images_u8_base64"].as_str().unwrap()).unwrap();
        let pixels: Vec<f32> = bytes.iter().map(|&b| b as f32 / 255.0).collect();
        let labels: Vec<u32> = e["labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let ds = Dataset::new(pixels, (3, 32, 32), labels, Dataset::numbered_classes(10)).unwrap();
        (e, ds)
    }

    fn floats(v: &Value) -> Vec<f32> {
        v.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32)).collect()
    }

    fn load(norm: Option<InputNorm>) -> Network {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/normalized/resnet8_normalized.th");
        let mut spec = ModelSpec::named("resnet8", (3, 32, 32), 10).unwrap();
        if let Some(n) = norm {
            spec = spec.normalized(n).unwrap();
        }
        Network::from_foreign(&path, &spec, &Device::Cpu, false).unwrap()
    }

    #[test]
    fn pixel_space_ca_and_asr_equal_pytorchs_on_normalised_inputs() {
        let (e, ds) = fixture();
        let net = load(Some(InputNorm::parse("cifar10").unwrap()));
        let logits = transferlab::train::logits(&net, &ds).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expected = floats(&e["logits_clean"]);
        let worst = logits.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-3, "clean logits differ from PyTorch's by up to {worst}");

        let target = e["target"].as_u64().unwrap() as u32;
        let m = evaluate_backdoor(&net, &ds, &Trigger::badnets(3), &TargetMode::AllToOne { target }, 0).unwrap();
        // PyTorch's rates are float32: equal counts give equal rates to within that.
        let ca = e["ca"].as_f64().unwrap();
        assert!((m.clean_accuracy - ca).abs() < 1e-6, "CA {} vs PyTorch's {ca}", m.clean_accuracy);
        let asr = e["asr"].as_f64().unwrap();
        assert!((m.attack_success_rate - asr).abs() < 1e-6, "ASR {} vs PyTorch's {asr}", m.attack_success_rate);

        // The triggered logits too: the patch is stamped in pixel space, then normalised inside.
        let mut stamped = ds.clone();
        for i in 0..stamped.len() {
            Trigger::badnets(3).apply(stamped.image_mut(i), (3, 32, 32), None).unwrap();
        }
        let t = transferlab::train::logits(&net, &stamped).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let worst = t.iter().zip(floats(&e["logits_triggered"])).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-3, "triggered logits differ from PyTorch's by up to {worst}");
    }

    #[test]
    fn without_its_normalisation_the_checkpoint_scores_differently() {
        // The same weights fed raw pixels: the normalisation is what makes the numbers match.
        let (e, ds) = fixture();
        let raw = transferlab::train::logits(&load(None), &ds).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expected = floats(&e["logits_clean"]);
        let worst = raw.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst > 0.1, "raw-pixel logits should not match normalised ones (max diff {worst})");
    }

    #[test]
    fn saved_weights_keep_the_normalisation() {
        let (_, ds) = fixture();
        let net = load(Some(InputNorm::parse("cifar10").unwrap()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.safetensors");
        net.save(&path).unwrap();
        let back = Network::from_file(&path, &Device::Cpu).unwrap();
        assert_eq!(back.spec().normalize, net.spec().normalize);
        let a = transferlab::train::logits(&net, &ds).unwrap();
        let b = transferlab::train::logits(&back, &ds).unwrap();
        assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}
