//! Our architectures against the reference implementations (timm / transformers): the
//! fixtures in tests/fixtures/crosscheck/ were written by tests/crosscheck/crosscheck.py from
//! PyTorch with deterministic weights that this file rebuilds by the same formula, under the
//! hub's tensor names. Outputs must agree within 1e-4 relative (to the largest output).

use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use transferlab::hub::timm_to_ours;
use transferlab::models::{LoadMode, ModelSpec, Network};
use transferlab::weights::NamedTensors;

use crate::common::uniform;

fn value_rule(name: &str, shape: &[usize]) -> (f64, f64) {
    if name.ends_with("running_var") {
        return (1.0, 0.5);
    }
    if name.ends_with("running_mean") {
        return (0.0, 0.2);
    }
    if name.ends_with("logit_scale") {
        return (100f64.ln(), 0.0);
    }
    if shape.len() <= 1 {
        return if name.ends_with("weight") { (1.0, 0.2) } else { (0.0, 0.2) };
    }
    if shape.len() == 3 && shape[0] == 1 {
        return (0.0, 0.2);
    }
    let fan_in: usize = shape[1..].iter().product();
    (0.0, (12.0 / fan_in as f64).sqrt())
}

pub fn tensor_for(name: &str, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product::<usize>().max(1);
    let (c, s) = value_rule(name, shape);
    let v: Vec<f32> = uniform(name, n).into_iter().map(|u| (c + s * u) as f32).collect();
    Tensor::from_vec(v, shape.to_vec(), &Device::Cpu).unwrap()
}

pub fn fixture(arch: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/crosscheck/{arch}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

pub fn hub_tensors(fx: &serde_json::Value) -> NamedTensors {
    let mut out = BTreeMap::new();
    for t in fx["tensors"].as_array().unwrap() {
        let name = t[0].as_str().unwrap();
        let shape: Vec<usize> = t[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        out.insert(name.to_string(), tensor_for(name, &shape));
    }
    out
}

pub fn input(fx: &serde_json::Value, key: &str) -> Tensor {
    let shape: Vec<usize> = fx["inputs"][key].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let n = shape.iter().product();
    let v: Vec<f32> = uniform("input", n).into_iter().map(|u| (2.0 * u) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Max |ours - theirs| / max |theirs|; asserts it is below 1e-4 and prints it.
pub fn compare(fx: &serde_json::Value, key: &str, ours: &Tensor) -> f64 {
    let want: Vec<f64> = fx["outputs"][key]["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let shape: Vec<usize> = fx["outputs"][key]["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    assert_eq!(ours.dims(), &shape[..], "{key} shape");
    let got = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    let diff = got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
    let rel = diff / scale;
    println!("{} {key}: max abs diff {diff:.3e}, relative {rel:.3e} (scale {scale:.3e})", fx["arch"]);
    assert!(rel < 1e-4, "{key}: relative difference {rel:.3e} >= 1e-4");
    rel
}

fn check_network(arch: &str, spec_name: &str) {
    let fx = fixture(arch);
    let x = input(&fx, "pixel_values");
    let (_, c, h, w) = x.dims4().unwrap();
    let classes = fx["num_classes"].as_u64().unwrap() as usize;
    let spec = ModelSpec::named(spec_name, (c, h, w), classes).unwrap();
    let mut net = Network::new(&spec, 0, &Device::Cpu).unwrap();
    let t = timm_to_ours(hub_tensors(&fx), &spec).unwrap();
    net.set_tensors(&t, LoadMode::Strict).unwrap();
    compare(&fx, "logits", &net.forward(&x, false).unwrap());
}

#[test]
fn resnet18_matches_timm() {
    check_network("resnet18", "resnet18");
}

#[test]
fn resnet50_matches_timm() {
    check_network("resnet50", "resnet50");
}

#[test]
fn bit_resnetv2_matches_timm() {
    check_network("resnetv2_50x1_bit", "resnetv2-50x1-bit");
}

#[test]
fn generator_matches_the_script() {
    // uniform("input", 3) as tests/crosscheck/crosscheck.py computes it with numpy (uint64
    // wrapping arithmetic; numpy 2.4 printed these). The values are multiples of 2^-24, so
    // they are exact in f64 and must match to the bit.
    assert_eq!(uniform("input", 3), vec![0.24683338403701782, -0.2142351269721985, 0.11497831344604492]);
}

#[test]
fn vit_matches_transformers() {
    use transferlab::models::{Vit, VitConfig};
    let fx = fixture("vit_tiny");
    let cfg = VitConfig::from_json(&fx["config"].to_string()).unwrap();
    assert_eq!(cfg.num_labels(), 5);
    // The fixture has transformers 5's state-dict names; Vit renames them onto the hub's.
    let vit = Vit::from_tensors(&cfg, hub_tensors(&fx), &Device::Cpu).unwrap();
    compare(&fx, "logits", &vit.forward(&input(&fx, "pixel_values")).unwrap());
}

#[test]
fn clip_matches_transformers() {
    use transferlab::models::{Clip, ClipConfig};
    let fx = fixture("clip_tiny");
    let cfg = ClipConfig::from_json(&fx["config"].to_string()).unwrap();
    let clip = Clip::from_tensors(&cfg, hub_tensors(&fx), &Device::Cpu).unwrap();
    compare(&fx, "image_embeds", &clip.image_embeds(&input(&fx, "pixel_values")).unwrap());
    let ids: Vec<Vec<u32>> = serde_json::from_value(fx["input_ids"].clone()).unwrap();
    let (n, t) = (ids.len(), ids[0].len());
    let ids = Tensor::from_vec(ids.concat(), (n, t), &Device::Cpu).unwrap();
    compare(&fx, "text_embeds", &clip.text_embeds(&ids).unwrap());
}
