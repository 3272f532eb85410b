//! The standard poison-only baselines (SIG, FTrojan, WaNet and BppAttack in their poison-only
//! forms): what the poisoned set promises, the trigger's exact form, bad configurations, and
//! that each attack backdoors a victim.

use crate::attacks_poisoning::{data, quick};
use candle_core::Device;
use transferlab::attacks::{evaluate_backdoor, input_aware, lira, squeeze_cross_set, InputAwareConfig, InputAwareGenerator, LiraConfig, ReflectionTrigger};
use transferlab::train::{accuracy, TrainConfig};
use transferlab::attacks::{poison, poisoning, BlindLoss, FrequencyTrigger, LossBalance, Placement, PoisonConfig, PoisoningAttackConfig, Trigger, WarpTrigger};

/// SIG on the digits: the target class (0) holds just under 10 % of the training images, so
/// 10 % asks for more than exist; 9 % is nearly all of them.
fn sig_on_digits() -> PoisoningAttackConfig {
    let mut cfg = PoisoningAttackConfig::sig();
    cfg.poison.rate = 0.09;
    cfg
}

#[test]
fn sig_poisons_only_the_target_class_keeps_labels_and_adds_the_sinusoid() {
    let (train, _) = data();
    let cfg = sig_on_digits();
    let p = poison(&train, &cfg.poison).unwrap();
    let flags = p.poisoned_flags();
    assert_eq!(flags.iter().filter(|&&f| f).count(), (0.09 * train.len() as f64).round() as usize);
    assert_eq!(p.labels, train.labels, "clean-label: no label changes");
    let Trigger::Sinusoid { delta, frequency } = cfg.poison.trigger else { panic!("SIG's trigger") };
    let (_, h, w) = train.shape;
    for i in 0..train.len() {
        let (a, b) = (train.image(i), p.image(i));
        if !flags[i] {
            assert_eq!(a, b, "unpoisoned image {i} changed");
            continue;
        }
        assert_eq!(train.labels[i], 0, "a poisoned image outside the target class");
        for r in 0..h {
            for j in 0..w {
                let want = delta * (2.0 * std::f32::consts::PI * j as f32 * frequency / w as f32).sin();
                let (x, y) = (a[r * w + j], b[r * w + j]);
                assert!((y - (x + want).clamp(0.0, 1.0)).abs() < 1e-6, "image {i} ({r}, {j}): {x} -> {y}, want +{want}");
                assert!((y - x).abs() <= delta + 1e-6);
            }
        }
    }
    // Asking for more target-class images than exist says so.
    let e = poison(&train, &PoisoningAttackConfig::sig().poison).unwrap_err().to_string();
    assert!(e.contains("eligible") && e.contains("clean-label"), "{e}");
}

/// RGB -> YCrCb as OpenCV computes it (without the 128 offsets, which cancel in a difference).
fn ycrcb(r: f64, g: f64, b: f64) -> (f64, f64, f64) {
    let y = 0.299 * r + 0.587 * g + 0.114 * b;
    (y, 0.713 * (r - y), 0.564 * (b - y))
}

fn dct_coefficient(block: &[f64], n: usize, p: usize, q: usize) -> f64 {
    let a = |k: usize| if k == 0 { (1.0 / n as f64).sqrt() } else { (2.0 / n as f64).sqrt() };
    let c = |k: usize, i: usize| a(k) * (std::f64::consts::PI * (2 * i + 1) as f64 * k as f64 / (2 * n) as f64).cos();
    let mut s = 0.0;
    for i in 0..n {
        for j in 0..n {
            s += c(p, i) * c(q, j) * block[i * n + j];
        }
    }
    s
}

#[test]
fn ftrojan_raises_exactly_its_dct_coefficients_in_the_chrominance() {
    let shape = (3, 32, 32);
    let trigger = Trigger::ftrojan();
    let mut image = vec![0.5f32; 3 * 32 * 32];
    trigger.apply(&mut image, shape, None).unwrap();
    let plane = 32 * 32;
    let (mut y, mut cr, mut cb) = (vec![0.0; plane], vec![0.0; plane], vec![0.0; plane]);
    for k in 0..plane {
        let d = |c: usize| 255.0 * (image[c * plane + k] as f64 - 0.5);
        (y[k], cr[k], cb[k]) = ycrcb(d(0), d(1), d(2));
    }
    // Magnitude 30 at (15, 15) and (31, 31) of Cr and Cb, nothing else anywhere (to within
    // the 3-digit colour matrices and f32 pixels).
    for (name, channel, raised) in [("Y", &y, false), ("Cr", &cr, true), ("Cb", &cb, true)] {
        for p in 0..32 {
            for q in 0..32 {
                let want = if raised && ((p, q) == (15, 15) || (p, q) == (31, 31)) { 30.0 } else { 0.0 };
                let got = dct_coefficient(channel, 32, p, q);
                assert!((got - want).abs() < 0.1, "{name} ({p}, {q}): {got}, want {want}");
            }
        }
    }
    let peak = image.iter().map(|v| (v - 0.5).abs()).fold(0.0f32, f32::max);
    assert!(peak > 0.01 && peak < 0.12, "L-inf of the pattern: {peak}");
}

