//! Training and inference of the whole detector: modes `head-only`, `full`, `reversible`
//! (Re2TAL) and `adapter` (LoSA) over one loop, checkpoints with exact resume, evaluation.
//! See `docs/training.md`.
//!
//! The submodules are private to the crate: every item has one public path, `e2e_tal::train::Item`.

mod budget;
mod checkpoint;
mod config;
mod data_parallel;
mod dataset;
mod ema;
mod infer;
mod lock;
mod loss_scale;
mod model;
mod plan;
mod pretrain;
mod schedule;
mod stages;
mod step;
mod trainer;
mod validate;

/// The memory planner's entry point (`crate::planner::plan`): a run's configuration planned
/// for every strategy and fidelity before it starts.
pub use crate::planner::plan;
pub use budget::{
    BudgetChoice, BudgetProbe, candidate_fidelities, choose_fidelity, parse_bytes, plan_fidelity,
    select_fidelity,
};
pub use checkpoint::{
    Checkpoint, CheckpointMeta, DriftLog, EpochLog, RanksLog, TrainState, find_checkpoint,
};
pub use config::{BackboneConfig, TrainConfig, TrainMode, read_config};
pub use dataset::{TalDataset, TalVideo};
pub(crate) use ema::ema_update;
pub use infer::{
    InferOptions, VideoInference, detect_video, trained_model, video_id, with_precision,
};
pub(crate) use lock::{LOCK_FILE, RunLock};
pub use loss_scale::{LossScale, LossScaleConfig};
pub use model::{Detector, Extraction, TalModel, extract_features, head_input, run_head};
pub use plan::{FrozenFeatures, Sampling, TrainPlan};
pub use pretrain::{
    ClipClassifier, PretrainConfig, PretrainOutcome, TrimmedClip, clip_accuracy, pretrain,
    pretrain_from, trimmed_clips,
};
pub use stages::{StagesOutcome, end_to_end_then_head};
pub(crate) use step::{add_into as add_grads, clip_grads};
pub use trainer::{
    RUN_OUTPUTS, ResumeChanges, RunOptions, TrainOutcome, load_model, prepare_run_folder, resume,
    resume_with, train,
};
pub(crate) use validate::check_numbers as validate_numbers;
