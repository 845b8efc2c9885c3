//! Re2TAL: rewire a pretrained ViT into its reversible form (same parameters), measure one
//! training step of the plain network against the reversible one at several depths, then
//! fine-tune the rewired network briefly on clip classification (the paper's recipe before TAL)
//! with the reversible backward pass, and save it.
//!
//! ```text
//! cargo run --release --example reversible_finetune -- [--weights W.safetensors] [--steps 300]
//!     [--lr 5e-4] [--batch-size 16] [--depths 4,8,16] [--data data/synth-pretrain]
//!     [--out runs/example-reversible/backbone.safetensors] [--backend cpu|wgpu|cuda]
//! ```
//! Defaults: the small synthetic ViT pretrained by clip classification (`runs/pretrain`, made
//! first when missing: ~2.5 min on 2 cores), then ~1.5 min (memory table ~20 s, 300 steps of
//! rewired fine-tuning ~60 s). `train --mode reversible --weights OUT` trains a detector on it.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Distribution, Int, Tensor};
use clap::Parser;
use e2e_tal::backbone::{Backbone, VideoBackbone};
use e2e_tal::backend::BackendKind;
use e2e_tal::data::SynthConfig;
use e2e_tal::memory::{CountingAllocator, measure_on, mib};
use e2e_tal::reversible::{ReversibleTape, RewiredBackbone};
use e2e_tal::train::pretrain_from;
use e2e_tal::train::{BackboneConfig, PretrainConfig, TrainConfig};
use e2e_tal::weights::CheckpointFamily;
use e2e_tal::workspace::{
    PRETRAIN_SYNTH_SEED, PRETRAIN_VIDEOS, load_dataset, pretrained_backbone, rewired_recipe,
};
use e2e_tal::{Error, Result, backend};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

#[derive(Parser)]
#[command(about = "Rewire a ViT into a reversible network, compare step memory, fine-tune it")]
struct Args {
    /// Ordinary (not rewired) ViT weights in this crate's layout; default: the synthetic
    /// backbone's clip-classification pretraining.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Fine-tuning steps after rewiring.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Peak learning rate of the fine-tuning.
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// Clips per step (fine-tuning and memory table).
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// ViT depths of the memory table (randomly initialised, the synthetic ViT's width).
    #[arg(long, value_delimiter = ',', default_value = "4,8,16")]
    depths: Vec<usize>,
    /// Clip-classification set (generated there, seed 1, when missing).
    #[arg(long, default_value = "data/synth-pretrain")]
    data: PathBuf,
    /// Where the rewired, fine-tuned weights go.
    #[arg(long, default_value = "runs/example-reversible/backbone.safetensors")]
    out: PathBuf,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
}

