//! The trainer: reproducibility, resumption, divergence detection, freezing.

use crate::common;

use candle_core::{Device, Tensor};
use transferlab::error::Error;
use transferlab::models::{ModelSpec, Network};
use transferlab::train::{train, train_with, CrossEntropy, Objective, ProgressMode, Step, TrainConfig, LrSchedule};

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        schedule: LrSchedule::Constant { lr: 0.05 },
        seed: 11,
        progress: ProgressMode::Hidden,
        ..TrainConfig::default()
    }
}

fn weights_of(net: &Network) -> Vec<(String, Vec<f32>)> {
    net.named_tensors()
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn same_seed_same_weights_bit_for_bit() {
    let data = common::bands(30, 4, 16, 1);
    let spec = ModelSpec::named("convnet-bn", data.shape, 4).unwrap();
    let run = |seed: u64| {
        let mut net = Network::new(&spec, 5, &Device::Cpu).unwrap();
        let mut cfg = config(2);
        cfg.seed = seed;
        cfg.augment = transferlab::data::transforms::Augment { crop_padding: 2, hflip: true };
        train(&mut net, &data, None, &cfg).unwrap();
        weights_of(&net)
    };
    let a = run(11);
    let b = run(11);
    assert!(a == b, "two runs with the same seed differ");
    let c = run(12);
    assert!(a != c, "a different seed gave identical weights");
}

#[test]
fn learns_a_simple_task() {
    let data = common::bands(40, 4, 16, 2);
    let test = common::bands(20, 4, 16, 3);
    let spec = ModelSpec::named("convnet", data.shape, 4).unwrap();
    let mut net = Network::new(&spec, 0, &Device::Cpu).unwrap();
    let history = train(&mut net, &data, Some(&test), &config(3)).unwrap();
    assert_eq!(history.epochs.len(), 3);
    assert!(history.final_eval_accuracy().unwrap() > 0.9, "{history:?}");
    let df = history.to_dataframe().unwrap();
    assert_eq!(df.height(), 3);
}

/// Fails once at a chosen epoch, as a killed process would, then behaves normally.
struct FailAt {
    epoch: usize,
    inner: CrossEntropy,
}

impl Objective for FailAt {
    fn loss(&mut self, s: &mut Step) -> transferlab::Result<(Tensor, Tensor)> {
        if s.epoch == self.epoch {
            return Err(Error::invalid("test", "simulated interruption"));
        }
        self.inner.loss(s)
    }
}

#[test]
fn interrupted_run_resumes_to_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::bands(20, 3, 12, 4);
    let spec = ModelSpec::named("convnet-bn", data.shape, 3).unwrap();
    let ce = CrossEntropy { label_smoothing: 0.0, mixup_alpha: None };

    let mut straight = Network::new(&spec, 1, &Device::Cpu).unwrap();
    let full = train(&mut straight, &data, None, &config(4)).unwrap();

    let mut cfg = config(4);
    cfg.checkpoint = Some(dir.path().join("run.ckpt"));
    let mut net = Network::new(&spec, 1, &Device::Cpu).unwrap();
    let err = train_with(&mut net, &data, None, &cfg, &mut FailAt { epoch: 2, inner: ce }).unwrap_err();
    assert!(err.to_string().contains("simulated interruption"));
    // A new process: fresh model, same config; it must pick up after epoch 2.
    let mut resumed = Network::new(&spec, 1, &Device::Cpu).unwrap();
    let history = train(&mut resumed, &data, None, &cfg).unwrap();
    assert_eq!(history.epochs.len(), 4);
    let losses = |h: &transferlab::train::History| h.epochs.iter().map(|r| (r.epoch, r.train_loss, r.train_accuracy)).collect::<Vec<_>>();
    assert_eq!(losses(&history), losses(&full), "resumed history differs");
    assert!(weights_of(&resumed) == weights_of(&straight), "resumed weights differ from an uninterrupted run");

    // A checkpoint of another run is refused, not silently mixed in.
    let mut other = config(5);
    other.checkpoint = cfg.checkpoint.clone();
    let mut net = Network::new(&spec, 1, &Device::Cpu).unwrap();
    let err = train(&mut net, &data, None, &other).unwrap_err();
    assert!(err.to_string().contains("different run"), "{err}");
}

/// Stops after the second epoch.
struct StopAtTwo(CrossEntropy);

impl Objective for StopAtTwo {
    fn loss(&mut self, s: &mut Step) -> transferlab::Result<(Tensor, Tensor)> {
        self.0.loss(s)
    }

    fn stop_after(&mut self, epoch: &transferlab::train::EpochRecord) -> bool {
        epoch.epoch >= 2
    }
}

