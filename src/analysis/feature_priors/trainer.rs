//! Training and evaluating the two priors on their views of the data (raw pixels for the
//! texture prior, edge images for the shape prior).

use super::pseudo_labels::probabilities;
use super::FeaturePriorsConfig;
use crate::data::{smoothed_sobel_edges, Dataset};
use crate::error::Result;
use crate::models::{ModelSpec, Network};
use crate::train::{self, Progress, ProgressMode, TrainConfig};

/// A dataset's raw and edge views: what the texture and the shape prior see.
pub(super) struct Views {
    pub(super) raw: Dataset,
    pub(super) edges: Dataset,
}

impl Views {
    pub(super) fn new(ds: &Dataset, sigma: f32) -> Result<Self> {
        Ok(Self { raw: ds.clone(), edges: smoothed_sobel_edges(ds, sigma)? })
    }
}

/// The two priors.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Prior {
    Shape,
    Texture,
}

pub(super) struct Trainer<'a> {
    pub(super) cfg: &'a FeaturePriorsConfig,
    pub(super) labelled: &'a Views,
    pub(super) pool: &'a Views,
    pub(super) progress: Progress,
}

impl Trainer<'_> {
    pub(super) fn view<'v>(&self, prior: Prior, v: &'v Views) -> &'v Dataset {
        match prior {
            Prior::Shape => &v.edges,
            Prior::Texture => &v.raw,
        }
    }

    /// A model of `prior` trained on the labelled set plus `pseudo` (pool index, pseudo-label)
    /// pairs in era `era`: `start` trained further, or a fresh model.
    pub(super) fn fit(&self, prior: Prior, pseudo: &[(usize, u32)], era: usize, start: Option<&Network>) -> Result<Network> {
        let lab = self.view(prior, self.labelled);
        let data = if pseudo.is_empty() {
            lab.clone()
        } else {
            let idx: Vec<usize> = pseudo.iter().map(|p| p.0).collect();
            let mut extra = self.view(prior, self.pool).select(&idx)?;
            extra.labels = pseudo.iter().map(|p| p.1).collect();
            lab.concat(&extra)?
        };
        let arch = match prior {
            Prior::Shape => &self.cfg.shape_arch,
            Prior::Texture => &self.cfg.texture_arch,
        };
        let mut net = match start {
            Some(net) => net.duplicate()?,
            None => Network::new(&ModelSpec::new(arch.clone(), data.shape, data.num_classes())?, self.cfg.model_seed, &self.cfg.device)?,
        };
        let train_cfg = if era == 0 { &self.cfg.train } else { self.cfg.era_train.as_ref().unwrap_or(&self.cfg.train) };
        let train_cfg = TrainConfig { progress: ProgressMode::Hidden, ..train_cfg.clone() };
        train::train(&mut net, &data, None, &train_cfg)?;
        self.progress.inc(1);
        Ok(net)
    }
}

/// A trained pair evaluated on the pool, the test set and the flipped test set.
pub(super) struct Evaluated {
    pub(super) pool: Vec<f32>,
    pub(super) test: Vec<f32>,
    pub(super) flipped: Vec<f32>,
}

pub(super) fn evaluate(net: &Network, prior: Prior, pool: &Views, test: &Views, flipped: &Views) -> Result<Evaluated> {
    let pick = |v: &Views| match prior {
        Prior::Shape => v.edges.clone(),
        Prior::Texture => v.raw.clone(),
    };
    Ok(Evaluated {
        pool: probabilities(net, &pick(pool))?,
        test: probabilities(net, &pick(test))?,
        flipped: probabilities(net, &pick(flipped))?,
    })
}