#[test]
fn bad_configurations_say_what_to_change() {
    let (train, test) = data();
    let e = poisoning::run(&train, &test, &PoisoningAttackConfig::ftrojan()).unwrap_err().to_string();
    assert!(e.contains("32x32 DCT window does not tile a 8x8 image") && e.contains("scaled_to(8"), "{e}");
    let e = poisoning::run(&train, &test, &PoisoningAttackConfig::ftrojan_scaled(8, true)).unwrap_err().to_string();
    assert!(e.contains("YCrCb needs RGB images") && e.contains("yuv to false"), "{e}");
    let mut t = FrequencyTrigger::scaled_to(8, false);
    t.positions.push((8, 0));
    assert!(t.validate(train.shape).unwrap_err().to_string().contains("outside the 8x8 window"));
    t = FrequencyTrigger { channels: vec![2], ..FrequencyTrigger::scaled_to(8, false) };
    assert!(t.validate(train.shape).unwrap_err().to_string().contains("channel 2 does not exist"));
    for delta in [0.0, -0.1, 1.5, f32::NAN] {
        let e = Trigger::Sinusoid { delta, frequency: 6.0 }.validate(train.shape).unwrap_err().to_string();
        assert!(e.contains("delta") && e.contains("40/255"), "{e}");
    }
    let e = Trigger::Sinusoid { delta: 0.1, frequency: 0.0 }.validate(train.shape).unwrap_err().to_string();
    assert!(e.contains("frequency"), "{e}");
}

/// SIG's claim (Barni et al. 2019): target-class images carrying the sinusoid, with their true
/// labels, teach the victim to send any image with the sinusoid to the target class. On the
/// CIFAR-10 test setting (500 training images, the default victim, 6 epochs) the victim's ASR is
/// far above the same-seed clean model's. On the 8x8 digits the attack does not take (ASR 0.6 %
/// after 10 epochs, 2 % after 30): class 0 is learnt from its shape before the sinusoid
/// matters, the weakness of clean-label attacks on easy classes that Turner et al. describe.
/// Needs CIFAR-10 by its hub id (`just test` serves it offline); without it the test says so.
#[test]
fn sig_backdoors_a_cifar_victim_and_not_the_clean_model() {
    let Some((train, test)) = cifar_subset() else { return };
    let r = poisoning::run(&train, &test, &quick(PoisoningAttackConfig::sig(), 6)).unwrap();
    assert_eq!(r.n_poisoned, 50, "10 % of 500 images: every target-class image");
    assert!(r.victim.attack_success_rate > r.clean_reference.attack_success_rate + 0.5, "{r:?}");
}

/// CIFAR-10 by its hub id, 50 images per class for training and testing, or `None` (with a
/// note) where it is not served.
fn cifar_subset() -> Option<(transferlab::data::Dataset, transferlab::data::Dataset)> {
    use transferlab::hub::{load_dataset, DatasetRequest, Hub};
    if std::env::var("TLAB_CIFAR_HUB").is_err() {
        eprintln!("skipped: CIFAR-10 is not served (run through tests/with_cifar_hub.sh, as `just test` does)");
        return None;
    }
    let hub = Hub::from_env();
    let train = load_dataset(&hub, &DatasetRequest::new("uoft-cs/cifar10", "train")).unwrap().per_class_sample(50, 0).unwrap();
    let test = load_dataset(&hub, &DatasetRequest::new("uoft-cs/cifar10", "test")).unwrap().per_class_sample(50, 0).unwrap();
    Some((train, test))
}

/// WaNet (with its noise mode) and BppAttack on the CIFAR-10 test subset (500 training images,
/// the default victim, 6 epochs): each victim's ASR is above the same-seed clean model's, but
/// far below the papers' ~99 %: measured WaNet 21.8 % vs 7.3 %, BppAttack (with its negative
/// samples) 24.9 % vs 6.7 %, CA 26.6 % (without the negatives: ASR 24.9 %, CA 28.0 %) (WaNet
/// with 1,000 images and 10 epochs: 22.2 % vs 4.4 %). A half-pixel warp or a 3-bit squeeze is
/// learnt from 50,000 images over 100 epochs by a PreAct-ResNet-18 in the papers; from 50
/// images per class in 6 epochs a 2-block ConvNet learns it only partly.
#[test]
fn wanet_and_bpp_backdoor_a_cifar_victim() {
    let Some((train, test)) = cifar_subset() else { return };
    for cfg in [PoisoningAttackConfig::wanet(), PoisoningAttackConfig::bpp()] {
        let r = poisoning::run(&train, &test, &quick(cfg, 6)).unwrap();
        println!("{}: victim {:?}\n    clean {:?}", r.config.name, r.victim, r.clean_reference);
        assert!(r.victim.attack_success_rate > r.clean_reference.attack_success_rate + 0.1, "{r:?}");
        assert!(r.clean_reference.clean_accuracy - r.victim.clean_accuracy < 0.1, "{r:?}");
    }
}

/// The same seed gives the same poisoned set and the same numbers.
#[test]
fn same_seed_same_numbers() {
    let (train, test) = data();
    let small = train.per_class_sample(30, 0).unwrap();
    let cfgs = [
        quick(PoisoningAttackConfig { poison: PoisonConfig { rate: 0.08, ..sig_on_digits().poison }, ..sig_on_digits() }, 2),
        quick(PoisoningAttackConfig::ftrojan_scaled(8, false), 2),
        // The negatives are drawn afresh in every batch, from the trainer's seeded stream.
        quick(PoisoningAttackConfig::bpp(), 2),
    ];
    let (x, y) = (poisoning::compare(&small, &test, &cfgs).unwrap(), poisoning::compare(&small, &test, &cfgs).unwrap());
    for (a, b) in x.runs.iter().zip(&y.runs) {
        assert_eq!(a.victim, b.victim);
        assert_eq!(a.clean_reference, b.clean_reference);
    }
}