/// Peak memory and time of one clip-classification training step of a ViT of `depth` blocks,
/// plain autodiff or the reversible step.
fn step_cost(
    base: &BackboneConfig,
    depth: usize,
    batch: usize,
    reversible: bool,
    device: &Device,
) -> Result<(usize, f64)> {
    let BackboneConfig::Vit(cfg) = base else {
        return Err(Error::Config("the example rewires ViT backbones".into()));
    };
    let ad = device.clone().autodiff();
    let vit = cfg.clone().with_depth(depth).init(&ad);
    let fc = LinearConfig::new(cfg.embed_dim, 9).init(&ad);
    // Parameters are created lazily: create them outside the measurement.
    let _ = (vit.valid(), fc.valid());
    let (f, s) = (cfg.num_frames, cfg.image_size);
    let x = Tensor::<5>::random([batch, 3, f, s, s], Distribution::Normal(0.0, 1.0), &ad);
    let y = Tensor::<1, Int>::from_ints(
        (0..batch as i32)
            .map(|i| i % 9)
            .collect::<Vec<_>>()
            .as_slice(),
        &ad,
    );
    let ce = CrossEntropyLossConfig::new().init(&ad);
    let t0 = Instant::now();
    let (grads, peak) = measure_on(&ad, || -> Result<usize> {
        if reversible {
            let mut tape = ReversibleTape::new();
            let features = vit.forward_reversible(x, &mut tape)?;
            let loss = ce.forward(fc.forward(features), y);
            let mut grads = tape.backward(loss)?;
            Ok(grads.params(&vit).len() + grads.params(&fc).len())
        } else {
            let features = vit.forward(x, &[])?.features;
            let loss = ce.forward(fc.forward(features), y);
            let mut g = loss.backward();
            Ok(burn::optim::GradientsParams::from_module(&mut g, &vit).len())
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    if grads? == 0 {
        return Err(Error::Config("no gradients were produced".into()));
    }
    Ok((peak.unwrap_or(0), secs))
}

fn main() -> Result<(), e2e_tal::Report> {
    // Freed activations stay with the process for the next step (no page faults per step).
    e2e_tal::memory::retain_freed_memory();
    e2e_tal::io::progress_to_stdout();
    let a = Args::parse();
    let device = backend::device(a.backend)?;
    let tal = TrainConfig::new();
    let weights = match &a.weights {
        Some(w) => w.clone(),
        None => pretrained_backbone(&tal, false, &device)?,
    };

    println!(
        "\nOne training step (clip classification, {} clips), plain autodiff vs reversible:",
        a.batch_size
    );
    println!("| depth | plain (MiB) | reversible (MiB) | ratio | plain (s) | reversible (s) |");
    println!("|---|---|---|---|---|---|");
    for &d in &a.depths {
        let (pm, pt) = step_cost(&tal.backbone, d, a.batch_size, false, &device)?;
        let (rm, rt) = step_cost(&tal.backbone, d, a.batch_size, true, &device)?;
        println!(
            "| {d} | {} | {} | {:.2} | {pt:.2} | {rt:.2} |",
            mib(pm),
            mib(rm),
            rm as f64 / pm.max(1) as f64
        );
    }

    // Rewire the pretrained network: same parameters, different function.
    let mut backbone = tal.backbone.init(&device);
    backbone.load(&weights, CheckpointFamily::Native)?;
    let Backbone::Vit(vit) = &backbone else {
        return Err(Error::Config("the example rewires ViT backbones".into()).into());
    };
    let base = PretrainConfig::new()
        .with_backbone(tal.backbone.clone())
        .with_clips(tal.clips.clone());
    let data = load_dataset(
        &a.data,
        &SynthConfig::new()
            .with_seed(PRETRAIN_SYNTH_SEED)
            .with_videos(PRETRAIN_VIDEOS),
        base.clips.span(),
    )?;
    let first = &data.videos[0];
    let op = tal.eval_op(first)?;
    let probe = first
        .read_clips(&base.clips, 0, 4, &op)?
        .clips(&base.clips, 0, 4, &device)?;
    let plain = vit.forward(probe.clone(), &[])?.features;
    let rewired = vit.forward_rewired_inference(probe)?;
    let change = (rewired - plain.clone()).abs().max().into_scalar::<f32>()
        / plain.abs().max().into_scalar::<f32>();
    println!(
        "\nrewired {} (same {} parameters): features change by {:.0}% of their range; fine-tuning \
         {} steps with the reversible backward",
        weights.display(),
        backbone.num_params(),
        100.0 * change,
        a.steps
    );
    let cfg = rewired_recipe(base)
        .with_steps(a.steps)
        .with_lr(a.lr)
        .with_batch_size(a.batch_size);
    let out = pretrain_from(&cfg, &data, backbone, true, &device)?;
    println!(
        "loss {:.3} (first {} steps) -> {:.3} (last); held-out clip accuracy {} in {:.0}s",
        out.losses.first().copied().unwrap_or(f32::NAN),
        (a.steps / 20).max(1),
        out.losses.last().copied().unwrap_or(f32::NAN),
        out.val_accuracy
            .map_or("n/a".into(), |v| format!("{:.1}%", 100.0 * v)),
        out.seconds
    );
    out.backbone.save(&a.out)?;
    println!(
        "rewired weights: {} (train a detector on them: e2e-tal train --mode reversible --weights {})",
        a.out.display(),
        a.out.display()
    );
    Ok(())
}
