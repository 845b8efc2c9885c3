//! Pre-extracted features as a dataset, and ActionFormer on them: the way most people localise
//! actions today (I3D, VideoMAE or InternVideo features + ActionFormer), and the baseline every
//! paper this crate implements measures itself against.
//!
//! - [`FeatureDataset`]: ActionFormer / OpenTAD feature folders (`<prefix><id><ext>`, `.npy`
//!   `[T, C]`) with ActivityNet-format annotations;
//! - [`FeatureTrainConfig`]: ActionFormer's recipe as defaults, and
//!   [`read_actionformer_config`] for its YAML files;
//! - [`train_features`]: the head trained on features, written as a [`FeatureRun`];
//! - [`FeatureRun::load`] + [`predict`]: inference, also with weights imported from an
//!   ActionFormer checkpoint ([`crate::weights::actionformer`]).

mod actionformer_config;
mod config;
mod crop;
mod dataset;
mod run;
mod train;

pub use actionformer_config::{ActionFormerConfig, is_yaml, read_actionformer_config};
pub use config::FeatureTrainConfig;
pub use crop::{Crop, truncate};
pub use dataset::{FeatureDataConfig, FeatureDataset, FeatureVideo, class_order as class_names};
pub use run::{
    FEATURE_RUN, FeatureRun, HEAD_WEIGHTS, check_classes, check_feature_run, detect, predict,
    prepare_feature_run,
};
pub use train::{
    FeatureEpoch, FeatureOutcome, FeatureRunOptions, actionformer_lr, predictions_path,
    train_features,
};
