//! Training steps of the real training loop (`e2e_tal::train::train`, one untrimmed video of
//! `CLIPS` clips per step, two steps) per mode: peak memory above the model and data (counting
//! allocator, CPU backend) of the first step, which also allocates the optimizers' state, and of
//! the second ("later steps": that state allocated before it, as in every step of a run after
//! the first), and wall time of the second step. Modes: head-only and LoSA adapters on the frozen
//! backbone (each with the backbone run at every step and with its outputs extracted once),
//! full fine-tuning (autodiff), reversible (Re2TAL), and full fine-tuning
//! under the LoFi samplers S (r_s 2), T (r_t 4), ST (r_t 2, r_s sqrt 2). Backbones: ViT-S
//! (384 wide, 6 heads) at depth 12 and 24, 16-frame clips of 112x112 (8x7x7 = 392 tokens).
//!
//! `cargo bench --bench training_modes` (several minutes on 2 cores);
//! `-- --quick`: 64x64 frames, depth 12 only; `-- --only LoSA,head-only`: only the rows whose
//! label contains one of these (ratios to a row left out print as `-`); `-- --mlp-ratio N`: the
//! LoSA adapters' MLP width (default 2); `-- --precision bf16,f16`: also the full, reversible
//! and LoSA rows with the backbone's branches in these precisions, with their ratio to the
//! same row in f32.

use std::path::Path;

use burn::module::Module;
use e2e_tal::backbone::vit::VitConfig;
use e2e_tal::data::FRAMES_DIR;
use e2e_tal::data::LoFiMode;
use e2e_tal::data::{ClipSamplingConfig, SynthConfig};
use e2e_tal::memory::{CountingAllocator, mib};
use e2e_tal::precision::Precision;
use e2e_tal::train::{BackboneConfig, RunOptions, TalDataset, TrainConfig, TrainMode, train};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

/// Clips per training step (one video).
const CLIPS: usize = 16;

struct Row {
    label: String,
    /// Peak of the first step (which also allocates the optimizers' state).
    peak: usize,
    /// Peak of the second step (the optimizers' state allocated before it).
    steady: usize,
    /// Time of the second step.
    seconds: f64,
    /// Bytes of the trained parameters: their f32 gradients take as much, as do each of
    /// AdamW's two moments.
    trained: usize,
}

fn dataset(root: &Path, size: usize, clips: &ClipSamplingConfig) -> TalDataset {
    // One training video of exactly CLIPS clips (no validation videos: no evaluation).
    let frames = clips.span() + (CLIPS - 1) * clips.snippet_stride;
    let synth = SynthConfig::new()
        .with_videos(1)
        .with_height(size)
        .with_width(size)
        .with_min_frames(frames)
        .with_max_frames(frames)
        .with_validation_fraction(0.0);
    let ds = synth.generate(root).expect("synthetic data");
    TalDataset::load(
        &ds.ground_truth,
        &root.join(FRAMES_DIR),
        &[],
        None,
        clips.span(),
    )
    .expect("load")
}

fn config(depth: usize, size: usize, clips: &ClipSamplingConfig) -> TrainConfig {
    TrainConfig::new()
        .with_backbone(BackboneConfig::Vit(
            VitConfig::new()
                .with_embed_dim(384)
                .with_depth(depth)
                .with_num_heads(6)
                .with_mlp_dim(1536)
                .with_num_frames(clips.clip_frames)
                .with_image_size(size)
                .with_drop_path_rate(0.1),
        ))
        .with_clips(clips.clone())
        .with_epochs(2)
        .with_warmup_epochs(0.0)
}

/// Two steps (two epochs of the one video): the first step's peak, the second's, and the
/// second's time.
fn step(cfg: TrainConfig, data: &TalDataset, out: &Path) -> (usize, usize, f64, usize) {
    let device = e2e_tal::backend::device_from_args().expect("--backend");
    device.seed(0);
    let backbone = cfg.backbone.init(&device);
    let opts = RunOptions {
        out_dir: out.to_path_buf(),
        quiet: true,
        stop_after_steps: None,
        overwrite: true,
        // Frames decoded on the training thread, outside the measured step.
        loader: e2e_tal::pipeline::LoaderConfig::new().with_workers(0),
        ranks: Default::default(),
    };
    let mode = cfg.mode;
    let o = train(cfg, data, backbone, &opts, &device).expect("training step");
    let m = &o.model;
    let trained = m.head.num_params()
        + match mode {
            TrainMode::Full | TrainMode::Reversible => m.backbone.num_params(),
            TrainMode::Adapter => m.adapter.as_ref().map_or(0, |a| a.num_params()),
            TrainMode::HeadOnly => 0,
        };
    (
        o.peak_step_bytes.expect("counting allocator installed"),
        o.steady_step_bytes.expect("two steps"),
        o.state.history[1].seconds,
        trained * 4,
    )
}

