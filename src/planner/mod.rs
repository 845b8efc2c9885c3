//! The memory planner: what one training step needs, per strategy and LoFi fidelity, before a
//! run starts, from the model's shapes alone (no model is built, so it reaches sizes the
//! machine cannot run).
//!
//! [`plan`] takes a run's [`TrainConfig`] and the longest video's shape and returns a
//! [`MemoryPlan`]: for head-only, LoSA, full, full with checkpointing and reversible training,
//! each at the LoFi fidelities, the predicted peak broken down into weights, optimizer state,
//! gradients, activations held for the backward, the largest transient and the input, what
//! fits a budget, and the configuration to train with. The account per layer is in
//! `account.rs`, the shapes in `shapes.rs`; `docs/scale.md` compares it with measurements.

mod account;
mod shapes;
mod table;

use std::fmt;

use burn::module::Module;

use crate::data::ClipSamplingConfig;
use crate::data::lofi::Fidelity;
use crate::error::{Error, Result};
use crate::precision::Precision;
use crate::train::{BackboneConfig, TrainConfig, TrainMode, candidate_fidelities};

use account::{Blocks, blocks};
use shapes::{BackboneShape, backbone_shape, step_clips};

/// How the backbone trains (or not) in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// Frozen backbone, no graph; the head learns.
    HeadOnly,
    /// Frozen backbone, no graph; LoSA adapters over its layers and the head learn.
    Adapter,
    /// Backbone and head with ordinary autodiff.
    Full,
    /// Backbone and head, activation checkpointing per block.
    Checkpointed,
    /// Backbone rewired and reversible (Re2TAL), and the head.
    Reversible,
}

impl Strategy {
    /// Every strategy, the cheapest in time first among those that train the backbone.
    pub const ALL: [Strategy; 5] = [
        Strategy::HeadOnly,
        Strategy::Adapter,
        Strategy::Full,
        Strategy::Checkpointed,
        Strategy::Reversible,
    ];

    /// Whether the backbone learns (end-to-end training).
    pub fn end_to_end(self) -> bool {
        matches!(
            self,
            Strategy::Full | Strategy::Checkpointed | Strategy::Reversible
        )
    }

    /// The training configuration that runs this strategy: `cfg` with its mode (and
    /// checkpointing) set.
    pub fn configure(self, cfg: &TrainConfig) -> TrainConfig {
        let (mode, ck) = match self {
            Strategy::HeadOnly => (TrainMode::HeadOnly, false),
            Strategy::Adapter => (TrainMode::Adapter, false),
            Strategy::Full => (TrainMode::Full, false),
            Strategy::Checkpointed => (TrainMode::Full, true),
            Strategy::Reversible => (TrainMode::Reversible, false),
        };
        let mut c = cfg.clone().with_mode(mode).with_checkpointing(ck);
        if self != Strategy::Full {
            c.rewired = false;
        }
        c
    }

    /// The strategy `cfg` trains with.
    pub fn of(cfg: &TrainConfig) -> Strategy {
        match cfg.mode {
            TrainMode::HeadOnly => Strategy::HeadOnly,
            TrainMode::Adapter => Strategy::Adapter,
            TrainMode::Full if cfg.checkpointing => Strategy::Checkpointed,
            TrainMode::Full => Strategy::Full,
            TrainMode::Reversible => Strategy::Reversible,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::HeadOnly => "head-only",
            Strategy::Adapter => "LoSA",
            Strategy::Full => "full",
            Strategy::Checkpointed => "full + checkpointing",
            Strategy::Reversible => "reversible",
        })
    }
}

/// The video a step reads: its length and frame size (after the training transform).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoShape {
    /// Frames.
    pub frames: usize,
    /// Frame height the backbone reads.
    pub height: usize,
    /// Frame width the backbone reads.
    pub width: usize,
}

