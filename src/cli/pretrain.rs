//! `e2e-tal pretrain`: clip-classification pretraining of a backbone.

use std::path::{Path, PathBuf};

use e2e_tal::Result;
use e2e_tal::backend::{self, BackendKind};
use e2e_tal::data::SynthConfig;
use e2e_tal::precision::Precision;
use e2e_tal::train::PretrainConfig;
use e2e_tal::workspace::{PRETRAIN_VIDEOS, PRETRAINED, PretrainJob, pretrain_to};

use super::count_in;

#[derive(clap::Args)]
pub struct PretrainArgs {
    /// Dataset folder (a synthetic benchmark with seed 1 is generated there when
    /// annotations.json is missing).
    #[arg(long, default_value = "data/synth-pretrain")]
    data: PathBuf,
    /// Videos of a generated pretraining set.
    #[arg(long, default_value_t = PRETRAIN_VIDEOS, value_parser = count_in(1, SynthConfig::MAX_VIDEOS))]
    videos: usize,
    /// Output backbone weights (safetensors, e2e-tal layout; `train --weights` loads them).
    #[arg(long, default_value = PRETRAINED)]
    out: PathBuf,
    /// Full configuration as JSON; the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Start from these backbone weights (e2e-tal layout) instead of random ones.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Train the ViT in its rewired, reversible form (Re2TAL's fine-tuning after rewiring;
    /// use with --weights of the ordinary pretrained backbone).
    #[arg(long)]
    rewired: bool,
    /// Precision of the backbone's residual branches: f32 or bf16 (f32 master weights).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Optimisation steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Clips per step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// No per-step lines.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: PretrainArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => e2e_tal::train::read_config(p, &PretrainConfig::new())?,
        None => PretrainConfig::new(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $(if let Some(v) = a.$f { cfg.$f = v; })* };
    }
    set!(steps, batch_size, lr, precision, seed);
    if a.rewired {
        cfg.rewired = true;
    }
    cfg.validate()?;
    let device = backend::device(a.backend)?;
    let inputs: Vec<&Path> = a
        .weights
        .iter()
        .chain(&a.config)
        .map(PathBuf::as_path)
        .collect();
    e2e_tal::io::check_output(&a.out, &inputs)?;
    let job = PretrainJob {
        data: &a.data,
        videos: a.videos,
        out: &a.out,
        init: a.weights.as_deref(),
        quiet: a.quiet,
    };
    pretrain_to(&cfg, &job, &device)
}
