//! CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
//! Supervision"): a ViT image tower and a causal text transformer projected into one
//! embedding space, with HF transformers' `CLIPModel` tensor names, so that
//! `openai/clip-vit-base-patch32`'s `model.safetensors` loads as it is.
//!
//! Written on candle ops rather than taken from candle-transformers: building that crate costs
//! minutes on the 2-core machines this project runs on, and each notebook kernel would compile
//! it again. The tokenizer is ours too ([`super::ClipTokenizer`]), not the `tokenizers` crate.
//!
//! - Vision: patch convolution (no bias) + `class_embedding` + position embeddings ->
//!   `pre_layrnorm` (sic, HF's name) -> pre-LN encoder -> `post_layernorm` on the CLS token ->
//!   `visual_projection` (no bias).
//! - Text: token + position embeddings -> encoder with a causal mask -> `final_layer_norm` ->
//!   the hidden state at the end-of-text token -> `text_projection` (no bias). The end token
//!   is found as HF does: the largest id when the config's `eos_token_id` is the legacy 2
//!   (OpenAI's `argmax`; the end token has the largest id of the vocabulary), otherwise the
//!   first position holding `eos_token_id`.
//! - `logit_scale` is the log of the softmax temperature's inverse (100 for the released
//!   models).

use super::transformer::{causal_mask, Activation, Block, BlockNames, EncoderShape, LayerNorm};
use crate::error::{Error, Result};
use crate::weights::NamedTensors;
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Init, Linear, VarBuilder};
use serde::Deserialize;

/// `text_config` of a CLIP `config.json` (missing fields take ViT-B/32's values).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub eos_token_id: u32,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

/// `vision_config` of a CLIP `config.json` (missing fields take ViT-B/32's values).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

/// A CLIP `config.json` (HF `CLIPConfig` field names).
///
/// ```
/// use transferlab::models::ClipConfig;
/// let cfg = ClipConfig::from_json(r#"{"projection_dim": 512, "text_config": {}, "vision_config": {}}"#)?;
/// assert_eq!((cfg.vision_config.patch_size, cfg.text_config.max_position_embeddings), (32, 77));
/// assert!(ClipConfig::from_json(r#"{"vision_config": {"image_size": 30}}"#).is_err());
/// # Ok::<(), transferlab::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    pub projection_dim: usize,
    pub logit_scale_init_value: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }
}

fn check_tower(what: &'static str, hidden: usize, heads: usize, act: &str) -> Result<()> {
    if hidden == 0 || heads == 0 || hidden % heads != 0 {
        return Err(Error::invalid(what, format!("hidden_size {hidden} must be a positive multiple of num_attention_heads {heads}")));
    }
    if Activation::from_hf(act).is_none() {
        return Err(Error::invalid(what, format!("hidden_act {act:?} is not supported; use \"quick_gelu\" or \"gelu\"")));
    }
    Ok(())
}

impl ClipConfig {
    /// Parse and check a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| Error::invalid("CLIP config.json", format!("{e}; expected HF CLIPConfig fields")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as HF writes it (the fields we read).
    pub fn to_json(&self) -> String {
        let t = &self.text_config;
        let v = &self.vision_config;
        serde_json::json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "text_config": {
                "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers, "num_attention_heads": t.num_attention_heads,
                "max_position_embeddings": t.max_position_embeddings, "hidden_act": t.hidden_act,
                "layer_norm_eps": t.layer_norm_eps, "eos_token_id": t.eos_token_id, "projection_dim": self.projection_dim,
            },
            "vision_config": {
                "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_hidden_layers, "num_attention_heads": v.num_attention_heads,
                "num_channels": v.num_channels, "image_size": v.image_size, "patch_size": v.patch_size,
                "hidden_act": v.hidden_act, "layer_norm_eps": v.layer_norm_eps, "projection_dim": self.projection_dim,
            },
        })
        .to_string()
    }

    pub fn validate(&self) -> Result<()> {
        let (t, v) = (&self.text_config, &self.vision_config);
        check_tower("CLIP text_config", t.hidden_size, t.num_attention_heads, &t.hidden_act)?;
        check_tower("CLIP vision_config", v.hidden_size, v.num_attention_heads, &v.hidden_act)?;
        if v.patch_size == 0 || v.image_size % v.patch_size != 0 {
            return Err(Error::invalid("CLIP vision_config", format!("image_size {} must be a multiple of patch_size {}", v.image_size, v.patch_size)));
        }
        if t.vocab_size < 2 || t.max_position_embeddings < 2 || self.projection_dim == 0 {
            return Err(Error::invalid(
                "CLIP config",
                format!(
                    "vocab_size {}, max_position_embeddings {}, projection_dim {}: each must be positive (at least 2 tokens)",
                    t.vocab_size, t.max_position_embeddings, self.projection_dim
                ),
            ));
        }
        Ok(())
    }
}

