//! LoSA (long-short range adapters) on a frozen backbone, against head-only training of the same
//! backbone: the backbone runs without a graph and only adapters, gated fusion and head learn.
//! Prints validation mAP, the peak memory of one training step, trainable parameters and the
//! learnt gates of each mode.
//!
//! ```text
//! cargo run --release --example losa_adapters -- [--data data/synth] [--epochs 12] [--seed 0]
//!     [--layers 0,1,2] [--adapter-dim 0] [--heads 4] [--max-tokens 64] [--gate-init 0]
//!     [--zero-init-output]
//!     [--out runs/example-losa] [--backend cpu|wgpu|cuda]
//! ```
//! Defaults: the built-in synthetic benchmark and the small synthetic ViT pretrained by clip
//! classification (`runs/pretrain`, made first when missing: ~2.5 min on 2 cores); then ~3 min
//! (LoSA ~150 s, head-only ~30 s).

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use clap::Parser;
use e2e_tal::data::SynthConfig;
use e2e_tal::memory::{CountingAllocator, mib};
use e2e_tal::train::model::adapter_layers;
use e2e_tal::train::workspace::{load_dataset, pretrained_backbone};
use e2e_tal::train::{Detector, RunOptions, TrainConfig, TrainMode, train};
use e2e_tal::weights::CheckpointFamily;
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
    /// Random seed (head and adapter initialisation, data order).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backbone layers the adapters read, comma-separated (default: every layer but the last).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<usize>,
    /// Adapter width (0: a quarter of the backbone width).
    #[arg(long, default_value_t = 0)]
    adapter_dim: usize,
    /// Cross-attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Most spatio-temporal tokens per clip a short-range adapter reads.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Initial gate value (0: training starts at the head-only model).
    #[arg(long, default_value_t = 0.0)]
    gate_init: f64,
    /// Start the adapters' output projections at zero with gates open (`--gate-init 1`)
    /// instead of closed gates: both start at the head-only model.
    #[arg(long)]
    zero_init_output: bool,
    /// Run folders go under this folder (head-only/, adapter/).
    #[arg(long, default_value = "runs/example-losa")]
    out: PathBuf,
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
}

fn main() -> Result<(), e2e_tal::Report> {
    let a = Args::parse();
    let device = backend::device(a.backend.parse()?)?;
    let base = TrainConfig::new()
        .with_epochs(a.epochs)
        .with_seed(a.seed)
        .with_adapter_layers(a.layers.clone());
    let data = load_dataset(&a.data, &SynthConfig::new(), base.clips.span())?;
    let weights = pretrained_backbone(&base, true, &device)?;
    println!(
        "| mode | avg mAP | mAP@0.5 | peak step memory (MiB) | trained parameters | time (s) |"
    );
    println!("|---|---|---|---|---|---|");
    let mut gates = Vec::new();
    for mode in [TrainMode::HeadOnly, TrainMode::Adapter] {
        let mut cfg = base.clone().with_mode(mode);
        cfg.adapter.adapter_dim = a.adapter_dim;
        cfg.adapter.num_heads = a.heads;
        cfg.adapter.max_tokens = a.max_tokens;
        cfg.adapter.gate_init = a.gate_init;
        cfg.adapter.zero_init_output = a.zero_init_output;
        device.seed(cfg.seed);
        let mut backbone = cfg.backbone.init(&device);
        backbone.load(&weights, CheckpointFamily::Native)?;
        let opts = RunOptions {
            out_dir: a.out.join(mode.to_string()),
            quiet: true,
            stop_after_steps: None,
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
            .map_or((f64::NAN, f64::NAN), |(_, r)| {
                let at = r.thresholds.iter().position(|t| (t - 0.5).abs() < 1e-9);
                (
                    100.0 * r.average_map,
                    at.map_or(f64::NAN, |i| 100.0 * r.map[i]),
                )
            });
        println!(
            "| {mode} | {avg:.2} | {at5:.2} | {} | {trained} | {secs:.0} |",
            o.peak_step_bytes.map_or("n/a".into(), mib)
        );
        if let Some(l) = &o.model.adapter {
            for (i, (s, g)) in l.gates().into_iter().enumerate() {
                gates.push(format!("adapter {i}: short {s:+.3}, long {g:+.3}"));
            }
            // Ablation: the trained model with its gates closed (fused features = last layer's).
            let mut closed = o.model.valid();
            closed.adapter = closed.adapter.map(|l| l.with_gates(0.0));
            let det = Detector {
                model: &closed,
                cfg: &cfg_used,
                layers: adapter_layers(&cfg_used, &closed.backbone)?,
                device: device.clone(),
            };
            let (_, r) = det.evaluate(&data)?;
            println!(
                "| adapter, gates set to 0 after training | {:.2} | | | | |",
                100.0 * r.average_map
            );
        }
    }
    println!("\nLoSA gates after training (0 = that adapter is off):");
    for g in gates {
        println!("  {g}");
    }
    println!("runs: {}", a.out.display());
    Ok(())
}
