//! Training settings: the mode (which parts learn and how gradients are computed), the model
//! and the optimisation schedule. Defaults are sized for the built-in synthetic benchmark on a
//! CPU; the ActionFormer / paper defaults are noted where they differ.

use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::dataset::TalVideo;
use super::loss_scale::LossScaleConfig;
use crate::adapter::LosaConfig;
use crate::backbone::resnet3d::ResNet3dConfig;
use crate::backbone::swin::SwinConfig;
use crate::backbone::vit::VitConfig;
use crate::backbone::{Backbone, BackbonePreset};
use crate::data::ClipSamplingConfig;
use crate::data::SpatialOp;
use crate::data::augment::AugmentConfig;
use crate::data::lofi::{LoFiConfig, LoFiMode};
use crate::error::{Error, Result};
use crate::pipeline::FrameTransformConfig;
use crate::precision::Precision;
use crate::reversible::DriftMonitor;
use crate::tal::assign::AssignConfig;
use crate::tal::head::HeadConfig;
use crate::tal::loss::LossConfig;
use crate::tal::postprocess::PostProcessConfig;

/// Which parameters learn, and how their gradients are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TrainMode {
    /// Backbone frozen; its clip features are extracted once (cached as `.npy`) and only the
    /// head trains.
    HeadOnly,
    /// Backbone and head train together with ordinary autodiff (every activation cached).
    #[default]
    Full,
    /// Backbone and head train together; the backbone's blocks run as a reversible chain
    /// (Re2TAL): no block activations are kept, the backward pass reconstructs them.
    Reversible,
    /// Backbone frozen and run without a graph; LoSA adapters read its intermediate layers and
    /// train with the head.
    Adapter,
}

impl TrainMode {
    /// Every mode.
    pub const ALL: [TrainMode; 4] = [
        TrainMode::HeadOnly,
        TrainMode::Full,
        TrainMode::Reversible,
        TrainMode::Adapter,
    ];

    /// Whether the backbone's parameters learn.
    pub fn trains_backbone(self) -> bool {
        matches!(self, TrainMode::Full | TrainMode::Reversible)
    }
}

impl fmt::Display for TrainMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::choice::write_name(self, f)
    }
}

impl FromStr for TrainMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::choice::parse("training mode", s)
    }
}

/// A backbone architecture (weights are loaded separately).
#[derive(Config, Debug)]
pub enum BackboneConfig {
    /// VideoMAE vision transformer.
    Vit(VitConfig),
    /// Video Swin transformer.
    Swin(SwinConfig),
    /// 3-D ResNet (r3d / R(2+1)D).
    ResNet(ResNet3dConfig),
}

impl BackboneConfig {
    /// The backbone the main job trains on the synthetic benchmark: a 4-block, 128-wide ViT on
    /// 8-frame 64x64 clips (16-pixel patches, 2-frame tubelets: 64 tokens per clip).
    pub fn synthetic_vit() -> Self {
        BackboneConfig::Vit(
            VitConfig::new()
                .with_embed_dim(128)
                .with_depth(4)
                .with_num_heads(4)
                .with_mlp_dim(512)
                .with_num_frames(8)
                .with_image_size(64)
                .with_layer_norm_eps(1e-6)
                .with_drop_path_rate(0.1),
        )
    }

    /// The architecture of a published preset.
    pub fn preset(p: BackbonePreset) -> Self {
        use crate::backbone::resnet3d::ResNetKind;
        use crate::backbone::swin::SwinPreset;
        use crate::backbone::vit::VitPreset;
        match p {
            BackbonePreset::VitS => Self::Vit(VitConfig::preset(VitPreset::Small)),
            BackbonePreset::VitB => Self::Vit(VitConfig::preset(VitPreset::Base)),
            BackbonePreset::VitL => Self::Vit(VitConfig::preset(VitPreset::Large)),
            BackbonePreset::VitH => Self::Vit(VitConfig::preset(VitPreset::Huge)),
            BackbonePreset::VitG => Self::Vit(VitConfig::preset(VitPreset::Giant)),
            BackbonePreset::SwinT => Self::Swin(SwinConfig::preset(SwinPreset::Tiny)),
            BackbonePreset::SwinS => Self::Swin(SwinConfig::preset(SwinPreset::Small)),
            BackbonePreset::SwinB => Self::Swin(SwinConfig::preset(SwinPreset::Base)),
            BackbonePreset::R3d18 => Self::ResNet(ResNet3dConfig::new()),
            BackbonePreset::R2Plus1d18 => {
                Self::ResNet(ResNet3dConfig::new().with_kind(ResNetKind::R2Plus1d))
            }
        }
    }

