//! Classifier editing (Santurkar, Tsipras, Elango, Bau, Torralba, Madry, NeurIPS 2021,
//! "Editing a classifier by rewriting its prediction rules"): treat one layer as a linear
//! associative memory `v = W k` and rewrite it so that the keys of a transformed concept (an
//! object drawn with a new texture or colour) map to the values the layer produces for the
//! original object. The update is rank one, `W' = W + Λ dᵀ` with `d = C⁻¹ k*` the concept's
//! whitened key direction (`C` = second moment of the layer's keys over clean data, at every
//! spatial position), so inputs whose keys are uncorrelated with the concept (in the whitened
//! sense) are left almost unchanged. The paper's comparison is fine-tuning the same layer on
//! the same exemplars.
//!
//! As in the paper, the edited layer is a convolution (a `convnet` block's conv, or one of
//! `cnn3`'s): the weight is read as a matrix `out x (in·kh·kw)` and a key is the unfolded
//! `kh x kw` input patch at one spatial position. The exemplar keys are those at the positions
//! inside the concept's mask (the transformed object, [`ConceptPairs::masks`], downsampled to
//! the layer's resolution); their targets `v*` are the layer's outputs at the same positions
//! of the untransformed image. An `mlp` hidden layer can be edited too (one key per image,
//! masks unused): the earlier variant, kept for comparison.
//!
//! Deviations: `Λ` has its closed-form least-squares solution over the exemplar positions
//! (the paper takes gradient steps on the same objective `Σ ||W' k - v*||²`, whose minimiser
//! over `Λ` for fixed `d` this is); `k*` is the mean exemplar key (the paper's principal key
//! direction; the same for one key and close to it for keys of one concept); `C` has a ridge
//! relative to its mean diagonal (dead ReLU channels make it singular). Keys may be centred on
//! the clean keys' mean `μ` ([`ClassifierEditingConfig::centre_keys`]; then the bias moves by
//! `-Λ dᵀμ` and `W' - W` stays rank one): the paper uses the uncentred second moment, which is
//! the default for conv layers; for an MLP layer centring is needed (post-ReLU keys of an MLP
//! share a large common component, and `C⁻¹` of the uncentred mean key is a bias-like
//! direction every input responds to).

use crate::data::{foreground_mask, generate, Dataset, Subgroup, SubgroupKind, SyntheticConfig};
use crate::error::{Error, Result};
use crate::kernels;
use crate::models::{Arch, LoadMode, Network, Norm};
use crate::report::{BarChart, Chart, Figure, Outcome};
use crate::rng::{self, permutation};
use crate::train::{self, LrSchedule, OptimizerConfig, TrainConfig};
use candle_core::{DType, Device, Tensor};
use polars::prelude::{DataFrame, NamedFrom, Series};

/// Pixel-aligned pairs: the same images with the concept transformed (`transformed`) and as
/// they were (`original`), and where the concept is in each (`masks`).
#[derive(Debug, Clone)]
pub struct ConceptPairs {
    pub original: Dataset,
    pub transformed: Dataset,
    /// Per pair, `H * W` flags (row-major) marking the concept's pixels: the positions whose
    /// keys a conv-layer edit rewrites.
    pub masks: Vec<Vec<bool>>,
}

impl ConceptPairs {
    /// The pairs at `indices` (in that order).
    pub fn select(&self, indices: &[usize]) -> Result<Self> {
        let masks = indices
            .iter()
            .map(|&i| self.masks.get(i).cloned().ok_or_else(|| Error::invalid("pair index", format!("{i} is out of range for {} masks", self.masks.len()))))
            .collect::<Result<_>>()?;
        Ok(Self { original: self.original.select(indices)?, transformed: self.transformed.select(indices)?, masks })
    }
}

