//! What a model is, by name: architecture, input shape and number of classes.

use super::backdoored::{Injection, TriggerDetector};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Normalisation used between convolution and ReLU in [`Arch::ConvNet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Norm {
    /// Instance normalisation (the dataset-distillation default).
    Instance,
    /// Batch normalisation with running statistics.
    Batch,
    /// No normalisation.
    None,
}

/// The architectures transferlab builds. Parameter names follow the PyTorch reference of each,
/// so weights trained there load here and the reverse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Arch {
    /// Fully connected ReLU network on flattened images (`layers.N`, head `head`).
    Mlp { hidden: Vec<usize> },
    /// The ConvNet of the dataset-distillation papers: `depth` x (3x3 conv, norm, ReLU,
    /// 2x2 avg-pool) at `width` channels, then a linear head (`features.*`, head `classifier`).
    ConvNet { width: usize, depth: usize, norm: Norm },
    /// Three 3x3 conv-ReLU-maxpool stages at 32/64/128 channels (`conv1..conv3`), head `fc`:
    /// the network of the training-speed benchmark.
    SmallCnn,
    /// The BadNets-style LeNet CNN: conv5x5(16)-ReLU-avgpool, conv5x5(32)-ReLU-avgpool,
    /// fc(512)-ReLU, head `fc2` (Gu et al. 2017, as in the common PyTorch re-implementations).
    BadNetsCnn,
    /// He et al. CIFAR ResNet-20/32/44/56 with option-A (zero-padding) shortcuts; names of the
    /// widely used PyTorch reference (`conv1`, `bn1`, `layer1.0.conv1`, ..., head `linear`).
    CifarResNet { depth: usize },
    /// PreAct-ResNet-18 for 32x32 inputs (BackdoorBench's default); head `linear`.
    PreActResNet18,
    /// torchvision/timm ResNet-18 (BasicBlock), head `fc`.
    ResNet18,
    /// torchvision/timm ResNet-50 (Bottleneck), head `fc`.
    ResNet50,
    /// A bag-of-local-features network (BagNet-style, Brendel & Bethge 2019): one `patch` x
    /// `patch` convolution (no padding) then `depth` 1x1 convolutions at `width` channels, each
    /// with ReLU, and global average pooling. Every feature, hence every patch logit of the
    /// linear head (`fc`), sees one `patch` x `patch` window: a texture prior.
    BagNet { width: usize, depth: usize, patch: usize },
    /// Pre-activation ResNet v2 with GroupNorm and weight standardisation (BiT), timm's
    /// `resnetv2_*_bit` names (`stem.conv`, `stages.N.blocks.M.*`, `norm`), head `head.fc`.
    /// `stem` stem channels, stage output `widths` (bottleneck width a quarter of each),
    /// `depths` blocks per stage, `groups` GroupNorm groups.
    ResNetV2 { stem: usize, widths: Vec<usize>, depths: Vec<usize>, groups: usize },
    /// `base` with a parameter-free trigger detector hidden inside (Bober-Irizar et al. 2022,
    /// see [`TriggerDetector`]); same parameters and names as `base`.
    Backdoored { base: Box<Arch>, detector: TriggerDetector },
}

impl Arch {
    /// The architecture behind a registry name of [`MODEL_NAMES`]: how the command line and
    /// the grid's recipes name a network. In code, prefer the variant itself (a typo is then a
    /// compile error).
    ///
    /// ```
    /// use transferlab::models::Arch;
    /// assert_eq!(Arch::named("resnet20")?, Arch::CifarResNet { depth: 20 });
    /// assert!(Arch::named("lenet").unwrap_err().to_string().contains("known models"));
    /// # Ok::<(), transferlab::Error>(())
    /// ```
    pub fn named(name: &str) -> Result<Self> {
        Ok(match name {
            "mlp" => Arch::Mlp { hidden: vec![256, 256] },
            "convnet" => Arch::ConvNet { width: 128, depth: 3, norm: Norm::Instance },
            "convnet-bn" => Arch::ConvNet { width: 128, depth: 3, norm: Norm::Batch },
            "cnn3" => Arch::SmallCnn,
            "badnets-cnn" => Arch::BadNetsCnn,
            "resnet8" => Arch::CifarResNet { depth: 8 },
            "resnet20" => Arch::CifarResNet { depth: 20 },
            "resnet32" => Arch::CifarResNet { depth: 32 },
            "resnet44" => Arch::CifarResNet { depth: 44 },
            "resnet56" => Arch::CifarResNet { depth: 56 },
            "preact-resnet18" => Arch::PreActResNet18,
            "resnet18" => Arch::ResNet18,
            "resnet50" => Arch::ResNet50,
            "resnetv2-50x1-bit" | "resnetv2_50x1_bit" => {
                Arch::ResNetV2 { stem: 64, widths: vec![256, 512, 1024, 2048], depths: vec![3, 4, 6, 3], groups: 32 }
            }
            "bagnet-3" => Arch::BagNet { width: 64, depth: 2, patch: 3 },
            "resnetv2-tiny" => Arch::ResNetV2 { stem: 16, widths: vec![32, 64, 128, 256], depths: vec![1, 1, 1, 1], groups: 8 },
            other => {
                let known: Vec<&str> = MODEL_NAMES.iter().map(|(n, _)| *n).collect();
                return Err(Error::invalid(
                    "model name",
                    format!("unknown model {other:?}; known models: {}", known.join(", ")),
                ));
            }
        })
    }
}

