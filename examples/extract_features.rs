//! Extract head-only features: run a frozen backbone (no graph) over every clip of every video
//! and write one `[T, C]` float32 `.npy` per video, the format `train --mode head-only` caches
//! and ActionFormer-style code reads, plus `features.json` (clip sampling, frame rate and
//! feature width, to map feature index `t` to seconds).
//!
//! ```text
//! cargo run --release --example extract_features -- [--data data/synth] [--out runs/features]
//!     [--backbone vit-s|vit-b|swin-t|r3d-18|...] [--weights W.safetensors|.pth]
//!     [--family hf-videomae|videomae-v2|swin3d|r3d|r2plus1d|native] [--rewired] [--chunk 32]
//!     [--backend cpu|wgpu|cuda]
//! ```
//! Defaults: the built-in synthetic benchmark (generated in `data/synth` when missing) and the
//! small synthetic ViT pretrained by clip classification (`runs/pretrain`, made first when
//! missing: ~2.5 min on 2 cores; extraction itself ~10 s). With `--backbone vit-s --weights
//! videomae.pth` it extracts VideoMAE features from a PyTorch checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use e2e_tal::backbone::{BackbonePreset, Network};
use e2e_tal::backend::BackendKind;
use e2e_tal::data::FeatureSequence;
use e2e_tal::data::{Subset, SynthConfig};
use e2e_tal::train::{BackboneConfig, TrainConfig};
use e2e_tal::train::{Extraction, extract_features};
use e2e_tal::weights::CheckpointFamily;
use e2e_tal::workspace::{load_dataset, pretrained_backbone};
use e2e_tal::{Result, backend};

#[derive(Parser)]
#[command(about = "Extract frozen-backbone features to .npy (one [T, C] file per video)")]
struct Args {
    /// Dataset folder (annotations.json + frames/<video>/ or videos/<video>.mp4); the synthetic
    /// benchmark is generated there when annotations.json is missing.
    #[arg(long, default_value = "data/synth")]
    data: PathBuf,
    /// Output folder for <video>.npy and features.json.
    #[arg(long, default_value = "runs/features")]
    out: PathBuf,
    /// A backbone preset (default: the synthetic benchmark's own small ViT).
    #[arg(long, value_enum)]
    backbone: Option<BackbonePreset>,
    /// Backbone weights; without them the synthetic backbone's clip-classification
    /// pretraining is used (presets need weights).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Key map of --weights (default: the preset's family, native for the synthetic one).
    #[arg(long, value_enum)]
    family: Option<CheckpointFamily>,
    /// Run a ViT in its rewired (reversible) form, for backbones trained that way.
    #[arg(long)]
    rewired: bool,
    /// Clips per backbone call (memory vs speed).
    #[arg(long, default_value_t = 32)]
    chunk: usize,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
}

fn main() -> Result<(), e2e_tal::Report> {
    // Freed activations stay with the process for the next step (no page faults per step).
    e2e_tal::memory::retain_freed_memory();
    e2e_tal::io::progress_to_stdout();
    let a = Args::parse();
    let device = backend::device(a.backend)?;
    let mut cfg = TrainConfig::new();
    let preset = a.backbone;
    cfg.backbone = preset.map_or_else(BackboneConfig::synthetic_vit, BackboneConfig::preset);
    cfg.rewired = a.rewired;
    let data = load_dataset(&a.data, &SynthConfig::new(), cfg.clips.span())?;
    let weights = match (&a.weights, &preset) {
        (Some(w), _) => w.clone(),
        (None, None) => pretrained_backbone(&cfg, true, &device)?,
        (None, Some(_)) => {
            return Err(e2e_tal::Error::Config(format!(
                "--backbone {} needs --weights (a PyTorch or safetensors checkpoint)",
                preset.map_or("synthetic", BackbonePreset::name)
            ))
            .into());
        }
    };
    let family = match (a.family, &preset) {
        (Some(f), _) => f,
        (None, Some(p)) => p.default_family(),
        (None, None) => CheckpointFamily::Native,
    };
    let mut backbone = cfg.backbone.init(&device);
    let report = backbone.load(&weights, family)?;
    println!(
        "backbone {}: {} tensors from {}",
        preset.map_or("synthetic", BackbonePreset::name),
        report.applied.len(),
        weights.display()
    );
    let t0 = Instant::now();
    let mut channels = 0;
    for v in &data.videos {
        let f = extract_features(
            &backbone,
            v.source.as_ref(),
            &cfg.eval_op(v)?,
            &cfg.clips,
            Extraction {
                network: Network::rewired_if(a.rewired),
                ..Extraction::features(a.chunk)
            },
            &device,
        )?;
        let seq = FeatureSequence::from_tensor(f.features);
        channels = seq.channels;
        seq.write(
            &a.out
                .join(format!("{}.npy", e2e_tal::io::file_stem_for(&v.id))),
        )?;
    }
    let clips = &cfg.clips;
    let meta = serde_json::json!({
        "backbone": preset.map_or("synthetic", BackbonePreset::name),
        "weights": weights,
        "rewired": a.rewired,
        "channels": channels,
        "clip_frames": clips.clip_frames,
        "frame_stride": clips.frame_stride,
        "snippet_stride": clips.snippet_stride,
        "feature_t_to_frame": "clip t covers frames [t * snippet_stride, t * snippet_stride + (clip_frames - 1) * frame_stride]",
        "videos": data.videos.iter().map(|v| serde_json::json!({
            "id": v.id,
            "subset": v.subset.to_string(),
            "fps": v.fps,
            "frames": v.len(),
        })).collect::<Vec<_>>(),
    });
    e2e_tal::io::write_json_atomic(&a.out.join("features.json"), &meta)?;
    println!(
        "{} videos ({} training, {} validation), {channels} channels, in {:.1}s -> {}",
        data.videos.len(),
        data.indices(Subset::Training).len(),
        data.indices(Subset::Validation).len(),
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