/// Predicted bytes of one training step, by what holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryBreakdown {
    /// Parameters (f32 master weights of every part; the EMA copy when the run keeps one).
    pub weights: usize,
    /// AdamW's two moments of the trained parameters.
    pub optimizer: usize,
    /// Gradients of the trained parameters (f32).
    pub gradients: usize,
    /// Activations held for the backward at the step's high point (the whole graph for plain
    /// autodiff, kept block inputs and one block's graph with checkpointing, the stream pair
    /// and one branch's graph when reversible, the frozen layers and the adapters for LoSA).
    pub held: usize,
    /// The largest transient on top of them (a block's backward, or a frozen forward).
    pub transient: usize,
    /// The step's input: decoded frames (u8) and the clip tensor (f32).
    pub input: usize,
    /// The step's own peak above what exists before it (weights, optimizer state and the
    /// decoded frames): what the training loop measures for each step after the first.
    pub step: usize,
    /// Everything at the peak: weights, optimizer state, frames and the step's peak.
    pub total: usize,
}

/// One planned configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRow {
    /// How the backbone trains.
    pub strategy: Strategy,
    /// LoFi fidelity of the step (full fidelity for the frozen strategies).
    pub fidelity: Fidelity,
    /// Frame side after the fidelity (snapped to the backbone's patch).
    pub frame_size: (usize, usize),
    /// Clips through the backbone in the step.
    pub clips: usize,
    /// Positions the head reads.
    pub positions: usize,
    /// Pixels of the step's clips (the cost LoFi lowers).
    pub pixels: usize,
    /// The prediction.
    pub memory: MemoryBreakdown,
}

/// The plan of a run: every strategy at every fidelity, and the choice under a budget.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    /// What was planned (backbone name, frames, size, precision), for the table's title.
    pub title: String,
    /// Rows: strategies in [`Strategy::ALL`] order, fidelities from the highest.
    pub rows: Vec<PlanRow>,
    /// Budget in bytes, when given.
    pub budget: Option<usize>,
}

impl MemoryPlan {
    /// Whether `row` fits the budget (`None` without one).
    pub fn fits(&self, row: &PlanRow) -> Option<bool> {
        self.budget.map(|b| row.memory.total <= b)
    }

    /// The configuration to train with: the end-to-end row of the most pixels that fits
    /// (at equal pixels the fastest strategy: full, then checkpointing, then reversible); when
    /// no end-to-end row fits, LoSA, then head-only; `None` when nothing fits or without a
    /// budget.
    pub fn recommended(&self) -> Option<&PlanRow> {
        let budget = self.budget?;
        let fits = |r: &&PlanRow| r.memory.total <= budget;
        self.rows
            .iter()
            .filter(|r| r.strategy.end_to_end())
            .filter(fits)
            .max_by(|a, b| {
                a.pixels
                    .cmp(&b.pixels)
                    .then(b.strategy.cmp(&a.strategy))
                    .then(b.memory.total.cmp(&a.memory.total))
            })
            .or_else(|| {
                [Strategy::Adapter, Strategy::HeadOnly]
                    .iter()
                    .find_map(|s| self.rows.iter().filter(fits).find(|r| r.strategy == *s))
            })
    }

    /// The row of `strategy` at `fidelity`.
    pub fn row(&self, strategy: Strategy, fidelity: Fidelity) -> Option<&PlanRow> {
        self.rows
            .iter()
            .find(|r| r.strategy == strategy && r.fidelity == fidelity)
    }
}

/// The plan of `cfg` (its backbone, clips, head, adapters, precision, videos per step) for a
/// longest video of `video`: every strategy at full fidelity, the end-to-end ones also at the
/// LoFi candidates ([`candidate_fidelities`]), marked against `budget` bytes.
pub fn plan(cfg: &TrainConfig, video: VideoShape, budget: Option<usize>) -> Result<MemoryPlan> {
    cfg.check_ranges()?;
    let mut rows = Vec::new();
    for s in Strategy::ALL {
        let fidelities = if s.end_to_end() {
            candidate_fidelities()
        } else {
            vec![Fidelity::full()]
        };
        for f in fidelities {
            rows.push(predict(&s.configure(cfg), f, video)?);
        }
    }
    let title = format!(
        "{} frames of {}x{} per video, {} clips of {} frames{}, {} per step, branches in {}",
        video.frames,
        video.height,
        video.width,
        rows.first().map_or(0, |r| r.clips),
        cfg.clips.clip_frames,
        if cfg.clips.positions_per_clip > 1 {
            format!(" ({} temporal tokens each)", cfg.clips.positions_per_clip)
        } else {
            String::new()
        },
        match cfg.videos_per_step.max(1) {
            1 => "one video".to_string(),
            n => format!("{n} videos"),
        },
        cfg.precision
    );
    Ok(MemoryPlan {
        title,
        rows,
        budget,
    })
}