    /// Side of the square frames the backbone is made for: the ViT's `image_size`, 224 for
    /// Video Swin (its Kinetics training size), 112 for the 3-D ResNets (torchvision's).
    pub fn input_size(&self) -> usize {
        match self {
            Self::Vit(c) => c.image_size,
            Self::Swin(_) => 224,
            Self::ResNet(_) => 112,
        }
    }

    /// Frame sides must be multiples of this: the ViT's patch; Video Swin pads partial patches
    /// and windows, the ResNets take any size.
    pub fn spatial_multiple(&self) -> usize {
        match self {
            Self::Vit(c) => c.patch_size.max(1),
            Self::Swin(_) | Self::ResNet(_) => 1,
        }
    }

    /// Temporal positions of the last layer for clips of `frames` frames (the positions per
    /// clip of temporal tokens), from the architecture alone: the ViT's `frames / tubelet`,
    /// Video Swin's `frames / temporal patch` (rounded up), a ResNet's `frames` halved (rounded
    /// up) by each stage after the first.
    pub fn temporal_positions(&self, frames: usize) -> Result<usize> {
        let p = match self {
            Self::Vit(c) => (c.tubelet_size > 0 && frames.is_multiple_of(c.tubelet_size))
                .then(|| frames / c.tubelet_size),
            Self::Swin(c) => (c.patch_size[0] > 0).then(|| frames.div_ceil(c.patch_size[0])),
            Self::ResNet(c) => Some((1..c.layers.len()).fold(frames, |t, _| t.div_ceil(2))),
        };
        match p {
            Some(p) if p > 0 => Ok(p),
            _ => Err(Error::Config(format!(
                "clips of {frames} frames do not fit the backbone's temporal patch"
            ))),
        }
    }

    /// Clip sampling `clips` switched to temporal tokens for this backbone: one position per
    /// temporal token of the last layer, clips tiling the video (`snippet_stride = clip_frames
    /// x frame_stride`).
    pub fn temporal_tokens(&self, clips: &ClipSamplingConfig) -> Result<ClipSamplingConfig> {
        let p = self.temporal_positions(clips.clip_frames)?;
        let out = clips
            .clone()
            .with_positions_per_clip(p)
            .with_snippet_stride(clips.clip_frames * clips.frame_stride)
            .with_fixed_clips(0);
        out.validate()?;
        Ok(out)
    }

    /// Build the model.
    pub fn init(&self, device: &Device) -> Backbone {
        match self {
            Self::Vit(c) => Backbone::Vit(c.init(device)),
            Self::Swin(c) => Backbone::Swin(c.init(device)),
            Self::ResNet(c) => Backbone::ResNet(c.init(device)),
        }
    }
}