/// The samples of `class` from [`generate`]`(cfg)`, once as generated and once with the
/// class's objects redrawn by `kind` (a new texture or colour: the transformed concept).
/// Both renderings use the same random draws, so pair `i` differs only in the object's
/// texture or colour; the masks are the objects' pixels ([`foreground_mask`]).
///
/// ```
/// use transferlab::analysis::classifier_editing::concept_pairs;
/// use transferlab::data::{SubgroupKind, SyntheticConfig};
/// let cfg = SyntheticConfig { num_classes: 3, samples_per_class: 4, size: 8, ..Default::default() };
/// let pairs = concept_pairs(&cfg, 1, SubgroupKind::Colour)?;
/// assert_eq!(pairs.original.len(), 4);
/// assert!(pairs.original.labels.iter().all(|&y| y == 1));
/// assert_ne!(pairs.original.image(0), pairs.transformed.image(0));
/// assert!(pairs.masks[0].iter().any(|&m| m));
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn concept_pairs(cfg: &SyntheticConfig, class: u32, kind: SubgroupKind) -> Result<ConceptPairs> {
    let clean = SyntheticConfig { subgroup: None, spurious: None, ..cfg.clone() };
    let changed = SyntheticConfig { subgroup: Some(Subgroup { class, fraction: 1.0, kind }), ..clean.clone() };
    let (a, b) = (generate(&clean)?, generate(&changed)?);
    let idx: Vec<usize> = (0..a.len()).filter(|&i| a.labels[i] == class).collect();
    let mut transformed = b.select(&idx)?;
    transformed.attributes.group = None;
    let masks = idx.iter().map(|&i| foreground_mask(&clean, i)).collect();
    Ok(ConceptPairs { original: a.select(&idx)?, transformed, masks })
}

/// Configuration of [`run`]. Defaults follow the paper where they apply: a few exemplars (3),
/// a late convolutional layer (the last but one), the uncentred key second moment, the
/// rank-one update along the whitened concept direction, and fine-tuning of the same layer on
/// the same exemplars as the baseline.
#[derive(Debug, Clone)]
pub struct ClassifierEditingConfig {
    /// The layer to edit, counted in the model's stack: `convnet` block `i` (`features.{4i}`),
    /// `cnn3` conv `i` (`conv{i+1}`), or `mlp` hidden layer `i` (`layers.{i}`); `None` edits
    /// the last-but-one conv layer, or an `mlp`'s last hidden layer.
    pub layer: Option<usize>,
    /// Exemplar pairs used for the edit (and for fine-tuning).
    pub num_exemplars: usize,
    /// Ridge added to `C` before inverting it, relative to its mean diagonal (keeps the
    /// whitening finite when some key dimensions are dead ReLUs).
    pub ridge: f64,
    /// Centre keys on their clean mean before whitening (the bias absorbs the shift). The
    /// paper: no (uncentred second moment); needed for `mlp` layers (see the module notes).
    pub centre_keys: bool,
    /// A layer position belongs to the concept when at least this fraction of the image
    /// pixels it covers (at the layer's resolution) are in the mask.
    pub mask_threshold: f64,
    /// How the baseline fine-tunes the layer (full batch: one step per epoch).
    pub finetune: TrainConfig,
    /// Seeds which exemplar pairs are used.
    pub seed: u64,
}

impl Default for ClassifierEditingConfig {
    fn default() -> Self {
        Self {
            layer: None,
            num_exemplars: 3,
            ridge: 1e-2,
            centre_keys: false,
            mask_threshold: 0.5,
            finetune: TrainConfig {
                epochs: 20,
                batch_size: 64,
                optimizer: OptimizerConfig::sgd_momentum(),
                schedule: LrSchedule::Constant { lr: 0.01 },
                ..TrainConfig::default()
            },
            seed: 0,
        }
    }
}

/// The architectures whose layers can be edited.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Family {
    Mlp,
    ConvNet(Norm),
    SmallCnn,
}

fn family(net: &Network) -> Result<(Family, usize)> {
    match &net.spec().arch {
        Arch::Mlp { hidden } if !hidden.is_empty() => Ok((Family::Mlp, hidden.len())),
        Arch::ConvNet { depth, norm, .. } if *depth > 0 => Ok((Family::ConvNet(*norm), *depth)),
        Arch::SmallCnn => Ok((Family::SmallCnn, 3)),
        other => Err(Error::invalid(
            "classifier editing model",
            format!("{other:?} has no layer this edit knows; use a convnet, cnn3 or mlp (ModelSpec::named(\"convnet\", ..))"),
        )),
    }
}

/// Weight and bias names of editable layer `layer`.
fn param_names(fam: Family, layer: usize) -> (String, String) {
    let base = match fam {
        Family::Mlp => format!("layers.{layer}"),
        Family::ConvNet(_) => format!("features.{}", 4 * layer),
        Family::SmallCnn => format!("conv{}", layer + 1),
    };
    (format!("{base}.weight"), format!("{base}.bias"))
}

