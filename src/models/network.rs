//! A model with its weights: body, replaceable head, parameter groups, save and load.

use super::inference::{check_input, normalize, Inference};
use super::init::{initialise, InitScheme};
use super::layers::Linear;
use super::spec::{Arch, ModelSpec};
use super::{build_body, Body};
use crate::error::{Error, Result};
use crate::weights::{self, LoadReport, NamedTensors};
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

/// How strictly [`Network::load`] matches a weight file against the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Every tensor must be present with the right shape, and nothing else.
    Strict,
    /// Load the body; the head is kept as it is and head tensors in the file are ignored
    /// (transfer to a task with other classes).
    BodyOnly,
}

/// A network ready to train or evaluate: an architecture from [`ModelSpec`], its variables,
/// and which parameter groups are frozen.
///
/// ```
/// use transferlab::models::{ModelSpec, Network};
/// use candle_core::{Device, Tensor, DType};
/// let spec = ModelSpec::named("convnet", (1, 8, 8), 10).unwrap();
/// let net = Network::new(&spec, 0, &Device::Cpu).unwrap();
/// let x = Tensor::zeros((2, 1, 8, 8), DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(net.forward(&x, false).unwrap().dims(), &[2, 10]);
/// assert_eq!(net.features(&x, false).unwrap().dims(), &[2, net.feature_dim()]);
/// ```
pub struct Network {
    spec: ModelSpec,
    varmap: VarMap,
    body: Arc<dyn Body>,
    head: Linear,
    frozen: BTreeSet<String>,
    /// Whether every body parameter is frozen; kept with `frozen` because every forward pass
    /// asks (a frozen body runs in eval mode).
    body_frozen: bool,
    device: Device,
    /// The spec's input normalisation as (mean, 1 / std), each (1, C, 1, 1) on `device`.
    input_norm: Option<(Tensor, Tensor)>,
    /// Which compiled copy of this crate built the network (see [`Network::make_local`]).
    home: usize,
}

/// One per compiled copy of this crate. evcxr links a separate copy of every dependency, with
/// its own statics, into each notebook cell; candle's tensor-id counter is one of those
/// statics, so tensors made by two cells' copies can share an id, and a backward pass over a
/// graph that mixes them adds up the wrong gradients. An atomic so it lives in writable memory
/// and is never merged with another constant.
static CODE_COPY: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

fn code_copy() -> usize {
    std::ptr::addr_of!(CODE_COPY) as usize
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Network({:?}, {} parameters, {} frozen)", self.spec.arch, self.num_parameters(), self.frozen.len())
    }
}

impl Network {
    /// A freshly initialised network; the same `seed` gives the same weights bit for bit.
    pub fn new(spec: &ModelSpec, seed: u64, device: &Device) -> Result<Self> {
        crate::runtime::tune_allocator();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let body = build_body(spec, vb.clone())?;
        let head = Linear::new(body.feature_dim(), spec.num_classes, vb.pp(spec.head_name()))?;
        initialise(&varmap, init_scheme(&spec.arch), seed, "")?;
        Ok(Self {
            spec: spec.clone(),
            varmap,
            body,
            head,
            frozen: BTreeSet::new(),
            body_frozen: false,
            device: device.clone(),
            input_norm: norm_tensors(spec, device)?,
            home: code_copy(),
        })
    }

    /// The eval-mode forward pass without an autograd graph (see [`Inference`]): use it for
    /// every forward pass that is not followed by a backward pass through the weights.
    pub fn inference(&self) -> Result<Inference> {
        Inference::of(self)
    }