fn shape(hidden: usize, heads: usize, intermediate: usize, eps: f64, act: &str) -> EncoderShape {
    EncoderShape { hidden, heads, intermediate, eps, act: Activation::from_hf(act).unwrap_or(Activation::QuickGelu) }
}

const CLIP_BLOCK: BlockNames = BlockNames {
    q: "self_attn.q_proj",
    k: "self_attn.k_proj",
    v: "self_attn.v_proj",
    o: "self_attn.out_proj",
    ln1: "layer_norm1",
    ln2: "layer_norm2",
    fc1: "mlp.fc1",
    fc2: "mlp.fc2",
};

fn blocks(n: usize, s: &EncoderShape, vb: VarBuilder) -> Result<Vec<Block>> {
    Ok((0..n).map(|i| Block::new(s, &CLIP_BLOCK, vb.pp(format!("encoder.layers.{i}")))).collect::<candle_core::Result<Vec<_>>>()?)
}

fn projection(i: usize, o: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (i as f64).sqrt();
    Ok(Linear::new(vb.get_with_hints((o, i), "weight", Init::Uniform { lo: -bound, up: bound })?, None))
}

/// The image tower.
#[derive(Debug, Clone)]
struct VisionTower {
    cfg: ClipVisionConfig,
    patch: Tensor,
    class_embedding: Tensor,
    position: Tensor,
    pre: LayerNorm,
    blocks: Vec<Block>,
    post: LayerNorm,
}

