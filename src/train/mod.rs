//! Training and inference of the whole detector: modes `head-only`, `full`, `reversible`
//! (Re2TAL) and `adapter` (LoSA) over one loop, checkpoints with exact resume, evaluation.
//! See `docs/training.md`.

pub mod budget;
pub mod checkpoint;
pub mod config;
pub mod dataset;
mod ema;
pub mod infer;
pub mod model;
pub mod plan;
pub mod pretrain;
mod schedule;
pub mod stages;
mod step;
pub mod trainer;

pub use checkpoint::{Checkpoint, EpochLog, TrainState};
pub use config::{BackboneConfig, TrainConfig, TrainMode};
pub use dataset::{TalDataset, TalVideo};
pub use infer::{VideoInference, detect_video};
pub use model::{Detector, TalModel};
pub use plan::TrainPlan;
pub use pretrain::{PretrainConfig, PretrainOutcome, pretrain};
pub use trainer::{
    ResumeChanges, RunOptions, TrainOutcome, load_model, prepare_run_folder, resume, resume_with,
    train,
};
