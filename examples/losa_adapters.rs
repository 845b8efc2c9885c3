//! LoSA (long-short range adapters) on a frozen backbone, against head-only training of the same
//! backbone: the backbone runs without a graph and only adapters, gated fusion and head learn.
//! For every seed: validation mAP of head-only and of LoSA (same initial head, same data order:
//! a paired comparison), and of the trained LoSA model with its gates closed (what the
//! adapters' output adds at inference); then the means, the peak memory of one training step,
//! trainable parameters and the learnt gates.
//!
//! ```text
//! cargo run --release --example losa_adapters -- [--data data/synth] [--epochs 12]
//!     [--seeds 0,1,2] [--layers 0,1,2] [--adapter-dim 0] [--heads 4] [--mlp-ratio 2]
//!     [--dropout 0] [--max-tokens 64] [--gate-init 1] [--random-output] [--no-feature-cache]
//!     [--eval-every 0] [--no-baseline]
//!     [--out runs/example-losa] [--backend cpu|wgpu|cuda]
//! ```
//! Defaults: the built-in synthetic benchmark and the small synthetic ViT pretrained by clip
//! classification (`runs/pretrain`, made first when missing: ~2.5 min on 2 cores); the frozen
//! backbone's outputs are extracted once per run (`--no-feature-cache`: every step, bounded
//! memory).

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use clap::Parser;
use e2e_tal::backend::BackendKind;
use e2e_tal::data::SynthConfig;
use e2e_tal::memory::{CountingAllocator, mib};
use e2e_tal::train::{Detector, RunOptions, TrainConfig, TrainMode, train};
use e2e_tal::weights::CheckpointFamily;
use e2e_tal::workspace::{load_dataset, pretrained_backbone};
use e2e_tal::{Result, backend};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

#[derive(Parser)]
#[command(about = "LoSA adapters on a frozen backbone vs head-only training")]
struct Args {
    /// Dataset folder (the synthetic benchmark is generated there when missing).
    #[arg(long, default_value = "data/synth")]
    data: PathBuf,
    /// Epochs of each run.
    #[arg(long, default_value_t = 12)]
    epochs: usize,
    /// Random seeds (head and adapter initialisation, data order), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 1, 2])]
    seeds: Vec<u64>,
    /// Backbone layers the adapters read, comma-separated (default: every layer but the last).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<usize>,
    /// Adapter width (0: a quarter of the backbone width).
    #[arg(long, default_value_t = 0)]
    adapter_dim: usize,
    /// Cross-attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Hidden width of each adapter's MLP, in adapter widths (0: none).
    #[arg(long, default_value_t = 2)]
    mlp_ratio: usize,
    /// Dropout on the adapters' attention and outputs (training only).
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Most spatio-temporal tokens per clip a short-range adapter reads.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Initial gate value.
    #[arg(long, default_value_t = 1.0)]
    gate_init: f64,
    /// Random output projections instead of zero ones (then `--gate-init 0` starts at the
    /// head-only model: closed gates).
    #[arg(long)]
    random_output: bool,
    /// Run the frozen backbone at every step instead of extracting its outputs once.
    #[arg(long)]
    no_feature_cache: bool,
    /// Also evaluate every this many epochs (0: only at the end); the curves go to each run's
    /// `metrics.json`.
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Only the LoSA runs (skip the head-only baselines, e.g. when comparing LoSA settings).
    #[arg(long)]
    no_baseline: bool,
    /// Run folders go under this folder (seed-S/head-only, seed-S/adapter).
    #[arg(long, default_value = "runs/example-losa")]
    out: PathBuf,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
}

