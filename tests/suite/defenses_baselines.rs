//! The defence and detection baselines: each detector separates the BadNets poison of the
//! shared digits case from clean data by a stated margin, CLP removes the backdoor without
//! data; each is deterministic for a seed and refuses what it cannot use.

use crate::defenses_support::{backdoored, case, train_cfg, Case};

use candle_core::Device;
use std::sync::OnceLock;
use transferlab::defenses::{anp, clp, feature_shift_tuning as fst, ft_sam, i_bau, nad, rnp, sau};
use transferlab::defenses::detection::{activation_clustering, mm_bd, scale_up, spectral_signatures, strip};
use transferlab::attacks::{poison, PoisonConfig};
use transferlab::models::{Arch, ModelSpec, Network, Norm};
use transferlab::train::train;
use transferlab::report::Outcome;

/// The backdoored digits model (BadNets at 10 %), trained once for every test here.
fn shared() -> &'static (Case, Network) {
    static CELL: OnceLock<(Case, Network)> = OnceLock::new();
    CELL.get_or_init(|| {
        let c = case();
        let net = backdoored(&c);
        (c, net)
    })
}

/// The same case poisoned at 3 % (43 poisons beside 143 clean images of the target class),
/// and its backdoored model: the training-data detectors assume the poison is a minority of
/// its class, as in their papers (Tran et al. poison 5-10 % of one class).
fn minority() -> &'static (Case, Network) {
    static CELL: OnceLock<(Case, Network)> = OnceLock::new();
    CELL.get_or_init(|| {
        let mut c = case();
        c.attack = PoisonConfig::badnets(3, 0.03, 0);
        c.poisoned = poison(&c.train, &c.attack).unwrap();
        let net = backdoored(&c);
        (c, net)
    })
}

#[test]
fn strip_rejects_triggered_inputs_and_keeps_clean_ones() {
    let (c, net) = shared();
    let r = strip::run(net, &c.defender, &c.probe, &Default::default()).unwrap();
    let d = r.detection;
    println!("STRIP: {d:?}\n  without {:?}\n  behind {:?}", r.without_filter, r.behind_filter);
    assert!(r.without_filter.attack_success_rate > 0.9, "the model is backdoored: {:?}", r.without_filter);
    assert!(d.auroc > 0.95, "triggered inputs keep their prediction under superimposition: AUROC {}", d.auroc);
    assert!(r.behind_filter.attack_success_rate < 0.2, "the filter stops the trigger: {:?}", r.behind_filter);
    // The boundary is set for 1 % false rejections on the defender's data; the test set may drift a little.
    assert!(d.false_positive_rate < 0.05, "clean inputs pass: {d:?}");
    assert!(r.without_filter.clean_accuracy - r.behind_filter.clean_accuracy < 0.05);
    let df = r.to_dataframe().unwrap();
    assert_eq!(df.height(), 2);
    assert!(df.column("auroc").is_ok() && df.column("der").is_ok());
    assert!(r.figure().unwrap().to_png().unwrap().len() > 1000);
    // Seeded: the same scores bit for bit.
    let again = strip::run(net, &c.defender, &c.probe, &Default::default()).unwrap();
    assert_eq!(r.scores, again.scores);
}

/// SCALE-UP on the near-binary 8x8 digits: amplifying pixels saturates clean digits as much as
/// the white patch, so clean inputs are nearly as consistent (mean SPC 0.89) as triggered ones
/// (0.95) and the AUROC stays near chance (0.54). The paper's claim is for natural images; the
/// CIFAR-10 test below checks it there. Here: the scores are SPC values and the boundary
/// respects the 1 % false rejection rate on the defender's data.
#[test]
fn scale_up_on_digits_measures_consistency_but_cannot_separate() {
    let (c, net) = shared();
    let calibrated = scale_up::ScaleUpConfig { threshold: None, ..Default::default() };
    let r = scale_up::run(net, &c.defender, &c.probe, &calibrated).unwrap();
    println!("SCALE-UP: {:?}", r.detection);
    assert!(r.scores.iter().all(|s| [0.0, 0.2, 0.4, 0.6, 0.8, 1.0].iter().any(|v| (v - s).abs() < 1e-9)), "SPC over 5 scales");
    assert!(r.detection.false_positive_rate <= 0.05, "{:?}", r.detection);
    assert!((0.4..0.7).contains(&r.detection.auroc), "near chance on digits: {}", r.detection.auroc);
}

