//! How a head is trained on features: ActionFormer's recipe as the defaults (THUMOS-14 I3D,
//! `configs/thumos_i3d.yaml`).

use burn::config::Config;

use super::dataset::FeatureDataConfig;
use crate::error::{Error, Result};
use crate::eval::ThresholdSet;
use crate::tal::assign::AssignConfig;
use crate::tal::head::HeadConfig;
use crate::tal::loss::LossConfig;
use crate::tal::postprocess::PostProcessConfig;

/// Feature-based training (defaults: ActionFormer on THUMOS-14 I3D features: AdamW at 1e-4,
/// weight decay 0.05 on convolution weights only, eps 1e-8, 5 warm-up epochs from 0 then
/// cosine over 30, batches of 2 videos, gradient norm clipped at 1, EMA 0.999 of the weights
/// used for evaluation and inference).
#[derive(Config, Debug)]
pub struct FeatureTrainConfig {
    /// Feature layout and the training crop.
    #[config(default = "FeatureDataConfig::new()")]
    pub data: FeatureDataConfig,
    /// The head (`input_dim` and `num_classes` come from the data).
    #[config(default = "HeadConfig::new(0, 0)")]
    pub head: HeadConfig,
    /// Label assignment.
    #[config(default = "AssignConfig::new()")]
    pub assign: AssignConfig,
    /// Losses.
    #[config(default = "LossConfig::new()")]
    pub loss: LossConfig,
    /// Post-processing.
    #[config(default = "PostProcessConfig::new()")]
    pub post: PostProcessConfig,
    /// Peak learning rate.
    #[config(default = 1e-4)]
    pub lr: f64,
    /// AdamW weight decay, on convolution weights only (not on biases, norms or scales).
    #[config(default = 0.05)]
    pub weight_decay: f64,
    /// AdamW epsilon.
    #[config(default = 1e-8)]
    pub adam_eps: f64,
    /// Epochs after the warm-up (ActionFormer's `epochs`).
    #[config(default = 30)]
    pub epochs: usize,
    /// Warm-up epochs, linear from 0 (then cosine to 1e-8 over `epochs`).
    #[config(default = 5)]
    pub warmup_epochs: usize,
    /// Videos per step (ActionFormer's `batch_size`); an epoch drops the last incomplete
    /// batch, as ActionFormer's loader does.
    #[config(default = 2)]
    pub batch_size: usize,
    /// Clip the global gradient norm to this (0: no clipping).
    #[config(default = 1.0)]
    pub clip_grad_norm: f64,
    /// EMA decay of the weights used for evaluation and inference (0: none).
    #[config(default = 0.999)]
    pub ema_decay: f64,
    /// tIoU thresholds of the evaluation (`thumos`: 0.3:0.1:0.7, `anet`: 0.5:0.05:0.95, or a
    /// list).
    #[config(default = "\"thumos\".to_string()")]
    pub thresholds: String,
    /// Evaluate every this many epochs (0: only after the last).
    #[config(default = 0)]
    pub eval_every: usize,
    /// Random seed (order, crops, stochastic depth, initial weights).
    #[config(default = 1234567891)]
    pub seed: u64,
}

impl FeatureTrainConfig {
    /// An error naming the first field out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| Err(Error::Config(format!("{field}: {reason}")));
        let d = &self.data;
        if d.feat_stride == 0 || d.num_frames == 0 {
            return bad(
                "data.feat_stride, data.num_frames",
                "must be at least 1".into(),
            );
        }
        if d.default_fps
            .is_some_and(|f| !crate::data::PLAUSIBLE_FPS.contains(&f))
        {
            return bad(
                "data.default_fps",
                format!("implausible: {:?}", d.default_fps),
            );
        }
        if d.train_subsets.is_empty() || d.val_subsets.is_empty() {
            return bad(
                "data.train_subsets, data.val_subsets",
                "must not be empty".into(),
            );
        }
        if !(0.0..=1.0).contains(&d.trunc_thresh) {
            return bad(
                "data.trunc_thresh",
                format!("must be in [0, 1], got {}", d.trunc_thresh),
            );
        }
        if let Some((lo, hi)) = d.crop_ratio
            && !(0.0 < lo && lo <= hi && hi <= 1.0)
        {
            return bad(
                "data.crop_ratio",
                format!("needs 0 < lo <= hi <= 1, got ({lo}, {hi})"),
            );
        }
        for (field, v) in [("lr", self.lr), ("weight_decay", self.weight_decay)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(field, format!("must be a finite number >= 0, got {v}"));
            }
        }
        if !(self.adam_eps > 0.0 && self.adam_eps.is_finite()) {
            return bad(
                "adam_eps",
                format!("must be positive, got {}", self.adam_eps),
            );
        }
        if self.epochs == 0 || self.batch_size == 0 {
            return bad("epochs, batch_size", "must be at least 1".into());
        }
        if !(self.clip_grad_norm >= 0.0 && self.clip_grad_norm.is_finite()) {
            return bad(
                "clip_grad_norm",
                format!("must be >= 0, got {}", self.clip_grad_norm),
            );
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(
                "ema_decay",
                format!("must be in [0, 1), got {}", self.ema_decay),
            );
        }
        self.thresholds()?;
        // The head, assignment, loss and post-processing numbers, by the training checks.
        let probe = crate::train::TrainConfig::new()
            .with_head(self.head.clone())
            .with_assign(self.assign.clone())
            .with_loss(self.loss.clone())
            .with_post(self.post.clone());
        crate::train::validate_numbers(&probe)
    }

    /// The evaluation's tIoU thresholds.
    pub fn thresholds(&self) -> Result<ThresholdSet> {
        self.thresholds
            .parse::<ThresholdSet>()
            .map_err(|e| Error::Config(format!("thresholds: {e}")))
    }
}