fn main() {
    // Freed activations stay with the process for the next step (no page faults per step).
    e2e_tal::memory::retain_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // The value after `flag`, if given.
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let only: Vec<String> = value("--only")
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let mlp_ratio: Option<usize> = value("--mlp-ratio").map(|v| v.parse().expect("--mlp-ratio N"));
    let precisions: Vec<Precision> = value("--precision").map_or(Vec::new(), |v| {
        v.split(',')
            .map(|p| p.parse().expect("--precision bf16,f16"))
            .filter(|&p| p != Precision::F32)
            .collect()
    });
    let (size, depths): (usize, &[usize]) = if quick { (64, &[12]) } else { (112, &[12, 24]) };
    let clips = ClipSamplingConfig::new()
        .with_clip_frames(16)
        .with_frame_stride(1)
        .with_snippet_stride(8);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dataset(&dir.path().join("data"), size, &clips);
    println!(
        "one training step on one video of {CLIPS} clips (16 frames of {size}x{size}), ViT-S, {}",
        e2e_tal::backend::kind_from_args().map_or("?".into(), |k| k.to_string())
    );
    // (label, mode, sampler, frozen-backbone feature cache)
    let mut variants: Vec<(String, TrainMode, LoFiMode, bool, Precision)> = vec![
        (
            "head-only (cached features)",
            TrainMode::HeadOnly,
            LoFiMode::Full,
            true,
        ),
        (
            "head-only (frozen backbone every step)",
            TrainMode::HeadOnly,
            LoFiMode::Full,
            false,
        ),
        (
            "LoSA adapters (frozen backbone every step)",
            TrainMode::Adapter,
            LoFiMode::Full,
            false,
        ),
        (
            "LoSA adapters (layer outputs extracted once)",
            TrainMode::Adapter,
            LoFiMode::Full,
            true,
        ),
        ("full fine-tuning", TrainMode::Full, LoFiMode::Full, true),
        (
            "reversible (Re2TAL)",
            TrainMode::Reversible,
            LoFiMode::Full,
            true,
        ),
        ("full, S-LoFi", TrainMode::Full, LoFiMode::Spatial, true),
        ("full, T-LoFi", TrainMode::Full, LoFiMode::Temporal, true),
        (
            "full, ST-LoFi",
            TrainMode::Full,
            LoFiMode::SpatioTemporal,
            true,
        ),
    ]
    .into_iter()
    .map(|(l, m, s, c)| (l.to_string(), m, s, c, Precision::F32))
    .collect();
    let mixed: Vec<_> = variants
        .iter()
        .filter(|v| v.2 == LoFiMode::Full && v.3 && v.1 != TrainMode::HeadOnly)
        .flat_map(|v| {
            precisions
                .iter()
                .map(move |&p| (format!("{}, {p}", v.0), v.1, v.2, v.3, p))
        })
        .collect();
    variants.extend(mixed);
    for &depth in depths {
        let mut rows = Vec::new();
        for (i, (label, mode, lofi, cache, precision)) in variants.iter().enumerate() {
            if !only.is_empty() && !only.iter().any(|o| label.contains(o.as_str())) {
                continue;
            }
            let mut cfg = config(depth, size, &clips)
                .with_mode(*mode)
                .with_cache_features(*cache)
                .with_precision(*precision);
            cfg.lofi.mode = *lofi;
            if let Some(r) = mlp_ratio {
                cfg.adapter.mlp_ratio = r;
            }
            let (peak, steady, seconds, trained) =
                step(cfg, &data, &dir.path().join(format!("run{depth}_{i}")));
            rows.push(Row {
                label: label.clone(),
                peak,
                steady,
                seconds,
                trained,
            });
        }
        let peak_of = |label: &str| {
            rows.iter()
                .find(|r| r.label == label)
                .map(|r| r.peak.max(1) as f64)
        };
        let cached = peak_of("head-only (cached features)");
        let per_step = peak_of("head-only (frozen backbone every step)");
        let full = peak_of("full fine-tuning");
        let ratio = |peak: usize, base: Option<f64>| {
            base.map_or("-".to_string(), |b| format!("{:.2}", peak as f64 / b))
        };
        println!("\nViT-S depth {depth}");
        println!(
            "| mode | peak step memory (MiB) | x head-only (cached) | x head-only (per step) | x full | x same row in f32 | later steps (MiB) | x same row in f32 | step time (s) | time x f32 | trained parameters (MiB) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            // The f32 row of a mixed-precision one: its label without the precision suffix.
            let f32_row = r
                .label
                .rsplit_once(", ")
                .filter(|(_, p)| p.parse::<Precision>().is_ok())
                .and_then(|(base, _)| rows.iter().find(|b| b.label == base));
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} |",
                r.label,
                mib(r.peak),
                ratio(r.peak, cached),
                ratio(r.peak, per_step),
                ratio(r.peak, full),
                ratio(r.peak, f32_row.map(|b| b.peak.max(1) as f64)),
                mib(r.steady),
                ratio(r.steady, f32_row.map(|b| b.steady.max(1) as f64)),
                r.seconds,
                f32_row.map_or("-".into(), |b| format!("{:.2}", r.seconds / b.seconds)),
                mib(r.trained),
            );
        }
    }
}
