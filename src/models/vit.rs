//! Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words") with the
//! tensor names of HF transformers' `ViTForImageClassification`, so that
//! `google/vit-base-patch16-224`'s `model.safetensors` loads as it is.
//!
//! Written on candle ops here rather than taken from candle-transformers: building that crate
//! costs minutes on the 2-core machines this project runs on, and every notebook kernel would
//! compile it again.
//!
//! Names (as in the hub's checkpoints): `vit.embeddings.{cls_token, position_embeddings,
//! patch_embeddings.projection.*}`, `vit.encoder.layer.{i}.{layernorm_before,
//! attention.attention.{query,key,value}, attention.output.dense, layernorm_after,
//! intermediate.dense, output.dense}.*`, `vit.layernorm.*`, `classifier.*`. Checkpoints saved
//! by transformers >= 5 (`vit.layers.{i}.attention.q_proj`, `mlp.fc1`, ...) and bare `ViTModel`
//! checkpoints (no `vit.` prefix) are renamed onto these by [`vit_hub_names`].

use super::transformer::{Activation, Block, BlockNames, EncoderShape, LayerNorm};
use crate::error::{Error, Result};
use crate::weights::NamedTensors;
use candle_core::{Device, Module, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};
use serde::Deserialize;
use std::collections::HashMap;

/// A ViT's `config.json` (HF field names; missing fields take ViT-B/16's values).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct VitConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub qkv_bias: bool,
    /// Class names by index (the classifier's width); empty for a bare encoder.
    pub id2label: HashMap<String, String>,
}

impl Default for VitConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            image_size: 224,
            patch_size: 16,
            num_channels: 3,
            qkv_bias: true,
            id2label: HashMap::new(),
        }
    }
}

impl VitConfig {
    /// Parse a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| Error::invalid("ViT config.json", format!("{e}; expected HF ViTConfig fields")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Number of classes of the classifier (0: none).
    pub fn num_labels(&self) -> usize {
        self.id2label.len()
    }

    /// Class names in index order.
    pub fn labels(&self) -> Vec<String> {
        (0..self.num_labels()).map(|i| self.id2label.get(&i.to_string()).cloned().unwrap_or_else(|| format!("LABEL_{i}"))).collect()
    }

    pub fn validate(&self) -> Result<()> {
        if self.hidden_size == 0 || self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(Error::invalid(
                "ViT config",
                format!("hidden_size {} must be a positive multiple of num_attention_heads {}", self.hidden_size, self.num_attention_heads),
            ));
        }
        if self.patch_size == 0 || self.image_size % self.patch_size != 0 {
            return Err(Error::invalid("ViT config", format!("image_size {} must be a multiple of patch_size {}", self.image_size, self.patch_size)));
        }
        if Activation::from_hf(&self.hidden_act).is_none() {
            return Err(Error::invalid("ViT config", format!("hidden_act {:?} is not supported; use \"gelu\" or \"quick_gelu\"", self.hidden_act)));
        }
        if !self.qkv_bias {
            return Err(Error::invalid("ViT config", "qkv_bias = false is not supported (every released ViT has query/key/value biases)"));
        }
        Ok(())
    }

    fn shape(&self) -> EncoderShape {
        EncoderShape {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            eps: self.layer_norm_eps,
            act: Activation::from_hf(&self.hidden_act).unwrap_or(Activation::Gelu),
        }
    }
}

const VIT_BLOCK: BlockNames = BlockNames {
    q: "attention.attention.query",
    k: "attention.attention.key",
    v: "attention.attention.value",
    o: "attention.output.dense",
    ln1: "layernorm_before",
    ln2: "layernorm_after",
    fc1: "intermediate.dense",
    fc2: "output.dense",
};

/// A ViT image classifier (or bare encoder when the config has no labels).
#[derive(Debug, Clone)]
pub struct Vit {
    config: VitConfig,
    patch_weight: Tensor,
    patch_bias: Tensor,
    cls_token: Tensor,
    position: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    classifier: Option<Linear>,
}