#[test]
fn an_objective_stops_training_early_and_a_resumed_run_stops_too() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::bands(20, 3, 12, 4);
    let spec = ModelSpec::named("mlp", data.shape, 3).unwrap();
    let mut cfg = config(5);
    cfg.checkpoint = Some(dir.path().join("run.ckpt"));
    let ce = CrossEntropy { label_smoothing: 0.0, mixup_alpha: None };
    let mut net = Network::new(&spec, 1, &Device::Cpu).unwrap();
    let history = train_with(&mut net, &data, None, &cfg, &mut StopAtTwo(ce)).unwrap();
    assert_eq!(history.epochs.len(), 2);
    // Rerun from the checkpoint: it stops where the first run stopped, with its weights.
    let mut again = Network::new(&spec, 1, &Device::Cpu).unwrap();
    let resumed = train_with(&mut again, &data, None, &cfg, &mut StopAtTwo(ce)).unwrap();
    assert_eq!(resumed.epochs, history.epochs);
    assert!(weights_of(&again) == weights_of(&net));
}

#[test]
fn divergence_stops_with_an_error() {
    let data = common::bands(10, 2, 8, 5);
    let spec = ModelSpec::named("mlp", data.shape, 2).unwrap();
    let mut net = Network::new(&spec, 0, &Device::Cpu).unwrap();
    let mut cfg = config(3);
    cfg.schedule = LrSchedule::Constant { lr: 1e30 };
    let err = train(&mut net, &data, None, &cfg).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    assert!(err.to_string().contains("Lower the learning rate"));
}

#[test]
fn fixed_feature_training_changes_only_the_head() {
    let data = common::bands(10, 3, 16, 6);
    let spec = ModelSpec::named("convnet-bn", data.shape, 3).unwrap();
    let mut net = Network::new(&spec, 0, &Device::Cpu).unwrap();
    let before = weights_of(&net);
    net.freeze_body();
    train(&mut net, &data, None, &config(1)).unwrap();
    let after = weights_of(&net);
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        if net.is_head(name) {
            assert!(a != b, "head {name} did not train");
        } else {
            assert!(a == b, "frozen {name} changed (BatchNorm statistics included)");
        }
    }
}

#[test]
fn bad_configurations_are_refused() {
    let data = common::bands(5, 2, 8, 7);
    let spec = ModelSpec::named("mlp", data.shape, 2).unwrap();
    let mut net = Network::new(&spec, 0, &Device::Cpu).unwrap();
    let mut cfg = config(0);
    assert!(train(&mut net, &data, None, &cfg).unwrap_err().to_string().contains("epochs"));
    cfg.epochs = 1;
    cfg.batch_size = 0;
    assert!(train(&mut net, &data, None, &cfg).is_err());
    let wrong = common::bands(5, 2, 10, 7);
    let err = train(&mut net, &wrong, None, &config(1)).unwrap_err();
    assert!(err.to_string().contains("(1, 8, 8)"), "{err}");
    net.freeze("");
    assert!(train(&mut net, &data, None, &config(1)).unwrap_err().to_string().contains("frozen"));
}

/// Evaluation records no autograd graph: its outputs track no op, its values equal the
/// graph-recording forward pass bit for bit, and the view sees later weight updates.
#[test]
fn evaluation_records_no_graph_and_matches_the_recorded_forward() {
    let data = transferlab::data::digits().unwrap().select(&(0..64).collect::<Vec<_>>()).unwrap();
    let spec = ModelSpec::named("convnet-bn", data.shape, 10).unwrap();
    let mut net = Network::new(&spec, 3, &Device::Cpu).unwrap();
    let x = data.images_tensor(&Device::Cpu).unwrap();
    let recorded = net.forward(&x, false).unwrap();
    assert!(recorded.track_op(), "the ordinary forward pass keeps its graph for backward passes");
    let view = net.inference().unwrap();
    let free = view.forward(&x).unwrap();
    assert!(!free.track_op());
    assert!(!view.features(&x).unwrap().track_op());
    assert_eq!(recorded.flatten_all().unwrap().to_vec1::<f32>().unwrap(), free.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    for out in [transferlab::train::logits(&net, &data).unwrap(), transferlab::train::features(&net, &data).unwrap()] {
        assert!(!out.track_op());
    }
    // Training after the view was made moves what the view computes (shared storage).
    train(&mut net, &data, None, &config(1)).unwrap();
    let after = net.forward(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(view.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), after);
}

/// Input normalisation inside the model equals normalising the data by hand.
#[test]
fn normalisation_inside_the_model_equals_normalised_data() {
    use transferlab::models::InputNorm;
    let data = transferlab::data::digits().unwrap().select(&(0..32).collect::<Vec<_>>()).unwrap();
    let norm = InputNorm::new(vec![0.3], vec![0.2]).unwrap();
    let plain = ModelSpec::named("convnet-bn", data.shape, 10).unwrap();
    let a = Network::new(&plain.clone().normalized(norm.clone()).unwrap(), 5, &Device::Cpu).unwrap();
    let b = Network::new(&plain, 5, &Device::Cpu).unwrap();
    let by_hand = transferlab::data::normalise(&data, &norm.mean, &norm.std).unwrap();
    let la = transferlab::train::logits(&a, &data).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let lb = transferlab::train::logits(&b, &by_hand).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let worst = la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "max difference {worst}");
    // A head replaced for a new task keeps the normalisation.
    let mut c = a.duplicate().unwrap();
    c.replace_head(3, 0).unwrap();
    assert_eq!(c.spec().normalize, Some(norm));
}