/// The prediction for one configuration: `cfg` (its mode says the strategy) at `fidelity`.
pub fn predict(cfg: &TrainConfig, fidelity: Fidelity, video: VideoShape) -> Result<PlanRow> {
    let strategy = Strategy::of(cfg);
    let clips_cfg: ClipSamplingConfig = fidelity.clips(&cfg.clips);
    let multiple = cfg.backbone.spatial_multiple();
    let (h, w) = fidelity.frame_size_snapped(video.height, video.width, multiple);
    let clips = step_clips(&clips_cfg, video.frames, cfg.max_train_clips)?;
    let shape = backbone_shape(&cfg.backbone, clips, clips_cfg.clip_frames, h, w)?;
    let positions = clips_cfg.positions(clips);
    let p = match cfg.precision {
        Precision::F32 => 4,
        _ => 2,
    };
    if p < 4 && matches!(cfg.backbone, BackboneConfig::ResNet(_)) {
        return Err(Error::Config(
            "mixed precision is implemented for the transformer backbones".into(),
        ));
    }
    let pixels = clips * clips_cfg.clip_frames * h * w;
    let input = 4 * 3 * pixels;
    let frames_read = 3 * h * w * frames_in_step(&clips_cfg, video.frames, clips);
    let parts = Parts::new(cfg, &shape, positions)?;
    let b = blocks(&shape, p, input);
    let memory = account(strategy, cfg, &parts, &b, input, frames_read);
    Ok(PlanRow {
        strategy,
        fidelity,
        frame_size: (h, w),
        clips,
        positions,
        pixels,
        memory,
    })
}

/// Frames a step decodes for `clips` clips.
fn frames_in_step(c: &ClipSamplingConfig, frames: usize, clips: usize) -> usize {
    if clips == 0 {
        return 0;
    }
    c.frames_of(0, clips, frames).len()
}

/// Parameters and activations of the parts beside the backbone.
struct Parts {
    /// Backbone parameters.
    backbone: usize,
    /// Head parameters.
    head: usize,
    /// Adapter parameters (mode adapter).
    adapter: usize,
    /// The head's graph on the step's positions (f32).
    head_held: usize,
    /// The adapters' graph (mode adapter), the frozen layers they read included.
    adapter_held: usize,
    /// The adapters' backward transient.
    adapter_backward: usize,
    /// The frozen layers' tokens the adapters read, as the forward keeps them (f32).
    adapter_taps: usize,
    /// Videos per step.
    videos: usize,
}

