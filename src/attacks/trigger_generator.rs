//! LIRA's trigger generator: a convolutional autoencoder whose tanh output, scaled by a small
//! epsilon, is added to the image. Every image gets its own perturbation.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::init::{initialise, InitScheme};
use crate::models::layers::BatchNorm;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

/// An encoder of stride-2 4x4 convolutions (16, 32, 64, 128 channels) and a mirrored decoder of
/// transposed convolutions ending in tanh, each but the last followed by batch norm and ReLU,
/// as BackdoorBench's LIRA autoencoder, with as many stages (at most 4) as the image side
/// allows (8x8 digits: 2). The batch norms matter: they bring the pre-tanh output to unit
/// scale, so that the perturbation uses its epsilon from the start (without them a freshly
/// initialised generator perturbs by a few hundredths of epsilon, and the victim, unable to
/// tell perturbed images from clean ones, collapses to the target class: measured on the
/// digits, clean accuracy 10-41 %).
pub struct TriggerGenerator {
    varmap: VarMap,
    stages: usize,
    channels: usize,
    width: usize,
    /// The batch norms after encoder stage s, and after decoder stage s (none after the last,
    /// s = 0, which ends in tanh): the models' own layer, running statistics in the VarMap.
    encoder_norms: Vec<BatchNorm>,
    decoder_norms: Vec<Option<BatchNorm>>,
}

impl std::fmt::Debug for TriggerGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TriggerGenerator {{ stages: {}, channels: {} }}", self.stages, self.channels)
    }
}

impl TriggerGenerator {
    /// A generator for images of `shape`, the first stage `width` channels wide, initialised as
    /// PyTorch initialises its layers, from `seed`.
    pub fn new(shape: (usize, usize, usize), width: usize, seed: u64, device: &Device) -> Result<Self> {
        let (c, h, w) = shape;
        let side = h.min(w);
        // Each stage halves the side; stop while the side divides evenly and is at least 2.
        let stages = (1..=4).take_while(|&s| h % (1 << s) == 0 && w % (1 << s) == 0 && side >> s >= 2).last().unwrap_or(0);
        if stages == 0 || width == 0 {
            return Err(Error::invalid(
                "trigger generator",
                format!("images {shape:?} at width {width}: the autoencoder needs even sides of at least 4 pixels and a width of at least 1 (LIRA: 16)"),
            ));
        }
        let varmap = VarMap::new();
        let (encoder_norms, decoder_norms) = Self::declare(&varmap, (c, width), stages, device)?;
        // In place: the batch norms share these variables' storage.
        initialise(&varmap, InitScheme::TorchDefault, seed, "")?;
        Ok(Self { varmap, stages, channels: c, width, encoder_norms, decoder_norms })
    }

