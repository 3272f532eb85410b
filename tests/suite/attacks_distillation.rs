//! Backdoors through dataset distillation: the second-order gradient against finite
//! differences, configuration errors, determinism, and DOORPING's trigger update.

use candle_core::{Device, Tensor, Var};
use rand::Rng;
use transferlab::attacks::distillation::gradient_matching::{avg_pool2, conv3x3, gradient_distance, grads_of, onehot, onehot_cross_entropy, with_second_order, MatchNet};
use transferlab::attacks::distillation::{self, DistillVariant, DistillationBackdoorConfig};
use transferlab::attacks::Trigger;
use transferlab::data::digits;
use transferlab::rng::{normal, stream};
use transferlab::train::ProgressMode;

/// Serialises this file's tests: a thread that runs its first backward pass while
/// `with_second_order` has the environment variable set keeps gradient graphs, which the
/// test on ordinary threads would (rightly) notice.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The matching distance as a function of the synthetic images, for a fixed tiny network and
/// a fixed "real" gradient.
fn matching(net: &MatchNet, x: &Tensor, real: &[Tensor]) -> Tensor {
    let y = onehot(&[0, 1], 2).unwrap();
    let g = grads_of(&onehot_cross_entropy(&net.logits(x).unwrap(), &y).unwrap(), &net.matched()).unwrap();
    let mut total = Tensor::new(0f32, &Device::Cpu).unwrap();
    for (r, s) in real.iter().zip(&g) {
        total = (total + gradient_distance(r, s).unwrap()).unwrap();
    }
    total
}

fn tiny_case() -> (MatchNet, Vec<f32>, Vec<Tensor>) {
    let net = MatchNet::new((1, 4, 4), 3, 1, 2, &mut stream(3, "fd.net")).unwrap();
    let mut rng = stream(4, "fd.x");
    let x: Vec<f32> = (0..32).map(|_| 0.5 + 0.3 * normal(&mut rng)).collect();
    let real: Vec<Tensor> = net
        .matched()
        .iter()
        .map(|v| {
            let n = v.as_tensor().elem_count();
            Tensor::from_vec((0..n).map(|_| normal(&mut rng)).collect::<Vec<f32>>(), v.as_tensor().dims(), &Device::Cpu).unwrap()
        })
        .collect();
    (net, x, real)
}

/// Analytic gradient of the matching distance w.r.t. the images, and central differences.
fn analytic_and_numeric() -> (Vec<f32>, Vec<f64>) {
    let (net, x0, real) = tiny_case();
    let x = Var::from_tensor(&Tensor::from_vec(x0.clone(), (2, 1, 4, 4), &Device::Cpu).unwrap()).unwrap();
    let d = matching(&net, x.as_tensor(), &real);
    let analytic: Vec<f32> = match d.backward().unwrap().get(x.as_tensor()) {
        Some(g) => g.flatten_all().unwrap().to_vec1().unwrap(),
        None => vec![0.0; x0.len()],
    };
    let f = |v: &[f32]| -> f64 {
        let t = Tensor::from_vec(v.to_vec(), (2, 1, 4, 4), &Device::Cpu).unwrap();
        matching(&net, &t, &real).to_scalar::<f32>().unwrap() as f64
    };
    let h = 2e-3f32;
    let numeric = (0..x0.len())
        .map(|i| {
            let (mut p, mut m) = (x0.clone(), x0.clone());
            p[i] += h;
            m[i] -= h;
            (f(&p) - f(&m)) / (2.0 * h as f64)
        })
        .collect();
    (analytic, numeric)
}

/// Coordinates where analytic and numeric agree within 2 % (+ 2e-3 for f32 noise). A few may
/// not: a central difference straddling a ReLU kink measures neither side's derivative.
fn agreeing(analytic: &[f32], numeric: &[f64]) -> usize {
    analytic.iter().zip(numeric).filter(|(a, n)| (**a as f64 - **n).abs() <= 0.02 * n.abs() + 2e-3).count()
}

