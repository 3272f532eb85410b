//! Contrastive language-image pre-training in miniature (Radford et al. 2021, CLIP's
//! objective): a tiny [`Clip`] learns from (image, caption) pairs with the symmetric InfoNCE
//! loss over a batch's image-text similarities, scaled by a learnt temperature.
//!
//! What it is for: a CLIP that knows something, made in seconds on a CPU, so that zero-shot
//! classification ([`super::zero_shot`]) can be run offline, on data that ships, through the
//! same hub code path a real checkpoint takes ([`PretrainedClip::save_hf`] writes HF's
//! layout). Deviations from the paper, all for size: a few hundred steps on synthetic shapes
//! with captions built from their class attributes; a byte-level BPE learnt from those
//! captions ([`ClipTokenizer::train`]) instead of OpenAI's 49k vocabulary; AdamW with weight
//! decay 0.2 and the paper's clamp of the logit scale at 100, but a short cosine schedule.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::hub::{Preprocess, CLIP_MEAN, CLIP_STD};
use crate::models::{init, Clip, ClipConfig, ClipTextConfig, ClipTokenizer, ClipVisionConfig};
use crate::report::{Chart, Figure, LineChart, Outcome};
use crate::train::{Optimizer, OptimizerConfig, Progress, ProgressMode};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use polars::prelude::{DataFrame, NamedFrom, Series};
use std::path::Path;

/// Caption templates the tiny CLIP sees in pre-training (zero-shot uses others too).
pub const TRAIN_TEMPLATES: [&str; 4] = ["a photo of a {}.", "a {}.", "an image of the {}.", "{}"];

/// How to pre-train. Defaults: a 2-layer, 64-wide ViT (patch 4 on 16x16 images) and text
/// transformer (context 16) with 32-d embeddings, 300 steps of batch 64, AdamW (lr 2e-3
/// after 20 warm-up steps, cosine decay, weight decay 0.2 as in CLIP), temperature 0.07 at
/// the start (CLIP's), BPE with 150 merges.
#[derive(Debug, Clone)]
pub struct ContrastiveConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub context: usize,
    pub projection_dim: usize,
    pub bpe_merges: usize,
    pub steps: usize,
    pub warmup_steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub progress: ProgressMode,
    /// Where the networks are built and trained: `Device::Cpu` by default; a GPU with the
    /// `cuda` feature (`Device::cuda_if_available(0)`).
    pub device: Device,
}

impl Default for ContrastiveConfig {
    fn default() -> Self {
        Self {
            image_size: 16,
            patch_size: 4,
            width: 64,
            layers: 2,
            heads: 4,
            context: 16,
            projection_dim: 32,
            bpe_merges: 150,
            steps: 300,
            warmup_steps: 20,
            batch_size: 64,
            lr: 2e-3,
            weight_decay: 0.2,
            seed: 0,
            progress: ProgressMode::Bar,
            device: Device::Cpu,
        }
    }
}