/// The edited layer's index: `layer`, or by default the last-but-one conv layer (the paper
/// edits a late conv layer whose keys still describe local parts and textures; in a 3-block
/// `convnet` the last block's 3x3 patches of a 4x4 map see whole objects, and a rank-one
/// update cannot map their position-specific keys, measured: 0 % transformed accuracy), or
/// the last hidden layer of an `mlp`.
fn resolve_layer(net: &Network, layer: Option<usize>) -> Result<usize> {
    let (fam, depth) = family(net)?;
    let l = layer.unwrap_or(if fam == Family::Mlp || depth < 2 { depth - 1 } else { depth - 2 });
    if l >= depth {
        return Err(Error::invalid("layer", format!("{l} is out of range: the model has editable layers 0..{depth}")));
    }
    Ok(l)
}

/// A rank-one rewrite `W' = W + lambda directionᵀ` of one layer's weight (read as a matrix
/// `out x in·kh·kw`), with the bias moved by `-lambda directionᵀ key_mean` for centred keys.
#[derive(Debug, Clone, PartialEq)]
pub struct RankOneEdit {
    pub layer: usize,
    /// The weight's name and shape.
    pub weight: String,
    pub shape: Vec<usize>,
    /// `Λ`, one entry per output channel.
    pub lambda: Vec<f32>,
    /// `d = C⁻¹ k*`, one entry per key dimension.
    pub direction: Vec<f32>,
    /// The clean keys' mean `μ` when keys were centred.
    pub key_mean: Option<Vec<f32>>,
    /// How many exemplar keys (masked positions) the edit was fitted to.
    pub num_keys: usize,
}

impl RankOneEdit {
    /// The parameter the edit rewrites.
    pub fn weight_name(&self) -> String {
        self.weight.clone()
    }

    /// `lambda directionᵀ` in the weight's shape.
    pub fn delta(&self) -> Result<Tensor> {
        let l = Tensor::from_slice(&self.lambda, (self.lambda.len(), 1), &Device::Cpu)?;
        let d = Tensor::from_slice(&self.direction, (1, self.direction.len()), &Device::Cpu)?;
        Ok(l.matmul(&d)?.reshape(self.shape.as_slice())?)
    }

    /// A copy of `net` with the edit applied.
    pub fn apply(&self, net: &Network) -> Result<Network> {
        let mut tensors = net.named_tensors()?;
        let name = &self.weight;
        let w = tensors.get(name).ok_or_else(|| Error::invalid("edit", format!("the network has no {name}")))?;
        let edited = (w.to_device(&Device::Cpu)? + self.delta()?)?;
        tensors.insert(name.clone(), edited);
        if let Some(mu) = &self.key_mean {
            let bias_name = format!("{}.bias", name.trim_end_matches(".weight"));
            let shift: f32 = self.direction.iter().zip(mu).map(|(d, m)| d * m).sum();
            let b = tensors.get(&bias_name).ok_or_else(|| Error::invalid("edit", format!("the network has no {bias_name}")))?;
            let lam = Tensor::from_slice(&self.lambda, self.lambda.len(), &Device::Cpu)?;
            let shifted = (b.to_device(&Device::Cpu)? - (lam * shift as f64)?)?;
            tensors.insert(bias_name, shifted);
        }
        let mut out = net.duplicate()?;
        out.set_tensors(&tensors, LoadMode::Strict)?;
        Ok(out)
    }
}

fn check_input(net: &Network, ds: &Dataset) -> Result<()> {
    if ds.shape != net.spec().input || ds.is_empty() {
        return Err(Error::shape("classifier editing data", format!("the model takes {:?} images; got {} of {:?}", net.spec().input, ds.len(), ds.shape)));
    }
    Ok(())
}

