//! A small backdoored model on digits, shared by the defence tests.
#![allow(dead_code)]

use candle_core::Device;
use transferlab::attacks::{poison, PoisonConfig};
use transferlab::data::{digits, Dataset};
use transferlab::defenses::BackdoorProbe;
use transferlab::models::{Arch, ModelSpec, Network, Norm};
use transferlab::train::{train, LrSchedule, OptimizerConfig, ProgressMode, TrainConfig};

pub struct Case {
    pub train: Dataset,
    pub poisoned: Dataset,
    pub defender: Dataset,
    pub probe: BackdoorProbe,
    pub spec: ModelSpec,
    pub attack: PoisonConfig,
}

/// Digits split 80/20, 10 % of the training split held out as the defender's clean data,
/// BadNets 3x3 to class 0 at 10 %.
pub fn case() -> Case {
    let all = digits().unwrap();
    let (train_set, test) = all.split(0.8, 0, true).unwrap();
    let (defender, _) = train_set.split(0.1, 1, true).unwrap();
    let attack = PoisonConfig::badnets(3, 0.1, 0);
    let poisoned = poison(&train_set, &attack).unwrap();
    let spec = ModelSpec::new(Arch::ConvNet { width: 32, depth: 2, norm: Norm::Instance }, train_set.shape, 10).unwrap();
    let probe = BackdoorProbe::new(test, attack.trigger.clone(), attack.target);
    Case { train: train_set, poisoned, defender, probe, spec, attack }
}

pub fn train_cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 64,
        optimizer: OptimizerConfig::sgd_momentum(),
        schedule: LrSchedule::Cosine { lr: 0.05, min_lr: 0.0, epochs: epochs as f64 },
        progress: ProgressMode::Hidden,
        ..TrainConfig::default()
    }
}

pub fn backdoored(c: &Case) -> Network {
    let mut net = Network::new(&c.spec, 0, &Device::Cpu).unwrap();
    train(&mut net, &c.poisoned, None, &train_cfg(12)).unwrap();
    net
}