/// WaNet's warp moves every pixel by less than a pixel (s = 0.5 on a 32-pixel image), smoothly,
/// and is the same for the same seed; the poisoned set relabels exactly its 10 %.
#[test]
fn wanet_warps_by_a_fraction_of_a_pixel_and_poisons_its_share() {
    let shape = (3, 32, 32);
    // A horizontal ramp of 1/31 per pixel: a change of v means a shift of 31 v pixels.
    let ramp: Vec<f32> = (0..3 * 32 * 32).map(|i| (i % 32) as f32 / 31.0).collect();
    let warp = |t: &WarpTrigger| {
        let mut img = ramp.clone();
        t.warp(&mut img, shape).unwrap();
        img
    };
    let a = warp(&WarpTrigger::default());
    let shift: Vec<f32> = a.iter().zip(&ramp).map(|(x, y)| 31.0 * (x - y)).collect();
    let peak = shift.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(peak > 0.05 && peak < 1.0, "largest horizontal shift {peak} px");
    // Smooth: neighbouring pixels move alike (the field has k = 4 control points per side).
    // The outermost columns are left out: there the grid is clamped to the image.
    for r in 0..32 {
        for c in 2..30 {
            let (l, m) = (shift[r * 32 + c - 1], shift[r * 32 + c]);
            assert!((l - m).abs() < 0.1, "row {r}, columns {}..{c}: {l} vs {m}", c - 1);
        }
    }
    assert_eq!(a, warp(&WarpTrigger::default()));
    assert_ne!(a, warp(&WarpTrigger { seed: 1, ..Default::default() }));
    let e = WarpTrigger { strength: 0.0, ..Default::default() }.validate(shape).unwrap_err().to_string();
    assert!(e.contains("strength") && e.contains("0.5"), "{e}");
    let (train, test) = data();
    let e = poisoning::run(&train, &test, &PoisoningAttackConfig { noise_mode: Some(2.0), ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("needs a warp trigger"), "{e}");

    let cfg = PoisoningAttackConfig::wanet();
    let p = poison(&train, &cfg.poison).unwrap();
    let flags = p.poisoned_flags();
    assert_eq!(flags.iter().filter(|&&f| f).count(), (0.1 * train.len() as f64).round() as usize);
    for i in 0..train.len() {
        if flags[i] {
            assert_eq!(p.labels[i], 0);
            assert_ne!(train.labels[i], 0, "dirty-label draws from the other classes");
        } else {
            assert_eq!(p.image(i), train.image(i));
        }
    }
}

/// BppAttack's squeeze leaves every pixel on the 8-level lattice; dithering keeps the local
/// mean that plain rounding bands away.
#[test]
fn bpp_squeezes_to_eight_levels_and_dithering_keeps_the_mean() {
    let shape = (1, 16, 16);
    // Between two levels (2/7 and 3/7), nearer the lower: rounding sends all of it down.
    let smooth: Vec<f32> = (0..256).map(|p| 0.32 + 0.02 * ((p % 16) as f32 / 15.0)).collect();
    let squeeze = |dither: bool| {
        let mut img = smooth.clone();
        Trigger::ColorDepth { levels: 8, dither }.apply(&mut img, shape, None).unwrap();
        img
    };
    for dither in [false, true] {
        for v in squeeze(dither) {
            let k = v * 7.0;
            assert!((k - k.round()).abs() < 1e-5, "{v} is not a multiple of 1/7 (dither {dither})");
        }
    }
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let (m0, plain, dithered) = (mean(&smooth), mean(&squeeze(false)), mean(&squeeze(true)));
    assert!((dithered - m0).abs() < 0.01, "dithered mean {dithered} vs {m0}");
    assert!((plain - m0).abs() > 0.03, "plain rounding bands the whole image down: {plain} vs {m0}");
    let e = Trigger::ColorDepth { levels: 1, dither: true }.validate(shape).unwrap_err().to_string();
    assert!(e.contains("levels") && e.contains("8"), "{e}");
}

/// BppAttack's negative samples on the digits: images carrying another image's squeeze
/// residual, trained with their own labels, make the victim key on an image's own squeeze.
/// Measured on the cross set (every test digit with another digit's residual, true labels
/// kept; BppAttack's "cross accuracy"): 91.4 % with the negatives against 74.4 % without, at
/// ASR 82.6 % against 89.7 % and the same CA (98.8 / 98.6 %). The squeeze is to 2 levels, not
/// the paper's 8: the digits have 17 grey levels on 8x8 pixels, and measured with the default
/// victim and 15 epochs, 8 levels implant nothing (ASR 4 % with or without negatives, the
/// clean model's level) and 3 levels 25 %; on 32x32 CIFAR-10 the paper's 8 levels do (the
/// CIFAR test above).
#[test]
fn bpp_negatives_teach_the_victim_an_images_own_squeeze() {
    let (train, test) = data();
    let squeeze = Trigger::ColorDepth { levels: 2, dither: true };
    let mut with = quick(PoisoningAttackConfig::bpp(), 15);
    with.poison.trigger = squeeze.clone();
    let without = PoisoningAttackConfig { negatives: None, ..with.clone() };
    let cross = squeeze_cross_set(&test, &squeeze, 0).unwrap();
    let mut measured = Vec::new();
    for cfg in [&with, &without] {
        let (net, poisoned) = poisoning::train_victim(&train, cfg, &Device::Cpu).unwrap();
        let m = evaluate_backdoor(&net, &test, &cfg.poison.trigger, &cfg.poison.target, 1).unwrap();
        let cross_accuracy = accuracy(&net, &cross).unwrap();
        println!("negatives {:?}: {m:?}, cross accuracy {cross_accuracy:.3}", cfg.negatives);
        assert_eq!(poisoned.poisoned_flags().iter().filter(|&&f| f).count(), (0.1 * train.len() as f64).round() as usize);
        measured.push((m, cross_accuracy));
    }
    let ((m, cross_with), (m0, cross_without)) = (measured[0], measured[1]);
    assert!(m.attack_success_rate > 0.7 && m0.attack_success_rate > 0.7, "both implant: {m:?} {m0:?}");
    assert!((m.clean_accuracy - m0.clean_accuracy).abs() < 0.03, "{m:?} {m0:?}");
    assert!(cross_with > cross_without + 0.1, "cross accuracy {cross_with} with negatives, {cross_without} without");
    let e = poisoning::run(&train, &test, &PoisoningAttackConfig { negatives: Some(0.1), ..PoisoningAttackConfig::default() }).unwrap_err().to_string();
    assert!(e.contains("Trigger::bpp()"), "{e}");
    let e = poisoning::run(&train, &test, &PoisoningAttackConfig { negatives: Some(0.95), ..with.clone() }).unwrap_err().to_string();
    assert!(e.contains("0.1 at 0.1"), "{e}");
    let e = squeeze_cross_set(&test, &Trigger::badnets(3), 0).unwrap_err().to_string();
    assert!(e.contains("colour-depth"), "{e}");
}

/// Label-consistent poisoning (Turner et al. 2019) on the CIFAR-10 subset: the same
/// clean-label poisons (5 %, half of class 0, the four-corner checkerboard) with and without
/// PGD hardening on the clean reference model. The claim: hardening is what makes the
/// clean-label backdoor take.
#[test]
fn label_consistent_hardening_strengthens_the_clean_label_backdoor() {
    let Some((train, test)) = cifar_subset() else { return };
    let lc = quick(PoisoningAttackConfig::label_consistent(), 6);
    let plain = PoisoningAttackConfig { hardening: None, ..lc.clone() }.named("clean-label, not hardened");
    let r = poisoning::compare(&train, &test, &[plain, lc]).unwrap();
    for run in &r.runs {
        println!("{}: victim {:?}\n    clean {:?}", run.config.name, run.victim, run.clean_reference);
    }
    let (plain, lc) = (&r.runs[0].victim, &r.runs[1].victim);
    assert!(lc.attack_success_rate > plain.attack_success_rate + 0.1, "label-consistent {lc:?} vs plain clean-label {plain:?}");
}

/// Blind backdoors on the digits: the authors' pattern in the top-right 5x5 of the 8x8 image.
fn blind_on_digits(balance: LossBalance, epochs: usize) -> PoisoningAttackConfig {
    let mut cfg = quick(PoisoningAttackConfig::blind(), epochs);
    cfg.poison.trigger = Trigger::blind_pattern().at(Placement::TopRight);
    cfg.blind = Some(BlindLoss { balance, ..BlindLoss::default() });
    cfg
}

/// Blind backdoors' claim (Bagdasaryan & Shmatikov 2021): a compromised loss alone, with no
/// poisoned sample, implants the backdoor at little cost to the main task; MGDA balances the
/// two losses per batch, fixed weights (BackdoorBench's 1.0 / 0.9) work too. Digits, 15 epochs
/// (the backdoor task from epoch 3).
#[test]
fn blind_loss_implants_a_backdoor_without_poisoning_a_sample() {
    let (train, test) = data();
    let runs = poisoning::compare(&train, &test, &[blind_on_digits(LossBalance::Mgda, 15), blind_on_digits(LossBalance::Fixed { normal: 1.0, backdoor: 0.9 }, 15)]).unwrap();
    for r in &runs.runs {
        println!("{:?}: victim {:?}\n    clean {:?}", r.config.blind, r.victim, r.clean_reference);
        assert_eq!(r.n_poisoned, 0, "the attacker never touches the data");
        assert!(r.victim.attack_success_rate > 0.9 && r.clean_reference.attack_success_rate < 0.3, "{r:?}");
        assert!(r.clean_reference.clean_accuracy - r.victim.clean_accuracy < 0.05, "{r:?}");
    }
    // The pattern: its 9 cells set, the transparent ones untouched.
    let mut img = vec![0.5f32; 32 * 32];
    Trigger::blind_pattern().apply(&mut img, (1, 32, 32), None).unwrap();
    let changed: Vec<(usize, usize)> = (0..32 * 32).filter(|&p| img[p] != 0.5).map(|p| (p / 32, p % 32)).collect();
    assert_eq!(changed.len(), 9, "5x3 pattern with 6 masked cells: {changed:?}");
    assert!(changed.iter().all(|&(r, c)| (3..8).contains(&r) && (23..26).contains(&c)), "{changed:?}");
    assert_eq!(img[3 * 32 + 23], 1.0);
    assert_eq!(img[3 * 32 + 24], 0.0);
}

#[test]
fn blind_refuses_what_it_cannot_do_and_repeats_itself() {
    let (train, test) = data();
    // The authors' position is for 32x32 images.
    let e = poisoning::run(&train, &test, &quick(PoisoningAttackConfig::blind(), 1)).unwrap_err().to_string();
    assert!(e.contains("extends past"), "{e}");
    let e = poisoning::run(&train, &test, &PoisoningAttackConfig { noise_mode: Some(2.0), ..blind_on_digits(LossBalance::Mgda, 1) }).unwrap_err().to_string();
    assert!(e.contains("noise_mode"), "{e}");
    let e = poisoning::run(&train, &test, &blind_on_digits(LossBalance::Fixed { normal: 1.0, backdoor: 0.0 }, 1)).unwrap_err().to_string();
    assert!(e.contains("0.9"), "{e}");
    // Seeded: bit-identical.
    let small = train.per_class_sample(30, 0).unwrap();
    let cfg = PoisoningAttackConfig { blind: Some(BlindLoss { warmup_epochs: 1, ..BlindLoss::default() }), ..blind_on_digits(LossBalance::Mgda, 3) };
    let (a, b) = (poisoning::run(&small, &test, &cfg).unwrap(), poisoning::run(&small, &test, &cfg).unwrap());
    assert_eq!(a.victim, b.victim);
}

/// Blind on the CIFAR-10 test subset (500 training images, the default victim, 8 epochs, the
/// backdoor task from epoch 3): the authors' pattern at its place.
#[test]
fn blind_backdoors_a_cifar_victim() {
    let Some((train, test)) = cifar_subset() else { return };
    let r = poisoning::run(&train, &test, &quick(PoisoningAttackConfig::blind(), 8)).unwrap();
    println!("Blind: victim {:?}\n    clean {:?}", r.victim, r.clean_reference);
    assert!(r.victim.attack_success_rate > r.clean_reference.attack_success_rate + 0.5, "{r:?}");
    assert!(r.clean_reference.clean_accuracy - r.victim.clean_accuracy < 0.1, "{r:?}");
}

/// TrojanNN's claim (Liu et al. 2018): a trigger whose pixels are optimised to excite
/// well-connected neurons of the trained model implants its backdoor with little retraining,
/// where a trigger of the same size and place that was not optimised does not. Digits: the
/// attacker's trained ConvNet (no normalisation layers), a 3x3 trigger, the default 10 %
/// stamped, 5 epochs of retraining at 0.01. Measured: neuron activation 4.5 (random start 1.3);
/// ASR 92.6 % vs 12.4 % with the random trigger; CA 91.6 -> 88.3 %. With the instance-norm
/// ConvNet the other digits tests use, the optimisation gains little (activation 2.5 vs 1.9:
/// instance norm rescales the stimulus away) and neither trigger implants at 1 % and 2 epochs.
#[test]
fn trojannn_trigger_excites_its_neurons_and_implants_with_little_retraining() {
    use transferlab::attacks::trojannn::{self, TrojanNnConfig};
    use transferlab::report::Outcome;
    use transferlab::models::{Arch, ModelSpec, Network, Norm};
    use transferlab::train::{train, LrSchedule, ProgressMode, TrainConfig};
    let (train_set, test) = data();
    let spec = ModelSpec::new(Arch::ConvNet { width: 32, depth: 2, norm: Norm::None }, train_set.shape, 10).unwrap();
    let mut net = Network::new(&spec, 0, &candle_core::Device::Cpu).unwrap();
    train(&mut net, &train_set, None, &TrainConfig { progress: ProgressMode::Hidden, ..transferlab::attacks::poisoning::victim_training() }).unwrap();
    let mut cfg = TrojanNnConfig { area_fraction: 9.0 / 64.0, baseline: true, ..TrojanNnConfig::default() };
    cfg.retrain.epochs = 5;
    cfg.retrain.schedule = LrSchedule::Cosine { lr: 0.01, min_lr: 0.0, epochs: 5.0 };
    let r = trojannn::run(&net, &train_set, &test, &cfg).unwrap();
    let random = r.baseline.unwrap();
    println!("TrojanNN: neurons {:?} activation {:.2} (random {:.2}), {} poisoned\n  before {:?}\n  after {:?}\n  random {:?}", r.neurons, r.activation_trigger, r.activation_random, r.n_poisoned, r.before, r.after, random);
    assert!(matches!(&r.trigger, Trigger::Patch { size: 3, .. }), "{:?}", r.trigger);
    assert!(r.activation_trigger > 2.0 * r.activation_random, "the optimisation excites the neurons");
    assert!(r.before.attack_success_rate < 0.1, "{:?}", r.before);
    assert!(r.after.attack_success_rate > 0.8, "{:?}", r.after);
    assert!(random.attack_success_rate < 0.3, "the random trigger at the same place: {random:?}");
    assert!(r.before.clean_accuracy - r.after.clean_accuracy < 0.06, "{:?}", r.after);
    assert_eq!(r.n_poisoned, 144);
    assert_eq!(r.to_dataframe().unwrap().height(), 3);
    let again = trojannn::run(&net, &train_set, &test, &TrojanNnConfig { baseline: false, ..cfg.clone() }).unwrap();
    assert_eq!((format!("{:?}", again.trigger), format!("{:?}", again.after)), (format!("{:?}", r.trigger), format!("{:?}", r.after)), "seeded: bit-identical");
    let e = trojannn::run(&net, &train_set, &test, &TrojanNnConfig { placement: Placement::Random, ..cfg }).unwrap_err().to_string();
    assert!(e.contains("fixed place"), "{e}");
}

/// Low Frequency (Zeng et al. 2021) on the digits, the filter scaled to 8x8 (sigma 1.5 px):
/// the smooth universal perturbation implants a backdoor far above the clean model's rate on
/// the same trigger, and its energy lies in the low half of the spectrum, where BadNets' patch
/// and the same perturbation fitted without the low-pass filter (the ablation) put much of
/// theirs in the high half. Measured: ASR 91.0 % (clean model 0 %), CA 98.9 % (99.4 %); share
/// of energy in the high half 1.3 % against 17.2 % (BadNets) and 41.7 % (unsmoothed). The
/// perturbation, rescaled into [0, 0.2] and so non-negative, fools 1 % of the 100 fitted images
/// after the 10 passes (the paper aims at 20 % on CIFAR-10): as a trigger it needs no more.
#[test]
fn low_frequency_trigger_is_smooth_and_implants() {
    use transferlab::attacks::low_frequency::{self, high_frequency_share, LowFrequencyConfig, LowFrequencyFit};
    use transferlab::train::ProgressMode;
    let (train, test) = data();
    let cfg = LowFrequencyConfig { attack: quick(LowFrequencyConfig::default().attack, 10), ..LowFrequencyConfig::scaled_to(8) };
    let r = low_frequency::run(&train, &test, &cfg).unwrap();
    println!("LF: target {} fooling {:.2} passes {} high-frequency share {:.3}\n  victim {:?}\n  clean {:?}", r.fitted.target, r.fitted.fooling_rate, r.fitted.passes, r.high_frequency_share, r.attack.victim, r.attack.clean_reference);
    assert!(r.attack.victim.attack_success_rate > r.attack.clean_reference.attack_success_rate + 0.5, "{r:?}");
    assert!(r.attack.clean_reference.clean_accuracy - r.attack.victim.clean_accuracy < 0.03, "{r:?}");
    assert_eq!(r.attack.n_poisoned, (0.1 * train.len() as f64).round() as usize);
    let Trigger::Additive { channels: 1, pixels } = &r.fitted.trigger else { panic!("an additive one-channel trigger: {:?}", r.fitted.trigger) };
    let (lo, hi) = pixels.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(lo == 0.0 && (hi - 0.2).abs() < 1e-6, "rescaled into [0, 0.2]: {lo}..{hi}");
    let badnets = high_frequency_share(&Trigger::badnets(3), train.shape).unwrap();
    let spec = transferlab::models::ModelSpec::new(cfg.attack.arch.clone(), train.shape, 10).unwrap();
    let mut own = transferlab::models::Network::new(&spec, 1, &candle_core::Device::Cpu).unwrap();
    transferlab::train::train(&mut own, &train, None, &cfg.attack.train).unwrap();
    let rough_fit = LowFrequencyFit { smooth: false, ..cfg.fit.clone() };
    let rough = low_frequency::fit_trigger(&own, &train, &rough_fit, ProgressMode::Hidden).unwrap();
    let rough_share = high_frequency_share(&rough.trigger, train.shape).unwrap();
    println!("high-frequency share: BadNets {badnets:.3}, unsmoothed {rough_share:.3}");
    assert!(r.high_frequency_share < 0.05 && badnets > 0.1 && rough_share > 3.0 * r.high_frequency_share, "LF {} BadNets {badnets} unsmoothed {rough_share}", r.high_frequency_share);
    let again = low_frequency::fit_trigger(&own, &train, &rough_fit, ProgressMode::Hidden).unwrap();
    assert_eq!((again.trigger, again.target), (rough.trigger, rough.target), "seeded: bit-identical");
    let e = low_frequency::fit_trigger(&own, &train, &LowFrequencyFit { fit_images: 0, ..cfg.fit }, ProgressMode::Hidden).unwrap_err().to_string();
    assert!(e.contains("fit_images"), "{e}");
}

/// LIRA (Doan et al. 2021) on the digits: the generator and the victim learn an invisible,
/// image-specific trigger together; the same-seed clean model, trained as long, ignores it.
/// Measured (10 joint + 10 fine-tuning epochs, batch 64, the paper's other defaults but
/// epsilon): ASR 98.5 % vs 0.6 % for the clean model, CA 96.7 % vs 98.9 %. Epsilon is 0.1 (1.6
/// of the digits' 16 grey steps) rather than 0.01: at 0.05 and 10 + 5 epochs ASR was 91.9 % at
/// CA 69.3 %; at 0.1 and 10 + 5, ASR 100 % at CA 89.4 %: the fine-tuning stage is what gives
/// the clean accuracy back.
#[test]
fn lira_learns_an_invisible_trigger_with_the_victim() {
    let (train, test) = data();
    let stage = |t: TrainConfig, epochs: usize| TrainConfig { epochs, batch_size: 64, progress: transferlab::train::ProgressMode::Hidden, ..t };
    let d = LiraConfig::default();
    let cfg = LiraConfig { epsilon: 0.1, joint: stage(d.joint.clone(), 10), finetune: stage(d.finetune.clone(), 10), ..d };
    let r = lira::run(&train, &test, &cfg).unwrap();
    println!("LIRA: victim {:?}\n  clean {:?}\n  L-inf {} generator loss {:?}", r.victim, r.clean_reference, r.perturbation_linf, r.generator_loss);
    assert!(r.victim.attack_success_rate > 0.9, "{:?}", r.victim);
    assert!(r.clean_reference.attack_success_rate < 0.1, "{:?}", r.clean_reference);
    assert!(r.clean_reference.clean_accuracy - r.victim.clean_accuracy < 0.04, "{:?} vs {:?}", r.victim, r.clean_reference);
    assert!(r.perturbation_linf <= cfg.epsilon + 1e-6 && r.perturbation_linf > 0.5 * cfg.epsilon, "{}", r.perturbation_linf);
    assert_eq!(r.generator_loss.len(), 10);
    assert!(r.generator_loss[9] < r.generator_loss[0], "{:?}", r.generator_loss);
    // The trigger is the generator's own, image by image: two images get different perturbations.
    let two = test.select(&[0, 1]).unwrap();
    let moved = r.generator.perturb_dataset(&two, cfg.epsilon, &Device::Cpu).unwrap();
    let delta: Vec<f32> = moved.pixels().iter().zip(two.pixels()).map(|(a, b)| a - b).collect();
    let len = two.image_len();
    assert!(delta[..len].iter().zip(&delta[len..]).any(|(a, b)| (a - b).abs() > 1e-3), "one perturbation for both images");
    let short = LiraConfig { joint: stage(cfg.joint.clone(), 1), finetune: stage(cfg.finetune.clone(), 1), ..cfg.clone() };
    let (a, b) = (lira::run(&train, &test, &short).unwrap(), lira::run(&train, &test, &short).unwrap());
    assert_eq!((a.victim, a.generator_loss), (b.victim, b.generator_loss), "seeded: bit-identical");
    let e = lira::run(&train, &test, &LiraConfig { epsilon: 0.0, ..cfg.clone() }).unwrap_err().to_string();
    assert!(e.contains("0.01"), "{e}");
    let e = lira::run(&train, &test, &LiraConfig { alpha: 1.0, ..cfg.clone() }).unwrap_err().to_string();
    assert!(e.contains("nothing is poisoned"), "{e}");
    let e = transferlab::attacks::TriggerGenerator::new((1, 3, 3), 16, 0, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("even sides"), "{e}");
}

/// The Input-aware dynamic attack (Nguyen & Tran 2020) on the digits: a mask generator trained
/// first, then a pattern generator with the victim; each image gets its own trigger, which
/// sends it to the target far more often than the clean model goes there, while another
/// image's trigger mostly does not (the cross-trigger test). The paper's defaults but the
/// generators' size (16 channels, 2 stages: the authors' MNIST setting), 10 mask epochs and 40
/// joint epochs at batch 64, cosine from lr 0.05. Measured: ASR 45.8 % vs 0 % for the clean
/// model, CA 98.9 % vs 99.7 %, cross-trigger accuracy 79.1 % (clean model 99.4 %), masks
/// covering 3.6 % of the image. The backdoor is implanted only in part: the mask covers about
/// 2 of the 64 pixels of a digit (the authors' MNIST masks cover about 25 of 784), and the
/// authors train 600 epochs on 60,000 images; at 20 epochs and lr 0.01 ASR was 30.0 %, with the
/// mask density raised to 0.1 (coverage stayed 4.2 %) 5.0 %. Evaluating with the pattern
/// generator's batch statistics instead of its running ones gave 42.1 %: not the cause.
#[test]
fn input_aware_triggers_work_on_their_own_image_only() {
    let (train, test) = data();
    let d = InputAwareConfig::default();
    let epochs = 40;
    let schedule = transferlab::train::LrSchedule::Cosine { lr: 0.05, min_lr: 0.0, epochs: epochs as f64 };
    let stage = TrainConfig { epochs, batch_size: 64, schedule, progress: transferlab::train::ProgressMode::Hidden, ..d.train.clone() };
    let cfg = InputAwareConfig { mask_epochs: 10, generator_width: 16, generator_depth: 2, train: stage, ..d };
    let r = input_aware::run(&train, &test, &cfg).unwrap();
    println!(
        "Input-aware: victim {:?} cross {:.3}\n  clean {:?} cross {:.3}\n  mask coverage {:.3}, mask loss {:?}\n  diversity {:?}",
        r.victim, r.victim_cross_accuracy, r.clean_reference, r.clean_reference_cross_accuracy, r.mask_coverage, r.mask_loss, r.diversity_loss
    );
    assert!(r.victim.attack_success_rate > r.clean_reference.attack_success_rate + 0.3, "{:?} vs {:?}", r.victim, r.clean_reference);
    assert!(r.clean_reference.clean_accuracy - r.victim.clean_accuracy < 0.04, "{:?} vs {:?}", r.victim, r.clean_reference);
    assert!(r.victim_cross_accuracy > 0.7, "another image's trigger mostly keeps the label: {}", r.victim_cross_accuracy);
    assert!(r.mask_coverage < 0.1, "the mask covers a small part of the image: {}", r.mask_coverage);
    assert!(r.mask_loss.last() < r.mask_loss.first(), "{:?}", r.mask_loss);
    assert_eq!(r.diversity_loss.len(), epochs);
    // Input-aware: two images get different triggers.
    let two = test.select(&[0, 1]).unwrap();
    let masks = r.mask_generator.outputs(&two, true, &Device::Cpu).unwrap();
    let patterns = r.pattern_generator.outputs(&two, false, &Device::Cpu).unwrap();
    let differ = |ds: &transferlab::data::Dataset| {
        let n = ds.image_len();
        ds.pixels()[..n].iter().zip(&ds.pixels()[n..]).any(|(a, b)| (a - b).abs() > 1e-2)
    };
    assert!(differ(&masks) && differ(&patterns), "one trigger for both images");
    let own = r.stamp_dataset(&two, &two).unwrap();
    assert!(own.pixels().iter().all(|v| (0.0..=1.0).contains(v)), "stamped images stay in [0, 1]");
    let short = InputAwareConfig { mask_epochs: 1, train: TrainConfig { epochs: 1, ..cfg.train.clone() }, ..cfg.clone() };
    let (a, b) = (input_aware::run(&train, &test, &short).unwrap(), input_aware::run(&train, &test, &short).unwrap());
    assert_eq!((a.victim, a.victim_cross_accuracy, a.mask_loss), (b.victim, b.victim_cross_accuracy, b.mask_loss), "seeded: bit-identical");
    let e = input_aware::run(&train, &test, &InputAwareConfig { attack_fraction: 0.01, ..cfg.clone() }).unwrap_err().to_string();
    assert!(e.contains("at least one poisoned image"), "{e}");
    let e = input_aware::run(&train, &test, &InputAwareConfig { mask_density: 0.0, ..cfg.clone() }).unwrap_err().to_string();
    assert!(e.contains("0.032"), "{e}");
    let e = InputAwareGenerator::new(train.shape, 1, 16, 4, 0, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("2^depth"), "{e}");
}

/// A pool of reflection images for tests: smooth plane waves at different frequencies and
/// phases (the benchmarks use real photographs).
fn wave_pool(n: usize, (c, h, w): (usize, usize, usize)) -> transferlab::data::Dataset {
    let mut pixels = Vec::with_capacity(n * c * h * w);
    for k in 0..n {
        let (fy, fx, phase) = (0.5 + (k % 3) as f32, 0.5 + (k % 4) as f32 * 0.5, k as f32);
        for _ in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let a = 2.0 * std::f32::consts::PI * (fy * y as f32 / h as f32 + fx * x as f32 / w as f32) + phase;
                    pixels.push(0.5 + 0.5 * a.sin());
                }
            }
        }
    }
    transferlab::data::Dataset::new(pixels, (c, h, w), vec![0; n], vec!["reflection".into()]).unwrap()
}

