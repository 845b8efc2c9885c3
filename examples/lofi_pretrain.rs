//! LoFi-E2E's three-stage procedure on the synthetic benchmark: (1) a backbone pretrained by clip
//! classification (the Kinetics analogue), (2) end-to-end TAL training of backbone + head under
//! a low-fidelity sampler, or at the fidelity a memory budget allows, (3) the adapted backbone
//! frozen and a new head trained at full fidelity. Also trains the paper's ACP baseline (a head
//! on the stage-1 backbone) unless `--no-baseline`, and prints one table.
//!
//! ```text
//! cargo run --release --example lofi_pretrain -- [--lofi full|s|t|st|short|long]
//!     [--memory-budget 200MiB] [--epochs 12] [--head-epochs 12] [--seed 0] [--no-baseline]
//!     [--data data/synth] [--out runs/example-lofi] [--backend cpu|wgpu|cuda]
//! ```
//! Defaults: long-cycle C-LoFi; ~2.5 min of stage-1 pretraining when `runs/pretrain` has none,
//! then ~3 min on 2 cores (stage 2 ~75 s, stage 3 and the baseline ~30 s each).

use std::path::PathBuf;

use clap::Parser;
use e2e_tal::backend::BackendKind;
use e2e_tal::data::LoFiSampler;
use e2e_tal::data::SynthConfig;
use e2e_tal::memory::{CountingAllocator, mib};
use e2e_tal::train::end_to_end_then_head;
use e2e_tal::train::{RunOptions, TrainConfig, TrainMode, TrainOutcome, train};
use e2e_tal::train::{candidate_fidelities, choose_fidelity, parse_bytes};
use e2e_tal::weights::CheckpointFamily;
use e2e_tal::workspace::{load_dataset, pretrained_backbone};
use e2e_tal::{Result, backend};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

#[derive(Parser)]
#[command(about = "LoFi-E2E: pretraining -> low-fidelity end-to-end -> full-fidelity head")]
struct Args {
    /// Stage-2 sampler.
    #[arg(long, value_enum, default_value_t = LoFiSampler::Long)]
    lofi: LoFiSampler,
    /// Choose stage 2's fidelity from measured step memory instead (e.g. 200MiB, 2GiB).
    #[arg(long, conflicts_with = "lofi")]
    memory_budget: Option<String>,
    /// Stage-2 epochs.
    #[arg(long, default_value_t = 12)]
    epochs: usize,
    /// Stage-3 (and baseline) epochs.
    #[arg(long, default_value_t = 12)]
    head_epochs: usize,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Skip the ACP baseline (head-only on the stage-1 backbone).
    #[arg(long)]
    no_baseline: bool,
    /// Dataset folder (the synthetic benchmark is generated there when missing).
    #[arg(long, default_value = "data/synth")]
    data: PathBuf,
    /// Runs go under this folder (acp/, stage2/, stage3/).
    #[arg(long, default_value = "runs/example-lofi")]
    out: PathBuf,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
}

fn row(name: &str, o: &TrainOutcome) {
    // Training steps' time (feature extraction and evaluation excluded).
    let secs: f64 = o.state.history.iter().map(|e| e.seconds).sum();
    let avg = o
        .evaluation
        .as_ref()
        .map_or(f64::NAN, |(_, r)| 100.0 * r.average_map);
    println!(
        "| {name} | {avg:.2} | {} | {secs:.0} |",
        o.peak_step_bytes.map_or("n/a".into(), mib)
    );
}

fn main() -> Result<(), e2e_tal::Report> {
    // Freed activations stay with the process for the next step (no page faults per step).
    e2e_tal::memory::retain_freed_memory();
    e2e_tal::io::progress_to_stdout();
    let a = Args::parse();
    let device = backend::device(a.backend)?;
    let mut cfg = TrainConfig::new()
        .with_mode(TrainMode::Full)
        .with_epochs(a.epochs)
        .with_seed(a.seed);
    cfg.lofi.mode = a.lofi.mode();
    let data = load_dataset(&a.data, &SynthConfig::new(), cfg.clips.span())?;

    // Stage 1: clip-classification pretraining (cached in runs/pretrain).
    let weights = pretrained_backbone(&cfg, false, &device)?;
    let stage1 = || -> Result<_> {
        device.seed(a.seed);
        let mut b = cfg.backbone.init(&device);
        b.load(&weights, CheckpointFamily::Native)?;
        Ok(b)
    };
    if let Some(budget) = &a.memory_budget {
        let choice = choose_fidelity(
            &cfg,
            &data,
            &stage1()?,
            parse_bytes(budget)?,
            &candidate_fidelities(),
            &a.out.join("budget-probes"),
            &device,
        )?;
        println!("{choice}");
        cfg.lofi.mode = choice.mode();
    }
    let mut rows = Vec::new();
    if !a.no_baseline {
        let acp = cfg
            .clone()
            .with_mode(TrainMode::HeadOnly)
            .with_epochs(a.head_epochs)
            .with_lofi(e2e_tal::data::LoFiConfig::new());
        let opts = RunOptions {
            out_dir: a.out.join("acp"),
            quiet: true,
            stop_after_steps: None,
            overwrite: true,
            loader: Default::default(),
            ranks: Default::default(),
        };
        let o = train(acp, &data, stage1()?, &opts, &device)?;
        rows.push(("ACP: head on the stage-1 backbone".to_string(), o));
    }

    // Stages 2 and 3.
    println!("stage 2: end to end, sampler {:?}", cfg.lofi.mode);
    let st = end_to_end_then_head(
        cfg.clone(),
        a.head_epochs,
        &data,
        stage1()?,
        &RunOptions {
            out_dir: a.out.clone(),
            quiet: true,
            stop_after_steps: None,
            overwrite: true,
            loader: Default::default(),
            ranks: Default::default(),
        },
        &device,
    )?;
    rows.push((
        "stage 2: end to end, low fidelity (evaluated at full)".into(),
        st.end_to_end,
    ));
    rows.push(("stage 3: head retrained at full fidelity".into(), st.head));
    println!("\n| run | avg mAP (THUMOS 0.3:0.7) | peak step memory (MiB) | training time (s) |");
    println!("|---|---|---|---|");
    for (name, o) in &rows {
        row(name, o);
    }
    println!("runs: {}", a.out.display());
    Ok(())
}
