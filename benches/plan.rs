//! The memory planner against measurement: for each row of a grid (backbone, frames per video,
//! frame size, strategy, precision), the planner's predicted step peak
//! (`e2e_tal::planner::predict`) beside the training loop's measured peak of a step after the
//! first (`TrainOutcome::steady_step_bytes`: counting allocator, CPU backend; the optimizer
//! state and the weights exist before it and are exact parameter counts in the plan), and the
//! error. One synthetic video per row (temporal tokens, 16-frame clips tiling it, ActionFormer's
//! head), two steps, frozen strategies running their backbone at every step.
//!
//! `cargo bench --bench plan` (the grid: ViT-S, ViT-B, Swin-T; 96-768 frames; 112-224 pixels;
//! every strategy; f32 and bf16; long on 2 cores); `-- --quick` (two small rows);
//! `-- --only vit-s,swin-t` (rows whose backbone is listed); `-- --strategies full,reversible`;
//! `-- --precisions f32`; `-- --rows 'vit-b:96:160'` (backbone:frames:size, comma-separated,
//! instead of the grid). Each row also prints the measured step's seconds.
//!
//! `-- --paper`: the papers' setting (VideoMAE-B, 768 frames at 160x160, one video per step),
//! one step per strategy and precision where it fits in memory, the planner's figure where not
//! (`--predict-only`: the planner's figures alone).
//!
//! `-- --probe`: per-layer check of the account: one transformer block of each family, its
//! bytes held for the backward, its backward's and its graph-free forward's peaks, measured
//! with the counting allocator beside the account's figures.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Distribution, Tensor};
use e2e_tal::backbone::BackbonePreset;
use e2e_tal::data::Fidelity;
use e2e_tal::data::{FRAMES_DIR, SynthConfig};
use e2e_tal::memory::{self, CountingAllocator};
use e2e_tal::planner::{Strategy, VideoShape, predict};
use e2e_tal::precision::{Precision, autocast};
use e2e_tal::train::{BackboneConfig, RunOptions, TalDataset, TrainConfig, train};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

/// One grid row's workload.
#[derive(Clone, Copy)]
struct Workload {
    backbone: BackbonePreset,
    frames: usize,
    size: usize,
}

/// The run configuration of a workload: the preset at `size`, 16-frame clips with temporal
/// tokens, one video per step, two epochs of one step.
fn config(w: Workload, strategy: Strategy, precision: Precision) -> TrainConfig {
    let mut cfg = TrainConfig::new()
        .with_backbone(BackboneConfig::preset(w.backbone))
        .with_epochs(2)
        .with_warmup_epochs(0.0)
        .with_precision(precision)
        .with_cache_features(false)
        .with_ema_decay(0.0);
    cfg.transform.size = Some(w.size);
    cfg.clips = cfg.clips.clone().with_clip_frames(16).with_frame_stride(1);
    cfg.clips = cfg
        .backbone
        .temporal_tokens(&cfg.clips)
        .expect("temporal tokens");
    strategy.configure(&cfg)
}

fn dataset(root: &Path, w: Workload) -> TalDataset {
    let dir = root.join(format!("v{}x{}", w.frames, w.size));
    let synth = SynthConfig::new()
        .with_videos(1)
        .with_height(w.size)
        .with_width(w.size)
        .with_min_frames(w.frames)
        .with_max_frames(w.frames)
        .with_validation_fraction(0.0);
    let ds = synth.load_or_generate(&dir).expect("synthetic video");
    TalDataset::load(&ds.ground_truth, &dir.join(FRAMES_DIR), &[], None, 16).expect("load")
}

/// One training run of `cfg` on `data` (its folder removed afterwards).
fn run(
    cfg: TrainConfig,
    data: &TalDataset,
    out: &Path,
) -> Result<e2e_tal::train::TrainOutcome, String> {
    let device = e2e_tal::backend::cpu_device();
    device.seed(0);
    let backbone = cfg.backbone.init(&device);
    let opts = RunOptions {
        out_dir: out.to_path_buf(),
        quiet: true,
        stop_after_steps: None,
        overwrite: true,
        loader: e2e_tal::pipeline::LoaderConfig::new().with_workers(0),
        ranks: Default::default(),
    };
    let o = train(cfg, data, backbone, &opts, &device).map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(out);
    o
}

/// The measured steady step peak and that step's seconds.
fn measure(cfg: TrainConfig, data: &TalDataset, out: &Path) -> Result<(usize, f64), String> {
    let o = run(cfg, data, out)?;
    Ok((
        o.steady_step_bytes.ok_or("no second step")?,
        o.state.history.get(1).map_or(0.0, |h| h.seconds),
    ))
}

fn mib(b: usize) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn grid(quick: bool) -> Vec<Workload> {
    use BackbonePreset::*;
    let w = |backbone, frames, size| Workload {
        backbone,
        frames,
        size,
    };
    if quick {
        return vec![w(VitS, 96, 112), w(SwinT, 96, 112)];
    }
    vec![
        w(VitS, 96, 112),
        w(VitS, 96, 224),
        w(VitS, 768, 112),
        w(VitB, 96, 160),
        w(SwinT, 96, 112),
        w(SwinT, 192, 112),
    ]
}