/// Avg mAP and mAP@0.5 (%) of a run's evaluation.
fn maps(r: &e2e_tal::eval::EvalReport) -> (f64, f64) {
    let at = r.thresholds.iter().position(|t| (t - 0.5).abs() < 1e-9);
    (
        100.0 * r.average_map,
        at.map_or(f64::NAN, |i| 100.0 * r.map[i]),
    )
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn main() -> Result<(), e2e_tal::Report> {
    // Freed activations stay with the process for the next step (no page faults per step).
    e2e_tal::memory::retain_freed_memory();
    e2e_tal::io::progress_to_stdout();
    let a = Args::parse();
    let device = backend::device(a.backend)?;
    let base = TrainConfig::new()
        .with_epochs(a.epochs)
        .with_adapter_layers(a.layers.clone())
        .with_cache_features(!a.no_feature_cache)
        .with_eval_every(a.eval_every);
    let data = load_dataset(&a.data, &SynthConfig::new(), base.clips.span())?;
    let weights = pretrained_backbone(&base, true, &device)?;
    println!(
        "| seed | run | avg mAP | mAP@0.5 | peak step memory (MiB) | trained parameters | time (s) |"
    );
    println!("|---|---|---|---|---|---|---|");
    // avg mAP per seed: head-only, LoSA, LoSA with gates closed after training.
    let (mut head_only, mut losa, mut closed_gates) = (Vec::new(), Vec::new(), Vec::new());
    let mut gates = Vec::new();
    let mut shares = Vec::new();
    for &seed in &a.seeds {
        let modes: &[TrainMode] = if a.no_baseline {
            &[TrainMode::Adapter]
        } else {
            &[TrainMode::HeadOnly, TrainMode::Adapter]
        };
        for &mode in modes {
            let mut cfg = base.clone().with_mode(mode).with_seed(seed);
            cfg.adapter.adapter_dim = a.adapter_dim;
            cfg.adapter.num_heads = a.heads;
            cfg.adapter.mlp_ratio = a.mlp_ratio;
            cfg.adapter.max_tokens = a.max_tokens;
            cfg.adapter.dropout = a.dropout;
            cfg.adapter.gate_init = a.gate_init;
            cfg.adapter.zero_init_output = !a.random_output;
            device.seed(cfg.seed);
            let mut backbone = cfg.backbone.init(&device);
            backbone.load(&weights, CheckpointFamily::Native)?;
            let opts = RunOptions {
                out_dir: a.out.join(format!("seed-{seed}")).join(mode.to_string()),
                quiet: true,
                stop_after_steps: None,
                overwrite: true,
                loader: Default::default(),
                ranks: Default::default(),
            };
            let t0 = Instant::now();
            let cfg_used = cfg.clone();
            let o = train(cfg, &data, backbone, &opts, &device)?;
            let secs = t0.elapsed().as_secs_f64();
            let trained =
                o.model.head.num_params() + o.model.adapter.as_ref().map_or(0, |a| a.num_params());
            let (avg, at5) = o
                .evaluation
                .as_ref()
                .map_or((f64::NAN, f64::NAN), |(_, r)| maps(r));
            println!(
                "| {seed} | {mode} | {avg:.2} | {at5:.2} | {} | {trained} | {secs:.0} |",
                o.peak_step_bytes.map_or("n/a".into(), mib)
            );
            let Some(l) = &o.model.adapter else {
                head_only.push(avg);
                continue;
            };
            losa.push(avg);
            for (i, (s, g)) in l.gates().into_iter().enumerate() {
                gates.push(format!(
                    "seed {seed}, layer {i}: short {s:+.3}, long {g:+.3}"
                ));
            }
            // Ablation: the trained model with its gates closed (fused features = last layer's).
            let mut closed = o.model.valid();
            closed.adapter = closed.adapter.map(|l| l.with_gates(0.0));
            let det = Detector::new(&closed, &cfg_used, &device)?;
            let (_, r) = det.evaluate(&data)?;
            // How much the adapters change the head's input, against the last layer's own
            // variation over time (per channel), on the validation videos.
            let (mut delta, mut spread) = (0.0f64, 0.0f64);
            let open = o.model.valid();
            let det_open = Detector::new(&open, &cfg_used, &device)?;
            for i in data.indices(e2e_tal::data::Subset::Validation) {
                let f = det_open.features(&data.videos[i])?;
                let last = f.features.clone();
                let fused = e2e_tal::train::head_input(open.adapter.as_ref(), f)?;
                let centred = last.clone() - last.clone().mean_dim(0);
                delta += (fused - last).square().sum().into_scalar::<f64>();
                spread += centred.square().sum().into_scalar::<f64>();
            }
            shares.push((delta / spread).sqrt());
            let (avg, at5) = maps(&r);
            println!(
                "| {seed} | adapter, gates closed after training | {avg:.2} | {at5:.2} | | | |"
            );
            closed_gates.push(avg);
        }
    }
    println!("\nmean avg mAP over seeds {:?}:", a.seeds);
    if !head_only.is_empty() {
        println!(
            "  head-only                            {:.2}",
            mean(&head_only)
        );
    }
    println!("  LoSA                                 {:.2}", mean(&losa));
    println!(
        "  LoSA, gates closed after training    {:.2}",
        mean(&closed_gates)
    );
    println!(
        "\nadapter output / last layer's variation over time (RMS, validation videos): {}",
        shares
            .iter()
            .map(|s| format!("{s:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("\nLoSA gates after training (0 = that adapter is off):");
    for g in gates {
        println!("  {g}");
    }
    println!("runs: {}", a.out.display());
    Ok(())
}