#[test]
fn second_order_gradient_matches_finite_differences() {
    let _serial = serial();
    let (analytic, numeric) = with_second_order(|| Ok(analytic_and_numeric())).unwrap();
    assert!(numeric.iter().map(|n| n.abs()).sum::<f64>() > 0.1, "the test case has a vanishing gradient");
    let ok = agreeing(&analytic, &numeric);
    assert!(ok >= analytic.len() * 9 / 10, "only {ok}/{} agree: analytic {analytic:?} numeric {numeric:?}", analytic.len());
}

#[test]
fn shifted_view_convolution_and_pooling_match_candle() {
    let _serial = serial();
    let mut rng = stream(9, "conv");
    let mut t = |dims: &[usize]| {
        let n: usize = dims.iter().product();
        Tensor::from_vec((0..n).map(|_| normal(&mut rng)).collect::<Vec<f32>>(), dims, &Device::Cpu).unwrap()
    };
    let (x, w) = (t(&[2, 3, 6, 4]), t(&[5, 3, 3, 3]));
    let ours = conv3x3(&x, &w).unwrap();
    let theirs = x.conv2d(&w, 1, 1, 1, 1).unwrap();
    let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "{diff}");
    let diff = (avg_pool2(&x).unwrap() - x.avg_pool2d(2).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn ordinary_threads_get_a_wrong_second_order_gradient() {
    let _serial = serial();
    // The reason for `with_second_order`: on a thread that detaches gradients, candle still
    // returns a gradient for the images (through the forward values), but a wrong one.
    let (analytic, numeric) = std::thread::spawn(analytic_and_numeric).join().unwrap();
    let ok = agreeing(&analytic, &numeric);
    assert!(ok < analytic.len() / 2, "{ok}/{} agree on a detaching thread", analytic.len());
}

fn tiny() -> DistillationBackdoorConfig {
    let mut cfg = DistillationBackdoorConfig { trigger: Trigger::badnets(2), progress: ProgressMode::Hidden, ..Default::default() };
    cfg.distill.ipc = 1;
    cfg.distill.iterations = 3;
    cfg.distill.outer_loop = 2;
    cfg.distill.inner_loop = 2;
    cfg.distill.batch_real = 16;
    cfg.distill.width = 8;
    cfg.distill.depth = 2;
    cfg.trigger_batch = 32;
    cfg.trigger_steps = 3;
    cfg.evaluation = distillation::dc_evaluation(5);
    cfg.eval_models = 1;
    cfg
}

#[test]
fn bad_configurations_are_refused_with_a_reason() {
    let _serial = serial();
    let data = digits().unwrap();
    let err = |cfg: DistillationBackdoorConfig| distillation::run(&data, &cfg).unwrap_err().to_string();
    let mut c = tiny();
    c.distill.ipc = 0;
    let e = err(c);
    assert!(e.contains("images per class") && e.contains("at least 1"), "{e}");
    let e = err(DistillationBackdoorConfig { trigger: Trigger::badnets(9), ..tiny() });
    assert!(e.contains("larger than the 8x8 image"), "{e}");
    let e = err(DistillationBackdoorConfig { poison_rate: 1.5, ..tiny() });
    assert!(e.contains("poison rate") && e.contains("outside [0, 1]"), "{e}");
    let e = err(DistillationBackdoorConfig { poison_rate: -0.1, ..tiny() });
    assert!(e.contains("outside [0, 1]"), "{e}");
    let e = err(DistillationBackdoorConfig { target: 10, ..tiny() });
    assert!(e.contains("target class") && e.contains("10 does not exist"), "{e}");
    let e = err(DistillationBackdoorConfig { trigger: Trigger::badnets(2).at(transferlab::attacks::Placement::Random), ..tiny() });
    assert!(e.contains("not Random"), "{e}");
    let e = err(DistillationBackdoorConfig { trigger_topk: 0, ..tiny() });
    assert!(e.contains("trigger_topk") && e.contains("at least 1"), "{e}");
    let e = err(DistillationBackdoorConfig { trigger_alpha: f64::NAN, ..tiny() });
    assert!(e.contains("trigger_alpha") && e.contains("finite"), "{e}");
    let mut c = tiny();
    c.distill.depth = 4;
    let e = err(c);
    assert!(e.contains("depth") && e.contains("does not divide"), "{e}");
    let mut c = tiny();
    c.distill.ipc = 500;
    let e = err(c);
    assert!(e.contains("class") && e.contains("lower ipc"), "{e}");
}

#[test]
fn same_seed_same_numbers_and_doorping_moves_its_trigger() {
    let _serial = serial();
    let data = digits().unwrap();
    let cfg = DistillationBackdoorConfig { variants: vec![DistillVariant::Naive, DistillVariant::Doorping], ..tiny() };
    let a = distillation::run(&data, &cfg).unwrap();
    let b = distillation::run(&data, &cfg).unwrap();
    for (x, y) in a.variants.iter().zip(&b.variants) {
        assert_eq!(x.distilled.pixels(), y.distilled.pixels());
        assert_eq!(x.metrics, y.metrics);
        assert_eq!(x.matching_loss, y.matching_loss);
        assert_eq!(x.trigger, y.trigger);
    }
    let naive = a.get(DistillVariant::Naive).unwrap();
    assert_eq!(naive.distilled.len(), 10);
    assert!(naive.distilled.pixels().iter().all(|v| (0.0..=1.0).contains(v)));
    let (_, train) = data.split(0.3, cfg.seed, true).unwrap();
    assert_eq!(naive.poisoned_images, (0.1 * train.len() as f64).round() as usize);
    let door = a.get(DistillVariant::Doorping).unwrap();
    assert_eq!(door.trigger_updates.len(), 3); // 3 iterations x (2 - 1) inner loops
    for u in &door.trigger_updates {
        assert!(u.activation_after >= u.activation_before, "{u:?}");
    }
    assert_ne!(door.trigger, naive.trigger, "DOORPING's trigger should have moved away from the white patch");
    let df = transferlab::report::Outcome::to_dataframe(&a).unwrap();
    assert_eq!(df.height(), 3, "NAIVE, DOORPING and DOORPING with its trigger clipped");
    assert!(a.distilled_figure().unwrap().to_png().unwrap().len() > 100);
}

#[test]
fn doorping_target_units_on_clean_images_raise_their_activation() {
    let _serial = serial();
    let data = digits().unwrap();
    let cfg = DistillationBackdoorConfig {
        variants: vec![DistillVariant::Doorping],
        trigger_neuron: transferlab::attacks::distillation::NeuronChoice::TargetWeight,
        trigger_topk: 3,
        trigger_steps: 5,
        ..tiny()
    };
    let a = distillation::run(&data, &cfg).unwrap();
    let b = distillation::run(&data, &cfg).unwrap();
    let door = a.get(DistillVariant::Doorping).unwrap();
    assert_eq!(door.trigger, b.variants[0].trigger);
    assert_eq!(door.trigger_updates.len(), 3);
    for u in &door.trigger_updates {
        assert!(u.steps <= 5, "{u:?}");
        assert!(u.activation_after > u.activation_before, "the Adam steps should raise the units: {u:?}");
    }
}

fn patch_pixels(trigger: &Trigger) -> Vec<f32> {
    match trigger {
        Trigger::Patch { fill: transferlab::attacks::PatchFill::Image { pixels, .. }, .. } => pixels.clone(),
        other => panic!("DOORPING's trigger should be an image patch, got {other:?}"),
    }
}

#[test]
fn unbounded_trigger_leaves_the_image_range_bounded_does_not_and_the_controls_reuse_the_networks() {
    let _serial = serial();
    let data = digits().unwrap();
    let cfg = DistillationBackdoorConfig { variants: vec![DistillVariant::Clean, DistillVariant::Doorping], trigger_lr: 0.3, trigger_steps: 5, ..tiny() };
    assert!(!cfg.trigger_bounded, "Liu et al.'s trigger is unbounded");
    let free = distillation::run(&data, &cfg).unwrap();
    let px = patch_pixels(&free.get(DistillVariant::Doorping).unwrap().trigger);
    assert!(px.iter().any(|v| !(0.0..=1.0).contains(v)), "an unbounded trigger should leave [0, 1]: {px:?}");
    let bounded = distillation::run(&data, &DistillationBackdoorConfig { trigger_bounded: true, ..cfg.clone() }).unwrap();
    let px = patch_pixels(&bounded.get(DistillVariant::Doorping).unwrap().trigger);
    assert!(px.iter().all(|v| (0.0..=1.0).contains(v)), "{px:?}");
    assert!(bounded.doorping_with_clipped_trigger.is_none(), "a bounded trigger is its own clip");
    // The control is the clean distillation's own models, measured with DOORPING's trigger.
    let control = free.clean_with_doorping_trigger.as_ref().expect("clean and DOORPING were both run");
    let clean = free.get(DistillVariant::Clean).unwrap();
    assert_eq!(control.trigger, free.get(DistillVariant::Doorping).unwrap().trigger);
    assert_eq!(control.metrics.clean_accuracy, clean.metrics.clean_accuracy, "the same networks should give the same clean accuracy");
    // DOORPING's own models with the trigger clipped into the image range.
    let door = free.get(DistillVariant::Doorping).unwrap();
    let clip = free.doorping_with_clipped_trigger.as_ref().expect("DOORPING was run");
    assert_eq!(clip.metrics.clean_accuracy, door.metrics.clean_accuracy, "the same networks should give the same clean accuracy");
    let clipped_px = patch_pixels(&clip.trigger);
    assert!(clipped_px.iter().all(|v| (0.0..=1.0).contains(v)), "{clipped_px:?}");
    let free_px = patch_pixels(&door.trigger);
    assert!(clipped_px.iter().zip(&free_px).all(|(c, f)| *c == f.clamp(0.0, 1.0)));
    let df = transferlab::report::Outcome::to_dataframe(&free).unwrap();
    assert_eq!(df.height(), 4);
    let only = distillation::run(&data, &DistillationBackdoorConfig { variants: vec![DistillVariant::Doorping], ..cfg }).unwrap();
    assert!(only.clean_with_doorping_trigger.is_none());
    assert!(only.doorping_with_clipped_trigger.is_some());
}

/// The paper's claim at a smaller setting than notebook 19's (2 images per class, 10
/// iterations, one evaluation model): DOORPING's distilled set carries the backdoor (ASR >= 90 %)
/// at a clean accuracy near clean distillation's, above NAIVEATTACK's ASR, and the trigger alone
/// does not fool models distilled from clean data.
#[test]
fn doorping_backdoors_the_distilled_set() {
    let _serial = serial();
    let data = digits().unwrap();
    let cfg = DistillationBackdoorConfig {
        distill: distillation::DistillationConfig { ipc: 2, iterations: 10, outer_loop: 4, inner_loop: 30, batch_real: 32, width: 16, depth: 2, ..Default::default() },
        trigger: Trigger::badnets(3),
        poison_rate: 0.1,
        trigger_neuron: distillation::NeuronChoice::TargetWeight,
        trigger_topk: 8,
        trigger_batch: 64,
        trigger_steps: 10,
        evaluation: distillation::dc_evaluation(150),
        eval_models: 1,
        progress: ProgressMode::Hidden,
        ..Default::default()
    };
    let r = distillation::run(&data, &cfg).unwrap();
    let m = |v: DistillVariant| r.get(v).unwrap().metrics;
    let (clean, naive, doorping) = (m(DistillVariant::Clean), m(DistillVariant::Naive), m(DistillVariant::Doorping));
    eprintln!("clean CA {:.3} ASR {:.3}; naive CA {:.3} ASR {:.3}; doorping CA {:.3} ASR {:.3}", clean.clean_accuracy, clean.attack_success_rate, naive.clean_accuracy, naive.attack_success_rate, doorping.clean_accuracy, doorping.attack_success_rate);
    assert!(doorping.attack_success_rate >= 0.9, "DOORPING ASR {}", doorping.attack_success_rate);
    assert!(doorping.attack_success_rate > naive.attack_success_rate, "DOORPING {} vs NAIVEATTACK {}", doorping.attack_success_rate, naive.attack_success_rate);
    assert!(doorping.clean_accuracy > clean.clean_accuracy - 0.1, "DOORPING CA {} vs clean {}", doorping.clean_accuracy, clean.clean_accuracy);
    let control = r.clean_with_doorping_trigger.as_ref().expect("the clean-distillation control").metrics;
    assert!(control.attack_success_rate < 0.2, "the trigger alone fools clean-distilled models: ASR {}", control.attack_success_rate);
}

/// The notebook's miniature, with timings (run by hand: `cargo test --test suite attacks_distillation:: -- --ignored --nocapture`).
#[test]
#[ignore]
fn digits_miniature() {
    let _serial = serial();
    let data = digits().unwrap();
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let mut cfg = DistillationBackdoorConfig { trigger: Trigger::badnets(env("TRIG", 2)), ..Default::default() };
    cfg.poison_rate = env("RATE", 10) as f64 / 100.0;
    cfg.trigger_steps = env("TSTEPS", 1000);
    cfg.trigger_lr = env("TLR", 20) as f64 / 1000.0;
    cfg.trigger_every = env("TEVERY", 1);
    cfg.trigger_alpha = env("ALPHA", 10) as f64;
    cfg.trigger_threshold = env("THRESH", 500) as f64 / 1000.0;
    cfg.trigger_random_init = env("RINIT", 1) == 1;
    cfg.trigger_bounded = env("BOUNDED", 0) == 1;
    cfg.seed = env("SEED", 0) as u64;
    cfg.trigger_topk = env("TOPK", 1);
    cfg.trigger_neuron = if env("NEURON", 1) == 1 {
        transferlab::attacks::distillation::NeuronChoice::IncomingWeight
    } else {
        transferlab::attacks::distillation::NeuronChoice::TargetWeight
    };
    cfg.distill.ipc = env("IPC", 5);
    cfg.distill.iterations = env("ITERS", 50);
    cfg.distill.outer_loop = env("OUTER", 5);
    cfg.distill.inner_loop = env("INNER", 5);
    cfg.distill.batch_real = env("BREAL", 64);
    cfg.distill.width = env("WIDTH", 32);
    cfg.distill.depth = 2;
    cfg.trigger_batch = env("TBATCH", 0);
    cfg.evaluation = distillation::dc_evaluation(env("EPOCHS", 200));
    cfg.eval_models = env("MODELS", 2);
    if env("VARIANTS", 3) == 1 {
        cfg.variants = vec![transferlab::attacks::DistillVariant::Doorping];
    }
    if env("VARIANTS", 3) == 2 {
        cfg.variants = vec![transferlab::attacks::DistillVariant::Naive, transferlab::attacks::DistillVariant::Doorping];
    }
    let t = std::time::Instant::now();
    let r = distillation::run(&data, &cfg).unwrap();
    println!("{:?}", transferlab::report::Outcome::to_dataframe(&r).unwrap());
    for v in &r.variants {
        println!("{:?}: loss first {:?} last {:?}; updates {:?}", v.variant, v.matching_loss.first(), v.matching_loss.last(), v.trigger_updates.last());
    }
    println!("took {:?}", t.elapsed());
    if let Some(d) = r.get(transferlab::attacks::DistillVariant::Doorping) {
        if let transferlab::attacks::Trigger::Patch { fill: transferlab::attacks::PatchFill::Image { pixels, .. }, .. } = &d.trigger {
            println!("DOORPING patch pixels: {:?}", pixels);
        }
        if std::env::var("CONTROL").is_ok() {
            let (test, train_set) = data.split(cfg.test_fraction, cfg.seed, true).unwrap();
            let mut c = cfg.clone();
            c.variants = vec![transferlab::attacks::DistillVariant::Clean];
            let clean = distillation::run(&data, &c).unwrap();
            let _ = train_set;
            let m = distillation::evaluate_distilled(&clean.variants[0].distilled, &test, &d.trigger, &cfg).unwrap();
            println!("clean distillation with DOORPING's trigger: {:?}", m.iter().map(|m| (m.clean_accuracy, m.attack_success_rate)).collect::<Vec<_>>());
            let mean = |pixels: &[f32]| pixels.iter().sum::<f32>() / pixels.len() as f32;
            if let transferlab::attacks::Trigger::Patch { size, fill: transferlab::attacks::PatchFill::Image { channels, pixels }, placement } = &d.trigger {
                let mut fills = vec![("DOORPING's final patch".to_string(), pixels.clone()), ("constant patch of its mean".to_string(), vec![mean(pixels); pixels.len()])];
                if let Ok(amps) = std::env::var("AMPS") {
                    fills = amps.split(',').map(|a| (format!("constant patch {a}"), vec![a.parse::<f32>().unwrap(); pixels.len()])).collect();
                }
                for (name, fixed) in fills {
                    let mut c = cfg.clone();
                    c.variants = vec![transferlab::attacks::DistillVariant::Naive];
                    c.trigger = transferlab::attacks::Trigger::Patch { size: *size, fill: transferlab::attacks::PatchFill::Image { channels: *channels, pixels: fixed }, placement: *placement };
                    let n = distillation::run(&data, &c).unwrap();
                    println!("NAIVE with {name}: CA {:.3} ASR {:.3}", n.variants[0].metrics.clean_accuracy, n.variants[0].metrics.attack_success_rate);
                }
            }
        }
    }
}

/// Timings of the pieces of one matching step (run by hand with --ignored --nocapture).
#[test]
#[ignore]
fn matching_step_timings() {
    let _serial = serial();
    let r = with_second_order(|| {
        let width = std::env::var("WIDTH").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
        let net = MatchNet::new((1, 8, 8), width, 2, 10, &mut stream(1, "t")).unwrap();
        let mut rng = stream(2, "x");
        let mut t = |n: usize| Tensor::from_vec((0..n * 64).map(|_| rng.random::<f32>()).collect::<Vec<f32>>(), (n, 1, 8, 8), &Device::Cpu).unwrap();
        let (xr, xs) = (t(64), Var::from_tensor(&t(5)).unwrap());
        let yr = onehot(&[3; 64], 10).unwrap();
        let ys = onehot(&[3; 5], 10).unwrap();
        let time = |name: &str, f: &mut dyn FnMut()| {
            let s = std::time::Instant::now();
            for _ in 0..10 {
                f();
            }
            println!("{name}: {:?} per call", s.elapsed() / 10);
        };
        time("forward real", &mut || {
            net.logits(&xr).unwrap();
        });
        time("first order real", &mut || {
            grads_of(&onehot_cross_entropy(&net.logits(&xr).unwrap(), &yr).unwrap(), &net.matched()).unwrap();
        });
        let real: Vec<Tensor> = grads_of(&onehot_cross_entropy(&net.logits(&xr).unwrap(), &yr).unwrap(), &net.matched()).unwrap();
        time("second order syn", &mut || {
            let g = grads_of(&onehot_cross_entropy(&net.logits(xs.as_tensor()).unwrap(), &ys).unwrap(), &net.matched()).unwrap();
            let mut d = Tensor::new(0f32, &Device::Cpu).unwrap();
            for (r, s) in real.iter().zip(&g) {
                d = (d + gradient_distance(&r.detach(), s).unwrap()).unwrap();
            }
            d.backward().unwrap();
        });
        time("conv3x3 64x32x8x8", &mut || {
            let x = Tensor::zeros((64, 8, 8, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
            let w = Tensor::zeros((32, 288), candle_core::DType::F32, &Device::Cpu).unwrap();
            transferlab::attacks::distillation::gradient_matching::conv3x3_nhwc(&x, &w).unwrap();
        });
        Ok(())
    });
    r.unwrap();
}