/// Everything a training run needs besides the data.
///
/// `head.input_dim`, `head.num_classes`, `adapter.feature_dim` and `adapter.layer_dims` are
/// filled in from the backbone and the dataset when the model is built.
#[derive(Config, Debug)]
pub struct TrainConfig {
    /// Which parts learn.
    #[config(default = "TrainMode::Full")]
    pub mode: TrainMode,
    /// Backbone architecture.
    #[config(default = "BackboneConfig::synthetic_vit()")]
    pub backbone: BackboneConfig,
    /// How clips are cut from the videos. Default: 8 frames every 2nd frame (one second at
    /// 15 fps), a clip every 4 frames.
    #[config(
        default = "ClipSamplingConfig::new().with_clip_frames(8).with_frame_stride(2).with_snippet_stride(4)"
    )]
    pub clips: ClipSamplingConfig,
    /// The TAL head. Default: ActionFormer with a 128-wide embedding, window 9 (ActionFormer:
    /// 512 wide, window 19 on THUMOS).
    #[config(default = "HeadConfig::new(0, 0).with_embed_dim(128).with_window_size(9)")]
    pub head: HeadConfig,
    /// LoSA adapters (mode `adapter`).
    #[config(default = "LosaConfig::new(0, vec![]).with_num_heads(4)")]
    pub adapter: LosaConfig,
    /// Backbone layers the adapters read; empty: every layer but the last.
    #[config(default = "Vec::new()")]
    pub adapter_layers: Vec<usize>,
    /// Low-fidelity sampling of the training steps (LoFi-E2E: S, T, ST, short or long cycle;
    /// default: full fidelity). Evaluation always runs at full fidelity. Needs a mode that runs
    /// the backbone every step (not `head-only`).
    #[config(default = "LoFiConfig::new()")]
    pub lofi: LoFiConfig,
    /// How frames are brought to the backbone's input: the output size (default: the
    /// backbone's), the training crop and flip, the evaluation centre crop.
    #[config(default = "FrameTransformConfig::new()")]
    pub transform: FrameTransformConfig,
    /// Augmentation of each training step's clips (one transform per step, all clips alike);
    /// modes that run the backbone per step only (head-only trains on cached features).
    /// Default: none.
    #[config(default = "AugmentConfig::new()")]
    pub augment: AugmentConfig,
    /// Run the ViT rewired into its reversible form (Re2TAL: `y_i = y_(i-2) + F_i(y_(i-1))`,
    /// same parameters) in every mode. Mode `reversible` always does; with `full` this is the
    /// same network trained with ordinary autodiff (the memory-hungry reference).
    #[config(default = false)]
    pub rewired: bool,
    /// Mode `full`: activation checkpointing per block (`torch.utils.checkpoint` around each
    /// block, AdaTAD's `with_cp`): the forward keeps each block's input only, the backward
    /// recomputes one block at a time. Same gradients, one more forward's time; ViT and Swin.
    #[config(default = false)]
    pub checkpointing: bool,
    /// Reconstruction checks of the reversible backward (mode `reversible`): on every
    /// `drift.every`-th step the reconstructed stage inputs are compared with the true ones, and
    /// a step whose relative drift reaches `drift.tolerance` takes its gradients from an
    /// ordinary autodiff recompute. Readings per epoch in `metrics.json` (`drift`).
    #[config(default = "DriftMonitor::new()")]
    pub drift: DriftMonitor,
    /// Precision of the backbone's residual branches (`precision` module): f32, or bf16 / f16
    /// with f32 master weights, optimizer state, norms, softmax, head and losses. Halves the
    /// branches' activations; mixed-precision reversible training reconstructs exactly.
    #[config(default = "Precision::F32")]
    pub precision: Precision,
    /// Dynamic loss scaling of f16 runs.
    #[config(default = "LossScaleConfig::new()")]
    pub loss_scale: LossScaleConfig,
    /// Label assignment.
    #[config(default = "AssignConfig::new()")]
    pub assign: AssignConfig,
    /// Losses.
    #[config(default = "LossConfig::new()")]
    pub loss: LossConfig,
    /// Post-processing of detections for evaluation and inference.
    #[config(default = "PostProcessConfig::new()")]
    pub post: PostProcessConfig,
    /// Passes over the training videos.
    #[config(default = 12)]
    pub epochs: usize,
    /// Peak learning rate of the head (and adapters). ActionFormer: 1e-4 with batch 2.
    #[config(default = 1e-3)]
    pub lr_head: f64,
    /// Peak learning rate of the backbone (modes `full`, `reversible`), sized for fine-tuning
    /// the pretrained backbone the main job starts from.
    #[config(default = 1e-4)]
    pub lr_backbone: f64,
    /// Keep an exponential moving average of the weights with this decay and evaluate (and
    /// infer with) it; 0 turns it off (default). ActionFormer uses 0.999, which needs runs of
    /// well over 1,000 steps; the default benchmark's 360 steps are too few.
    #[config(default = 0.0)]
    pub ema_decay: f64,
    /// AdamW weight decay.
    #[config(default = 0.05)]
    pub weight_decay: f64,
    /// Linear warm-up, in epochs (may be fractional); cosine decay to zero after it.
    #[config(default = 1.0)]
    pub warmup_epochs: f64,
    /// Clip the global L2 norm of all gradients to this value (0: no clipping).
    #[config(default = 1.0)]
    pub clip_grad_norm: f64,
    /// At most this many consecutive clips of a video per training step (a random window,
    /// ActionFormer's `max_seq_len` crop); 0: the whole video.
    #[config(default = 0)]
    pub max_train_clips: usize,
    /// A ground-truth segment cut by a training window is kept, clipped to it, when at least
    /// this share of its length lies inside (ActionFormer's `trunc_thresh`).
    #[config(default = 0.5)]
    pub trunc_thresh: f64,
    /// Videos per optimisation step (ActionFormer's batch size). Head-only runs them as one
    /// padded batch through the head; full, reversible and adapter modes as micro-batches
    /// whose gradients add up, so a step's memory stays that of one video. The same update
    /// either way; an epoch has `ceil(videos / videos_per_step)` steps.
    #[config(default = 1)]
    pub videos_per_step: usize,
    /// Frozen-backbone modes (head-only, adapter): run the backbone once over every video, keep
    /// its outputs and train on them (default; adapter mode keeps the tapped layers too, at
    /// most `clips x layers x adapter.max_tokens x width` floats per video, in memory).
    /// `false` runs the frozen backbone (no graph) at every step instead: bounded memory for
    /// long datasets or big backbones, the memory-comparable per-step baseline, and it lets
    /// `augment` and `lofi` apply to these modes.
    #[config(default = true)]
    pub cache_features: bool,
    /// Clips per backbone call when extracting features without gradients.
    #[config(default = 64)]
    pub inference_chunk: usize,
    /// Evaluate on the validation videos every this many epochs (0: only at the end).
    #[config(default = 0)]
    pub eval_every: usize,
    /// Write a checkpoint every this many steps (0: at the end of every epoch only).
    #[config(default = 0)]
    pub checkpoint_every: usize,
    /// Random seed (data order, crops, stochastic depth).
    #[config(default = 0)]
    pub seed: u64,
}

