//! BackdoorBench's published numbers, to put ours beside.

/// BackdoorBench v2 (Wu et al. 2022, leaderboard of the CIFAR-10 / PreAct-ResNet-18 setting,
/// poisoning ratio 10 %): (attack, defence, clean accuracy %, attack success rate %). The
/// numbers issue 17 quotes; defence "none" is the undefended model.
pub const PUBLISHED_PREACT_RESNET18_CIFAR10: &[(&str, &str, f64, f64)] = &[
    ("badnets", "none", 91.32, 95.03),
    ("badnets", "ft", 89.96, 1.48),
    ("badnets", "fp", 91.31, 57.13),
    ("badnets", "nc", 89.05, 1.27),
    ("badnets", "abl", 83.32, 0.00),
    ("blended", "none", 93.47, 99.92),
    ("blended", "ft", 92.78, 96.11),
    ("blended", "fp", 93.17, 99.26),
    ("blended", "nc", 93.47, 99.92),
    ("blended", "abl", 77.30, 0.73),
];

/// The published (CA %, ASR %) of an attack and defence, if BackdoorBench reports it.
///
/// ```
/// assert_eq!(transferlab::benchmark::published("badnets", "ft"), Some((89.96, 1.48)));
/// assert_eq!(transferlab::benchmark::published("clean", "none"), None);
/// ```
pub fn published(attack: &str, defence: &str) -> Option<(f64, f64)> {
    PUBLISHED_PREACT_RESNET18_CIFAR10.iter().find(|r| r.0 == attack && r.1 == defence).map(|r| (r.2, r.3))
}
