//! `e2e-tal plan`: the memory planner's table for a backbone and a video size, before any run.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use e2e_tal::backbone::BackbonePreset;
use e2e_tal::planner::{VideoShape, plan};
use e2e_tal::precision::Precision;
use e2e_tal::train::{BackboneConfig, TrainConfig, parse_bytes, read_config};
use e2e_tal::{Error, Result};

/// Where the step would run (the account is the same; what differs is said with the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum PlanDevice {
    /// The CPU backend: without `--budget`, the machine's available memory is the budget.
    #[default]
    Cpu,
    /// WebGPU / Vulkan / Metal.
    Wgpu,
    /// NVIDIA CUDA.
    Cuda,
}

#[derive(Args)]
pub struct PlanArgs {
    /// Backbone (a published size; weights are not needed) [default: vit-b, or the
    /// configuration's].
    #[arg(long, value_enum)]
    backbone: Option<BackbonePreset>,
    /// Frames of the longest video a step reads (e.g. 768, AdaTAD's THUMOS setting).
    #[arg(long, value_parser = super::count_in(1, 10_000_000))]
    frames: usize,
    /// Side of the square frames the backbone reads (default: the backbone's input size); a
    /// multiple of its patch.
    #[arg(long, value_parser = super::count_in(1, 100_000))]
    frame_size: Option<usize>,
    /// Frames per clip (the backbone's chunk) [default: 16, or the configuration's].
    #[arg(long, value_parser = super::count_in(1, 100_000))]
    clip_frames: Option<usize>,
    /// Videos per optimisation step (the end-to-end strategies run them one at a time and add
    /// their gradients; head-only pads them into one batch) [default: 1, or the
    /// configuration's].
    #[arg(long, value_parser = super::count_in(1, 1_000_000))]
    videos_per_step: Option<usize>,
    /// Precision of the backbone's residual branches [default: f32, or the configuration's].
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Memory budget (e.g. 24GiB, 800MiB; a bare number is MiB): marks what fits and
    /// recommends the highest-fidelity configuration that does.
    #[arg(long)]
    budget: Option<String>,
    /// Where the step would run.
    #[arg(long, value_enum, default_value_t = PlanDevice::Cpu)]
    device: PlanDevice,
    /// One feature per clip, clips every 4 frames (`train`'s default layout) instead of the
    /// backbone's temporal tokens over clips that tile the video (the papers' setting).
    #[arg(long)]
    clip_features: bool,
    /// Plan a run's configuration (a config.json); the flags above that are given override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(a: PlanArgs) -> Result<()> {
    let cfg = config(&a)?;
    let size = cfg.frame_size().0;
    let m = cfg.backbone.spatial_multiple();
    if !size.is_multiple_of(m) {
        return Err(Error::Config(format!(
            "--frame-size {size} is not a multiple of the backbone's {m}-pixel patch"
        )));
    }
    let span = cfg.clips.span();
    if a.frames < span {
        return Err(Error::Config(format!(
            "--frames {}: shorter than one clip of {span} frames",
            a.frames
        )));
    }
    let budget = match (&a.budget, a.device) {
        (Some(b), _) => Some(parse_bytes(b).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("--budget {b}: {m}")),
            e => e,
        })?),
        (None, PlanDevice::Cpu) => e2e_tal::memory::available_memory(),
        (None, _) => None,
    };
    let video = VideoShape {
        frames: a.frames,
        height: size,
        width: size,
    };
    let p = plan(&cfg, video, budget)?;
    outln!("{p}")?;
    if a.budget.is_none() && budget.is_some() {
        outln!("(budget: this machine's available memory; --budget sets another)")?;
    }
    if a.device != PlanDevice::Cpu {
        outln!(
            "On {:?} the memory pools round each allocation up to their page sizes: leave about \
             10% of headroom (the account is checked against the CPU allocator, docs/scale.md).",
            a.device
        )?;
    }
    Ok(())
}

/// The configuration the flags describe: a run's configuration or the preset's defaults, with
/// the given flags applied, its clips in the requested layout.
fn config(a: &PlanArgs) -> Result<TrainConfig> {
    let mut cfg = match &a.config {
        Some(p) => {
            let cfg: TrainConfig = read_config(p, &TrainConfig::new())?;
            cfg.validate()?;
            cfg
        }
        None => {
            let mut c =
                TrainConfig::new().with_backbone(BackboneConfig::preset(BackbonePreset::VitB));
            c.clips = c.clips.clone().with_frame_stride(1).with_snippet_stride(4);
            c.clips.clip_frames = 16;
            // ActionFormer's head as AdaTAD trains it (512 wide, window 19).
            c.head = c.head.clone().with_embed_dim(512).with_window_size(19);
            c
        }
    };
    if let Some(b) = a.backbone {
        cfg.backbone = BackboneConfig::preset(b);
    }
    if a.config.is_none() || a.frame_size.is_some() {
        cfg.transform.size = a.frame_size.or(cfg.transform.size);
    }
    if let Some(n) = a.clip_frames {
        cfg.clips.clip_frames = n;
    }
    if let Some(n) = a.videos_per_step {
        cfg.videos_per_step = n;
    }
    if let Some(p) = a.precision {
        cfg.precision = p;
    }
    if !a.clip_features && cfg.clips.positions_per_clip <= 1 {
        cfg.clips = cfg.backbone.temporal_tokens(&cfg.clips)?;
    }
    cfg.check_precision(cfg.precision)?;
    Ok(cfg)
}