/// ReFool (Liu et al. 2020) as BackdoorBench runs it, on the digits: 10 % of the training set
/// carries a reflection (ghost or out of focus, one per image from a pool) and the target
/// label; the poisoned set keeps what the attack promises, and the victim learns it. Measured
/// (8 epochs): ASR 85.8 % vs 0 % for the same-seed clean model, CA 98.3 % vs 99.2 %.
#[test]
fn refool_mixes_reflections_in_linear_light_and_backdoors_the_victim() {
    let (train, test) = data();
    let cfg = PoisoningAttackConfig::refool(&wave_pool(8, (1, 16, 16)), train.shape).unwrap();
    let p = poison(&train, &cfg.poison).unwrap();
    let flags = p.poisoned_flags();
    assert_eq!(flags.iter().filter(|&&f| f).count(), (0.1 * train.len() as f64).round() as usize);
    // The image keeps at least its alpha_t share in linear light: x' >= (0.4 x^2.2)^(1/2.2).
    let floor = 0.4f32.powf(1.0 / 2.2);
    for i in (0..train.len()).filter(|&i| flags[i]) {
        assert_eq!(p.labels[i], 0, "dirty-label, all-to-one to class 0");
        let (a, b) = (train.image(i), p.image(i));
        assert!(a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-3), "image {i} unchanged");
        assert!(a.iter().zip(b).all(|(x, y)| (0.0..=1.0).contains(y) && *y >= floor * x - 1e-4), "image {i}: {a:?} -> {b:?}");
    }
    assert_eq!(poison(&train, &cfg.poison).unwrap().pixels(), p.pixels(), "seeded: bit-identical");
    let r = poisoning::run(&train, &test, &quick(cfg.clone(), 8)).unwrap();
    println!("ReFool: victim {:?}\n  clean {:?}", r.victim, r.clean_reference);
    assert!(r.victim.attack_success_rate > 0.75, "{:?}", r.victim);
    assert!(r.victim.attack_success_rate > r.clean_reference.attack_success_rate + 0.4, "{r:?}");
    assert!(r.clean_reference.clean_accuracy - r.victim.clean_accuracy < 0.05, "{r:?}");
    let e = ReflectionTrigger::new(&wave_pool(1, (1, 8, 8)).select(&[]).unwrap(), train.shape).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let colour = Trigger::Reflection(ReflectionTrigger::new(&wave_pool(2, (1, 8, 8)), (3, 8, 8)).unwrap());
    let e = colour.apply_to(&train, &[0], 0).unwrap_err().to_string();
    assert!(e.contains("ReflectionTrigger::new(pool, data.shape)"), "{e}");
}