impl VisionTower {
    fn new(c: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = c.hidden_size;
        let n = (c.image_size / c.patch_size).pow(2) + 1;
        let e = vb.pp("embeddings");
        let bound = 1.0 / ((c.num_channels * c.patch_size * c.patch_size) as f64).sqrt();
        Ok(Self {
            cfg: c.clone(),
            patch: e.get_with_hints((d, c.num_channels, c.patch_size, c.patch_size), "patch_embedding.weight", Init::Uniform { lo: -bound, up: bound })?,
            class_embedding: e.get_with_hints(d, "class_embedding", Init::Randn { mean: 0.0, stdev: 0.02 })?,
            position: e.get_with_hints((n, d), "position_embedding.weight", Init::Randn { mean: 0.0, stdev: 0.02 })?,
            pre: LayerNorm::new(d, c.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            blocks: blocks(c.num_hidden_layers, &shape(d, c.num_attention_heads, c.intermediate_size, c.layer_norm_eps, &c.hidden_act), vb.clone())?,
            post: LayerNorm::new(d, c.layer_norm_eps, vb.pp("post_layernorm"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (c, s) = (self.cfg.num_channels, self.cfg.image_size);
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != c || dims[2] != s || dims[3] != s {
            return Err(Error::invalid(
                "CLIP image input",
                format!("images of shape {dims:?}; this CLIP takes (N, {c}, {s}, {s}): preprocess them with the model's Preprocess first"),
            ));
        }
        let b = dims[0];
        let d = self.cfg.hidden_size;
        let p = crate::kernels::conv2d(x, &self.patch, None, self.cfg.patch_size, 0)?.flatten_from(2)?.transpose(1, 2)?;
        let cls = self.class_embedding.reshape((1, 1, d))?.broadcast_as((b, 1, d))?;
        let mut h = Tensor::cat(&[&cls, &p], 1)?.broadcast_add(&self.position.unsqueeze(0)?)?;
        h = self.pre.forward(&h)?;
        for blk in &self.blocks {
            h = blk.forward(&h, None)?;
        }
        Ok(self.post.forward(&h.narrow(1, 0, 1)?.squeeze(1)?)?)
    }
}

/// The text tower.
#[derive(Debug, Clone)]
struct TextTower {
    cfg: ClipTextConfig,
    token: Embedding,
    position: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl TextTower {
    fn new(c: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let d = c.hidden_size;
        let e = vb.pp("embeddings");
        let token = e.get_with_hints((c.vocab_size, d), "token_embedding.weight", Init::Randn { mean: 0.0, stdev: 0.02 })?;
        Ok(Self {
            cfg: c.clone(),
            token: Embedding::new(token, d),
            position: e.get_with_hints((c.max_position_embeddings, d), "position_embedding.weight", Init::Randn { mean: 0.0, stdev: 0.01 })?,
            blocks: blocks(c.num_hidden_layers, &shape(d, c.num_attention_heads, c.intermediate_size, c.layer_norm_eps, &c.hidden_act), vb.clone())?,
            norm: LayerNorm::new(d, c.layer_norm_eps, vb.pp("final_layer_norm"))?,
        })
    }

    fn eos_positions(&self, ids: &Tensor) -> Result<Vec<u32>> {
        let rows = ids.to_vec2::<u32>()?;
        Ok(rows
            .iter()
            .map(|r| {
                let argmax = || r.iter().enumerate().fold((0usize, 0u32), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0;
                let pos = if self.cfg.eos_token_id == 2 { argmax() } else { r.iter().position(|&v| v == self.cfg.eos_token_id).unwrap_or_else(argmax) };
                pos as u32
            })
            .collect())
    }

    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2().map_err(|_| Error::invalid("CLIP text input", format!("token ids of shape {:?}; expected (N, T)", ids.dims())))?;
        if t == 0 || t > self.cfg.max_position_embeddings {
            return Err(Error::invalid(
                "CLIP text input",
                format!("{t} tokens per text; this CLIP reads 1..={} (the tokenizer truncates to its context length)", self.cfg.max_position_embeddings),
            ));
        }
        let ids = ids.to_dtype(DType::U32)?;
        let max = ids.max_all()?.to_scalar::<u32>()?;
        if max as usize >= self.cfg.vocab_size {
            return Err(Error::invalid("CLIP text input", format!("token id {max} is outside the vocabulary of {}", self.cfg.vocab_size)));
        }
        let mut h = self.token.forward(&ids)?.broadcast_add(&self.position.narrow(0, 0, t)?.unsqueeze(0)?)?;
        let mask = causal_mask(t, ids.device())?;
        for blk in &self.blocks {
            h = blk.forward(&h, Some(&mask))?;
        }
        let h = self.norm.forward(&h)?;
        let pos = self.eos_positions(&ids)?;
        let d = self.cfg.hidden_size;
        // Row i's end token sits at i * t + pos[i] of the flattened (B * T, D) states.
        let flat: Vec<u32> = pos.iter().enumerate().map(|(i, &p)| i as u32 * t as u32 + p).collect();
        let idx = Tensor::from_vec(flat, b, ids.device())?;
        Ok(h.reshape((b * t, d))?.index_select(&idx, 0)?)
    }
}

/// A CLIP model: [`Clip::image_embeds`], [`Clip::text_embeds`], [`Clip::logits_per_image`].
#[derive(Debug, Clone)]
pub struct Clip {
    config: ClipConfig,
    vision: VisionTower,
    text: TextTower,
    visual_projection: Linear,
    text_projection: Linear,
    logit_scale: Tensor,
}

impl Clip {
    /// Build from `vb` with HF names (`vision_model.*`, `text_model.*`, `visual_projection`,
    /// `text_projection`, `logit_scale`). From a `VarMap`, this makes a trainable model.
    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.logit_scale.device()
    }

    pub fn new(config: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let (t, v) = (&config.text_config, &config.vision_config);
        Ok(Self {
            config: config.clone(),
            vision: VisionTower::new(v, vb.pp("vision_model"))?,
            text: TextTower::new(t, vb.pp("text_model"))?,
            visual_projection: projection(v.hidden_size, config.projection_dim, vb.pp("visual_projection"))?,
            text_projection: projection(t.hidden_size, config.projection_dim, vb.pp("text_projection"))?,
            logit_scale: vb.get_with_hints((), "logit_scale", Init::Const(config.logit_scale_init_value))?,
        })
    }

    /// Load from hub-format tensors (a `model.safetensors` of HF's `CLIPModel`).
    pub fn from_tensors(config: &ClipConfig, tensors: NamedTensors, device: &Device) -> Result<Self> {
        super::transformer::build_from_tensors("CLIP", tensors, device, |vb| Self::new(config, vb))
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Projected image embeddings (N, projection_dim), not normalised, of preprocessed images.
    pub fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        let pixels = pixels.to_device(self.device())?;
        let pixels = &pixels;
        Ok(self.visual_projection.forward(&self.vision.forward(pixels)?)?)
    }

    /// Projected text embeddings (N, projection_dim), not normalised, of token ids (N, T)
    /// from [`super::ClipTokenizer`].
    pub fn text_embeds(&self, ids: &Tensor) -> Result<Tensor> {
        // The tokenizer builds its ids on the CPU; the model may live elsewhere.
        let ids = ids.to_device(self.device())?;
        Ok(self.text_projection.forward(&self.text.forward(&ids)?)?)
    }

    /// `exp(logit_scale)`, the inverse temperature.
    pub fn logit_scale(&self) -> Result<f32> {
        Ok(self.logit_scale.exp()?.to_scalar::<f32>()?)
    }

    /// The logit-scale parameter itself (its log), for training.
    pub fn logit_scale_param(&self) -> &Tensor {
        &self.logit_scale
    }

    /// Scaled cosine similarities (N_images, N_texts), as HF's `logits_per_image`.
    pub fn logits_per_image(&self, pixels: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let i = l2_normalise(&self.image_embeds(pixels)?)?;
        let t = l2_normalise(&self.text_embeds(ids)?)?;
        Ok(i.matmul(&t.t()?)?.broadcast_mul(&self.logit_scale.exp()?)?)
    }
}

/// Rows divided by their L2 norm.
pub fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_div(&(x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?)?)
}
