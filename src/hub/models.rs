//! Pretrained models by hub id (timm's registry idea): each entry says which architecture of
//! ours it maps onto, which weight file, how its tensor names and shapes translate, and the
//! preprocessing its training used. A local safetensors file registers the same way.

use super::download::Hub;
use crate::error::HubError;
use super::repo::Repo;
use crate::data::{normalise, resize, Dataset};
use crate::error::{Error, Result};
use crate::models::{Clip, ClipConfig, ClipTokenizer, InputNorm, LoadMode, ModelSpec, Network, Vit, VitConfig};
use crate::weights::{read_weights, NamedTensors};
use candle_core::Device;
use std::path::PathBuf;

/// ImageNet mean and standard deviation (timm's `IMAGENET_DEFAULT_*`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Inception-style [-1, 1] scaling (BiT, ViT).
pub const HALF: [f32; 3] = [0.5, 0.5, 0.5];
/// CLIP's image normalisation (OpenAI's `preprocess`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_1];

/// How a model's inputs were prepared: resize the shorter side to `resize`, center-crop
/// `crop` x `crop`, subtract `mean`, divide by `std` (pixels in [0, 1] first).
///
/// Ours resizes bilinearly without antialiasing ([`crate::data::resize`]); timm's ResNets
/// and CLIP used bicubic, so on real photos our inputs differ slightly from the reference
/// pipeline (the cross-checks compare the networks on identical tensors, not this step).
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub resize: usize,
    pub crop: usize,
    /// The reference pipeline's interpolation (documentation; we use bilinear).
    pub interpolation: &'static str,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// timm's eval transform for `input` pixels at `crop_pct`: resize to `floor(input / crop_pct)`.
    pub fn timm(input: usize, crop_pct: f64, interpolation: &'static str, mean: [f32; 3], std: [f32; 3]) -> Self {
        Self { resize: (input as f64 / crop_pct).floor() as usize, crop: input, interpolation, mean, std }
    }

    /// From a transformers `preprocessor_config.json` (`size` as a number or
    /// `{"shortest_edge": n}` / `{"height": h, "width": w}`, `crop_size` likewise,
    /// `image_mean`, `image_std`, `resample` 2 = bilinear, 3 = bicubic).
    ///
    /// ```
    /// use transferlab::hub::Preprocess;
    /// let p = Preprocess::from_hf_json(r#"{"crop_size": 224, "do_center_crop": true, "image_mean": [0.5, 0.5, 0.5],
    ///     "image_std": [0.5, 0.5, 0.5], "resample": 3, "size": {"shortest_edge": 224}}"#)?;
    /// assert_eq!((p.resize, p.crop, p.interpolation), (224, 224, "bicubic"));
    /// assert_eq!(Preprocess::from_hf_json(&p.to_hf_json())?, p);
    /// # Ok::<(), transferlab::Error>(())
    /// ```
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let bad = |why: String| Error::invalid("preprocessor_config.json", why);
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let side = |x: &serde_json::Value| -> Option<usize> {
            x.as_u64()
                .or_else(|| x.get("shortest_edge").and_then(|s| s.as_u64()))
                .or_else(|| x.get("height").and_then(|s| s.as_u64()))
                .map(|s| s as usize)
        };
        let resize = v.get("size").and_then(side).ok_or_else(|| bad("no usable \"size\" (a number or {\"shortest_edge\": n})".into()))?;
        let crop = match v.get("do_center_crop").and_then(|b| b.as_bool()) {
            Some(false) => resize,
            _ => v.get("crop_size").and_then(side).unwrap_or(resize),
        };
        let triple = |key: &str| -> Result<[f32; 3]> {
            let a = v.get(key).and_then(|a| a.as_array()).ok_or_else(|| bad(format!("no \"{key}\" list")))?;
            let f: Vec<f32> = a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect();
            f.try_into().map_err(|_| bad(format!("\"{key}\" must hold 3 numbers")))
        };
        let interpolation = match v.get("resample").and_then(|r| r.as_u64()) {
            Some(3) => "bicubic",
            Some(0) => "nearest",
            _ => "bilinear",
        };
        Ok(Self { resize, crop, interpolation, mean: triple("image_mean")?, std: triple("image_std")? })
    }

    /// As a transformers `preprocessor_config.json` (CLIP's image processor fields).
    pub fn to_hf_json(&self) -> String {
        let resample = match self.interpolation {
            "bicubic" => 3,
            "nearest" => 0,
            _ => 2,
        };
        serde_json::json!({
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": true, "size": {"shortest_edge": self.resize},
            "do_center_crop": true, "crop_size": {"height": self.crop, "width": self.crop},
            "do_normalize": true, "image_mean": self.mean, "image_std": self.std, "resample": resample,
            "do_rescale": true, "rescale_factor": 1.0 / 255.0,
        })
        .to_string()
    }

    /// Apply to a dataset of [0, 1] images (gray images are repeated to three channels).
    ///
    /// ```
    /// use transferlab::hub::{Preprocess, HALF};
    /// use transferlab::data::Dataset;
    /// let ds = Dataset::new(vec![0.5; 6 * 8], (1, 6, 8), vec![0], vec!["a".into()])?;
    /// let p = Preprocess { resize: 4, crop: 4, interpolation: "bilinear", mean: HALF, std: HALF };
    /// let out = p.apply(&ds)?;
    /// assert_eq!(out.shape, (3, 4, 4));
    /// assert!(out.pixels().iter().all(|&x| x.abs() < 1e-6));
    /// # Ok::<(), transferlab::Error>(())
    /// ```
    pub fn apply(&self, ds: &Dataset) -> Result<Dataset> {
        let pixels = self.pixels(ds)?;
        normalise(&pixels, &self.mean, &self.std)
    }

    /// Resize and centre-crop only, staying in [0, 1] pixel space: the input of a [`Network`]
    /// from [`ModelRegistry::load_network`], which applies `mean`/`std` itself (its spec's
    /// [`crate::models::InputNorm`]), so that triggers and budgets keep their pixel meaning.
    /// CLIP and ViT take [`Preprocess::apply`]'s normalised images.
    pub fn pixels(&self, ds: &Dataset) -> Result<Dataset> {
        if self.crop == 0 || self.resize < self.crop {
            return Err(Error::invalid("preprocessing", format!("resize {} must be at least the crop {} (> 0)", self.resize, self.crop)));
        }
        let ds = if ds.shape.0 == 1 { crate::data::to_rgb(ds)? } else { ds.clone() };
        let (_, h, w) = ds.shape;
        let (nh, nw) = if h <= w {
            (self.resize, ((w as f64 * self.resize as f64 / h as f64).round() as usize).max(self.resize))
        } else {
            (((h as f64 * self.resize as f64 / w as f64).round() as usize).max(self.resize), self.resize)
        };
        let r = if (nh, nw) == (h, w) { ds } else { resize(&ds, (nh, nw))? };
        center_crop(&r, self.crop)
    }
}