impl Parts {
    fn new(cfg: &TrainConfig, shape: &BackboneShape, positions: usize) -> Result<Self> {
        let device = crate::backend::cpu_device();
        let mut hc = cfg.head.clone();
        hc.input_dim = shape.feature_dim;
        hc.num_classes = hc.num_classes.max(1);
        let mut adapter = 0;
        let (mut adapter_held, mut adapter_backward, mut adapter_taps) = (0, 0, 0);
        if cfg.mode == TrainMode::Adapter {
            let layers = adapter_layer_dims(cfg, shape, positions)?;
            let mut a = cfg.adapter.clone();
            a.feature_dim = shape.feature_dim;
            a.layer_dims = layers.iter().map(|l| l.1).collect();
            hc.input_dim = a.output_dim.unwrap_or(shape.feature_dim);
            adapter = a.init(&device)?.num_params();
            let width = if a.adapter_dim == 0 {
                (shape.feature_dim / 4).max(1)
            } else {
                a.adapter_dim
            };
            let hidden = a.mlp_ratio * width;
            let p = if cfg.precision == Precision::F32 {
                4
            } else {
                2
            };
            for (tokens_per_position, c_l) in layers {
                let q = positions * tokens_per_position.min(a.max_tokens.max(1));
                // The frozen tokens as the adapters' norm keeps them, their projection, the
                // attention, the MLP (in the branch precision).
                adapter_held += q * p * (c_l + 4 * width + 2 * hidden);
                adapter_taps += 4 * q * c_l;
                adapter_backward = adapter_backward.max(4 * q * (c_l + 2 * hidden));
            }
        }
        let head = hc.init(&device)?.num_params();
        let padded = positions + hc.pyramid.strides.last().copied().unwrap_or(1);
        // ActionFormer's head per input position: the embedding convolutions, two stride-1
        // transformer blocks, the downsampling levels (half as many positions each), the
        // classification and regression towers over every level.
        let head_held = 4 * padded * hc.embed_dim * 180;
        Ok(Self {
            backbone: shape.params(),
            head,
            adapter,
            head_held,
            adapter_held,
            adapter_backward,
            adapter_taps,
            videos: cfg.videos_per_step.max(1),
        })
    }
}

/// (tokens per feature position, width) of each layer the adapters read, for a step of
/// `positions` feature positions.
fn adapter_layer_dims(
    cfg: &TrainConfig,
    shape: &BackboneShape,
    positions: usize,
) -> Result<Vec<(usize, usize)>> {
    let per_layer: Vec<(usize, usize)> = match shape.family {
        "vit" => shape
            .stages
            .iter()
            .flat_map(|s| std::iter::repeat_n((s.tokens, s.width), s.blocks))
            .collect(),
        "swin" => shape.stages.iter().map(|s| (s.tokens, s.width)).collect(),
        _ => {
            // A ResNet's layers are its stages: the last block of each.
            let mut out = Vec::new();
            let mut last_width = 0;
            for &(e, c) in &shape.conv_blocks {
                if c != last_width {
                    out.push((e / c, c));
                    last_width = c;
                } else if let Some(l) = out.last_mut() {
                    *l = (e / c, c);
                }
            }
            out
        }
    };
    let n = per_layer.len();
    let chosen: Vec<usize> = if cfg.adapter_layers.is_empty() {
        (0..n.saturating_sub(1)).collect()
    } else {
        cfg.adapter_layers.clone()
    };
    chosen
        .into_iter()
        .map(|l| {
            per_layer
                .get(l)
                .map(|&(t, c)| (t / positions.max(1), c))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "adapter layer {l} out of range: the backbone has {n}"
                    ))
                })
        })
        .collect()
}