impl TrainConfig {
    /// Frame size (height, width) the backbone reads: `transform.size`, else the backbone's
    /// input size.
    pub fn frame_size(&self) -> (usize, usize) {
        let s = self.transform.size.unwrap_or(self.backbone.input_size());
        (s, s)
    }

    /// The evaluation transform of `video`'s frames to [`TrainConfig::frame_size`].
    pub fn eval_op(&self, video: &TalVideo) -> Result<SpatialOp> {
        Ok(self
            .transform
            .eval_op(video.frame_size()?, self.frame_size()))
    }

    /// An error unless the backbone can compute in `precision`: mixed precision is implemented
    /// for the transformer backbones (a ResNet's convolution branches would silently stay f32).
    pub fn check_precision(&self, precision: Precision) -> Result<()> {
        if precision != Precision::F32 && matches!(self.backbone, BackboneConfig::ResNet(_)) {
            return Err(Error::Config(format!(
                "precision {precision} is implemented for the transformer backbones (ViT, Swin); \
                 the ResNet's convolution branches compute in f32 (precision f32)"
            )));
        }
        Ok(())
    }

    /// Whether the backbone runs rewired (mode `reversible`, or `rewired` set).
    pub fn uses_rewired_backbone(&self) -> bool {
        self.rewired || self.mode == TrainMode::Reversible
    }