    /// Detached views of every parameter (same storage, no graph), by name. Buffers (running
    /// statistics) stay the variables themselves: batch norm reads them through detached
    /// views anyway, and sharing the variable keeps a view current when training moves them.
    pub(super) fn detached_variables(&self) -> std::collections::HashMap<String, Tensor> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        data.iter().map(|(k, v)| (k.clone(), if is_buffer(k) { v.as_tensor().clone() } else { v.as_tensor().detach() })).collect()
    }

    pub(super) fn input_norm(&self) -> Option<&(Tensor, Tensor)> {
        self.input_norm.as_ref()
    }

    /// The model's specification.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Width of the penultimate features.
    pub fn feature_dim(&self) -> usize {
        self.body.feature_dim()
    }

    /// Logits (N, classes). In training mode BatchNorm uses batch statistics and updates its
    /// running averages, except in a frozen body, which always runs in eval mode so that
    /// fixed-feature fine-tuning leaves the features exactly as they were.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.logits_of(x, &self.features(x, train)?)
    }

    /// The head on the features `f` of `x`, plus the architecture's own path from `x`.
    fn logits_of(&self, x: &Tensor, f: &Tensor) -> Result<Tensor> {
        let logits = self.head.forward(f)?;
        Ok(match self.body.logit_offset(x)? {
            Some(offset) => (logits + offset)?,
            None => logits,
        })
    }

    /// Penultimate features (N, feature_dim) of [0, 1] images; the spec's input normalisation
    /// is applied first.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_input(self.spec.input, x)?;
        let body_train = train && !self.body_frozen;
        Ok(self.body.features(&normalize(x, self.input_norm.as_ref())?, body_train)?)
    }

    /// Logits and the output of every stage of the body (the feature maps after each group of
    /// blocks, N x C x H x W): what attention distillation compares. ResNets, PreAct-ResNet-18
    /// and the ConvNet have stages; other architectures are refused.
    ///
    /// ```
    /// use transferlab::models::{ModelSpec, Network};
    /// let net = Network::new(&ModelSpec::named("resnet20", (3, 32, 32), 10).unwrap(), 0, &candle_core::Device::Cpu).unwrap();
    /// let x = candle_core::Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, net.device()).unwrap();
    /// let (logits, stages) = net.forward_with_stages(&x, false).unwrap();
    /// assert_eq!(logits.dims(), &[2, 10]);
    /// assert_eq!(stages.iter().map(|s| s.dims()[1]).collect::<Vec<_>>(), [16, 32, 64]);
    /// ```
    pub fn forward_with_stages(&self, x: &Tensor, train: bool) -> Result<(Tensor, Vec<Tensor>)> {
        check_input(self.spec.input, x)?;
        let body_train = train && !self.body_frozen;
        let Some((f, stages)) = self.body.features_and_stages(&normalize(x, self.input_norm.as_ref())?, body_train)? else {
            return Err(Error::invalid(
                "model",
                format!("{:?} does not expose its stages; this method needs a ResNet, PreAct-ResNet-18 or ConvNet", self.spec.arch),
            ));
        };
        Ok((self.logits_of(x, &f)?, stages))
    }

    /// Apply only the head to features.
    pub fn head_forward(&self, features: &Tensor) -> Result<Tensor> {
        Ok(self.head.forward(features)?)
    }

    /// Replace the head with a freshly initialised one for `num_classes` classes (transfer to a
    /// new task, or re-initialising the head as a removal attempt).
    pub fn replace_head(&mut self, num_classes: usize, seed: u64) -> Result<()> {
        let spec = ModelSpec { normalize: self.spec.normalize.clone(), ..ModelSpec::new(self.spec.arch.clone(), self.spec.input, num_classes)? };
        let prefix = format!("{}.", spec.head_name());
        self.varmap.data().lock().expect("VarMap lock poisoned").retain(|k, _| !k.starts_with(&prefix));
        let vb = VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device);
        self.head = Linear::new(self.feature_dim(), num_classes, vb.pp(spec.head_name()))?;
        initialise(&self.varmap, init_scheme(&spec.arch), seed, &prefix)?;
        self.spec = spec;
        Ok(())
    }

    /// Names of every parameter and buffer, sorted.
    pub fn parameter_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.varmap.data().lock().expect("VarMap lock poisoned").keys().cloned().collect();
        v.sort();
        v
    }

    /// Number of scalar parameters (buffers included).
    pub fn num_parameters(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }

    /// Whether `name` belongs to the head.
    pub fn is_head(&self, name: &str) -> bool {
        name.starts_with(&format!("{}.", self.spec.head_name()))
    }

    fn update_body_frozen(&mut self) {
        let names = self.parameter_names();
        self.body_frozen = names.iter().filter(|n| !self.is_head(n)).all(|n| self.frozen.contains(n));
    }

    /// Freeze every parameter whose name starts with `prefix` ("" freezes everything).
    pub fn freeze(&mut self, prefix: &str) {
        for n in self.parameter_names() {
            if n.starts_with(prefix) {
                self.frozen.insert(n);
            }
        }
        self.update_body_frozen();
    }

    /// Unfreeze every parameter whose name starts with `prefix`.
    pub fn unfreeze(&mut self, prefix: &str) {
        self.frozen.retain(|n| !n.starts_with(prefix));
        self.update_body_frozen();
    }

    /// Fixed-feature mode: freeze everything but the head.
    pub fn freeze_body(&mut self) {
        for n in self.parameter_names() {
            if !self.is_head(&n) {
                self.frozen.insert(n);
            }
        }
        self.update_body_frozen();
    }

    /// Full fine-tuning mode: nothing frozen.
    pub fn unfreeze_all(&mut self) {
        self.frozen.clear();
        self.body_frozen = false;
    }

    /// The variables an optimiser should update: not frozen, and not running statistics
    /// (which BatchNorm updates itself).
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        let mut v: Vec<(String, Var)> = data
            .iter()
            .filter(|(k, _)| !self.frozen.contains(*k) && !is_buffer(k))
            .map(|(k, var)| (k.clone(), var.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// A copy of every parameter and buffer.
    pub fn named_tensors(&self) -> Result<NamedTensors> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        data.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?))).collect()
    }

    /// Shapes of every parameter and buffer.
    pub fn named_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        data.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect()
    }

    /// Overwrite the named variables with `tensors` (checked against the model by `mode`).
    pub fn set_tensors(&mut self, tensors: &NamedTensors, mode: LoadMode) -> Result<LoadReport> {
        let mut expected = self.named_shapes();
        let mut found = tensors.clone();
        if mode == LoadMode::BodyOnly {
            expected.retain(|k, _| !self.is_head(k));
            found.retain(|k, _| !self.is_head(k));
        }
        // Files written by PyTorch carry BatchNorm's step counter; we keep none, so it is not
        // "unexpected".
        found.retain(|k, _| !k.ends_with("num_batches_tracked"));
        let report = LoadReport::compare(&expected, &found);
        if !report.is_exact() {
            return Err(Error::WeightMismatch(report.describe()));
        }
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        for name in &report.loaded {
            let var = &data[name];
            var.set(&found[name].to_dtype(var.dtype())?.to_device(&self.device)?)?;
        }
        Ok(report)
    }

    /// Save weights as safetensors (atomically), with the model spec in the metadata so that
    /// [`Network::from_file`] can rebuild it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut meta = HashMap::new();
        meta.insert("transferlab.spec".to_string(), serde_json::to_string(&self.spec).expect("spec serialises"));
        weights::write_safetensors(path, &self.named_tensors()?, Some(meta))
    }

    /// Load weights from any supported file into this model.
    pub fn load(&mut self, path: &Path, mode: LoadMode) -> Result<LoadReport> {
        let tensors = weights::read_weights(path)?;
        self.set_tensors(&tensors, mode).map_err(|e| match e {
            Error::WeightMismatch(m) => Error::WeightMismatch(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Build `spec` and load a foreign weight file into it in one call: a PyTorch checkpoint
    /// (`.pth`/`.th`, zip or legacy; the `state_dict` of a training checkpoint is found) or
    /// safetensors, with DataParallel's `module.` removed and, with `unwrap_sequential`, an
    /// `nn.Sequential` wrapper's index too ([`weights::unwrap_wrappers`]). A model trained on
    /// normalised inputs gets its statistics through `spec` ([`ModelSpec::normalized`]) and then
    /// takes [0, 1] pixels. Every tensor must match by name and shape.
    pub fn from_foreign(path: &Path, spec: &ModelSpec, device: &Device, unwrap_sequential: bool) -> Result<Self> {
        let tensors = weights::unwrap_wrappers(weights::read_weights(path)?, unwrap_sequential)?;
        let mut net = Network::new(spec, 0, device)?;
        net.set_tensors(&tensors, LoadMode::Strict).map_err(|e| match e {
            Error::WeightMismatch(m) => Error::WeightMismatch(format!("{}: {m}", path.display())),
            other => other,
        })?;
        Ok(net)
    }

    /// Rebuild a network saved by [`Network::save`].
    pub fn from_file(path: &Path, device: &Device) -> Result<Self> {
        let meta = weights::read_safetensors_metadata(path)?;
        let spec_json = meta.get("transferlab.spec").ok_or_else(|| {
            Error::format(path, "transferlab weights", "no model spec in the metadata; build the model with Network::new and call load")
        })?;
        let spec: ModelSpec = serde_json::from_str(spec_json)
            .map_err(|e| Error::format(path, "transferlab weights", format!("model spec unreadable: {e}")))?;
        let mut net = Network::new(&spec, 0, device)?;
        net.load(path, LoadMode::Strict)?;
        Ok(net)
    }

    /// Whether this network was built by the compiled copy of transferlab that calls this: always
    /// true in programs and tests; false in a notebook cell for a network built in an earlier
    /// cell (evcxr links each cell against its own copy of every dependency).
    pub fn is_local(&self) -> bool {
        self.home == code_copy()
    }

    /// Rebuild the network in the calling copy of transferlab (same weights, same frozen set)
    /// when an earlier notebook cell built it; a no-op otherwise. Anything that runs a backward
    /// pass through a network calls this first (the trainer does), because candle identifies
    /// tensors by a counter that each notebook cell has its own copy of: a graph mixing tensors
    /// of two cells can give two tensors one id and the backward pass the wrong gradients.
    ///
    /// ```
    /// use transferlab::models::{ModelSpec, Network};
    /// let mut net = Network::new(&ModelSpec::named("mlp", (1, 8, 8), 10).unwrap(), 0, &candle_core::Device::Cpu).unwrap();
    /// assert!(net.is_local());
    /// net.make_local().unwrap();
    /// ```
    pub fn make_local(&mut self) -> Result<()> {
        if !self.is_local() {
            *self = self.duplicate()?;
        }
        Ok(())
    }

    /// An independent copy (weights copied, frozen set kept).
    pub fn duplicate(&self) -> Result<Self> {
        let mut copy = Network::new(&self.spec, 0, &self.device)?;
        copy.set_tensors(&self.named_tensors()?, LoadMode::Strict)?;
        copy.frozen = self.frozen.clone();
        copy.body_frozen = self.body_frozen;
        Ok(copy)
    }
}

fn norm_tensors(spec: &ModelSpec, device: &Device) -> Result<Option<(Tensor, Tensor)>> {
    let Some(norm) = &spec.normalize else { return Ok(None) };
    let c = norm.mean.len();
    if c != spec.input.0 {
        return Err(Error::invalid(
            "input normalisation",
            format!("{c} channel statistics for a model with {}-channel inputs", spec.input.0),
        ));
    }
    let inv: Vec<f32> = norm.std.iter().map(|s| 1.0 / s).collect();
    Ok(Some((Tensor::from_slice(&norm.mean, (1, c, 1, 1), device)?, Tensor::from_vec(inv, (1, c, 1, 1), device)?)))
}

/// Running statistics and counters, updated by the forward pass rather than by an optimiser.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked")
}

fn init_scheme(arch: &Arch) -> InitScheme {
    match arch {
        Arch::Backdoored { base, .. } => init_scheme(base),
        Arch::CifarResNet { .. } | Arch::PreActResNet18 | Arch::ResNet18 | Arch::ResNet50 => InitScheme::KaimingNormalFanOut,
        Arch::ResNetV2 { .. } => InitScheme::KaimingNormalFanOut,
        _ => InitScheme::TorchDefault,
    }
}