impl ContrastiveConfig {
    pub fn validate(&self) -> Result<()> {
        if self.patch_size == 0 || self.image_size % self.patch_size != 0 {
            return Err(Error::invalid("contrastive config", format!("image_size {} must be a multiple of patch_size {}", self.image_size, self.patch_size)));
        }
        if self.heads == 0 || self.width % self.heads != 0 || self.layers == 0 || self.projection_dim == 0 {
            return Err(Error::invalid("contrastive config", format!("width {} must be a multiple of heads {}, with layers and projection_dim >= 1", self.width, self.heads)));
        }
        if self.context < 4 || self.steps == 0 || self.batch_size < 2 {
            return Err(Error::invalid("contrastive config", "context >= 4, steps >= 1 and batch_size >= 2 are needed"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) || self.weight_decay < 0.0 {
            return Err(Error::invalid("contrastive config", format!("lr {} must be positive and weight_decay {} >= 0", self.lr, self.weight_decay)));
        }
        Ok(())
    }

    fn clip_config(&self, vocab: usize, eos: u32) -> ClipConfig {
        ClipConfig {
            text_config: ClipTextConfig {
                vocab_size: vocab,
                hidden_size: self.width,
                intermediate_size: 2 * self.width,
                num_hidden_layers: self.layers,
                num_attention_heads: self.heads,
                max_position_embeddings: self.context,
                hidden_act: "quick_gelu".into(),
                layer_norm_eps: 1e-5,
                eos_token_id: eos,
            },
            vision_config: ClipVisionConfig {
                hidden_size: self.width,
                intermediate_size: 2 * self.width,
                num_hidden_layers: self.layers,
                num_attention_heads: self.heads,
                num_channels: 3,
                image_size: self.image_size,
                patch_size: self.patch_size,
                hidden_act: "quick_gelu".into(),
                layer_norm_eps: 1e-5,
            },
            projection_dim: self.projection_dim,
            logit_scale_init_value: (1.0f64 / 0.07).ln(),
        }
    }
}

/// `"circle-solid"` -> `"solid circle"`: a synthetic class name as words (the texture as an
/// adjective before the shape); other names get `-`/`_` replaced by spaces.
pub fn class_phrase(name: &str) -> String {
    match name.split('-').collect::<Vec<_>>().as_slice() {
        [shape, texture] => format!("{texture} {shape}"),
        [shape, texture, k] => format!("{texture} {shape} {k}"),
        _ => name.replace(['-', '_'], " "),
    }
}

/// One caption per sample: its class phrase in a template drawn (seeded) from `templates`.
pub fn captions(ds: &Dataset, phrases: &[String], templates: &[&str], seed: u64) -> Result<Vec<String>> {
    use rand::Rng;
    if phrases.len() != ds.num_classes() || templates.is_empty() || templates.iter().any(|t| !t.contains("{}")) {
        return Err(Error::invalid("captions", format!("give one phrase per class ({}) and templates containing {{}}", ds.num_classes())));
    }
    let mut r = crate::rng::stream(seed, "clip_pretrain/captions");
    Ok(ds.labels.iter().map(|&y| templates[r.random_range(0..templates.len())].replace("{}", &phrases[y as usize])).collect())
}

/// A pre-trained tiny CLIP: config, weights, tokenizer, preprocessing and the loss curve.
#[derive(Clone)]
pub struct PretrainedClip {
    pub config: ClipConfig,
    pub tokenizer: ClipTokenizer,
    pub preprocess: Preprocess,
    /// Mean loss of each tenth of the run.
    pub losses: Vec<(usize, f64)>,
    pub final_logit_scale: f64,
    varmap: VarMap,
}

impl std::fmt::Debug for PretrainedClip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PretrainedClip({} vocabulary, {} steps, final loss {:?})", self.tokenizer.vocab_size(), self.losses.last().map(|l| l.0).unwrap_or(0), self.losses.last().map(|l| l.1))
    }
}

impl PretrainedClip {
    /// The model (sharing the trained weights).
    pub fn model(&self) -> Result<Clip> {
        Clip::new(&self.config, VarBuilder::from_varmap(&self.varmap, DType::F32, &Device::Cpu))
    }

    /// Write HF's layout into `dir`: `config.json`, `model.safetensors`, `vocab.json`,
    /// `merges.txt`, `preprocessor_config.json`.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).map_err(|e| Error::io("write", &dir.join(name), e));
        write("config.json", self.config.to_json())?;
        write("preprocessor_config.json", self.preprocess.to_hf_json())?;
        self.tokenizer.save(dir)?;
        let tensors = self.varmap.data().lock().expect("VarMap lock poisoned").iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        crate::weights::write_safetensors(&dir.join("model.safetensors"), &tensors, None)
    }
}

impl Outcome for PretrainedClip {
    fn to_dataframe(&self) -> Result<DataFrame> {
        Ok(DataFrame::new_infer_height(vec![
            Series::new("step".into(), self.losses.iter().map(|l| l.0 as u64).collect::<Vec<_>>()).into(),
            Series::new("contrastive_loss".into(), self.losses.iter().map(|l| l.1).collect::<Vec<_>>()).into(),
        ])?)
    }

    fn figure(&self) -> Result<Figure> {
        let pts = self.losses.iter().map(|(s, l)| (*s as f64, *l)).collect();
        Ok(Figure::new(Chart::Lines(LineChart::new("Tiny CLIP pre-training", "step", "symmetric InfoNCE loss").series("loss", pts))))
    }

    fn summary(&self) -> String {
        let v = &self.config.vision_config;
        let loss = |l: Option<&(usize, f64)>| l.map_or("n/a".to_string(), |l| format!("{:.3}", l.1));
        format!(
            "Contrastive (CLIP) pre-training of a tiny {}-layer, {}-wide ViT and text transformer for {} steps took the symmetric InfoNCE loss from {} (first tenth of the run) to {} (last tenth); the learnt logit scale ended at {:.1} (start {:.1}, cap 100).",
            v.num_hidden_layers,
            v.hidden_size,
            self.losses.last().map_or(0, |l| l.0),
            loss(self.losses.first()),
            loss(self.losses.last()),
            self.final_logit_scale,
            self.config.logit_scale_init_value.exp()
        )
    }
}

