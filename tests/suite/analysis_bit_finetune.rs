//! BiT fine-tuning: the HyperRule's regimes, the zero head, config errors, determinism, and
//! few-shot transfer beating scratch on notebook 10's miniature.

use std::time::Instant;
use transferlab::analysis::bit_finetune::{run, zero_head, BitFinetuneConfig, BitHyperRule};
use transferlab::data::transforms::resize;
use transferlab::data::{digits, place_on_canvas, Dataset};
use transferlab::models::{ModelSpec, Network};
use transferlab::report::Outcome;
use transferlab::train::{train, LrSchedule, OptimizerConfig, ProgressMode, TrainConfig};
use candle_core::Device;

// resnetv2-tiny needs at least 16x16 inputs.
fn digits16(classes: &[u32]) -> Dataset {
    resize(&digits().unwrap().class_subset(classes, true).unwrap(), (16, 16)).unwrap()
}

fn target() -> (Dataset, Dataset) {
    digits16(&[5, 6, 7, 8, 9]).split(0.5, 0, true).unwrap()
}

fn source_net(src: &Dataset, epochs: usize) -> Network {
    let mut net = Network::new(&ModelSpec::named("resnetv2-tiny", src.shape, 5).unwrap(), 0, &Device::Cpu).unwrap();
    let cfg = TrainConfig {
        epochs,
        batch_size: 64,
        optimizer: OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay: 5e-4 },
        schedule: LrSchedule::Cosine { lr: 0.05, min_lr: 0.0, epochs: epochs as f64 },
        progress: ProgressMode::Hidden,
        ..TrainConfig::default()
    };
    train(&mut net, src, None, &cfg).unwrap();
    net
}

fn quiet(shots: Vec<usize>, seeds: usize, full: bool) -> BitFinetuneConfig {
    BitFinetuneConfig { shots, seeds, full_data: full, progress: ProgressMode::Hidden, ..BitFinetuneConfig::default() }
}

#[test]
fn hyperrule_regimes() {
    let rule = BitHyperRule::default();
    assert_eq!((rule.lr, rule.momentum, rule.batch_size), (0.003, 0.9, 512));
    assert_eq!(rule.schedule_steps(19_999), (100, [200, 300, 400], 500));
    assert_eq!(rule.schedule_steps(20_000), (500, [3_000, 6_000, 9_000], 10_000));
    assert_eq!(rule.schedule_steps(499_999).2, 10_000);
    assert_eq!(rule.schedule_steps(500_000), (500, [6_000, 12_000, 18_000], 20_000));
    assert_eq!(rule.mixup(19_999), None);
    assert_eq!(rule.mixup(20_000), Some(0.1));
    // 50k examples at batch 512: 98 steps per epoch, 10k steps -> 103 epochs (rounded up).
    let cfg = rule.train_config(50_000, 0).unwrap();
    assert_eq!((cfg.epochs, cfg.batch_size, cfg.mixup_alpha), (103, 512, Some(0.1)));
    let spe = 50_000f64 / 512.0;
    let spe = spe.ceil();
    assert!((cfg.schedule.lr_at(250.0 / spe) - 0.0015).abs() < 1e-9, "warm-up is linear");
    assert!((cfg.schedule.lr_at(2_000.0 / spe) - 0.003).abs() < 1e-12);
    assert!((cfg.schedule.lr_at(4_000.0 / spe) - 0.0003).abs() < 1e-12);
    assert!((cfg.schedule.lr_at(9_500.0 / spe) - 0.000003).abs() < 1e-12);
    match cfg.optimizer {
        OptimizerConfig::Sgd { momentum, weight_decay, .. } => assert_eq!((momentum, weight_decay), (0.9, 0.0)),
        o => panic!("{o:?}"),
    }
    // The scale shrinks every step count, keeping the proportions.
    let small = BitHyperRule { scale: 0.1, ..rule.clone() };
    assert_eq!(small.schedule_steps(1_000), (10, [20, 30, 40], 50));
    assert_eq!(small.schedule_steps(100_000), (50, [300, 600, 900], 1_000));
    let tiny = BitHyperRule { scale: 1e-6, ..rule };
    let (w, d, end) = tiny.schedule_steps(1_000);
    assert!(w >= 1 && w < end && d.iter().all(|&x| x >= w && x <= end), "{w} {d:?} {end}");
}

