//! BackdoorBench's published numbers, to put ours beside.

/// BackdoorBench v2 (Wu et al. 2022), CIFAR-10 / PreAct-ResNet-18 at poisoning ratio 10 %:
/// (attack, defence, clean accuracy %, attack success rate %), defence "none" being the
/// undefended model. Read from the leaderboard's page (`leaderboard-cifar10.html`, table
/// `pratio-0_1`, in backdoorbench/backdoorbench.github.io at b98eab4, 2025-06-04); Spectral
/// Signatures, shown N/A there, from the same commit's older page and `static/data/results.csv`.
/// BackdoorBench publishes no numbers for FST, FT-SAM, RNP, SAU or STRIP in this setting.
pub const PUBLISHED_PREACT_RESNET18_CIFAR10: &[(&str, &str, f64, f64)] = &[
    ("badnets", "none", 91.32, 95.03),
    ("badnets", "ft", 89.96, 1.48),
    ("badnets", "fp", 91.31, 57.13),
    ("badnets", "nc", 89.05, 1.27),
    ("badnets", "abl", 83.32, 0.00),
    ("badnets", "anp", 84.17, 0.73),
    ("badnets", "nad", 89.87, 2.14),
    ("badnets", "i-bau", 89.16, 1.29),
    ("badnets", "clp", 90.07, 77.56),
    ("badnets", "spectral", 89.98, 92.41),
    ("badnets", "ac", 88.80, 86.23),
    ("blended", "none", 93.47, 99.92),
    ("blended", "ft", 92.78, 96.11),
    ("blended", "fp", 93.17, 99.26),
    ("blended", "nc", 93.47, 99.92),
    ("blended", "abl", 77.30, 0.73),
    ("blended", "anp", 86.58, 2.19),
    ("blended", "nad", 92.17, 97.69),
    ("blended", "i-bau", 87.00, 50.53),
    ("blended", "clp", 91.32, 99.74),
    ("blended", "spectral", 90.35, 99.84),
    ("blended", "ac", 88.52, 99.72),
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