    /// Check ranges that would otherwise fail deep inside a step (the rest of
    /// [`TrainConfig::validate`]).
    pub(crate) fn check_ranges(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        self.transform.validate()?;
        super::validate::check_numbers(self)?;
        let (size, multiple) = (self.frame_size().0, self.backbone.spatial_multiple());
        if size == 0 || !size.is_multiple_of(multiple) {
            return bad(format!(
                "frame size {size} (transform.size, --frame-size) must be a positive multiple \
                 of the backbone's patch size {multiple}"
            ));
        }
        if self.videos_per_step == 0 {
            return bad("videos_per_step must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.trunc_thresh) {
            return bad(format!(
                "trunc_thresh must be in [0, 1], got {}",
                self.trunc_thresh
            ));
        }
        for (name, v) in [("lr_head", self.lr_head), ("lr_backbone", self.lr_backbone)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!(
                    "{name} must be a finite non-negative number, got {v}"
                ));
            }
        }
        if !(self.drift.tolerance.is_finite() && self.drift.tolerance >= 0.0) {
            return bad(format!(
                "drift.tolerance must be a finite non-negative number, got {}",
                self.drift.tolerance
            ));
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return bad(format!(
                "warmup_epochs must be non-negative, got {}",
                self.warmup_epochs
            ));
        }
        if self.clip_grad_norm < 0.0 || self.clip_grad_norm.is_nan() {
            return bad(format!(
                "clip_grad_norm must be >= 0, got {}",
                self.clip_grad_norm
            ));
        }
        let fixed = match self.lofi.mode {
            LoFiMode::Fixed { fidelity } => Some(fidelity),
            _ => None,
        };
        for f in [
            self.lofi.spatial,
            self.lofi.temporal,
            self.lofi.spatio_temporal,
        ]
        .into_iter()
        .chain(fixed)
        {
            if f.temporal == 0 || !(f.spatial.is_finite() && f.spatial >= 1.0) {
                return bad(format!(
                    "LoFi factors must be r_t >= 1 and r_s >= 1, got r_t {} r_s {}",
                    f.temporal, f.spatial
                ));
            }
        }
        if let LoFiMode::ShortCycle { batches: 0 } = self.lofi.mode {
            return bad("the LoFi short cycle needs at least 1 batch per phase".into());
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!(
                "ema_decay must be in [0, 1), got {}",
                self.ema_decay
            ));
        }
        if self.ema_decay > 0.0
            && self.mode.trains_backbone()
            && matches!(self.backbone, BackboneConfig::ResNet(_))
        {
            return bad(
                "ema_decay with a trained ResNet backbone: the EMA averages parameters, not \
                 BatchNorm running statistics"
                    .into(),
            );
        }
        if self.inference_chunk == 0 {
            return bad("inference_chunk must be at least 1".into());
        }
        if self.max_train_clips != 0 && self.max_train_clips < 2 {
            return bad("max_train_clips must be 0 (whole video) or at least 2".into());
        }
        Ok(())
    }
}

/// `value` with every field it lacks taken from `default` (recursively), so configurations
/// written by an older version of the crate (before a field existed) still load. An object
/// with a key `default` does not have (another enum variant, another shape) is kept as it is.
pub(crate) fn with_defaults<C: serde::Serialize>(
    default: &C,
    value: serde_json::Value,
) -> serde_json::Value {
    fn merge(default: serde_json::Value, value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value::Object;
        match (default, value) {
            (Object(mut d), Object(v)) if v.keys().all(|k| d.contains_key(k)) => {
                for (k, x) in v {
                    let base = d.remove(&k).expect("key checked above");
                    d.insert(k, merge(base, x));
                }
                Object(d)
            }
            (_, v) => v,
        }
    }
    match serde_json::to_value(default) {
        Ok(d) => merge(d, value),
        Err(_) => value,
    }
}

/// Read a configuration file (a `TrainConfig` or `PretrainConfig` as JSON), filling fields it
/// lacks with those of `default` (recursively, so files written before a field existed still
/// load). A syntax error names the line and column;
/// a value of the wrong type or an unknown variant names the field (`backbone.depth`).
pub fn read_config<C>(path: &std::path::Path, default: &C) -> Result<C>
where
    C: serde::Serialize + serde::de::DeserializeOwned,
{
    let text = crate::io::read_to_string(path)?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| crate::io::json_error(path, e))?;
    if !value.is_object() {
        return Err(Error::InvalidField {
            path: path.to_path_buf(),
            video: None,
            field: "(top level)".into(),
            reason: "a configuration is a JSON object".into(),
        });
    }
    let unknown = |field: String| Error::InvalidField {
        path: path.to_path_buf(),
        video: None,
        field,
        reason: "no such setting (misspelt, or from another version)".into(),
    };
    let parsed: C = serde_path_to_error::deserialize(with_defaults(default, value.clone()))
        .map_err(|e| {
            // An unknown key stops the defaults from filling its object, which then fails
            // as incomplete: name the key instead.
            let at = e.path().to_string();
            let at = if at == "." { String::new() } else { at };
            let defaults = serde_json::to_value(default).unwrap_or_default();
            match unknown_field(&value, &defaults, "") {
                Some(f) if f.rsplit_once('.').map_or("", |(p, _)| p) == at => unknown(f),
                _ => Error::InvalidField {
                    path: path.to_path_buf(),
                    video: None,
                    field: e.path().to_string(),
                    reason: e.into_inner().to_string(),
                },
            }
        })?;
    // A field the configuration does not have (`epoch` for `epochs`) would be dropped silently:
    // every key of the file must come back when the parsed configuration is written out.
    let known = serde_json::to_value(&parsed).map_err(|e| Error::Config(e.to_string()))?;
    if let Some(field) = unknown_field(&value, &known, "") {
        return Err(unknown(field));
    }
    Ok(parsed)
}