/// The input of editable layer `layer` for every sample of `ds` (evaluation mode, CPU):
/// `(N, C, H, W)` for a conv layer, `(N, in)` for an `mlp` layer. `layer` may equal the
/// number of editable layers: then this is the body's penultimate features before flattening
/// (a check that the recomputation matches [`Network::features`]).
pub fn layer_input(net: &Network, layer: usize, ds: &Dataset) -> Result<Tensor> {
    let (fam, depth) = family(net)?;
    if layer > depth {
        return Err(Error::invalid("layer", format!("{layer} is out of range: the model has editable layers 0..{depth}")));
    }
    check_input(net, ds)?;
    let t = net.named_tensors()?;
    let get = |name: &str| -> Result<Tensor> {
        Ok(t.get(name).ok_or_else(|| Error::invalid("classifier editing model", format!("no {name}")))?.to_device(&Device::Cpu)?)
    };
    let mut h = ds.images_tensor(&Device::Cpu)?;
    if fam == Family::Mlp {
        h = h.flatten_from(1)?;
    }
    for i in 0..layer {
        let (wn, bn) = param_names(fam, i);
        let (w, b) = (get(&wn)?, get(&bn)?);
        h = match fam {
            Family::Mlp => h.matmul(&w.t()?)?.broadcast_add(&b)?.relu()?,
            Family::SmallCnn => kernels::max_pool2d_relu(&kernels::conv2d(&h, &w, Some(&b), 1, 1)?, 2, 2, 0)?,
            Family::ConvNet(norm) => {
                let y = kernels::conv2d(&h, &w, Some(&b), 1, 1)?;
                let nb = format!("features.{}", 4 * i + 1);
                let y = match norm {
                    Norm::None => y,
                    Norm::Instance => instance_norm(&y, &get(&format!("{nb}.weight"))?, &get(&format!("{nb}.bias"))?)?,
                    Norm::Batch => kernels::batch_norm_eval(
                        &y,
                        &get(&format!("{nb}.running_mean"))?,
                        &get(&format!("{nb}.running_var"))?,
                        &get(&format!("{nb}.weight"))?,
                        &get(&format!("{nb}.bias"))?,
                        1e-5,
                    )?,
                };
                kernels::avg_pool2d(&y.relu()?, 2)?
            }
        };
    }
    Ok(h)
}

/// `models::layers::InstanceNorm` (eps 1e-5) from its tensors.
fn instance_norm(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let flat = x.reshape((n, c, h * w))?;
    let centred = flat.broadcast_sub(&flat.mean_keepdim(2)?)?;
    let var = centred.sqr()?.mean_keepdim(2)?;
    let normed = centred.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
    Ok(normed.broadcast_mul(&weight.reshape((1, c, 1))?)?.broadcast_add(&bias.reshape((1, c, 1))?)?.reshape((n, c, h, w))?)
}

/// `(N, C, H, W)` -> `(N·H·W, C·k·k)`: the zero-padded `k x k` patch at every position
/// (rows ordered image, y, x; columns ordered as the flattened `(C, k, k)` weight).
fn unfold(x: &Tensor, k: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let p = k / 2;
    let xp = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    let mut taps = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            taps.push(xp.narrow(2, ky, h)?.narrow(3, kx, w)?);
        }
    }
    Ok(Tensor::stack(&taps, 2)?.reshape((n, c * k * k, h * w))?.transpose(1, 2)?.contiguous()?.reshape((n * h * w, c * k * k))?)
}

/// Keys (rows: one per image for an `mlp` layer, one per image and position for a conv layer,
/// ordered image, y, x) and values (the layer's output before any norm or ReLU, same rows) of
/// editable layer `layer` on every sample of `ds`, in evaluation mode, on the CPU; with the
/// layer's spatial size `(H, W)` (`(1, 1)` for an `mlp` layer).
pub fn layer_io(net: &Network, layer: usize, ds: &Dataset) -> Result<(Tensor, Tensor, (usize, usize))> {
    let (fam, depth) = family(net)?;
    if layer >= depth {
        return Err(Error::invalid("layer", format!("{layer} is out of range: the model has editable layers 0..{depth}")));
    }
    let h = layer_input(net, layer, ds)?;
    let t = net.named_tensors()?;
    let (wn, bn) = param_names(fam, layer);
    let get = |name: &str| -> Result<Tensor> {
        Ok(t.get(name).ok_or_else(|| Error::invalid("classifier editing model", format!("no {name}")))?.to_device(&Device::Cpu)?)
    };
    let (w, b) = (get(&wn)?, get(&bn)?);
    let (keys, hw) = match fam {
        Family::Mlp => (h, (1, 1)),
        _ => {
            let (_, _, hh, ww) = h.dims4()?;
            (unfold(&h, w.dim(3)?)?, (hh, ww))
        }
    };
    let wm = w.flatten_from(1)?;
    let values = keys.matmul(&wm.t()?)?.broadcast_add(&b)?;
    Ok((keys, values, hw))
}