fn main() {
    // Freed activations stay with the process for the next step (no page faults per step).
    e2e_tal::memory::retain_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    if args.iter().any(|a| a == "--probe") {
        probe();
        return;
    }
    let paper_mode = args.iter().any(|a| a == "--paper");
    let list = |flag: &str| -> Vec<String> {
        value(flag).map_or(Vec::new(), |v| v.split(',').map(str::to_string).collect())
    };
    let only = list("--only");
    let strategies: Vec<Strategy> = match list("--strategies") {
        l if l.is_empty() => Strategy::ALL.to_vec(),
        l => Strategy::ALL
            .into_iter()
            .filter(|s| l.iter().any(|n| strategy_name(*s) == n))
            .collect(),
    };
    let precisions: Vec<Precision> = match list("--precisions") {
        l if l.is_empty() => vec![Precision::F32, Precision::Bf16],
        l => l
            .iter()
            .map(|p| p.parse().expect("--precisions f32,bf16"))
            .collect(),
    };
    if paper_mode {
        let root = std::env::temp_dir().join("e2e-tal-plan");
        let run = !args.iter().any(|a| a == "--predict-only");
        paper(&root, &strategies, &precisions, run);
        return;
    }
    let rows = list("--rows");
    let workloads: Vec<Workload> = if rows.is_empty() {
        grid(args.iter().any(|a| a == "--quick"))
    } else {
        rows.iter()
            .map(|r| {
                let p: Vec<&str> = r.split(':').collect();
                Workload {
                    backbone: p[0].parse().expect("backbone"),
                    frames: p[1].parse().expect("frames"),
                    size: p[2].parse().expect("size"),
                }
            })
            .collect()
    };
    let root = PathBuf::from(value("--data").unwrap_or_else(|| {
        std::env::temp_dir()
            .join("e2e-tal-plan")
            .display()
            .to_string()
    }));
    println!(
        "Planner vs measured step peak (MiB), CPU: {}, Flex, {} threads",
        e2e_tal::memory::cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!(
        "| backbone | frames | size | strategy | precision | predicted | measured | error | step (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut worst: f64 = 0.0;
    let mut errors = Vec::new();
    for w in workloads
        .iter()
        .filter(|w| only.is_empty() || only.iter().any(|o| o == w.backbone.name()))
    {
        let data = dataset(&root, *w);
        for &p in &precisions {
            for &s in &strategies {
                let cfg = config(*w, s, p);
                let video = VideoShape {
                    frames: w.frames,
                    height: w.size,
                    width: w.size,
                };
                let predicted = match predict(&cfg, Fidelity::full(), video) {
                    Ok(r) => r.memory.step,
                    Err(e) => {
                        println!(
                            "| {} | {} | {} | {s} | {p} | - | - | {e} | |",
                            w.backbone.name(),
                            w.frames,
                            w.size
                        );
                        continue;
                    }
                };
                let t = Instant::now();
                let measured = measure(cfg, &data, &root.join("run"));
                match measured {
                    Ok((m, secs)) => {
                        let err = predicted as f64 / m as f64 - 1.0;
                        worst = worst.max(err.abs());
                        errors.push(err.abs());
                        println!(
                            "| {} | {} | {} | {s} | {p} | {:.1} | {:.1} | {:+.1}% | {:.2} |",
                            w.backbone.name(),
                            w.frames,
                            w.size,
                            mib(predicted),
                            mib(m),
                            100.0 * err,
                            secs
                        );
                    }
                    Err(e) => println!(
                        "| {} | {} | {} | {s} | {p} | {:.1} | failed: {e} | | {:.0} |",
                        w.backbone.name(),
                        w.frames,
                        w.size,
                        mib(predicted),
                        t.elapsed().as_secs_f64()
                    ),
                }
            }
        }
    }
    if !errors.is_empty() {
        let mean = errors.iter().sum::<f64>() / errors.len() as f64;
        println!();
        println!(
            "Planner error over {} rows: mean |error| {:.1}%, worst {:.1}%",
            errors.len(),
            100.0 * mean,
            100.0 * worst
        );
    }
}

/// The papers' setting: VideoMAE-B at its real size, one 768-frame 160x160 video per step,
/// temporal tokens, ActionFormer's head. Each configuration whose predicted total fits in 90% of
/// the available memory runs one training step (its seconds, the counting allocator's peak of
/// that step, which allocates the optimizer state, and the process's peak resident memory);
/// the others print the planner's figure, marked as predicted.
fn paper(root: &Path, strategies: &[Strategy], precisions: &[Precision], run: bool) {
    let w = Workload {
        backbone: BackbonePreset::VitB,
        frames: 768,
        size: 160,
    };
    let available = memory::available_memory().unwrap_or(usize::MAX);
    println!(
        "VideoMAE-B, 768 frames at 160x160 per step (48 clips, 384 temporal tokens), CPU: {}, Flex, {} threads, {:.1} GiB available",
        e2e_tal::memory::cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        available as f64 / (1u64 << 30) as f64
    );
    println!();
    println!(
        "| strategy | precision | predicted peak (GiB) | measured peak (GiB) | peak RSS (GiB) | step (s) |"
    );
    println!("|---|---|---|---|---|---|");
    let data = dataset(root, w);
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    for &p in precisions {
        for &s in strategies {
            let mut cfg = config(w, s, p);
            cfg.epochs = 1;
            let video = VideoShape {
                frames: w.frames,
                height: w.size,
                width: w.size,
            };
            let m = match predict(&cfg, Fidelity::full(), video) {
                Ok(r) => r.memory,
                Err(e) => {
                    println!("| {s} | {p} | {e} | | | |");
                    continue;
                }
            };
            if !run || m.total as f64 > 0.9 * available as f64 {
                let why = if run { "over RAM" } else { "--predict-only" };
                println!(
                    "| {s} | {p} | {:.2} | (predicted only: {why}) | | |",
                    gib(m.total)
                );
                continue;
            }
            clear_peak_rss();
            match one_step(cfg, &data, &root.join("run")) {
                // The step's peak is above what existed before it: the weights and the frames.
                Ok((peak, secs)) => println!(
                    "| {s} | {p} | {:.2} | {:.2} | {} | {secs:.1} |",
                    gib(m.total),
                    gib(peak + m.weights + w.frames * w.size * w.size * 3),
                    memory::peak_rss().map_or("-".into(), |r| format!("{:.2}", gib(r)))
                ),
                Err(e) => println!("| {s} | {p} | {:.2} | failed: {e} | | |", gib(m.total)),
            }
        }
    }
}

/// Reset the process's peak resident memory (Linux: `5` into `clear_refs`).
fn clear_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// One training step: its counting-allocator peak and seconds.
fn one_step(cfg: TrainConfig, data: &TalDataset, out: &Path) -> Result<(usize, f64), String> {
    let o = run(cfg, data, out)?;
    Ok((
        o.peak_step_bytes.ok_or("no step")?,
        o.state.history.first().map_or(0.0, |h| h.seconds),
    ))
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::HeadOnly => "head-only",
        Strategy::Adapter => "losa",
        Strategy::Full => "full",
        Strategy::Checkpointed => "checkpointing",
        Strategy::Reversible => "reversible",
    }
}

/// One ViT block (ViT-S width) and one Swin-T stage-1 block pair, measured against the
/// account's per-block figures.
fn probe() {
    use e2e_tal::backbone::swin::SwinConfig;
    use e2e_tal::backbone::vit::VitConfig;
    let dev = e2e_tal::backend::cpu_device().autodiff();
    println!(
        "| block | precision | tokens | held (MiB) | backward peak above held (MiB) | graph-free forward peak (MiB) |"
    );
    println!("|---|---|---|---|---|---|");
    for p in [Precision::F32, Precision::Bf16] {
        let vit = VitConfig::new()
            .with_embed_dim(384)
            .with_depth(1)
            .with_num_heads(6)
            .with_mlp_dim(1536)
            .init(&dev);
        let x = Tensor::<3>::random(
            [4, 392, 384],
            Distribution::Default,
            &dev.clone().without_autodiff(),
        );
        let r = autocast(p, || {
            probe_block(
                |x| vit.blocks[0].forward(x),
                |x| vit.blocks[0].valid().forward(x),
                x,
            )
        });
        println!(
            "| vit-s block | {p} | 1568 | {:.1} | {:.1} | {:.1} |",
            mib(r.0),
            mib(r.1),
            mib(r.2)
        );
        let swin = SwinConfig::new()
            .with_depths(vec![2])
            .with_num_heads(vec![3])
            .init(&dev);
        for (i, b) in swin.stages[0].blocks.iter().enumerate() {
            let x = Tensor::<5>::random(
                [1, 8, 28, 28, 96],
                Distribution::Default,
                &dev.clone().without_autodiff(),
            );
            let r = autocast(p, || {
                probe_block(|x| b.forward(x), |x| b.valid().forward(x), x)
            });
            println!(
                "| swin-t block {i} | {p} | 6272 | {:.1} | {:.1} | {:.1} |",
                mib(r.0),
                mib(r.1),
                mib(r.2)
            );
        }
    }
}

/// (held, backward peak above held, graph-free forward peak) of one block on `x`.
fn probe_block<const D: usize>(
    graph: impl Fn(Tensor<D>) -> Tensor<D>,
    no_graph: impl Fn(Tensor<D>) -> Tensor<D>,
    x: Tensor<D>,
) -> (usize, usize, usize) {
    let _ = graph(x.clone().autodiff()).sum().backward();
    let base = memory::current_bytes();
    let xi = x.clone().autodiff().require_grad();
    let y = graph(xi);
    let held = memory::current_bytes() - base;
    let (g, backward) = memory::measure(|| y.sum().backward());
    drop(g);
    let (_, forward) = memory::measure(|| no_graph(x));
    (held, backward.unwrap_or(0), forward.unwrap_or(0))
}