/// A BadNets model on a CIFAR-10 subset (100 training / 30 test images per class, 20 % of the
/// training split held by the defender), ConvNet of depth 3, 10 epochs, BadNets'
/// checkerboard patch at 10 %; `None` (with a note) where CIFAR-10 is not served.
fn cifar_badnets() -> Option<&'static (transferlab::data::Dataset, transferlab::defenses::BackdoorProbe, Network)> {
    static CELL: OnceLock<(transferlab::data::Dataset, transferlab::defenses::BackdoorProbe, Network)> = OnceLock::new();
    cifar_badnets_cell(&CELL, Norm::Instance)
}

/// [`cifar_badnets`] with batch norm (for the defences that work on batch-norm channels).
fn cifar_badnets_bn() -> Option<&'static (transferlab::data::Dataset, transferlab::defenses::BackdoorProbe, Network)> {
    static CELL: OnceLock<(transferlab::data::Dataset, transferlab::defenses::BackdoorProbe, Network)> = OnceLock::new();
    cifar_badnets_cell(&CELL, Norm::Batch)
}

fn cifar_badnets_cell(
    cell: &'static OnceLock<(transferlab::data::Dataset, transferlab::defenses::BackdoorProbe, Network)>,
    norm: Norm,
) -> Option<&'static (transferlab::data::Dataset, transferlab::defenses::BackdoorProbe, Network)> {
    use transferlab::defenses::BackdoorProbe;
    use transferlab::hub::{load_dataset, DatasetRequest, Hub};
    if std::env::var("TLAB_CIFAR_HUB").is_err() {
        eprintln!("skipped: CIFAR-10 is not served (run through tests/with_cifar_hub.sh, as `just test` does)");
        return None;
    }
    Some(cell.get_or_init(|| {
        let hub = Hub::from_env();
        let train_set = load_dataset(&hub, &DatasetRequest::new("uoft-cs/cifar10", "train")).unwrap().per_class_sample(100, 0).unwrap();
        let test = load_dataset(&hub, &DatasetRequest::new("uoft-cs/cifar10", "test")).unwrap().per_class_sample(30, 0).unwrap();
        let (defender, _) = train_set.split(0.2, 1, true).unwrap();
        let attack = PoisonConfig { trigger: transferlab::attacks::Trigger::checkerboard(3), ..PoisonConfig::badnets(3, 0.1, 0) };
        let spec = ModelSpec::new(Arch::ConvNet { width: 32, depth: 3, norm }, train_set.shape, 10).unwrap();
        let mut net = Network::new(&spec, 0, &Device::Cpu).unwrap();
        train(&mut net, &poison(&train_set, &attack).unwrap(), None, &train_cfg(10)).unwrap();
        (defender, BackdoorProbe::new(test, attack.trigger.clone(), attack.target), net)
    }))
}

/// SCALE-UP's claim (Guo et al. 2023) on natural images: a BadNets model on a CIFAR-10 subset
/// keeps its (target) prediction under pixel amplification on triggered inputs far more often
/// than on clean ones. With BadNets' checkerboard patch, whose black pixels survive
/// amplification. With BackdoorBench's all-white patch the claim inverts (measured AUROC 0.38):
/// amplified CIFAR images saturate towards white and the white patch vanishes into them.
#[test]
fn scale_up_separates_triggered_cifar_inputs() {
    let Some((defender, probe, net)) = cifar_badnets() else { return };
    let r = scale_up::run(net, defender, probe, &Default::default()).unwrap();
    println!("SCALE-UP on CIFAR: {:?}\n  without {:?}", r.detection, r.without_filter);
    assert!(r.without_filter.attack_success_rate > 0.8, "the model is backdoored: {:?}", r.without_filter);
    assert!(r.detection.auroc > 0.85, "{:?}", r.detection);
    // At the authors' T = 0.5 most triggered inputs are caught.
    assert!(r.detection.recall > 0.8, "{:?}", r.detection);
}