/// Per pair, the rows of [`layer_io`]'s output inside the concept: positions of the layer's
/// `(H, W)` grid whose image cell is at least `threshold` covered by the mask (every image's
/// single row for an `mlp` layer).
pub fn concept_rows(pairs: &ConceptPairs, hw: (usize, usize), threshold: f64) -> Result<Vec<usize>> {
    let (_, ih, iw) = pairs.original.shape;
    let (lh, lw) = hw;
    if hw == (1, 1) && (ih, iw) != (1, 1) {
        return Ok((0..pairs.original.len()).collect());
    }
    if ih % lh != 0 || iw % lw != 0 {
        return Err(Error::shape("concept mask", format!("the layer's {lh}x{lw} grid does not divide the {ih}x{iw} image")));
    }
    let (fy, fx) = (ih / lh, iw / lw);
    let mut rows = Vec::new();
    for (i, m) in pairs.masks.iter().enumerate() {
        for y in 0..lh {
            for x in 0..lw {
                let covered = (0..fy).flat_map(|dy| (0..fx).map(move |dx| (y * fy + dy) * iw + x * fx + dx)).filter(|&p| m[p]).count();
                if covered as f64 >= threshold * (fy * fx) as f64 {
                    rows.push(i * lh * lw + y * lw + x);
                }
            }
        }
    }
    Ok(rows)
}

fn to_rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(t.to_dtype(DType::F64)?.to_vec2::<f64>()?)
}

/// Solve `a x = b` for symmetric positive definite `a` (Cholesky).
fn spd_solve(a: &[Vec<f64>], b: &[f64]) -> Result<Vec<f64>> {
    let n = b.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i][j] - l[i][..j].iter().zip(&l[j][..j]).map(|(x, y)| x * y).sum::<f64>();
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return Err(Error::invalid("ridge", "the key second-moment matrix is not positive definite; raise ridge"));
                }
                l[i][i] = s.sqrt();
            } else {
                l[i][j] = s / l[j][j];
            }
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        y[i] = (b[i] - l[i][..i].iter().zip(&y[..i]).map(|(x, v)| x * v).sum::<f64>()) / l[i][i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        x[i] = (y[i] - (i + 1..n).map(|k| l[k][i] * x[k]).sum::<f64>()) / l[i][i];
    }
    Ok(x)
}

/// The clean keys' statistics at one layer: mean `μ` and second moment `C` (about `μ` for
/// centred keys), ridge included. Measured once, reusable for several edits.
#[derive(Debug, Clone)]
pub struct KeyStatistics {
    pub layer: usize,
    pub centred: bool,
    pub mean: Vec<f64>,
    /// `C + ridge·mean(diag C)·I`, row-major.
    pub second_moment: Vec<Vec<f64>>,
    /// How many keys (images x positions) were averaged.
    pub count: usize,
}

impl KeyStatistics {
    /// Statistics of layer `layer`'s keys over every position of every image of `clean`.
    pub fn measure(net: &Network, clean: &Dataset, layer: usize, centre: bool, ridge: f64) -> Result<Self> {
        if !(ridge.is_finite() && ridge > 0.0) {
            return Err(Error::invalid("ridge", format!("{ridge} must be finite and positive")));
        }
        check_input(net, clean)?;
        // In chunks: a conv layer's unfolded keys for a whole dataset can be hundreds of MB.
        let chunk = 128;
        let mut sum: Option<Tensor> = None;
        let mut gram: Option<Tensor> = None;
        let mut count = 0;
        for start in (0..clean.len()).step_by(chunk) {
            let idx: Vec<usize> = (start..(start + chunk).min(clean.len())).collect();
            let (k, _, _) = layer_io(net, layer, &clean.select(&idx)?)?;
            count += k.dim(0)?;
            let (s, g) = (k.sum_keepdim(0)?, k.t()?.matmul(&k)?);
            sum = Some(match sum { Some(a) => (a + s)?, None => s });
            gram = Some(match gram { Some(a) => (a + g)?, None => g });
        }
        let n = count as f64;
        let mean: Vec<f64> = to_rows(&sum.expect("non-empty"))?.remove(0).into_iter().map(|v| v / n).collect();
        let mut c = to_rows(&gram.expect("non-empty"))?;
        let dim = c.len();
        for (i, row) in c.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v /= n;
                if centre {
                    *v -= mean[i] * mean[j];
                }
            }
        }
        let scale = ridge * (0..dim).map(|i| c[i][i]).sum::<f64>() / dim as f64;
        let scale = if scale > 0.0 { scale } else { ridge };
        for (i, row) in c.iter_mut().enumerate() {
            row[i] += scale;
        }
        Ok(Self { layer, centred: centre, mean, second_moment: c, count })
    }
}

