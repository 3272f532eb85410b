//! Architectural backdoor (Bober-Irizar et al. 2022): the detector, the model variant, the attack.

use candle_core::{Device, Tensor};
use transferlab::attacks::{architectural, ArchitecturalBackdoorConfig, Trigger, Placement};
use transferlab::data::{digits, Dataset};
use transferlab::models::{checkerboard_response, Arch, Injection, ModelSpec, Network, Norm, TriggerDetector};
use transferlab::report::Outcome;
use transferlab::train::{LrSchedule, ProgressMode, TrainConfig};

fn data() -> (Dataset, Dataset) {
    let (test, train) = digits().unwrap().split(0.2, 0, true).unwrap();
    (train, test)
}

#[test]
fn detector_fires_on_the_checkerboard_anywhere_and_not_on_digits() {
    let (train, _) = data();
    let x = train.images_tensor(&Device::Cpu).unwrap();
    let r = checkerboard_response(&x, 3).unwrap().to_vec1::<f32>().unwrap();
    assert!(r.iter().filter(|&&v| v > 0.0).count() <= train.len() / 100, "fires on clean digits");
    for placement in [Placement::TopLeft, Placement::BottomRight, Placement::At(2, 3)] {
        let t = Trigger::checkerboard(3).at(placement).apply_to(&train, &[0, 1, 2], 0).unwrap();
        let r = checkerboard_response(&t.select(&[0, 1, 2]).unwrap().images_tensor(&Device::Cpu).unwrap(), 3).unwrap();
        assert_eq!(r.to_vec1::<f32>().unwrap(), vec![1.0; 3], "{placement:?}");
    }
    // A white square (BadNets' trigger) is not a checkerboard.
    let white = Trigger::badnets(3).apply_to(&train, &[0], 0).unwrap().select(&[0]).unwrap();
    assert_eq!(checkerboard_response(&white.images_tensor(&Device::Cpu).unwrap(), 3).unwrap().to_vec1::<f32>().unwrap(), vec![0.0]);
    assert!(checkerboard_response(&Tensor::zeros((1, 1, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap(), 9).is_err());
}

#[test]
fn the_backdoored_spec_checks_itself_and_survives_save_and_load() {
    let base = Box::new(Arch::ConvNet { width: 8, depth: 2, norm: Norm::Instance });
    let bad = |size, target| Arch::Backdoored { base: base.clone(), detector: TriggerDetector { size, gain: 10, injection: Injection::Logits { target } } };
    let e = ModelSpec::new(bad(9, 0), (1, 8, 8), 10).unwrap_err().to_string();
    assert!(e.contains("does not fit 8x8"), "{e}");
    let e = ModelSpec::new(bad(3, 10), (1, 8, 8), 10).unwrap_err().to_string();
    assert!(e.contains("target class") && e.contains("10 classes"), "{e}");
    let spec = ModelSpec::new(bad(3, 7), (1, 8, 8), 10).unwrap();
    assert_eq!(spec.head_name(), "classifier");
    let net = Network::new(&spec, 0, &Device::Cpu).unwrap();
    let plain = Network::new(&ModelSpec::new((*base).clone(), (1, 8, 8), 10).unwrap(), 0, &Device::Cpu).unwrap();
    assert_eq!(net.parameter_names(), plain.parameter_names(), "the detector adds no parameters");
    let path = std::env::temp_dir().join(format!("tl_arch_backdoor_{}.safetensors", std::process::id()));
    net.save(&path).unwrap();
    let loaded = Network::from_file(&path, &Device::Cpu).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(loaded.spec(), &spec);
    let mut img = vec![0.2f32; 64];
    Trigger::checkerboard(3).apply(&mut img, (1, 8, 8), None).unwrap();
    let x = Tensor::from_vec(img, (1, 1, 8, 8), &Device::Cpu).unwrap();
    let pred = loaded.forward(&x, false).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(pred, vec![7]);
}

#[test]
fn bad_configurations_are_refused() {
    let (train, test) = data();
    let cases = [
        (ArchitecturalBackdoorConfig { trigger_size: 9, ..Default::default() }, "does not fit"),
        (ArchitecturalBackdoorConfig { injection: Injection::Logits { target: 12 }, ..Default::default() }, "target class"),
        (ArchitecturalBackdoorConfig { gain: 0, ..Default::default() }, "gain"),
    ];
    for (cfg, what) in cases {
        let e = architectural::run(&train, &test, &cfg).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
    }
}

#[test]
fn clean_training_keeps_accuracy_and_the_backdoor() {
    let (train, test) = data();
    let mut cfg = ArchitecturalBackdoorConfig::default();
    cfg.train.progress = ProgressMode::Hidden;
    let r = architectural::run(&train, &test, &cfg).unwrap();
    assert!((r.backdoored.clean_accuracy - r.plain.clean_accuracy).abs() <= 0.01, "{:?}", r.to_dataframe());
    assert!(r.backdoored.attack_success_rate >= 0.9, "{:?}", r.to_dataframe());
    assert!(r.backdoored_random_location.attack_success_rate >= 0.9, "{:?}", r.to_dataframe());
    assert!(r.plain.attack_success_rate < 0.3, "{:?}", r.to_dataframe());
    assert_eq!(r.to_dataframe().unwrap().height(), 3);
}

#[test]
fn same_seed_same_numbers_and_features_injection_runs() {
    let (train, test) = data();
    let train = train.per_class_sample(30, 0).unwrap();
    let cfg = ArchitecturalBackdoorConfig {
        injection: Injection::Features,
        train: TrainConfig { epochs: 2, schedule: LrSchedule::Constant { lr: 0.05 }, progress: ProgressMode::Hidden, ..TrainConfig::default() },
        ..Default::default()
    };
    let a = architectural::run(&train, &test, &cfg).unwrap();
    let b = architectural::run(&train, &test, &cfg).unwrap();
    assert_eq!((a.target, a.plain, a.backdoored), (b.target, b.plain, b.backdoored));
    assert!(a.figure().unwrap().to_png().unwrap().len() > 1000);
}
