//! Fine-tuning, super-fine-tuning and fine-pruning as defences.

use crate::defenses_support;

use defenses_support::{backdoored, case};
use std::time::Instant;
use transferlab::defenses::{fine_pruning, fine_tuning, FinePruningConfig, FineTuningConfig, MembershipProbe};
use transferlab::report::Outcome;

#[test]
fn fine_tuning_and_fine_pruning_on_badnets() {
    let c = case();
    let t = Instant::now();
    let net = backdoored(&c);
    eprintln!("train {:?}", t.elapsed());
    let m = c.probe.measure(&net).unwrap();
    eprintln!("before {m:?}");
    assert!(m.attack_success_rate > 0.9 && m.clean_accuracy > 0.9, "{m:?}");
    let members = c.train.select(&(0..300).collect::<Vec<_>>()).unwrap();
    let mp = MembershipProbe { members, non_members: c.probe.test.clone() };
    let t = Instant::now();
    let r = fine_tuning::run(&net, &c.defender, &c.probe, Some(&mp), &FineTuningConfig { batch_size: 32, ..Default::default() }).unwrap();
    eprintln!("ft {:?}\n{}", t.elapsed(), r.to_dataframe().unwrap());
    let t = Instant::now();
    let fp = fine_pruning::run(&net, &c.defender, &c.probe, &FinePruningConfig { batch_size: 32, ..Default::default() }).unwrap();
    eprintln!("fp {:?}\n{}\n{}", t.elapsed(), fp.to_dataframe().unwrap(), fp.curve_dataframe().unwrap());
}