fn validate(net: &Network, exemplars: &ConceptPairs, cfg: &ClassifierEditingConfig) -> Result<usize> {
    let layer = resolve_layer(net, cfg.layer)?;
    let (o, t) = (&exemplars.original, &exemplars.transformed);
    if o.len() != t.len() || o.shape != t.shape || o.labels != t.labels {
        return Err(Error::invalid("exemplars", "original and transformed must be the same images pair by pair (see concept_pairs)"));
    }
    let pixels = o.shape.1 * o.shape.2;
    if exemplars.masks.len() != o.len() || exemplars.masks.iter().any(|m| m.len() != pixels) {
        return Err(Error::invalid("exemplars", format!("give one mask of {pixels} (H * W) flags per pair (see concept_pairs)")));
    }
    if cfg.num_exemplars == 0 || cfg.num_exemplars > o.len() {
        return Err(Error::invalid("num_exemplars", format!("{} must be between 1 and the {} pairs given", cfg.num_exemplars, o.len())));
    }
    if !(cfg.ridge.is_finite() && cfg.ridge > 0.0) {
        return Err(Error::invalid("ridge", format!("{} must be finite and positive", cfg.ridge)));
    }
    if !(cfg.mask_threshold > 0.0 && cfg.mask_threshold <= 1.0) {
        return Err(Error::invalid("mask_threshold", format!("{} must be in (0, 1]", cfg.mask_threshold)));
    }
    Ok(layer)
}

/// The exemplar pairs [`run`] uses: `num_exemplars` of them, chosen by `seed`.
pub fn choose_exemplars(exemplars: &ConceptPairs, cfg: &ClassifierEditingConfig) -> Result<ConceptPairs> {
    let mut r = rng::stream(cfg.seed, "analysis/classifier_editing/exemplars");
    let mut idx: Vec<usize> = permutation(&mut r, exemplars.original.len()).into_iter().take(cfg.num_exemplars).collect();
    idx.sort_unstable();
    exemplars.select(&idx)
}

/// The rank-one edit of `stats.layer` that maps the keys of `chosen.transformed` at the
/// concept's positions to the values of `chosen.original` at the same positions, in least
/// squares, along `d = C⁻¹ k*` (`k*` the mean exemplar key, centred when `stats` is).
pub fn rank_one_edit_with(net: &Network, stats: &KeyStatistics, chosen: &ConceptPairs, mask_threshold: f64) -> Result<RankOneEdit> {
    let layer = stats.layer;
    let (fam, _) = family(net)?;
    let (keys, current, hw) = layer_io(net, layer, &chosen.transformed)?;
    let (_, wanted, _) = layer_io(net, layer, &chosen.original)?;
    let rows = concept_rows(chosen, hw, mask_threshold)?;
    if rows.is_empty() {
        return Err(Error::invalid("exemplars", "no layer position lies inside the concept masks; lower mask_threshold or edit an earlier layer"));
    }
    let pick = |t: &Tensor| -> Result<Vec<Vec<f64>>> {
        let idx = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), &Device::Cpu)?;
        to_rows(&t.index_select(&idx, 0)?)
    };
    let (keys, current, wanted) = (pick(&keys)?, pick(&current)?, pick(&wanted)?);
    let dim = stats.mean.len();
    let zero = vec![0.0; dim];
    let mu = if stats.centred { &stats.mean } else { &zero };
    let keys: Vec<Vec<f64>> = keys.into_iter().map(|k| k.iter().zip(mu).map(|(a, b)| a - b).collect()).collect();
    let m = keys.len() as f64;
    let kstar: Vec<f64> = (0..dim).map(|j| keys.iter().map(|k| k[j]).sum::<f64>() / m).collect();
    let d = spd_solve(&stats.second_moment, &kstar)?;
    // W' k_i = W k_i + Λ (dᵀ k_i): least squares over i gives Λ = Σ s_i r_i / Σ s_i².
    let s: Vec<f64> = keys.iter().map(|k| k.iter().zip(&d).map(|(a, b)| a * b).sum()).collect();
    let ss: f64 = s.iter().map(|v| v * v).sum();
    if !(ss > 0.0) {
        return Err(Error::invalid("exemplars", "the exemplar keys are zero at this layer; edit an earlier layer"));
    }
    let out = wanted[0].len();
    let lambda: Vec<f32> = (0..out)
        .map(|o| (s.iter().enumerate().map(|(i, si)| si * (wanted[i][o] - current[i][o])).sum::<f64>() / ss) as f32)
        .collect();
    let (wn, _) = param_names(fam, layer);
    let shape = net.named_shapes().get(&wn).cloned().ok_or_else(|| Error::invalid("edit", format!("the network has no {wn}")))?;
    Ok(RankOneEdit {
        layer,
        weight: wn,
        shape,
        lambda,
        direction: d.into_iter().map(|v| v as f32).collect(),
        key_mean: stats.centred.then(|| stats.mean.iter().map(|&v| v as f32).collect()),
        num_keys: rows.len(),
    })
}