/// Spectral Signatures (Tran et al. 2018) where the poison is a minority of its class: the
/// squared projection ranks poisons first (AUROC > 0.9) and removing 1.5 epsilon of each class
/// with epsilon = 0.2 (the poison is 23 % of class 0) catches them all; the model retrained
/// without them loses the backdoor. At BackdoorBench's 10 % of the whole set the poison is
/// half the target class and the signature vanishes (AUROC 0.61 measured on these digits).
#[test]
fn spectral_signatures_finds_a_minority_poison_and_removal_retrains_it_away() {
    let (c, net) = minority();
    let cfg = spectral_signatures::SpectralSignaturesConfig { expected_poison_rate: 0.2, retrain: Some(train_cfg(12)), ..Default::default() };
    let r = spectral_signatures::run(net, &c.poisoned, &c.probe, &cfg).unwrap();
    println!("SS: {:?}\n  before {:?}\n  retrained {:?}", r.detection, r.before, r.retrained);
    assert!(r.before.attack_success_rate > 0.9, "{:?}", r.before);
    assert!(r.detection.auroc > 0.9 && r.detection.recall > 0.95, "{:?}", r.detection);
    let after = r.retrained.unwrap();
    assert!(after.attack_success_rate < 0.1, "retrained without the flagged samples: {after:?}");
    assert!(r.before.clean_accuracy - after.clean_accuracy < 0.05);
    assert_eq!(r.to_dataframe().unwrap().height(), 2);
    // Half the class poisoned: the signature is gone.
    let (c10, net10) = shared();
    let r = spectral_signatures::run(net10, &c10.poisoned, &c10.probe, &Default::default()).unwrap();
    assert!(r.detection.auroc < 0.75, "{:?}", r.detection);
}

/// Activation Clustering (Chen et al. 2018) where the poison is a minority of its class: the
/// poisons form the small cluster of class 0 and every one is flagged (recall 1, AUROC 0.98);
/// the price is the small clusters other classes have too (15 % of clean samples flagged).
#[test]
fn activation_clustering_flags_the_small_cluster_of_the_target_class() {
    let (c, net) = minority();
    let r = activation_clustering::run(net, &c.poisoned, &c.probe, &Default::default()).unwrap();
    println!("AC: {:?}", r.detection);
    assert!(r.detection.recall > 0.95 && r.detection.auroc > 0.9, "{:?}", r.detection);
    assert!(r.detection.false_positive_rate < 0.25, "{:?}", r.detection);
    let again = activation_clustering::run(net, &c.poisoned, &c.probe, &Default::default()).unwrap();
    assert_eq!(r.flagged, again.flagged);
    assert!(r.figure().unwrap().to_png().unwrap().len() > 1000);
}

#[test]
fn mm_bd_flags_the_badnets_target_without_data() {
    let (_, net) = shared();
    let r = mm_bd::run(net, &Default::default()).unwrap();
    println!("MM-BD: {:?} p {} steps {:?}", r.max_margins, r.p_value, r.steps);
    assert_eq!(r.flagged, Some(0), "{r:?}");
    assert_eq!(r.to_dataframe().unwrap().height(), 10);
}

#[test]
fn detectors_refuse_data_of_another_shape() {
    let (c, net) = shared();
    let wrong = transferlab::data::Dataset::new(vec![0.0; 2 * 3 * 4 * 4], (3, 4, 4), vec![0, 1], c.defender.class_names.clone()).unwrap();
    let e = strip::run(net, &wrong, &c.probe, &Default::default()).unwrap_err().to_string();
    assert!(e.contains("the model takes"), "{e}");
    let e = spectral_signatures::run(net, &wrong, &c.probe, &Default::default()).unwrap_err().to_string();
    assert!(e.contains("the model takes"), "{e}");
    let bad = spectral_signatures::SpectralSignaturesConfig { expected_poison_rate: 0.7, ..Default::default() };
    let e = spectral_signatures::run(net, &c.poisoned, &c.probe, &bad).unwrap_err().to_string();
    assert!(e.contains("1.5"), "{e}");
}