/// Per-channel input normalisation, `(x - mean) / std`, computed inside the network's forward
/// pass. Data, triggers, masks and perturbation budgets stay in pixel space [0, 1] whatever the
/// model: a trigger stamped on an image means the same on every network, and a model trained
/// on normalised inputs (every published CIFAR/ImageNet checkpoint) runs on [0, 1] images.
///
/// ```
/// use transferlab::models::InputNorm;
/// let n = InputNorm::parse("cifar10").unwrap();
/// assert_eq!(n.mean.len(), 3);
/// assert_eq!(InputNorm::parse("0.5,0.5,0.5/0.25,0.25,0.25").unwrap().std, vec![0.25; 3]);
/// assert!(InputNorm::new(vec![0.5], vec![0.0]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputNorm {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

// Construction refuses NaN, so equality is reflexive.
impl Eq for InputNorm {}

/// CIFAR-10 training-set statistics, as BackdoorBench and most CIFAR repositories use them.
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// See [`CIFAR10_MEAN`].
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

impl InputNorm {
    /// Per-channel mean and standard deviation (one value each per input channel).
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Result<Self> {
        if mean.is_empty() || mean.len() != std.len() {
            return Err(Error::invalid(
                "input normalisation",
                format!("{} means and {} standard deviations; give one of each per channel", mean.len(), std.len()),
            ));
        }
        if mean.iter().any(|m| !m.is_finite()) || std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::invalid(
                "input normalisation",
                format!("mean {mean:?}, std {std:?}: means must be finite and standard deviations positive"),
            ));
        }
        Ok(Self { mean, std })
    }

    /// `cifar10`, `imagenet`, or explicit `M1,M2,M3/S1,S2,S3` (one value per channel).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "cifar10" => Self::new(CIFAR10_MEAN.to_vec(), CIFAR10_STD.to_vec()),
            "imagenet" => Self::new(vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225]),
            other => {
                let parse_list = |part: &str| -> Option<Vec<f32>> { part.split(',').map(|v| v.trim().parse().ok()).collect() };
                match other.split_once('/').and_then(|(m, s)| Some((parse_list(m)?, parse_list(s)?))) {
                    Some((mean, std)) => Self::new(mean, std),
                    None => Err(Error::invalid(
                        "input normalisation",
                        format!("{other:?}; use cifar10, imagenet or MEANS/STDS such as 0.5,0.5,0.5/0.25,0.25,0.25"),
                    )),
                }
            }
        }
    }
}