/// [`rank_one_edit_with`] after measuring the key statistics on `train` (clean data), with
/// `cfg`'s layer, ridge, centring and mask threshold.
pub fn rank_one_edit(net: &Network, train: &Dataset, chosen: &ConceptPairs, cfg: &ClassifierEditingConfig) -> Result<RankOneEdit> {
    let layer = validate(net, chosen, &ClassifierEditingConfig { num_exemplars: 1, ..cfg.clone() })?;
    let stats = KeyStatistics::measure(net, train, layer, cfg.centre_keys, cfg.ridge)?;
    rank_one_edit_with(net, &stats, chosen, cfg.mask_threshold)
}

/// Clean and transformed-concept accuracy of one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EditMetrics {
    pub clean_accuracy: f64,
    pub transformed_accuracy: f64,
}

/// What [`run`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierEditingResult {
    pub original: EditMetrics,
    pub edited: EditMetrics,
    pub finetuned: EditMetrics,
    /// The rewrite that produced `edited`.
    pub edit: RankOneEdit,
    /// Mean squared distance of the layer outputs at the exemplars' concept positions from
    /// their targets, before and after the edit.
    pub exemplar_error_before: f64,
    pub exemplar_error_after: f64,
}

/// Accuracy of `net` on clean `test` data and on transformed-concept images.
pub fn edit_metrics(net: &Network, test: &Dataset, test_transformed: &Dataset) -> Result<EditMetrics> {
    Ok(EditMetrics { clean_accuracy: train::accuracy(net, test)?, transformed_accuracy: train::accuracy(net, test_transformed)? })
}