/// The breakdown of `strategy`.
fn account(
    strategy: Strategy,
    cfg: &TrainConfig,
    parts: &Parts,
    b: &Blocks,
    input: usize,
    frames: usize,
) -> MemoryBreakdown {
    let trained = match strategy {
        Strategy::HeadOnly => parts.head,
        Strategy::Adapter => parts.head + parts.adapter,
        _ => parts.head + parts.backbone,
    };
    let all = parts.backbone + parts.head + parts.adapter;
    let ema = if cfg.ema_decay > 0.0 { 2 } else { 1 };
    let gradients = 4 * trained;
    let head_grads = 4 * (parts.head + parts.adapter);
    // The frozen forward's high point: the input beside the stem's transient or the largest
    // block's forward without graph (its input stream included).
    // The blocks' forward without graph at its high point: a block's transient beside the
    // stream it started from.
    let blocks_free = b
        .blocks
        .iter()
        .map(|x| x.forward + x.input)
        .max()
        .unwrap_or(0);
    // A frozen backbone (head-only, LoSA): the clips are freed after the stem.
    let frozen_only = blocks_free.max(b.stem);
    // The checkpointed and reversible forwards: the stem's graph keeps the clips.
    let frozen = input + blocks_free;
    let (held, transient, step) = match strategy {
        Strategy::HeadOnly => {
            let held = parts.head_held * parts.videos;
            let head = held + head_grads + held / 4;
            (held, frozen_only, (frozen_only + held).max(head))
        }
        Strategy::Adapter => {
            let held = parts.adapter_held + parts.head_held;
            let adapters = held + parts.adapter_backward + head_grads;
            let forward = frozen_only + parts.adapter_taps + parts.head_held;
            (
                held,
                frozen_only.max(parts.adapter_backward),
                forward.max(adapters),
            )
        }
        Strategy::Full => walk(b, input + b.between + parts.head_held, head_grads),
        Strategy::Checkpointed => {
            let kept: Vec<usize> = b.blocks.iter().map(|x| x.input).collect();
            walk_recompute(
                b,
                input + b.between,
                head_grads,
                parts.head_held,
                &kept,
                frozen,
            )
        }
        Strategy::Reversible => {
            let base = input + b.between + b.segments;
            walk_reversible(b, base, head_grads, parts.head_held, frozen)
        }
    };
    let weights = 4 * all * ema;
    let optimizer = 8 * trained;
    let step = step.max(gradients + input);
    MemoryBreakdown {
        weights,
        optimizer,
        gradients,
        held,
        transient,
        input: input + frames,
        step,
        total: weights + optimizer + frames + step,
    }
}

/// Plain autodiff: the whole graph is held at the end of the forward; the backward frees each
/// block's graph as its gradients appear. Returns (held, largest transient, peak).
fn walk(b: &Blocks, base: usize, head_grads: usize) -> (usize, usize, usize) {
    let held: usize = b.blocks.iter().map(|x| x.held).sum();
    let mut peak = base + held;
    let mut grads = head_grads;
    let mut left = held;
    let mut transient = 0;
    for x in b.blocks.iter().rev() {
        peak = peak.max(base + left + grads + x.backward);
        transient = transient.max(x.backward);
        left -= x.held;
        grads += x.grads;
    }
    (
        held + b.between,
        transient,
        peak.max(base + b.stem + grads + b.other_grads),
    )
}

/// Checkpointing: the kept block inputs are held through the forward; the backward recomputes
/// one block's graph at a time.
fn walk_recompute(
    b: &Blocks,
    base: usize,
    head_grads: usize,
    head_held: usize,
    kept: &[usize],
    frozen: usize,
) -> (usize, usize, usize) {
    let all_kept: usize = kept.iter().sum();
    let mut peak = (base + all_kept + head_held).max(frozen + all_kept);
    let mut grads = head_grads;
    let mut left = all_kept;
    let (mut held, mut transient) = (all_kept + head_held, 0);
    for (x, k) in b.blocks.iter().zip(kept).rev() {
        left -= k;
        let now = base + left + x.held + x.backward + grads;
        held = held.max(left + x.held);
        transient = transient.max(x.backward);
        peak = peak.max(now);
        grads += x.grads;
    }
    (
        held,
        transient,
        peak.max(base + b.stem + grads + b.other_grads),
    )
}

/// Reversible: the stream pair of each segment between the passes; the backward recomputes
/// one branch's graph at a time.
fn walk_reversible(
    b: &Blocks,
    base: usize,
    head_grads: usize,
    head_held: usize,
    frozen: usize,
) -> (usize, usize, usize) {
    let mut peak = (base + head_held).max(frozen + b.segments);
    let mut grads = head_grads;
    let (mut held, mut transient) = (b.segments + head_held, 0);
    for x in b.blocks.iter().rev() {
        // The reconstruction's copy of the stream pair beside the branch's local graph.
        let now = base + x.stream_pair + x.branch_held + x.backward + grads;
        held = held.max(b.segments + x.branch_held);
        transient = transient.max(x.backward);
        peak = peak.max(now);
        grads += x.grads;
    }
    (
        held,
        transient,
        peak.max(base + b.stem + grads + b.other_grads),
    )
}
