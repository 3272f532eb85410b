//! Fine-tuning, super-fine-tuning and fine-pruning as defences.

use crate::defenses_support;

use defenses_support::{backdoored, case};
use transferlab::data::Augment;
use transferlab::defenses::{fine_pruning, fine_tuning, FinePruningConfig, FineTuningConfig, MembershipProbe};
use transferlab::report::Outcome;

/// Sha et al.'s claim at the notebook's setting (notebook 14): on a BadNets model, fine-tuning
/// with a 1-pixel random shift lowers ASR and super-fine-tuning lowers it further, both at
/// the clean accuracy of the model; fine-pruning prunes dormant channels within its 4-point
/// accuracy budget, and with its fine-tuning lowers ASR too. (Without the shift, fine-tuning on 144 clean digits leaves ASR at 100 %:
/// the corner trigger's pixels are black in every clean digit, so nothing unlearns them.)
#[test]
fn fine_tuning_super_fine_tuning_and_fine_pruning_lower_badnets_asr() {
    let c = case();
    let net = backdoored(&c);
    let before = c.probe.measure(&net).unwrap();
    assert!(before.attack_success_rate > 0.9 && before.clean_accuracy > 0.9, "{before:?}");
    let members = c.train.select(&(0..300).collect::<Vec<_>>()).unwrap();
    let mp = MembershipProbe { members, non_members: c.probe.test.clone() };
    let cfg = FineTuningConfig { batch_size: 32, augment: Augment { crop_padding: 1, hflip: false }, ..Default::default() };
    let r = fine_tuning::run(&net, &c.defender, &c.probe, Some(&mp), &cfg).unwrap();
    eprintln!("{}", r.to_dataframe().unwrap());
    let (ft, sft) = (r.after[0].1, r.after[1].1);
    assert!(ft.attack_success_rate < before.attack_success_rate - 0.3, "fine-tuning: {ft:?}");
    assert!(sft.attack_success_rate < 0.3 && sft.attack_success_rate < ft.attack_success_rate, "super-fine-tuning: {sft:?}");
    for m in [ft, sft] {
        assert!(m.clean_accuracy > before.clean_accuracy - 0.05, "{m:?}");
    }
    assert_eq!(r.mia_auc.as_ref().map(Vec::len), Some(3));
    // Fine-pruning (Liu et al.) with the same shift in its fine-tuning: pruning the dormant
    // channels alone leaves this backdoor (the trigger's channels are not the dormant ones at
    // this size), pruning then fine-tuning lowers ASR.
    let fp_cfg = FinePruningConfig { batch_size: 32, augment: cfg.augment, ..Default::default() };
    let fp = fine_pruning::run(&net, &c.defender, &c.probe, &fp_cfg).unwrap();
    eprintln!("{}", fp.to_dataframe().unwrap());
    assert!(fp.pruned > 0 && fp.pruned < fp.channels, "{} of {}", fp.pruned, fp.channels);
    let (pruned, fine_pruned) = (fp.after[0].1, fp.after[1].1);
    assert!(fine_pruned.attack_success_rate < before.attack_success_rate - 0.3, "fine-pruning: {fine_pruned:?}");
    assert!(fine_pruned.attack_success_rate < pruned.attack_success_rate, "pruning {pruned:?}, fine-pruning {fine_pruned:?}");
    assert!(fine_pruned.clean_accuracy > before.clean_accuracy - 0.05, "{:?}", fp.after);
}