/// The dotted path of the first key of `given` that `known` (the same document as parsed and
/// written back) lacks.
fn unknown_field(given: &serde_json::Value, known: &serde_json::Value, at: &str) -> Option<String> {
    let (serde_json::Value::Object(g), serde_json::Value::Object(k)) = (given, known) else {
        return None;
    };
    for (key, v) in g {
        let here = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        match k.get(key) {
            None => return Some(here),
            Some(kv) => {
                if let Some(f) = unknown_field(v, kv, &here) {
                    return Some(f);
                }
            }
        }
    }
    None
}

impl TrainConfig {
    /// Parse a configuration from JSON, filling fields it lacks with their defaults
    /// (recursively, as [`read_config`] does).
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        serde_json::from_value(with_defaults(&TrainConfig::new(), value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_config_round_trips_through_json() {
        for m in TrainMode::ALL {
            assert_eq!(m.to_string().parse::<TrainMode>().unwrap(), m);
        }
        assert!("everything".parse::<TrainMode>().is_err());
        let cfg = TrainConfig::new()
            .with_mode(TrainMode::Adapter)
            .with_epochs(3);
        let text = serde_json::to_string(&cfg).unwrap();
        assert!(text.contains("\"adapter\""), "{text}");
        let back: TrainConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back.mode, TrainMode::Adapter);
        assert_eq!(back.epochs, 3);
        assert!(matches!(back.backbone, BackboneConfig::Vit(ref v) if v.depth == 4));
        assert!(TrainConfig::new().with_epochs(0).validate().is_err());
        let rev = |p| {
            TrainConfig::new()
                .with_mode(TrainMode::Reversible)
                .with_backbone(BackboneConfig::preset(p))
                .validate()
        };
        rev(BackbonePreset::SwinT).unwrap();
        assert!(
            rev(BackbonePreset::R3d18)
                .unwrap_err()
                .to_string()
                .contains("ResNet")
        );
    }

    /// A configuration written before some fields existed loads with their defaults; a
    /// different backbone variant is kept whole.
    #[test]
    fn configuration_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        std::fs::write(&p, r#"{"epochs": "many"}"#).unwrap();
        let e = read_config(&p, &TrainConfig::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`epochs`") && e.contains("c.json"), "{e}");
        std::fs::write(&p, r#"{"lofi": {"mode": "sideways"}}"#).unwrap();
        let e = read_config(&p, &TrainConfig::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("lofi.mode"), "{e}");
        std::fs::write(&p, "\u{feff}{\"epochs\": 3}").unwrap();
        assert_eq!(read_config(&p, &TrainConfig::new()).unwrap().epochs, 3);
        std::fs::write(&p, "[1, 2]").unwrap();
        assert!(read_config(&p, &TrainConfig::new()).is_err());
        std::fs::write(&p, "{\"epochs\": 3,").unwrap();
        let e = read_config(&p, &TrainConfig::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn older_configurations_load_with_defaults() {
        let mut v = serde_json::to_value(
            TrainConfig::new()
                .with_epochs(5)
                .with_backbone(BackboneConfig::preset(BackbonePreset::SwinT)),
        )
        .unwrap();
        let obj = v.as_object_mut().unwrap();
        obj.remove("cache_features");
        obj.remove("lofi");
        obj["adapter"]
            .as_object_mut()
            .unwrap()
            .remove("zero_init_output");
        let text = v.to_string();
        assert!(serde_json::from_str::<TrainConfig>(&text).is_err());
        let cfg = TrainConfig::from_json(&text).unwrap();
        assert_eq!(cfg.epochs, 5);
        assert!(cfg.cache_features);
        assert!(cfg.adapter.zero_init_output);
        assert!(matches!(cfg.backbone, BackboneConfig::Swin(_)));
    }
}