#[test]
fn zero_head_is_zero_and_body_is_kept() {
    let (train_set, _) = target();
    let net = Network::new(&ModelSpec::named("resnetv2-tiny", train_set.shape, 5).unwrap(), 0, &Device::Cpu).unwrap();
    let mut t = net.duplicate().unwrap();
    zero_head(&mut t, 3).unwrap();
    let (before, after) = (net.named_tensors().unwrap(), t.named_tensors().unwrap());
    let mut heads = 0;
    for (name, v) in after.iter() {
        if t.is_head(name) {
            heads += 1;
            let x: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
            assert!(x.iter().all(|&a| a == 0.0), "{name}");
            assert_eq!(v.dims()[0], 3, "{name}");
        } else {
            let a: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = before.get(name).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a, b, "{name}");
        }
    }
    assert_eq!(heads, 2);
    // A zero head predicts uniform logits.
    let x = train_set.select(&[0, 1]).unwrap();
    let l = transferlab::train::logits(&t, &x).unwrap().to_vec2::<f32>().unwrap();
    assert!(l.iter().flatten().all(|&v| v == 0.0));
}

#[test]
fn config_errors() {
    let (tr, te) = target();
    let net = Network::new(&ModelSpec::named("mlp", tr.shape, 5).unwrap(), 0, &Device::Cpu).unwrap();
    let msg = |cfg: BitFinetuneConfig| run(&net, &tr, &te, &cfg).unwrap_err().to_string();
    assert!(msg(quiet(vec![0], 1, false)).contains("shots"));
    assert!(msg(quiet(vec![], 1, false)).contains("full_data"));
    assert!(msg(quiet(vec![1], 0, false)).contains("seed"));
    assert!(msg(quiet(vec![10_000], 1, false)).contains("fewer shots"));
    let mut c = quiet(vec![1], 1, false);
    c.rule.scale = 0.0;
    assert!(msg(c).contains("scale"));
    let mut c = quiet(vec![1], 1, false);
    c.rule.lr = -1.0;
    assert!(msg(c).contains("learning rate"));
    let mut c = quiet(vec![1], 1, false);
    c.rule.batch_size = 0;
    assert!(msg(c).contains("batch"));
    let small = resize(&tr, (8, 8)).unwrap();
    assert!(run(&net, &small, &te, &quiet(vec![1], 1, false)).unwrap_err().to_string().contains("resize"));
    assert!(BitHyperRule::default().train_config(0, 0).is_err());
}

/// Notebook 10's miniature: digits shrunk to 12x12 and placed at random on a noisy 16x16
/// canvas (the source, digits 0-4, four placements of each; the target, digits 5-9, one), so
/// that the target's few examples do not cover the nuisance variation the source taught.
fn placed_digits() -> (Dataset, Dataset, Dataset) {
    let d = resize(&digits().unwrap(), (12, 12)).unwrap();
    let source = place_on_canvas(&d.class_subset(&[0, 1, 2, 3, 4], true).unwrap(), (16, 16), 4, 0.1, 1).unwrap();
    let (tr, te) = d.class_subset(&[5, 6, 7, 8, 9], true).unwrap().split(0.5, 0, true).unwrap();
    (source, place_on_canvas(&tr, (16, 16), 1, 0.1, 2).unwrap(), place_on_canvas(&te, (16, 16), 1, 0.1, 3).unwrap())
}

#[test]
/// BiT's claim, transfer >> scratch at few shots, on notebook 10's miniature: fine-tuning the
/// source with the (scaled) HyperRule beats the same recipe from scratch at 1 and 5 examples
/// per class, over two seeds; runs are reproducible. (On centred digits without noise the
/// claim does not hold: a random GroupNorm ResNet already separates them, see the notebook.)
fn few_shot_transfer_beats_scratch_and_is_deterministic() {
    let t0 = Instant::now();
    let (source, tr, te) = placed_digits();
    let src = source_net(&source, 6);
    let cfg = quiet(vec![1, 5], 2, false);
    let r = run(&src, &tr, &te, &cfg).unwrap();
    for k in [1, 5] {
        let (t, s) = r.mean(Some(k)).unwrap();
        println!("{k}-shot: transfer {t:.3} scratch {s:.3}");
        assert!(t > s + 0.05, "{k}-shot: transfer {t} does not beat scratch {s}");
    }
    println!("{:.1} s; {:?}", t0.elapsed().as_secs_f64(), r.rows);
    assert_eq!(r.rows.len(), 4);
    assert!(r.rows.iter().all(|x| x.steps == 50));
    let again = run(&src, &tr, &te, &cfg).unwrap();
    assert_eq!(r, again);
    let df = r.to_dataframe().unwrap();
    assert_eq!(df.shape(), (4, 6));
    r.figure().unwrap();
}