/// A model: architecture, input image shape (C, H, W), number of classes and the input
/// normalisation the network applies to [0, 1] images (none by default).
///
/// ```
/// use transferlab::models::ModelSpec;
/// let spec = ModelSpec::named("resnet20", (3, 32, 32), 10).unwrap();
/// assert_eq!(spec.head_name(), "linear");
/// assert!(ModelSpec::named("resnet21", (3, 32, 32), 10).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub arch: Arch,
    pub input: (usize, usize, usize),
    pub num_classes: usize,
    /// Applied inside the forward pass (see [`InputNorm`]); `None` feeds pixels as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<InputNorm>,
}

/// Registry names accepted by [`ModelSpec::named`], with what each builds.
pub const MODEL_NAMES: &[(&str, &str)] = &[
    ("mlp", "MLP, two hidden layers of 256"),
    ("convnet", "ConvNet width 128, depth 3, instance norm (dataset distillation)"),
    ("convnet-bn", "ConvNet width 128, depth 3, batch norm"),
    ("cnn3", "3-layer CNN, 32-64-128 channels, max pooling (the speed benchmark)"),
    ("badnets-cnn", "BadNets LeNet-style CNN"),
    ("resnet8", "CIFAR ResNet-8 (option A; one block per stage): CIFAR-10 miniatures on 2 cores"),
    ("resnet20", "CIFAR ResNet-20 (option A)"),
    ("resnet32", "CIFAR ResNet-32 (option A)"),
    ("resnet44", "CIFAR ResNet-44 (option A)"),
    ("resnet56", "CIFAR ResNet-56 (option A)"),
    ("preact-resnet18", "PreAct-ResNet-18"),
    ("resnet18", "ResNet-18 (torchvision names)"),
    ("resnet50", "ResNet-50 (torchvision names)"),
    ("resnetv2-50x1-bit", "BiT ResNetV2-50x1, GroupNorm + weight standardisation (timm's resnetv2_50x1_bit names)"),
    ("bagnet-3", "BagNet-style texture prior: 3x3 receptive field, width 64, two 1x1 layers, global average pool"),
    ("resnetv2-tiny", "ResNetV2 (BiT blocks) at 1/16 width, one block per stage, 8 groups: trains on 2 cores"),
];

impl ModelSpec {
    /// A model from its registry name (see [`MODEL_NAMES`] and [`Arch::named`]).
    pub fn named(name: &str, input: (usize, usize, usize), num_classes: usize) -> Result<Self> {
        Self::new(Arch::named(name)?, input, num_classes)
    }

    /// A model from an explicit architecture; checks the input shape and class count.
    pub fn new(arch: Arch, input: (usize, usize, usize), num_classes: usize) -> Result<Self> {
        if num_classes < 2 {
            return Err(Error::invalid("number of classes", format!("{num_classes}; a classifier needs at least 2")));
        }
        if input.0 == 0 || input.1 == 0 || input.2 == 0 {
            return Err(Error::invalid("input shape", format!("{input:?} has a zero dimension")));
        }
        let spec = Self { arch, input, num_classes, normalize: None };
        spec.check_input()?;
        Ok(spec)
    }

    /// The same model with `norm` applied to its inputs inside the forward pass.
    ///
    /// ```
    /// use transferlab::models::{InputNorm, ModelSpec};
    /// let spec = ModelSpec::named("resnet20", (3, 32, 32), 10).unwrap();
    /// assert!(spec.clone().normalized(InputNorm::parse("cifar10").unwrap()).is_ok());
    /// // One mean per channel: a gray model cannot take RGB statistics.
    /// let gray = ModelSpec::named("mlp", (1, 8, 8), 10).unwrap();
    /// assert!(gray.normalized(InputNorm::parse("cifar10").unwrap()).is_err());
    /// ```
    pub fn normalized(mut self, norm: InputNorm) -> Result<Self> {
        if norm.mean.len() != self.input.0 {
            return Err(Error::invalid(
                "input normalisation",
                format!("{} channel statistics for a model with {}-channel inputs", norm.mean.len(), self.input.0),
            ));
        }
        self.normalize = Some(norm);
        Ok(self)
    }