/// CLP on the digits' batch-norm ConvNet: the rule is applied exactly (a channel is pruned iff
/// its UCLC exceeds its layer's mean by u standard deviations) and deterministically. The
/// paper's claim does not reproduce at this scale: no channel is an outlier at u = 3 (largest
/// z 2.25), and even u = 1 (12 of 64 channels) leaves ASR at 100 % while CA falls to 91 %;
/// the 3x3 patch on 8x8 digits is not carried by a few high-Lipschitz channels.
#[test]
fn clp_prunes_exactly_the_outlier_channels() {
    let (c, net) = digits_batch_norm();
    for u in [3.0, 1.5] {
        let r = clp::run(net, &c.probe, &clp::ClpConfig { u }).unwrap();
        println!("CLP u {u}: pruned {} -> {:?}", r.pruned_channels(), r.after);
        assert!(r.layers.iter().all(|l| l.norm.is_some()), "every conv of the ConvNet has its batch norm: {:?}", r.layers);
        for l in &r.layers {
            let n = l.uclc.len() as f64;
            let mean = l.uclc.iter().sum::<f64>() / n;
            let sd = (l.uclc.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            let want: Vec<usize> = (0..l.uclc.len()).filter(|&i| l.uclc[i] > mean + u * sd).collect();
            assert_eq!(l.pruned, want, "{}", l.conv);
        }
        if u < 2.0 {
            assert!(r.pruned_channels() > 0 && r.after.clean_accuracy < r.before.clean_accuracy, "pruning changes the model: {r:?}");
        }
        assert_eq!(r.layers, clp::run(net, &c.probe, &clp::ClpConfig { u }).unwrap().layers);
    }
    assert!(clp::run(net, &c.probe, &clp::ClpConfig { u: -1.0 }).is_err());
}

/// FST's claim (Min et al. 2023): pushing the new head away from the compromised one purifies
/// better than plain fine-tuning with a re-initialised head (alpha = 0, its ablation). On the
/// 10 % BadNets digits model: ASR 100 -> 48 % with FST, 78 % without the penalty, CA within 2
/// points.
#[test]
fn feature_shift_tuning_beats_its_ablation() {
    let (c, net) = shared();
    let r = fst::run(net, &c.defender, &c.probe, &Default::default()).unwrap();
    let plain = fst::run(net, &c.defender, &c.probe, &fst::FstConfig { alpha: 0.0, ..Default::default() }).unwrap();
    println!("FST {:?} (cos {})\n  alpha 0: {:?} (cos {})", r.after, r.head_cosine, plain.after, plain.head_cosine);
    assert!(r.after.attack_success_rate < plain.after.attack_success_rate - 0.15, "{:?} vs {:?}", r.after, plain.after);
    assert!(r.head_cosine < plain.head_cosine, "the penalty keeps the head further from the old one");
    assert!(r.before.clean_accuracy - r.after.clean_accuracy < 0.05, "{:?}", r.after);
    assert_eq!(r.to_dataframe().unwrap().height(), 2);
}

/// FT-SAM's claim (Zhu et al. 2023): fine-tuning with adaptive SAM (rho 2) removes a backdoor
/// that the same fine-tuning without the ascent step (rho 0, its ablation) leaves in place,
/// at a small cost in clean accuracy. On the 10 % BadNets digits model with the defender's 144
/// images: 100 epochs at batch 64 and lr 0.05 (300 steps; the authors take 1000 steps of 256
/// CIFAR images at 0.01). Measured: ASR 100 -> 12 % with SAM, 90 % without, CA 98 % both. At
/// the authors' batch and rate (100 one-batch steps) neither moves the backdoor (99 vs 100 %).
#[test]
fn ft_sam_removes_the_backdoor_plain_fine_tuning_leaves() {
    let (c, net) = shared();
    let cfg = ft_sam::FtSamConfig { lr: 0.05, batch_size: 64, ..Default::default() };
    let r = ft_sam::run(net, &c.defender, &c.probe, &cfg).unwrap();
    let plain = ft_sam::run(net, &c.defender, &c.probe, &ft_sam::FtSamConfig { rho: 0.0, ..cfg.clone() }).unwrap();
    println!("FT-SAM {:?} (step {:.3})\n  rho 0: {:?}\n  before {:?}", r.after, r.mean_perturbation_norm, plain.after, r.before);
    assert!(r.before.attack_success_rate > 0.9, "{:?}", r.before);
    assert!(r.after.attack_success_rate < plain.after.attack_success_rate - 0.3, "{:?} vs {:?}", r.after, plain.after);
    assert!(r.after.attack_success_rate < 0.3, "{:?}", r.after);
    assert!(r.before.clean_accuracy - r.after.clean_accuracy < 0.1, "{:?}", r.after);
    assert!(r.mean_perturbation_norm > 0.0 && plain.mean_perturbation_norm == 0.0);
    let df = r.to_dataframe().unwrap();
    assert_eq!(df.height(), 2);
    assert!(df.column("der").is_ok());
    // Seeded: bit-identical.
    let again = ft_sam::run(net, &c.defender, &c.probe, &cfg).unwrap();
    assert_eq!(format!("{:?}", r.after), format!("{:?}", again.after));
    // Refusals say what to change.
    let e = ft_sam::run(net, &c.defender, &c.probe, &ft_sam::FtSamConfig { label_smoothing: 1.5, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("0.1"), "{e}");
    let empty = c.defender.select(&[]).unwrap();
    assert!(ft_sam::run(net, &empty, &c.probe, &Default::default()).unwrap_err().to_string().contains("empty"));
}



/// NAD (Li et al. 2021) on the CIFAR-10 BadNets model at the defaults (teacher 10 epochs,
/// student 20, lr 0.01, betas 500 / 1000 / 1000 on the three stages): the attention loss
/// erases the backdoor that the same student training without it keeps. Measured: ASR 100 ->
/// 11.5 % with NAD, 100 % without the attention loss (betas 0, the ablation); CA 44 -> 32 %
/// (42.7 % without). Where the paper's mechanism differs: its teacher has already forgotten
/// part of the backdoor; ours, fine-tuned on 200 images at 0.01, keeps it (ASR 100 %), so the
/// erasure here comes from matching a teacher's attention that differs at all, and costs 11
/// points of CA (the paper: about 2 on full CIFAR-10).
#[test]
fn nad_erases_a_backdoor_that_fine_tuning_keeps() {
    let Some((defender, probe, net)) = cifar_badnets() else { return };
    let r = nad::run(net, defender, probe, &Default::default()).unwrap();
    let plain = nad::run(net, defender, probe, &nad::NadConfig { betas: vec![0.0], ..Default::default() }).unwrap();
    println!("NAD: before {:?}\n  teacher {:?}\n  student {:?}\n  betas 0 {:?}", r.before, r.teacher, r.after, plain.after);
    assert!(r.before.attack_success_rate > 0.9, "{:?}", r.before);
    assert!(plain.after.attack_success_rate > 0.9, "fine-tuning alone keeps it: {:?}", plain.after);
    assert!(r.after.attack_success_rate < 0.3, "{:?}", r.after);
    assert!(r.before.clean_accuracy - r.after.clean_accuracy < 0.15, "{:?}", r.after);
    assert_eq!(r.to_dataframe().unwrap().height(), 3);
    let e = nad::run(net, defender, probe, &nad::NadConfig { betas: vec![], ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("500, 1000, 1000"), "{e}");
    // Seeded: bit-identical (a short run on the digits model).
    let (c, digits_net) = shared();
    let short = nad::NadConfig { teacher_epochs: 1, epochs: 2, ..Default::default() };
    let (a, b) = (nad::run(digits_net, &c.defender, &c.probe, &short).unwrap(), nad::run(digits_net, &c.defender, &c.probe, &short).unwrap());
    assert_eq!(format!("{:?}", a.after), format!("{:?}", b.after));
}

/// RNP (Li et al. 2023) on the CIFAR-10 BadNets model with batch norm (the ConvNet of
/// [`cifar_badnets`] with batch instead of instance norm): unlearning breaks the clean task and
/// keeps the backdoor (the paper's premise), and pruning the neurons the recovery masks off
/// removes most of it. Measured: unlearned after 8 epochs CA 10 %, ASR 96 %; RNP ASR 99 -> 23 %,
/// CA 39 -> 32 % (24 neurons pruned of 96). On the 8x8 digits (a 2-layer ConvNet) the
/// unlearning erases the backdoor together with the clean task (ASR 0.3 %) and the masks find
/// nothing: the premise needs neurons that carry only the backdoor.
#[test]
fn rnp_unlearning_keeps_the_backdoor_and_pruning_its_neurons_removes_it() {
    let Some((defender, probe, net)) = cifar_badnets_bn() else { return };
    let r = rnp::run(net, defender, probe, &Default::default()).unwrap();
    println!("RNP: before {:?}\n  unlearned ({} epochs) {:?}\n  after {:?}, {} pruned", r.before, r.unlearning_epochs, r.unlearned, r.after, r.pruned_neurons());
    assert!(r.before.attack_success_rate > 0.9, "{:?}", r.before);
    assert!(r.unlearned.clean_accuracy < 0.2 && r.unlearned.attack_success_rate > 0.8, "unlearning keeps the backdoor: {:?}", r.unlearned);
    assert!(r.after.attack_success_rate < 0.4, "{:?}", r.after);
    assert!(r.before.clean_accuracy - r.after.clean_accuracy < 0.12, "{:?}", r.after);
    assert!(r.masks.iter().all(|m| m.values.iter().all(|v| (0.0..=1.0).contains(v))));
    assert_eq!(r.to_dataframe().unwrap().height(), 3);
    let again = rnp::run(net, defender, probe, &Default::default()).unwrap();
    assert_eq!(r.masks, again.masks, "seeded: the same masks bit for bit");
    let e = rnp::run(net, defender, probe, &rnp::RnpConfig { pruning_threshold: 2.0, ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("[0, 1]"), "{e}");
}

/// The digits' BadNets model with batch norm (CLP's and ANP's: both need batch-norm channels).
fn digits_batch_norm() -> &'static (Case, Network) {
    static CELL: OnceLock<(Case, Network)> = OnceLock::new();
    CELL.get_or_init(|| {
        let c = case();
        let spec = ModelSpec::new(Arch::ConvNet { width: 32, depth: 2, norm: Norm::Batch }, c.train.shape, 10).unwrap();
        let mut net = Network::new(&spec, 0, &Device::Cpu).unwrap();
        train(&mut net, &c.poisoned, None, &train_cfg(12)).unwrap();
        (c, net)
    })
}

/// ANP (Wu & Wang 2021) on the digits' batch-norm ConvNet: masks learnt against adversarial
/// neuron perturbations fall first on neurons the backdoor uses, where masks learnt without
/// the perturbation (eps 0, the paper's ablation) fall on neurons the clean task uses.
/// Measured, 300 iterations (the authors: 2000), the 8 lowest of 64 masks pruned: ASR 100 ->
/// 79 %, CA 99.2 -> 96.4 %; the ablation's 8: ASR 100 %, CA 80.5 %. At the paper's threshold
/// 0.2 one neuron is pruned and ASR stays 100 %: the partial result CLP also meets here (the
/// 3x3 patch on 8x8 digits is not carried by a few channels). On the CIFAR-10 subset's
/// batch-norm ConvNet (96 neurons), no mask fell below 0.32 in 300 iterations.
#[test]
fn anp_masks_rank_backdoor_neurons_before_the_unperturbed_ablation() {
    let (c, net) = digits_batch_norm();
    let cfg = anp::AnpConfig { iterations: 300, pruning: anp::AnpPruning::Count(8), ..Default::default() };
    let r = anp::run(net, &c.defender, &c.probe, &cfg).unwrap();
    let plain = anp::run(net, &c.defender, &c.probe, &anp::AnpConfig { eps: 0.0, ..cfg.clone() }).unwrap();
    println!("ANP: before {:?}\n  after {:?}\n  eps 0 {:?}", r.before, r.after, plain.after);
    assert!(r.before.attack_success_rate > 0.95, "{:?}", r.before);
    assert!(r.after.attack_success_rate < 0.9, "{:?}", r.after);
    assert!(plain.after.attack_success_rate > r.after.attack_success_rate + 0.1, "the ablation's pruning keeps more: {:?}", plain.after);
    assert!(r.before.clean_accuracy - r.after.clean_accuracy < 0.05, "{:?}", r.after);
    // Exactly the 8 lowest masks, over all layers, are pruned.
    assert_eq!(r.pruned_neurons(), 8);
    let highest_pruned = r.masks.iter().flat_map(|m| m.pruned.iter().map(|&i| m.values[i])).fold(f64::MIN, f64::max);
    let lowest_kept = r.masks.iter().flat_map(|m| (0..m.values.len()).filter(|i| !m.pruned.contains(i)).map(|i| m.values[i])).fold(f64::MAX, f64::min);
    assert!(highest_pruned <= lowest_kept, "{highest_pruned} > {lowest_kept}");
    assert!(r.masks.iter().all(|m| m.values.iter().all(|v| (0.0..=1.0).contains(v))));
    assert_eq!(r.to_dataframe().unwrap().height(), 2);
    let short = anp::AnpConfig { iterations: 20, ..Default::default() };
    let (a, b) = (anp::run(net, &c.defender, &c.probe, &short).unwrap(), anp::run(net, &c.defender, &c.probe, &short).unwrap());
    assert_eq!(a.masks, b.masks, "seeded: the same masks bit for bit");
    assert!(a.masks.iter().all(|m| m.pruned == (0..m.values.len()).filter(|&i| m.values[i] < 0.2).collect::<Vec<_>>()), "threshold 0.2: {:?}", a.masks);
    let e = anp::run(net, &c.defender, &c.probe, &anp::AnpConfig { alpha: 1.5, ..cfg.clone() }).unwrap_err().to_string();
    assert!(e.contains("[0, 1]"), "{e}");
    let e = anp::run(net, &c.defender, &c.probe, &anp::AnpConfig { pruning: anp::AnpPruning::Count(65), ..cfg }).unwrap_err().to_string();
    assert!(e.contains("64 batch-norm channels"), "{e}");
}

/// I-BAU (Zeng et al. 2022) on the digits' batch-norm ConvNet: unlearning along the implicit
/// hypergradient removes the backdoor where the same minimax steps on the outer loss's own
/// gradient (the paper's comparison, `hypergradient: false`) do not. The defender holds clean
/// copies of the 1437 training digits (the paper: 5000 CIFAR-10 test images) and bounds the
/// universal perturbation by the paper's L2 ball, scaled to 8x8 images (10 on 32x32x3 ->
/// 1.44; without it the perturbation grows past norm 700 here and unlearning costs 20-35
/// points of accuracy). Measured, seeds 0-5, the paper's other defaults: ASR 100 -> 75 / 13 /
/// 97 / 72 / 17 / 3 % (mean 46 %) against 92 / 100 / 96 / 85 / 97 / 95 % (mean 94 %) for the
/// ablation; CA 99.2 -> 96.1-99.2 %. One seed's outcome varies widely at this scale (5 rounds
/// of 15 steps); the mean over seeds is the claim. With the radius at 3: 12 % against 49 %.
/// On the CIFAR-10 subset of the tests above (200 defender images: 10 steps in all), seeds
/// 0-2: ASR 99 -> 93-96 %, as the ablation; the paper's 5000 images give 250 steps.
#[test]
fn i_bau_hypergradient_unlearns_the_backdoor_its_first_order_ablation_keeps() {
    let (c, net) = digits_batch_norm();
    let radius = Some(10.0 * (64.0f64 / 3072.0).sqrt());
    let (mut ours, mut ablation) = (Vec::new(), Vec::new());
    for seed in 0..6 {
        let cfg = i_bau::IBauConfig { seed, perturbation_radius: radius, ..Default::default() };
        let r = i_bau::run(net, &c.train, &c.probe, &cfg).unwrap();
        let plain = i_bau::run(net, &c.train, &c.probe, &i_bau::IBauConfig { hypergradient: false, ..cfg }).unwrap();
        println!("I-BAU seed {seed}: before {:?}\n  after {:?}\n  first-order {:?}", r.before, r.after, plain.after);
        assert!(r.before.attack_success_rate > 0.95, "{:?}", r.before);
        assert!(r.before.clean_accuracy - r.after.clean_accuracy < 0.04, "{:?}", r.after);
        assert!(r.perturbation_norms.iter().all(|&n| n <= radius.unwrap() + 1e-4), "{:?}", r.perturbation_norms);
        ours.push(r.after.attack_success_rate);
        ablation.push(plain.after.attack_success_rate);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&ours) < 0.6, "I-BAU's ASR {ours:?}");
    assert!(mean(&ablation) > mean(&ours) + 0.3, "first-order {ablation:?} vs I-BAU {ours:?}");
    let short = i_bau::IBauConfig { rounds: 2, ..Default::default() };
    let (a, b) = (i_bau::run(net, &c.defender, &c.probe, &short).unwrap(), i_bau::run(net, &c.defender, &c.probe, &short).unwrap());
    assert_eq!((a.after, a.perturbation_norms.clone()), (b.after, b.perturbation_norms), "seeded: bit-identical");
    assert_eq!(a.to_dataframe().unwrap().height(), 2);
    let e = i_bau::run(net, &c.defender, &c.probe, &i_bau::IBauConfig { fixed_point_iterations: 0, ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("fixed-point iteration"), "{e}");
}



/// SAU (Wei et al. 2023) on the digits' batch-norm ConvNet: unlearning the shared adversarial
/// examples removes the backdoor, where the same 100 Adam steps on the clean loss alone (shared
/// weight 0, the ablation) keep it. The paper's other defaults, on the 144 defender images (one
/// batch per round); the L-inf bound is 0.5 instead of 0.2, because a perturbation must be able
/// to imitate the trigger: the 3x3 patch here is full white on a black background. Measured at
/// 0.2: the shared examples fall from 100 % to 5 % of the images and ASR stays 96 %; at 0.5:
/// ASR 100 -> 20 %, CA 99.2 -> 96.1 %, the ablation 100 %; at 1.0: ASR 0.3 %, CA 75.5 %.
#[test]
fn sau_unlearns_the_backdoor_that_the_same_steps_on_clean_data_keep() {
    let (c, net) = digits_batch_norm();
    let cfg = sau::SauConfig { perturbation_bound: 0.5, pgd_lr: 0.5, ..Default::default() };
    let r = sau::run(net, &c.defender, &c.probe, &cfg).unwrap();
    let plain = sau::run(net, &c.defender, &c.probe, &sau::SauConfig { shared_weight: 0.0, ..cfg.clone() }).unwrap();
    println!("SAU: before {:?}\n  after {:?}\n  clean loss only {:?}\n  shared {:?}", r.before, r.after, plain.after, r.shared_fraction);
    assert!(r.before.attack_success_rate > 0.95, "{:?}", r.before);
    assert!(r.after.attack_success_rate < 0.4, "{:?}", r.after);
    assert!(plain.after.attack_success_rate > 0.9, "{:?}", plain.after);
    assert!(r.before.clean_accuracy - r.after.clean_accuracy < 0.06, "{:?}", r.after);
    assert!(plain.shared_fraction.is_empty() && r.shared_fraction.len() == 100);
    assert!(r.shared_fraction[99] < r.shared_fraction[0] - 0.3, "the shared examples are unlearnt: {:?}", r.shared_fraction);
    let short = sau::SauConfig { rounds: 2, ..cfg };
    let (a, b) = (sau::run(net, &c.defender, &c.probe, &short).unwrap(), sau::run(net, &c.defender, &c.probe, &short).unwrap());
    assert_eq!((a.after, a.shared_fraction.clone()), (b.after, b.shared_fraction), "seeded: bit-identical");
    assert_eq!(a.to_dataframe().unwrap().height(), 2);
    let e = sau::run(net, &c.defender, &c.probe, &sau::SauConfig { pgd_steps: 0, ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("PGD step"), "{e}");
}