/// Pre-train a tiny CLIP on `images` ([0, 1], any size: resized to `cfg.image_size`) and one
/// caption per image.
///
/// Runs on one thread: a tiny CLIP's attention is hundreds of 17x16 matrix products per
/// step, and candle hands each to gemm with a thread per core (it reads `RAYON_NUM_THREADS`
/// at every product), which costs far more than the product. One thread was 7x faster per
/// step than two on the 2-core machines, with bit-identical numbers. `RAYON_NUM_THREADS` is
/// set to 1 for the duration and restored afterwards.
pub fn pretrain(images: &Dataset, captions: &[String], cfg: &ContrastiveConfig) -> Result<PretrainedClip> {
    cfg.validate()?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().map_err(|e| Error::invalid("thread pool", e.to_string()))?;
    let previous = std::env::var_os("RAYON_NUM_THREADS");
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let out = pool.install(|| pretrain_here(images, captions, cfg));
    match previous {
        Some(v) => std::env::set_var("RAYON_NUM_THREADS", v),
        None => std::env::remove_var("RAYON_NUM_THREADS"),
    }
    out
}

fn pretrain_here(images: &Dataset, captions: &[String], cfg: &ContrastiveConfig) -> Result<PretrainedClip> {
    if captions.len() != images.len() || images.len() < cfg.batch_size {
        return Err(Error::invalid(
            "pre-training data",
            format!("{} images and {} captions: give one caption per image and at least batch_size ({}) pairs", images.len(), captions.len(), cfg.batch_size),
        ));
    }
    let device = cfg.device.clone();
    let corpus: Vec<&str> = captions.iter().map(String::as_str).collect();
    let tokenizer = ClipTokenizer::train(&corpus, cfg.bpe_merges, cfg.context)?;
    let config = cfg.clip_config(tokenizer.vocab_size(), tokenizer.end_id());
    let preprocess = Preprocess { resize: cfg.image_size, crop: cfg.image_size, interpolation: "bilinear", mean: CLIP_MEAN, std: CLIP_STD };
    let pixels = preprocess.apply(images)?.images_tensor(&device)?;
    let ids = tokenizer.encode_batch(&corpus)?;

    let varmap = VarMap::new();
    let model = Clip::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    init::initialise(&varmap, init::InitScheme::TorchDefault, cfg.seed, "")?;
    let vars: Vec<(String, Var)> = {
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let scale_var = vars.iter().find(|(k, _)| k == "logit_scale").map(|(_, v)| v.clone()).expect("CLIP has a logit_scale");
    scale_var.set(&Tensor::new(config.logit_scale_init_value as f32, &device)?)?;
    let max_scale = 100f32.ln();

    let mut opt = Optimizer::new(OptimizerConfig::AdamW { beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: cfg.weight_decay })?;
    let n = images.len();
    let per_epoch = n / cfg.batch_size;
    let progress = Progress::new("CLIP pre-training", cfg.steps as u64, cfg.progress);
    let targets = Tensor::arange(0u32, cfg.batch_size as u32, &device)?;
    let mut losses = Vec::new();
    let (mut sum, mut count) = (0.0, 0usize);
    let report_every = (cfg.steps / 10).max(1);
    let mut order = Vec::new();
    for step in 0..cfg.steps {
        let b = step % per_epoch;
        if b == 0 {
            order = crate::rng::permutation(&mut crate::rng::stream_at(cfg.seed, "clip_pretrain/batches", (step / per_epoch) as u64), n);
        }
        let idx: Vec<u32> = order[b * cfg.batch_size..(b + 1) * cfg.batch_size].iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(idx, cfg.batch_size, &device)?;
        let logits = model.logits_per_image(&pixels.index_select(&idx, 0)?, &ids.index_select(&idx, 0)?)?;
        let loss = ((crate::kernels::cross_entropy(&logits, &targets, 0.0)? + crate::kernels::cross_entropy(&logits.t()?.contiguous()?, &targets, 0.0)?)? * 0.5)?;
        let value = loss.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Err(Error::NonFinite { epoch: step / per_epoch, step, what: "contrastive loss", value: value as f32 });
        }
        let grads = loss.backward()?;
        let lr = if step < cfg.warmup_steps {
            cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64
        } else {
            let t = (step - cfg.warmup_steps) as f64 / (cfg.steps - cfg.warmup_steps).max(1) as f64;
            cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        };
        opt.step(&vars, &grads, lr)?;
        // CLIP clips the temperature so that logits are scaled by at most 100.
        let s = scale_var.as_tensor().to_scalar::<f32>()?;
        if s > max_scale {
            scale_var.set(&Tensor::new(max_scale, &device)?)?;
        }
        sum += value;
        count += 1;
        if (step + 1) % report_every == 0 || step + 1 == cfg.steps {
            losses.push((step + 1, sum / count as f64));
            progress.message(format!("loss {:.3}", sum / count as f64));
            sum = 0.0;
            count = 0;
        }
        progress.inc(1);
    }
    progress.finish();
    let final_logit_scale = (scale_var.as_tensor().to_scalar::<f32>()? as f64).exp();
    Ok(PretrainedClip { config, tokenizer, preprocess, losses, final_logit_scale, varmap })
}
