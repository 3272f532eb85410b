//! transferlab's integration tests, as one test binary.
//!
//! Each file is a module of this one crate rather than a test target of its own: every target
//! links candle and polars, and 37 of them cost minutes of linking on each build (see the
//! closing note of the start-up issue for the numbers). Run one file's tests with
//! `cargo test --test suite attacks_poisoning::` and one test by its full path.

mod analysis_bias_transfer;
mod analysis_bit_finetune;
mod analysis_classifier_editing;
mod analysis_dataset_artifacts;
mod analysis_failure_directions;
mod analysis_feature_priors;
mod analysis_linear_probe;
mod analysis_natural_backdoor_datasets;
mod analysis_source_influence;
mod analysis_spurious_patterns;
mod analysis_svm_bench;
mod analysis_zero_shot;
mod attacks;
mod attacks_baselines;
mod attacks_architectural;
mod attacks_distillation;
mod attacks_hidden_trigger;
mod attacks_neuba;
mod attacks_poisoning;
mod attacks_watermark;
mod benchmark_grid;
mod benchmark_grid_slurm;
mod cli;
mod common;
mod data_readers;
mod defenses;
mod defenses_abl;
mod defenses_baselines;
mod defenses_fine_tuning;
mod defenses_support;
mod hub_crosscheck;
mod hub_datasets;
mod hub_download;
mod hub_models;
mod kernels;
mod kernels_conv_bn;
mod models_arch;
mod models_clip_tokenizer;
mod models_resnetv2;
mod report;
mod training;
mod weights_pth;