impl Vit {
    /// Build from `vb` (names relative to the checkpoint root: `vit.*`, `classifier.*`).
    pub fn new(config: &VitConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let d = config.hidden_size;
        let p = config.patch_size;
        let n = (config.image_size / p).pow(2);
        let e = vb.pp("vit.embeddings");
        let pe = e.pp("patch_embeddings.projection");
        let bound = 1.0 / ((config.num_channels * p * p) as f64).sqrt();
        let shape = config.shape();
        let blocks = (0..config.num_hidden_layers)
            .map(|i| Block::new(&shape, &VIT_BLOCK, vb.pp(format!("vit.encoder.layer.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let classifier = if config.num_labels() > 0 {
            let c = vb.pp("classifier");
            let w = c.get_with_hints((config.num_labels(), d), "weight", Init::Uniform { lo: -bound, up: bound })?;
            Some(Linear::new(w, Some(c.get_with_hints(config.num_labels(), "bias", Init::Const(0.0))?)))
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            patch_weight: pe.get_with_hints((d, config.num_channels, p, p), "weight", Init::Uniform { lo: -bound, up: bound })?,
            patch_bias: pe.get_with_hints(d, "bias", Init::Const(0.0))?,
            cls_token: e.get_with_hints((1, 1, d), "cls_token", Init::Randn { mean: 0.0, stdev: 0.02 })?,
            position: e.get_with_hints((1, n + 1, d), "position_embeddings", Init::Randn { mean: 0.0, stdev: 0.02 })?,
            blocks,
            norm: LayerNorm::new(d, config.layer_norm_eps, vb.pp("vit.layernorm"))?,
            classifier,
        })
    }

    /// Load from hub-format tensors (any of the naming conventions [`vit_hub_names`] knows).
    pub fn from_tensors(config: &VitConfig, tensors: NamedTensors, device: &Device) -> Result<Self> {
        let t = vit_hub_names(tensors);
        super::transformer::build_from_tensors("ViT", t, device, |vb| Self::new(config, vb))
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// The final-LayerNorm CLS embedding (N, hidden) of images (N, C, image_size, image_size),
    /// preprocessed as the model expects.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.config.image_size;
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != self.config.num_channels || dims[2] != s || dims[3] != s {
            return Err(Error::invalid(
                "ViT input",
                format!("images of shape {dims:?}; this ViT takes (N, {}, {s}, {s}): preprocess them (hub::Preprocess) first", self.config.num_channels),
            ));
        }
        let b = dims[0];
        let p = self.config.patch_size;
        let patches = crate::kernels::conv2d(x, &self.patch_weight, Some(&self.patch_bias), p, 0)?;
        let patches = patches.flatten_from(2)?.transpose(1, 2)?;
        let cls = self.cls_token.broadcast_as((b, 1, self.config.hidden_size))?;
        let mut h = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.position)?;
        for blk in &self.blocks {
            h = blk.forward(&h, None)?;
        }
        Ok(self.norm.forward(&h)?.narrow(1, 0, 1)?.squeeze(1)?)
    }

    /// Class logits (N, num_labels).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let f = self.features(x)?;
        match &self.classifier {
            Some(c) => Ok(c.forward(&f)?),
            None => Err(Error::invalid("ViT", "this checkpoint has no classifier (config.json has no id2label); use features()")),
        }
    }

    /// Predicted class per image.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<u32>> {
        Ok(self.forward(x)?.argmax(D::Minus1)?.to_vec1::<u32>()?)
    }
}

/// Rename a ViT checkpoint onto the hub's names: transformers >= 5 state-dict names
/// (`vit.layers.{i}.attention.q_proj`, `o_proj`, `mlp.fc1`, `mlp.fc2`) and bare `ViTModel`
/// checkpoints (no `vit.` prefix; the pooler is dropped).
pub fn vit_hub_names(t: NamedTensors) -> NamedTensors {
    let mut out = NamedTensors::new();
    for (k, v) in t {
        if k.starts_with("pooler.") || k.starts_with("vit.pooler.") {
            continue;
        }
        let k = if k.starts_with("vit.") || k.starts_with("classifier.") { k } else { format!("vit.{k}") };
        let k = if let Some(rest) = k.strip_prefix("vit.layers.") {
            let (i, tail) = rest.split_once('.').unwrap_or((rest, ""));
            let tail = match tail.split_once('.') {
                Some(("attention", t)) => {
                    let (proj, leaf) = t.split_once('.').unwrap_or((t, ""));
                    let new = match proj {
                        "q_proj" => "attention.attention.query",
                        "k_proj" => "attention.attention.key",
                        "v_proj" => "attention.attention.value",
                        "o_proj" => "attention.output.dense",
                        other => other,
                    };
                    format!("{new}.{leaf}")
                }
                Some(("mlp", t)) => {
                    let (fc, leaf) = t.split_once('.').unwrap_or((t, ""));
                    let new = match fc {
                        "fc1" => "intermediate.dense",
                        "fc2" => "output.dense",
                        other => other,
                    };
                    format!("{new}.{leaf}")
                }
                _ => tail.to_string(),
            };
            format!("vit.encoder.layer.{i}.{tail}")
        } else {
            k
        };
        out.insert(k, v);
    }
    out
}