fn center_crop(ds: &Dataset, size: usize) -> Result<Dataset> {
    let (c, h, w) = ds.shape;
    if (h, w) == (size, size) {
        return Ok(ds.clone());
    }
    // torchvision's CenterCrop: offsets rounded from (h - size) / 2.
    let top = ((h - size) as f64 / 2.0).round() as usize;
    let left = ((w - size) as f64 / 2.0).round() as usize;
    let mut out = Vec::with_capacity(ds.len() * c * size * size);
    for i in 0..ds.len() {
        let img = ds.image(i);
        for ch in 0..c {
            for y in top..top + size {
                let row = ch * h * w + y * w;
                out.extend_from_slice(&img[row + left..row + left + size]);
            }
        }
    }
    ds.with_pixels(out, (c, size, size))
}

/// Which implementation runs a registered model.
#[derive(Debug, Clone, PartialEq)]
pub enum Family {
    /// One of our [`Network`] architectures.
    Network(ModelSpec),
    /// CLIP ([`crate::models::Clip`]): `config.json`, the weights, `vocab.json`, `merges.txt`.
    Clip,
    /// ViT ([`crate::models::Vit`]): `config.json` and the weights.
    Vit,
}

/// Where the weights are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Hub { repo: Repo, file: String },
    Local(PathBuf),
}

