//! Numerical statistics the methods share and no method owns: ROC summaries, principal
//! components, spectral norms, k-means and the gamma distribution. Plain `f64` code over
//! row-major samples: the sizes involved (a few thousand samples of a few hundred features)
//! are too small for a tensor round trip to pay.

mod gamma;
mod kmeans;
mod pca;
mod roc;
mod singular;

pub use gamma::{mean_and_variance, normal_cdf, Gamma};
pub use kmeans::{kmeans, KMeans};
pub use pca::{principal_components, project};
pub use roc::{auc, quantile, tpr_at_fpr};
pub use singular::largest_singular_value;
