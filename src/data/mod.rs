//! Datasets: the in-memory [`Dataset`], readers for the common formats, synthetic generators,
//! transforms and sampling.
//!
//! | source | reader | writer (fixtures, exports) |
//! |---|---|---|
//! | MNIST-style IDX (plain or gzip) | [`read_idx_dataset`], [`read_idx`] | [`write_idx_dataset`] |
//! | CIFAR-10 / CIFAR-100 binary batches | [`read_cifar10`], [`read_cifar100`] | [`write_cifar10`], [`write_cifar100`] |
//! | `root/<class>/<image>` folders | [`read_image_folder`] | [`write_image_folder`] |
//! | Hugging Face `datasets` Parquet | [`read_hf_parquet`] | [`write_hf_parquet`] |
//! | UCI digits (embedded) | [`digits()`], [`read_digits_csv`] | |
//! | synthetic shapes and textures | [`generate`] | |
//!
//! Readers return [`crate::Error::Format`] naming the file and what is wrong with it; they
//! never panic on bad input.

pub mod cifar;
mod codec;
mod dataset;
mod edges;
pub mod digits;
pub mod idx;
pub mod image_folder;
pub mod parquet;
pub mod sampling;
mod source;
pub mod synthetic;
pub mod transforms;

pub use cifar::{
    read_cifar10, read_cifar100, write_cifar10, write_cifar100, CIFAR100_COARSE_CLASSES, CIFAR100_FINE_CLASSES,
    CIFAR10_CLASSES,
};
pub use dataset::{Attributes, Dataset};
pub use edges::{smoothed_sobel_edges, sobel_edges};
pub use digits::{digits, read_digits_csv};
pub use idx::{read_idx, read_idx_dataset, write_idx_dataset, IdxArray, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC};
pub use image_folder::{read_image_folder, write_image_folder};
pub use parquet::{read_hf_parquet, write_hf_parquet};
pub use sampling::{Batches, SplitSize};
pub use source::DataSource;
pub use synthetic::{
    class_names as synthetic_class_names, generate, Spurious, SpuriousKind, Subgroup, SubgroupKind,
    SyntheticConfig, GROUP_SPURIOUS, GROUP_SUBGROUP,
};
pub use synthetic::{foreground_mask, object_box};
pub use synthetic::generate_with_colours;
pub use synthetic::{generate_styled, SyntheticStyle};
pub use synthetic::PixelTextures;
pub use transforms::{normalise, place_on_canvas, resize, resize_image, to_grayscale, to_rgb, Augment};
