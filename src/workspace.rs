//! The on-disk workspace of the built-in benchmark, shared by the CLI and the examples: datasets
//! loaded from a folder (the synthetic benchmark generated there when missing) and
//! clip-classification-pretrained backbones cached in `runs/` and reused while their report
//! matches the configuration.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::data::{ANNOTATIONS_FILE, media_dir};
use crate::data::{GroundTruth, SynthConfig};
use crate::error::{Error, Result};
use crate::train::{PretrainConfig, TalDataset, TrainConfig};
use crate::weights::CheckpointFamily;

/// Load the dataset in `data`, generating the synthetic benchmark `synth` there first when it
/// has no annotations; every video must hold at least `min_frames` frames.
pub fn load_dataset(data: &Path, synth: &SynthConfig, min_frames: usize) -> Result<TalDataset> {
    if data.is_file() {
        return Err(Error::EmptyInput {
            path: data.to_path_buf(),
            reason: format!(
                "is a file; a dataset is the folder that holds {ANNOTATIONS_FILE} and frames/ \
                 or videos/ (give its folder)"
            ),
        });
    }
    let ann = data.join(ANNOTATIONS_FILE);
    let gt = if ann.is_file() {
        GroundTruth::from_json_file(&ann)?
    } else {
        // Where the folder holds other files, load_or_generate refuses and says why.
        if synth.can_generate_into(data) {
            say!(
                "{} not found: generating a synthetic benchmark (seed {}, {} videos) there",
                ann.display(),
                synth.seed,
                synth.videos
            );
        }
        synth.load_or_generate(data)?.ground_truth
    };
    TalDataset::load(&gt, &media_dir(data), &[], None, min_frames)
}

/// Seed of the synthetic set used for pretraining (the TAL benchmark uses 0).
pub const PRETRAIN_SYNTH_SEED: u64 = 1;

/// Where and on what a backbone is pretrained.
pub struct PretrainJob<'a> {
    /// Dataset folder (generated with seed [`PRETRAIN_SYNTH_SEED`] if missing).
    pub data: &'a Path,
    /// Videos of a generated set.
    pub videos: usize,
    /// Output weights; a `.json` report goes next to them.
    pub out: &'a Path,
    /// Start from these weights (this crate's layout) instead of random ones.
    pub init: Option<&'a Path>,
    /// No progress lines.
    pub quiet: bool,
}

/// Pretrain `cfg.backbone` by clip classification and write its weights and report.
pub fn pretrain_to(cfg: &PretrainConfig, job: &PretrainJob, device: &Device) -> Result<()> {
    let synth = SynthConfig::new()
        .with_seed(PRETRAIN_SYNTH_SEED)
        .with_videos(job.videos);
    let data = load_dataset(job.data, &synth, cfg.clips.span())?;
    device.seed(cfg.seed);
    say!(
        "pretraining the backbone (clip classification, {} steps of {} clips) on {}",
        cfg.steps,
        cfg.batch_size,
        job.data.display()
    );
    let mut backbone = cfg.backbone.init(device);
    if let Some(w) = job.init {
        backbone.load(w, CheckpointFamily::Native)?;
        say!("starting from {}", w.display());
    }
    let out = crate::train::pretrain_from(cfg, &data, backbone, job.quiet, device)?;
    say!(
        "pretrained on {} clips ({} validation) in {:.1}s (waited {:.1}s for data): train accuracy (last 10% of steps) {:.1}%{}",
        out.clips.0,
        out.clips.1,
        out.seconds,
        out.input_wait_seconds,
        100.0 * out.train_accuracy,
        out.val_accuracy
            .map(|v| format!(", validation accuracy {:.1}%", 100.0 * v))
            .unwrap_or_default()
    );
    if let Some(dir) = job.out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    out.backbone.save(job.out)?;
    let report = serde_json::json!({
        "config": cfg,
        "data": job.data,
        "train_clips": out.clips.0,
        "val_clips": out.clips.1,
        "train_accuracy": out.train_accuracy,
        "val_accuracy": out.val_accuracy,
        "losses": out.losses,
        "seconds": out.seconds,
    });
    crate::io::write_json_atomic(&job.out.with_extension("json"), &report)?;
    say!("backbone weights: {}", job.out.display());
    Ok(())
}

/// Default location of the pretrained backbone `train` starts from.
pub const PRETRAINED: &str = "runs/pretrain/backbone.safetensors";

/// Default location of the rewired (reversible) fine-tuned backbone modes `reversible` and
/// `--rewired` start from.
pub const PRETRAINED_REWIRED: &str = "runs/pretrain-rewired/backbone.safetensors";

/// Steps of the rewired fine-tuning (Re2TAL: rewire the pretrained network, then fine-tune it
/// on the classification task so it recovers before TAL).
pub const REWIRED_STEPS: usize = 300;

/// Re2TAL's short fine-tune after rewiring, as pretraining settings: `base` (the ordinary
/// network's pretraining) rewired, [`REWIRED_STEPS`] steps, peak LR 5e-4 after 20 warm-up
/// steps, trained with the reversible step.
pub fn rewired_recipe(base: PretrainConfig) -> PretrainConfig {
    base.with_rewired(true)
        .with_steps(REWIRED_STEPS)
        .with_warmup_steps(20)
        .with_lr(5e-4)
}

/// The pretrained backbone for `cfg`: [`PRETRAINED`], and for a rewired ViT
/// [`PRETRAINED_REWIRED`] fine-tuned from it. Each is reused when its report says it was made
/// for the same backbone, clip sampling and form, and made (default settings) otherwise.
pub fn pretrained_backbone(cfg: &TrainConfig, quiet: bool, device: &Device) -> Result<PathBuf> {
    let base = PretrainConfig::new()
        .with_backbone(cfg.backbone.clone())
        // Pretraining cuts clips at every frame; how a TAL run spaces them does not matter.
        .with_clips(cfg.clips.clone().with_fixed_clips(0));
    let ordinary = ensure_pretrained(Path::new(PRETRAINED), &base, None, quiet, device)?;
    if !cfg.uses_rewired_backbone() {
        return Ok(ordinary);
    }
    let rewired = rewired_recipe(base);
    ensure_pretrained(
        Path::new(PRETRAINED_REWIRED),
        &rewired,
        Some(&ordinary),
        quiet,
        device,
    )
}

fn ensure_pretrained(
    out: &Path,
    pcfg: &PretrainConfig,
    init: Option<&Path>,
    quiet: bool,
    device: &Device,
) -> Result<PathBuf> {
    let report = out.with_extension("json");
    if out.is_file() && report.is_file() {
        let r: serde_json::Value = crate::io::read_json(&report)?;
        let want = serde_json::to_value(pcfg).map_err(json_err)?;
        if ["backbone", "clips", "rewired"]
            .iter()
            .all(|k| r["config"][k] == want[k])
        {
            say!("backbone: pretrained weights {} (reused)", out.display());
            return Ok(out.to_path_buf());
        }
        say!(
            "{} was pretrained for another backbone, clip sampling or form: pretraining again",
            out.display()
        );
    }
    let job = PretrainJob {
        data: Path::new("data/synth-pretrain"),
        videos: PRETRAIN_VIDEOS,
        out,
        init,
        quiet,
    };
    pretrain_to(pcfg, &job, device)?;
    Ok(out.to_path_buf())
}

fn json_err(e: serde_json::Error) -> Error {
    Error::Config(format!("cannot serialise a configuration: {e}"))
}

/// Videos of the generated pretraining set.
pub const PRETRAIN_VIDEOS: usize = 160;