/// One registered model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    pub name: String,
    pub family: Family,
    pub source: Source,
    pub preprocess: Preprocess,
    pub about: String,
}

/// Models by name: the built-in hub models plus any the user registers. A plain value
/// (notebooks keep no global state), cheap to build.
///
/// ```
/// use transferlab::hub::ModelRegistry;
/// let reg = ModelRegistry::builtin();
/// let e = reg.get("timm/resnet18.a1_in1k")?;
/// assert_eq!((e.preprocess.resize, e.preprocess.crop), (235, 224));
/// assert!(reg.get("timm/resnet19").is_err());
/// # Ok::<(), transferlab::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ModelRegistry {
    entries: Vec<ModelEntry>,
}

impl ModelRegistry {
    /// The built-in hub models.
    pub fn builtin() -> Self {
        let imagenet = |name: &str| ModelSpec::named(name, (3, 224, 224), 1000).expect("built-in spec is valid");
        let hub = |id: &str, file: &str| Source::Hub { repo: Repo::model(id), file: file.into() };
        let bit = ModelSpec::named("resnetv2-50x1-bit", (3, 224, 224), 21843).expect("built-in spec is valid");
        let entries = vec![
            ModelEntry {
                name: "timm/resnet18.a1_in1k".into(),
                family: Family::Network(imagenet("resnet18")),
                source: hub("timm/resnet18.a1_in1k", "model.safetensors"),
                preprocess: Preprocess::timm(224, 0.95, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
                about: "ResNet-18, ImageNet-1k, timm A1 recipe (Wightman et al. 2021); torchvision names".into(),
            },
            ModelEntry {
                name: "timm/resnet50.a1_in1k".into(),
                family: Family::Network(imagenet("resnet50")),
                source: hub("timm/resnet50.a1_in1k", "model.safetensors"),
                preprocess: Preprocess::timm(224, 0.95, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
                about: "ResNet-50, ImageNet-1k, timm A1 recipe; torchvision names".into(),
            },
            ModelEntry {
                name: "timm/resnet18.tv_in1k".into(),
                family: Family::Network(imagenet("resnet18")),
                source: hub("timm/resnet18.tv_in1k", "model.safetensors"),
                preprocess: Preprocess::timm(224, 0.875, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
                about: "ResNet-18, ImageNet-1k, torchvision's original weights (IMAGENET1K_V1, top-1 69.8 %)".into(),
            },
            ModelEntry {
                name: "timm/resnet50.tv_in1k".into(),
                family: Family::Network(imagenet("resnet50")),
                source: hub("timm/resnet50.tv_in1k", "model.safetensors"),
                preprocess: Preprocess::timm(224, 0.875, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
                about: "ResNet-50, ImageNet-1k, torchvision's original weights (IMAGENET1K_V1, top-1 76.1 %)".into(),
            },
            ModelEntry {
                name: "timm/resnet50.tv2_in1k".into(),
                family: Family::Network(imagenet("resnet50")),
                source: hub("timm/resnet50.tv2_in1k", "model.safetensors"),
                preprocess: Preprocess::timm(224, 0.965, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
                about: "ResNet-50, ImageNet-1k, torchvision's new recipe (IMAGENET1K_V2, top-1 80.9 %)".into(),
            },
            ModelEntry {
                name: "timm/resnetv2_50x1_bit.goog_in21k".into(),
                family: Family::Network(bit),
                source: hub("timm/resnetv2_50x1_bit.goog_in21k", "model.safetensors"),
                preprocess: Preprocess::timm(224, 0.875, "bilinear", HALF, HALF),
                about: "BiT-M ResNetV2-50x1 (GroupNorm + weight standardisation), ImageNet-21k, 21,843 classes".into(),
            },
            ModelEntry {
                name: "google/vit-base-patch16-224".into(),
                family: Family::Vit,
                source: hub("google/vit-base-patch16-224", "model.safetensors"),
                preprocess: Preprocess { resize: 224, crop: 224, interpolation: "bilinear", mean: HALF, std: HALF },
                about: "ViT-B/16, ImageNet-21k pre-trained, ImageNet-1k fine-tuned (transformers names)".into(),
            },
            ModelEntry {
                name: "openai/clip-vit-base-patch32".into(),
                family: Family::Clip,
                source: hub("openai/clip-vit-base-patch32", "model.safetensors"),
                preprocess: Preprocess { resize: 224, crop: 224, interpolation: "bicubic", mean: CLIP_MEAN, std: CLIP_STD },
                about: "CLIP ViT-B/32 image and text towers (Radford et al. 2021), byte-level BPE tokenizer".into(),
            },
        ];
        Self { entries }
    }

    /// Register a local safetensors (or `.pth`) file under `name`, for one of our architectures.
    ///
    /// ```
    /// use transferlab::hub::{ModelRegistry, Preprocess, IMAGENET_MEAN, IMAGENET_STD};
    /// use transferlab::models::ModelSpec;
    /// let mut reg = ModelRegistry::builtin();
    /// let spec = ModelSpec::named("resnet18", (3, 64, 64), 10)?;
    /// let pre = Preprocess { resize: 64, crop: 64, interpolation: "bilinear", mean: IMAGENET_MEAN, std: IMAGENET_STD };
    /// reg.register_local("my/resnet18", "runs/r18.safetensors", spec, pre)?;
    /// assert!(reg.get("my/resnet18").is_ok());
    /// # Ok::<(), transferlab::Error>(())
    /// ```
    pub fn register_local(&mut self, name: &str, path: impl Into<PathBuf>, spec: ModelSpec, preprocess: Preprocess) -> Result<()> {
        if self.entries.iter().any(|e| e.name == name) {
            return Err(Error::invalid("model name", format!("{name:?} is already registered; pick another name")));
        }
        self.entries.push(ModelEntry {
            name: name.into(),
            family: Family::Network(spec),
            source: Source::Local(path.into()),
            preprocess,
            about: "registered local weights".into(),
        });
        Ok(())
    }

    /// Register weights of one of our architectures stored in a hub repository (timm names).
    pub fn register_hub(&mut self, name: &str, repo: Repo, file: &str, spec: ModelSpec, preprocess: Preprocess) -> Result<()> {
        if self.entries.iter().any(|e| e.name == name) {
            return Err(Error::invalid("model name", format!("{name:?} is already registered; pick another name")));
        }
        self.entries.push(ModelEntry {
            name: name.into(),
            family: Family::Network(spec),
            source: Source::Hub { repo, file: file.into() },
            preprocess,
            about: "registered hub weights".into(),
        });
        Ok(())
    }


    /// Register a CLIP or ViT stored in a hub repository in HF's layout (`config.json`,
    /// `file`, and for CLIP `vocab.json` + `merges.txt`).
    pub fn register_hub_transformer(&mut self, name: &str, repo: Repo, file: &str, family: Family, preprocess: Preprocess) -> Result<()> {
        if matches!(family, Family::Network(_)) {
            return Err(Error::invalid("model family", "use register_hub for Network architectures; this is for Family::Clip / Family::Vit"));
        }
        if self.entries.iter().any(|e| e.name == name) {
            return Err(Error::invalid("model name", format!("{name:?} is already registered; pick another name")));
        }
        self.entries.push(ModelEntry {
            name: name.into(),
            family,
            source: Source::Hub { repo, file: file.into() },
            preprocess,
            about: "registered hub transformer".into(),
        });
        Ok(())
    }

    /// A companion file of `name`'s weights (`config.json`, `vocab.json`...): from the same
    /// hub repository, or next to a local weight file.
    fn sibling(&self, hub: &Hub, name: &str, file: &str) -> Result<PathBuf> {
        match &self.get(name)?.source {
            Source::Hub { repo, .. } => hub.get(repo, file),
            Source::Local(p) => {
                let q = p.parent().map(|d| d.join(file)).unwrap_or_else(|| PathBuf::from(file));
                if q.is_file() {
                    Ok(q)
                } else {
                    Err(Error::invalid("model files", format!("{name} needs {} next to its weights {}", q.display(), p.display())))
                }
            }
        }
    }

    fn read_config(&self, hub: &Hub, name: &str) -> Result<String> {
        let p = self.sibling(hub, name, "config.json")?;
        std::fs::read_to_string(&p).map_err(|e| Error::Io { action: "reading model config", path: p, source: e })
    }

    /// The repository's `preprocessor_config.json` where it has one, else the registry's.
    fn hub_preprocess(&self, hub: &Hub, name: &str) -> Result<Preprocess> {
        match self.sibling(hub, name, "preprocessor_config.json") {
            Ok(p) => {
                let text = std::fs::read_to_string(&p).map_err(|e| Error::io("read", &p, e))?;
                Preprocess::from_hf_json(&text)
            }
            Err(_) => Ok(self.get(name)?.preprocess.clone()),
        }
    }

    /// A pretrained CLIP with its tokenizer and preprocessing, by name.
    pub fn load_clip(&self, hub: &Hub, name: &str, device: &Device) -> Result<ClipBundle> {
        let entry = self.get(name)?;
        if entry.family != Family::Clip {
            return Err(Error::invalid("model", format!("{name} is not a CLIP model ({:?})", entry.family)));
        }
        let config = ClipConfig::from_json(&self.read_config(hub, name)?)?;
        let vocab = self.sibling(hub, name, "vocab.json")?;
        let merges = self.sibling(hub, name, "merges.txt")?;
        let tokenizer = ClipTokenizer::from_files(&vocab, &merges, config.text_config.max_position_embeddings)?;
        if tokenizer.vocab_size() > config.text_config.vocab_size {
            return Err(Error::invalid(
                "CLIP tokenizer",
                format!("{name}'s vocab.json has {} tokens but the text tower only {}", tokenizer.vocab_size(), config.text_config.vocab_size),
            ));
        }
        let path = self.weights_path(hub, name)?;
        let model = Clip::from_tensors(&config, read_weights(&path)?, device)?;
        Ok(ClipBundle { name: name.into(), model, tokenizer, preprocess: self.hub_preprocess(hub, name)? })
    }

    /// A pretrained ViT with its preprocessing, by name.
    pub fn load_vit(&self, hub: &Hub, name: &str, device: &Device) -> Result<(Vit, Preprocess)> {
        let entry = self.get(name)?;
        if entry.family != Family::Vit {
            return Err(Error::invalid("model", format!("{name} is not a ViT model ({:?})", entry.family)));
        }
        let config = VitConfig::from_json(&self.read_config(hub, name)?)?;
        let path = self.weights_path(hub, name)?;
        Ok((Vit::from_tensors(&config, read_weights(&path)?, device)?, self.hub_preprocess(hub, name)?))
    }

    /// The entry of `name`.
    pub fn get(&self, name: &str) -> Result<&ModelEntry> {
        self.entries.iter().find(|e| e.name == name).ok_or_else(|| {
            HubError::Unknown { what: "model", id: name.into(), hint: format!("Registered models: {}", self.names().join(", ")) }.into()
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }

    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    /// The local weight file of `name`, downloaded into the cache if needed.
    pub fn weights_path(&self, hub: &Hub, name: &str) -> Result<PathBuf> {
        match &self.get(name)?.source {
            Source::Hub { repo, file } => hub.get(repo, file),
            Source::Local(p) => Ok(p.clone()),
        }
    }

    /// A ready [`Network`] with the pretrained weights of `name` (one of our architectures), its
    /// input normalisation inside: feed it [`Preprocess::pixels`] images in [0, 1].
    pub fn load_network(&self, hub: &Hub, name: &str, device: &Device) -> Result<Network> {
        let entry = self.get(name)?;
        let Family::Network(spec) = &entry.family else {
            return Err(Error::invalid(
                "model",
                format!("{name} is a transformer (CLIP/ViT), not one of the Network architectures; load it with load_clip / load_vit"),
            ));
        };
        let path = self.weights_path(hub, name)?;
        let tensors = timm_to_ours(read_weights(&path)?, spec)?;
        // The statistics go inside the model: it then takes [0, 1] pixels
        // (`Preprocess::pixels`), as every other network does. The repository's own config
        // (timm's `config.json`) is authoritative where it has them; the registry's otherwise.
        let (mean, std) = match &entry.source {
            Source::Hub { repo, .. } => hub_statistics(hub, repo),
            Source::Local(_) => None,
        }
        .unwrap_or((entry.preprocess.mean.to_vec(), entry.preprocess.std.to_vec()));
        let identity = mean.iter().all(|&m| m == 0.0) && std.iter().all(|&s| s == 1.0);
        let spec = if identity { spec.clone() } else { spec.clone().normalized(InputNorm::new(mean, std)?)? };
        let mut net = Network::new(&spec, 0, device)?;
        net.set_tensors(&tensors, LoadMode::Strict).map_err(|e| match e {
            Error::WeightMismatch(m) => Error::WeightMismatch(format!("{} ({name}): {m}", path.display())),
            other => other,
        })?;
        Ok(net)
    }
}

/// The input statistics a hub model's `config.json` declares: timm's `pretrained_cfg.mean/std`
/// (or top-level `mean`/`std`), or transformers' `image_mean`/`image_std`; `None` when the
/// repository has no such file or fields.
///
/// ```
/// use transferlab::hub::statistics_from_config;
/// let timm = r#"{"architecture": "resnet18", "pretrained_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}"#;
/// assert_eq!(statistics_from_config(timm).unwrap().0, vec![0.485, 0.456, 0.406]);
/// assert!(statistics_from_config("{}").is_none());
/// ```
pub fn statistics_from_config(text: &str) -> Option<(Vec<f32>, Vec<f32>)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let floats = |x: &serde_json::Value| -> Option<Vec<f32>> { x.as_array()?.iter().map(|f| f.as_f64().map(|f| f as f32)).collect() };
    let pick = |o: &serde_json::Value, m: &str, s: &str| Some((floats(o.get(m)?)?, floats(o.get(s)?)?));
    v.get("pretrained_cfg").and_then(|p| pick(p, "mean", "std")).or_else(|| pick(&v, "mean", "std")).or_else(|| pick(&v, "image_mean", "image_std"))
}

fn hub_statistics(hub: &Hub, repo: &Repo) -> Option<(Vec<f32>, Vec<f32>)> {
    let path = hub.get(repo, "config.json").ok()?;
    statistics_from_config(&std::fs::read_to_string(path).ok()?)
}

/// timm checkpoints onto our names: identical for ResNets (torchvision names); BiT's 1x1
/// convolution head `head.fc.weight` [K, F, 1, 1] becomes our linear [K, F].
pub fn timm_to_ours(mut t: NamedTensors, spec: &ModelSpec) -> Result<NamedTensors> {
    let head = format!("{}.weight", spec.head_name());
    if let Some(w) = t.get(&head) {
        if let [k, f, 1, 1] = w.dims() {
            let r = w.reshape((*k, *f))?;
            t.insert(head, r);
        }
    }
    Ok(t)
}

/// A loaded CLIP: the model, its tokenizer and its image preprocessing.
#[derive(Debug, Clone)]
pub struct ClipBundle {
    pub name: String,
    pub model: Clip,
    pub tokenizer: ClipTokenizer,
    pub preprocess: Preprocess,
}