    /// The name of the classification head's parameter prefix.
    pub fn head_name(&self) -> &'static str {
        if let Arch::Backdoored { base, .. } = &self.arch {
            return ModelSpec { arch: (**base).clone(), ..self.clone() }.head_name();
        }
        match self.arch {
            Arch::Mlp { .. } => "head",
            Arch::ConvNet { .. } => "classifier",
            Arch::SmallCnn => "fc",
            Arch::BadNetsCnn => "fc2",
            Arch::CifarResNet { .. } | Arch::PreActResNet18 => "linear",
            Arch::ResNet18 | Arch::ResNet50 => "fc",
            Arch::ResNetV2 { .. } => "head.fc",
            Arch::BagNet { .. } => "fc",
            Arch::Backdoored { .. } => unreachable!("handled above"),
        }
    }

    fn check_input(&self) -> Result<()> {
        let (_, h, w) = self.input;
        if let Arch::Backdoored { base, detector } = &self.arch {
            if detector.size < 2 || detector.size > h.min(w) {
                return Err(Error::invalid(
                    "trigger detector",
                    format!("a {0}x{0} checkerboard does not fit {h}x{w} images; use a size in 2..={1}", detector.size, h.min(w)),
                ));
            }
            if let Injection::Logits { target } = detector.injection {
                if target as usize >= self.num_classes {
                    return Err(Error::invalid(
                        "target class",
                        format!("{target} does not exist: the model has {} classes (0..{})", self.num_classes, self.num_classes - 1),
                    ));
                }
            }
            return ModelSpec { arch: (**base).clone(), ..self.clone() }.check_input();
        }
        let min = match self.arch {
            Arch::Mlp { .. } => 1,
            Arch::ConvNet { depth, .. } => 1 << depth,
            Arch::SmallCnn => 8,
            Arch::BadNetsCnn => 16,
            Arch::CifarResNet { depth } => {
                if depth < 8 || (depth - 2) % 6 != 0 {
                    return Err(Error::invalid("CIFAR ResNet depth", format!("{depth}; it must be 6n+2 (20, 32, 44, 56, ...)")));
                }
                4
            }
            Arch::PreActResNet18 => 8,
            Arch::ResNet18 | Arch::ResNet50 => 32,
            Arch::ResNetV2 { stem, ref widths, ref depths, groups } => {
                let widths_ok = widths.len() == depths.len() && !widths.is_empty() && depths.iter().all(|&d| d > 0);
                let divisible = std::iter::once(stem)
                    .chain(widths.iter().flat_map(|&w| [w, w / 4]))
                    .all(|c| c > 0 && c % groups.min(c).max(1) == 0);
                if !widths_ok || groups == 0 || !divisible {
                    return Err(Error::invalid(
                        "ResNetV2 shape",
                        format!(
                            "stem {stem}, widths {widths:?}, depths {depths:?}, groups {groups}: give one depth (>= 1) per \
                             width, and channel counts (each width and a quarter of it) divisible by the groups"
                        ),
                    ));
                }
                16
            }
            Arch::BagNet { width, patch, .. } => {
                if width == 0 || patch == 0 {
                    return Err(Error::invalid("BagNet shape", format!("width {width}, patch {patch}: both must be at least 1")));
                }
                patch
            }
            Arch::Backdoored { .. } => unreachable!("handled above"),
        };
        if h < min || w < min {
            return Err(Error::invalid(
                "input shape",
                format!("{:?} images are too small for {:?}: at least {min}x{min} is needed", self.input, self.arch),
            ));
        }
        Ok(())
    }
}
