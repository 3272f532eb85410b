//! ResNetV2 (BiT): timm's parameter names and count, weight standardisation, GroupNorm.

use candle_core::{DType, Device, Tensor};
use transferlab::models::{is_buffer, LoadMode, ModelSpec, Network};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

fn images(n: usize, shape: (usize, usize, usize)) -> Tensor {
    let len = n * shape.0 * shape.1 * shape.2;
    let v: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as f32) / 101.0).collect();
    Tensor::from_vec(v, (n, shape.0, shape.1, shape.2), &Device::Cpu).unwrap()
}

#[test]
fn bit_50x1_has_timms_names_shapes_and_parameter_count() {
    let net = Network::new(&ModelSpec::named("resnetv2_50x1_bit", (3, 224, 224), 1000).unwrap(), 0, &Device::Cpu).unwrap();
    let shapes = net.named_shapes();
    let want: &[(&str, &[usize])] = &[
        ("stem.conv.weight", &[64, 3, 7, 7]),
        ("stages.0.blocks.0.norm1.weight", &[64]),
        ("stages.0.blocks.0.conv1.weight", &[64, 64, 1, 1]),
        ("stages.0.blocks.0.downsample.conv.weight", &[256, 64, 1, 1]),
        ("stages.1.blocks.0.conv2.weight", &[128, 128, 3, 3]),
        ("stages.1.blocks.0.downsample.conv.weight", &[512, 256, 1, 1]),
        ("stages.2.blocks.5.norm3.bias", &[256]),
        ("stages.3.blocks.2.conv3.weight", &[2048, 512, 1, 1]),
        ("norm.weight", &[2048]),
        ("head.fc.weight", &[1000, 2048]),
        ("head.fc.bias", &[1000]),
    ];
    for (name, shape) in want {
        assert_eq!(shapes.get(*name).map(|s| s.as_slice()), Some(*shape), "{name}");
    }
    for absent in ["stem.conv.bias", "stages.0.blocks.1.downsample.conv.weight", "stages.2.blocks.6.conv1.weight", "stem.norm.weight"] {
        assert!(!shapes.contains_key(absent), "{absent} should not exist");
    }
    assert!(shapes.keys().all(|k| !is_buffer(k)), "GroupNorm keeps no running statistics");
    // timm: sum(p.numel() for p in timm.create_model('resnetv2_50x1_bit').parameters())
    let count: usize = shapes.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(count, 25_549_352);
    assert_eq!(net.feature_dim(), 2048);
    assert!(net.is_head("head.fc.weight") && !net.is_head("stages.0.blocks.0.conv1.weight"));
}

#[test]
fn tiny_variant_runs_and_trains_its_head_only_when_the_body_is_frozen() {
    let spec = ModelSpec::named("resnetv2-tiny", (3, 16, 16), 5).unwrap();
    let mut net = Network::new(&spec, 1, &Device::Cpu).unwrap();
    let x = images(3, (3, 16, 16));
    assert_eq!(net.forward(&x, true).unwrap().dims(), &[3, 5]);
    assert_eq!(net.feature_dim(), 256);
    net.freeze_body();
    assert!(net.trainable_vars().iter().all(|(k, _)| k.starts_with("head.fc.")));
    assert!(ModelSpec::named("resnetv2-tiny", (3, 8, 8), 5).is_err());
}

#[test]
fn weight_standardisation_makes_convolutions_invariant_to_kernel_scale_and_shift() {
    let spec = ModelSpec::named("resnetv2-tiny", (3, 32, 32), 4).unwrap();
    let mut net = Network::new(&spec, 2, &Device::Cpu).unwrap();
    let x = images(2, (3, 32, 32));
    let before = values(&net.forward(&x, false).unwrap());
    let mut tensors = net.named_tensors().unwrap();
    for name in ["stem.conv.weight", "stages.1.blocks.0.conv2.weight", "stages.2.blocks.0.downsample.conv.weight"] {
        let w = &tensors[name];
        tensors.insert(name.to_string(), ((w * 3.5).unwrap() + 0.25).unwrap());
    }
    net.set_tensors(&tensors, LoadMode::Strict).unwrap();
    let after = values(&net.forward(&x, false).unwrap());
    let diff = before.iter().zip(&after).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "standardised convolutions changed by {diff}");
}

#[test]
fn group_norm_makes_the_output_independent_of_the_batch() {
    let net = Network::new(&ModelSpec::named("resnetv2-tiny", (3, 16, 16), 3).unwrap(), 0, &Device::Cpu).unwrap();
    let x = images(4, (3, 16, 16));
    let all = values(&net.forward(&x, true).unwrap());
    let first = values(&net.forward(&x.narrow(0, 0, 1).unwrap(), true).unwrap());
    for (a, b) in all[..3].iter().zip(&first) {
        assert!((a - b).abs() < 1e-5, "batch composition changed a sample's logits");
    }
}

#[test]
fn bad_resnetv2_shapes_are_refused_with_a_reason() {
    use transferlab::models::Arch;
    let bad = Arch::ResNetV2 { stem: 16, widths: vec![30, 60], depths: vec![1, 1], groups: 8 };
    let err = ModelSpec::new(bad, (3, 32, 32), 10).unwrap_err().to_string();
    assert!(err.contains("divisible"), "{err}");
    let bad = Arch::ResNetV2 { stem: 16, widths: vec![32], depths: vec![1, 1], groups: 8 };
    assert!(ModelSpec::new(bad, (3, 32, 32), 10).is_err());
}