/// Mean squared distance of `net`'s layer outputs on `chosen.transformed` from the original
/// model's outputs on `chosen.original`, at the concept's positions.
fn exemplar_error(net: &Network, original: &Network, layer: usize, chosen: &ConceptPairs, threshold: f64) -> Result<f64> {
    let (_, got, hw) = layer_io(net, layer, &chosen.transformed)?;
    let (_, want, _) = layer_io(original, layer, &chosen.original)?;
    let rows = concept_rows(chosen, hw, threshold)?;
    let idx = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), &Device::Cpu)?;
    let diff = (got.index_select(&idx, 0)? - want.index_select(&idx, 0)?)?;
    Ok(diff.sqr()?.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Cross-entropy with the network in evaluation mode: fine-tuning one layer on a handful of
/// exemplars must neither normalise with their batch statistics nor overwrite BatchNorm's
/// running averages (the edit leaves them alone too).
struct EvalModeCrossEntropy;

impl train::Objective for EvalModeCrossEntropy {
    fn loss(&mut self, s: &mut train::Step) -> Result<(Tensor, Tensor)> {
        let logits = s.net.forward(s.x, false)?;
        Ok((train::cross_entropy(&logits, s.y, 0.0)?, logits))
    }
}

/// The baseline: a copy of `net` whose layer `layer` weight (the one an edit rewrites) is
/// fine-tuned on `chosen.transformed` with its true labels, everything else frozen and in
/// evaluation mode.
pub fn finetune_layer(net: &Network, chosen: &ConceptPairs, layer: usize, finetune: &TrainConfig) -> Result<Network> {
    let l = resolve_layer(net, Some(layer))?;
    let (fam, _) = family(net)?;
    let (weight, _) = param_names(fam, l);
    let mut tuned = net.duplicate()?;
    tuned.freeze("");
    tuned.unfreeze(&weight);
    train::train_with(&mut tuned, &chosen.transformed, None, finetune, &mut EvalModeCrossEntropy)?;
    Ok(tuned)
}

/// Edit `net` (a trained `convnet`, `cnn3` or `mlp`) with
/// [`num_exemplars`](ClassifierEditingConfig::num_exemplars) pairs of `exemplars`, fine-tune
/// the same layer's weight on the same transformed exemplars (true labels) as the baseline,
/// and measure accuracy on clean `test` data and on held-out `test_transformed` images of the
/// concept. `train` (clean) gives the key statistics `C`.
pub fn run(
    net: &Network,
    train: &Dataset,
    exemplars: &ConceptPairs,
    test: &Dataset,
    test_transformed: &Dataset,
    cfg: &ClassifierEditingConfig,
) -> Result<ClassifierEditingResult> {
    let layer = validate(net, exemplars, cfg)?;
    let chosen = choose_exemplars(exemplars, cfg)?;
    let stats = KeyStatistics::measure(net, train, layer, cfg.centre_keys, cfg.ridge)?;
    let edit = rank_one_edit_with(net, &stats, &chosen, cfg.mask_threshold)?;
    let edited = edit.apply(net)?;
    let exemplar_error_before = exemplar_error(net, net, layer, &chosen, cfg.mask_threshold)?;
    let exemplar_error_after = exemplar_error(&edited, net, layer, &chosen, cfg.mask_threshold)?;

    let tuned = finetune_layer(net, &chosen, layer, &cfg.finetune)?;
    Ok(ClassifierEditingResult {
        original: edit_metrics(net, test, test_transformed)?,
        edited: edit_metrics(&edited, test, test_transformed)?,
        finetuned: edit_metrics(&tuned, test, test_transformed)?,
        edit,
        exemplar_error_before,
        exemplar_error_after,
    })
}

impl Outcome for ClassifierEditingResult {
    /// One row per model (original, rank-one edit, fine-tuned layer): the edited layer, clean
    /// accuracy and accuracy on held-out transformed images of the concept.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let rows = [("original", self.original), ("rank-one edit", self.edited), ("fine-tune layer", self.finetuned)];
        let cols = vec![
            Series::new("method".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()).into(),
            Series::new("layer".into(), vec![self.edit.weight.clone(); 3]).into(),
            Series::new("clean_accuracy".into(), rows.iter().map(|r| r.1.clean_accuracy).collect::<Vec<_>>()).into(),
            Series::new("transformed_accuracy".into(), rows.iter().map(|r| r.1.transformed_accuracy).collect::<Vec<_>>()).into(),
        ];
        Ok(DataFrame::new_infer_height(cols)?)
    }

    /// Clean and transformed accuracy (in %) per model.
    fn figure(&self) -> Result<Figure> {
        let cats = vec!["clean test".into(), "transformed concept (held out)".into()];
        let vals = |m: &EditMetrics| vec![100.0 * m.clean_accuracy, 100.0 * m.transformed_accuracy];
        let chart = BarChart::new(&format!("Classifier editing vs fine-tuning ({})", self.edit.weight), "accuracy %", cats)
            .series("original", vals(&self.original))
            .series("rank-one edit", vals(&self.edited))
            .series("fine-tune layer", vals(&self.finetuned));
        Ok(Figure::new(Chart::Bars(chart)))
    }

    fn summary(&self) -> String {
        let (o, e, f) = (&self.original, &self.edited, &self.finetuned);
        format!(
            "Classifier editing (rank-one rewrite of {}, fitted to {} exemplar keys; their layer-output error, mean squared, {:.3} before and {:.3} after) took accuracy on held-out transformed-concept images from {:.1} % to {:.1} % (clean test {:.1} % to {:.1} %); fine-tuning the same layer on the same exemplars gave {:.1} % (clean {:.1} %).",
            self.edit.weight,
            self.edit.num_keys,
            self.exemplar_error_before,
            self.exemplar_error_after,
            100.0 * o.transformed_accuracy,
            100.0 * e.transformed_accuracy,
            100.0 * o.clean_accuracy,
            100.0 * e.clean_accuracy,
            100.0 * f.transformed_accuracy,
            100.0 * f.clean_accuracy
        )
    }
}