    /// Declare every parameter in `varmap` (a name already there is reused) and build the batch
    /// norms on them.
    #[allow(clippy::type_complexity)]
    fn declare(varmap: &VarMap, (c, width): (usize, usize), stages: usize, device: &Device) -> Result<(Vec<BatchNorm>, Vec<Option<BatchNorm>>)> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        let (mut encoder_norms, mut decoder_norms) = (Vec::new(), Vec::new());
        for s in 0..stages {
            let (cin, cout) = (if s == 0 { c } else { width << (s - 1) }, width << s);
            vb.get((cout, cin, 4, 4), &format!("encoder.{s}.weight"))?;
            vb.get(cout, &format!("encoder.{s}.bias"))?;
            encoder_norms.push(BatchNorm::new(cout, vb.pp(format!("encoder.{s}.norm")))?);
            // The decoder's stage s undoes the encoder's: transposed kernels are (in, out, k, k).
            vb.get((cout, cin, 4, 4), &format!("decoder.{s}.weight"))?;
            vb.get(cin, &format!("decoder.{s}.bias"))?;
            decoder_norms.push(if s > 0 { Some(BatchNorm::new(cin, vb.pp(format!("decoder.{s}.norm")))?) } else { None });
        }
        Ok((encoder_norms, decoder_norms))
    }

    fn var(&self, name: &str) -> Result<Tensor> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        Ok(data.get(name).ok_or_else(|| Error::invalid("trigger generator", format!("no parameter {name}")))?.as_tensor().clone())
    }

    /// The raw output in [-1, 1], one map per image channel; `train` selects batch statistics
    /// in the batch norms (and updates the running ones).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let with_bias = |y: Tensor, b: Tensor| -> Result<Tensor> { Ok(y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?) };
        let mut y = x.clone();
        for s in 0..self.stages {
            y = with_bias(y.conv2d(&self.var(&format!("encoder.{s}.weight"))?, 1, 2, 1, 1)?, self.var(&format!("encoder.{s}.bias"))?)?;
            y = self.encoder_norms[s].forward_relu(&y, train)?;
        }
        for s in (0..self.stages).rev() {
            y = with_bias(y.conv_transpose2d(&self.var(&format!("decoder.{s}.weight"))?, 1, 0, 2, 1)?, self.var(&format!("decoder.{s}.bias"))?)?;
            y = match &self.decoder_norms[s] {
                Some(norm) => norm.forward_relu(&y, train)?,
                None => y.tanh()?,
            };
        }
        Ok(y)
    }

    /// `x` plus `epsilon` times the generator's output, clipped to [0, 1]: within `epsilon` of
    /// `x` in L-inf. `train` as in [`Self::forward`]; the trigger of a trained generator is
    /// `train = false`.
    pub fn perturb(&self, x: &Tensor, epsilon: f64, train: bool) -> Result<Tensor> {
        Ok((x + (self.forward(x, train)? * epsilon)?)?.clamp(0f32, 1f32)?)
    }

    /// Every image of `ds` perturbed (in batches, without recording a graph), labels kept.
    pub fn perturb_dataset(&self, ds: &Dataset, epsilon: f64, device: &Device) -> Result<Dataset> {
        if ds.shape.0 != self.channels {
            return Err(Error::invalid("trigger generator", format!("it was built for {} channels; the data have {}", self.channels, ds.shape.0)));
        }
        map_images(ds, ds.shape.0, device, |x| self.perturb(x, epsilon, false))
    }

    /// The trainable parameters, by name (the batch norms' running statistics are not).
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.all_vars().into_iter().filter(|(k, _)| !k.contains(".running_")).collect()
    }

    fn all_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// A copy whose parameters do not share storage with this one's.
    pub fn snapshot(&self) -> Result<Self> {
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().expect("VarMap lock poisoned");
            for (name, var) in self.all_vars() {
                data.insert(name, Var::from_tensor(&var.as_tensor().copy()?)?);
            }
        }
        let device = self.vars()[0].1.device().clone();
        let (encoder_norms, decoder_norms) = Self::declare(&varmap, (self.channels, self.width), self.stages, &device)?;
        Ok(Self { varmap, stages: self.stages, channels: self.channels, width: self.width, encoder_norms, decoder_norms })
    }
}


/// `f` applied to every image of `ds` in batches of 256 on `device`, without recording a
/// graph: a dataset of its outputs (`out_channels` maps of the images' size), labels kept.
/// How a trained generator is run over a whole dataset.
pub(super) fn map_images(ds: &Dataset, out_channels: usize, device: &Device, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Dataset> {
    let (c, h, w) = ds.shape;
    let mut pixels = Vec::with_capacity(ds.len() * out_channels * h * w);
    for start in (0..ds.len()).step_by(256) {
        let end = (start + 256).min(ds.len());
        let x = Tensor::from_slice(&ds.pixels()[start * c * h * w..end * c * h * w], (end - start, c, h, w), device)?;
        pixels.extend(f(&x)?.detach().flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?);
    }
    ds.with_pixels(pixels, (out_channels, h, w))
}
