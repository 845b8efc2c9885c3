//! `e2e-tal weights inspect|convert|import-actionformer`: PyTorch checkpoints.

use std::path::PathBuf;

use clap::Subcommand;
use e2e_tal::Result;
use e2e_tal::backbone::BackbonePreset;
use e2e_tal::backend;
use e2e_tal::weights::{self, CheckpointFamily};

#[derive(Subcommand)]
pub enum WeightsAction {
    /// List a checkpoint's tensors (and, with --family, where each one lands).
    Inspect {
        /// Checkpoint (.safetensors, or a PyTorch .pth / .pt).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Key map to show.
        #[arg(long, value_enum)]
        family: Option<CheckpointFamily>,
    },
    /// Load a checkpoint into a backbone preset through its key map and write it in e2e-tal's
    /// layout (load it later with family `native`).
    Convert {
        /// Backbone preset.
        #[arg(long, value_enum)]
        model: BackbonePreset,
        /// Checkpoint to read (.safetensors, or .pth/.pt).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Key map (default: the preset's usual family).
        #[arg(long, value_enum)]
        family: Option<CheckpointFamily>,
        /// Output .safetensors.
        #[arg(long)]
        out: PathBuf,
    },
    /// Import a trained ActionFormer checkpoint (`*.pth.tar` as its train.py saves it; the EMA
    /// weights it evaluates with) as a feature run that `infer --features` reads.
    ImportActionformer {
        /// ActionFormer checkpoint.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The ActionFormer YAML configuration it was trained with.
        #[arg(long)]
        config: PathBuf,
        /// Annotations giving the class names (`label_id` order).
        #[arg(long)]
        dataset: PathBuf,
        /// Run folder to write.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(action: WeightsAction) -> Result<()> {
    match action {
        WeightsAction::ImportActionformer {
            checkpoint,
            config,
            dataset,
            out,
        } => super::features::import(&checkpoint, &config, &dataset, &out),
        WeightsAction::Inspect { checkpoint, family } => {
            let map = family.map(CheckpointFamily::key_map);
            let tensors = weights::inspect(&checkpoint)?;
            for (key, dtype, shape) in &tensors {
                match &map {
                    Some(m) => outln!("{key} {dtype} {shape:?} -> {}", m.rename(key))?,
                    None => outln!("{key} {dtype} {shape:?}")?,
                }
            }
            let n: usize = tensors
                .iter()
                .map(|(_, _, s)| s.iter().product::<usize>())
                .sum();
            outln!("{} tensors, {n} values", tensors.len())
        }
        WeightsAction::Convert {
            model,
            checkpoint,
            family,
            out,
        } => {
            let family = family.unwrap_or(model.default_family());
            e2e_tal::io::check_output(&out, &[&checkpoint])?;
            let mut backbone = model.init(&backend::cpu_device());
            let report = backbone.load(&checkpoint, family)?;
            outln!(
                "loaded {} tensors into {} ({} ignored, {} unused)",
                report.applied.len(),
                model.name(),
                report.ignored.len(),
                report.unused.len()
            )?;
            for k in &report.unused {
                outln!("  unused: {k}")?;
            }
            for n in &report.notes {
                e2e_tal::io::warning(format_args!("note: {n}"));
            }
            backbone.save(&out)?;
            outln!("wrote {}", out.display())
        }
    }
}
