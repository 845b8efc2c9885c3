//! `e2e-tal train`: the main job, a thin layer over `e2e_tal::train`.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Instant;

use burn::tensor::Device;
use clap::ValueEnum;
use clap::builder::PossibleValue;
use e2e_tal::backbone::{Backbone, BackbonePreset};
use e2e_tal::backend::{self, BackendKind};
use e2e_tal::data::LoFiSampler;
use e2e_tal::data::{Subset, SynthConfig};
use e2e_tal::distributed::Ranks;
use e2e_tal::eval::{EvalOptions, ThresholdSet, evaluate};
use e2e_tal::pipeline::{FrameTransformConfig, LoaderConfig};
use e2e_tal::precision::Precision;
use e2e_tal::train::{BackboneConfig, Checkpoint, RunOptions, TalDataset, TrainConfig, TrainMode};
use e2e_tal::weights::CheckpointFamily;
use e2e_tal::workspace::{load_dataset, pretrained_backbone};
use e2e_tal::{Error, Result};

use super::print_report;

/// `--backbone`: the small synthetic ViT the defaults are tuned for, or a published preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackboneArg {
    Synthetic,
    Preset(BackbonePreset),
}

impl ValueEnum for BackboneArg {
    fn value_variants<'a>() -> &'a [Self] {
        static ALL: LazyLock<Vec<BackboneArg>> = LazyLock::new(|| {
            std::iter::once(BackboneArg::Synthetic)
                .chain(BackbonePreset::ALL.map(BackboneArg::Preset))
                .collect()
        });
        &ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        match self {
            Self::Synthetic => Some(PossibleValue::new("synthetic")),
            Self::Preset(p) => p.to_possible_value(),
        }
    }
}

impl std::fmt::Display for BackboneArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Synthetic => f.write_str("synthetic"),
            Self::Preset(p) => f.write_str(p.name()),
        }
    }
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Dataset folder with annotations.json and frames/<video>/ or videos/<video>.mp4 (the
    /// synthetic benchmark is generated there with default settings when annotations.json is
    /// missing).
    #[arg(long, default_value = "data/synth")]
    data: PathBuf,
    /// Run folder (checkpoints, features, predictions, metrics); default runs/<mode>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Training mode (default full).
    #[arg(long, value_enum)]
    mode: Option<TrainMode>,
    /// Backbone (default synthetic, the small ViT the defaults are tuned for).
    #[arg(long, value_enum)]
    backbone: Option<BackboneArg>,
    /// Backbone checkpoint to start from (.safetensors or .pth). Without it (and without
    /// --from-scratch) the backbone starts from clip-classification pretraining on a separate
    /// synthetic set (`e2e-tal pretrain`, run first if runs/pretrain has no weights for it).
    /// With --features: a feature run (`train --features`, `weights import-actionformer`) whose
    /// head to fine-tune, with its configuration unless --config is given.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Start the backbone from random weights instead of the pretrained ones.
    #[arg(long, conflicts_with = "weights")]
    from_scratch: bool,
    /// Key map of --weights (default: the preset's family; native for e2e-tal's layout).
    #[arg(long, value_enum)]
    family: Option<CheckpointFamily>,
    /// Full configuration as JSON (a run's config.json); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak learning rate of the head / adapters.
    #[arg(long, allow_negative_numbers = true)]
    lr_head: Option<f64>,
    /// Peak learning rate of the backbone.
    #[arg(long, allow_negative_numbers = true)]
    lr_backbone: Option<f64>,
    /// At most this many clips per training step: a random window of the video, its ground
    /// truth clipped to it (without it: the configuration's `max_train_clips`, whole videos
    /// by default).
    #[arg(long, visible_alias = "max-train-clips", value_parser = positive)]
    max_clips: Option<usize>,
    /// Every video as this many clips spread evenly over its whole length (ActivityNet
    /// practice: a fixed-length feature sequence); default: a clip every snippet stride.
    #[arg(long, value_parser = at_least_two)]
    clips_per_video: Option<usize>,
    /// Temporal tokens as the head's features (AdaTAD's layout): clips tile the video and each
    /// gives one feature per temporal position of the backbone's last layer, pooled over space
    /// only (a 16-frame ViT clip: 8 positions, 2 frames apart). Default: one feature per clip.
    #[arg(long, conflicts_with = "clips_per_video")]
    temporal_tokens: bool,
    /// Videos per optimisation step (the batch): one padded batch through the head in mode
    /// head-only, micro-batches with accumulated gradients in the other modes (a step's memory
    /// stays that of one video).
    #[arg(long, value_parser = positive)]
    videos_per_step: Option<usize>,
    /// Side of the square frames the backbone reads (default: the backbone's input size, e.g.
    /// 224 for the ViT presets; AdaTAD trains at 160); must be a multiple of its patch size.
    #[arg(long, value_parser = positive)]
    frame_size: Option<usize>,
    /// Worker threads decoding the next steps' frames while a step computes (0: decode on the
    /// training thread). Results do not depend on it.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Steps decoded ahead at most (the input queue's bound).
    #[arg(long, default_value_t = 2, value_parser = positive)]
    prefetch: usize,
    /// Keep an EMA of the weights with this decay (e.g. 0.999 for long runs) and evaluate it.
    #[arg(long, allow_negative_numbers = true)]
    ema_decay: Option<f64>,
    /// Evaluate every N epochs (0: only at the end).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Low-fidelity sampling of the training steps (LoFi-E2E; default full).
    #[arg(long, value_enum)]
    lofi: Option<LoFiSampler>,
    /// LoFi-E2E budget mode: train at the highest fidelity among r_t in {1,2,4} x r_s in {1,
    /// sqrt 2, 2} whose training step on the longest training video fits this many bytes (e.g.
    /// 300MiB, 2GiB; a bare number is MiB): the memory planner predicts each (`e2e-tal plan`),
    /// one trial step confirms the choice. Prints both.
    #[arg(long, conflicts_with = "lofi")]
    memory_budget: Option<String>,
    /// Head-only / adapter: run the frozen backbone at every step instead of extracting its
    /// outputs once (bounded memory for big datasets; head-only's memory-comparable baseline
    /// for LoSA; allows --augment and --lofi in these modes).
    #[arg(long)]
    no_feature_cache: bool,
    /// After training backbone + head (LoFi-E2E stage 2, in OUT/stage2), freeze the backbone and
    /// train a new head at full fidelity on its features (stage 3, in OUT/stage3).
    #[arg(long, conflicts_with = "resume")]
    retrain_head: bool,
    /// Augment each step's clips as the synthetic benchmark allows (random channel
    /// permutation, roll by up to 16 pixels; the same for all clips of a step).
    #[arg(long)]
    augment: bool,
    /// Run the ViT rewired into its reversible form also in modes full / head-only (mode
    /// reversible always does).
    #[arg(long)]
    rewired: bool,
    /// Mode full: activation checkpointing per block (each block's input kept, the block
    /// recomputed in the backward; `torch.utils.checkpoint` per block, AdaTAD's `with_cp`).
    #[arg(long)]
    checkpointing: bool,
    /// Precision of the backbone's residual branches (f32 master weights either way; f16
    /// scales the loss dynamically).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Mode reversible: check the reconstruction every N steps (0: never; default 10).
    #[arg(long)]
    drift_every: Option<usize>,
    /// Mode reversible: relative drift at which a checked step takes its gradients from an
    /// ordinary autodiff recompute (default 1e-4; 0 always does).
    #[arg(long)]
    drift_tolerance: Option<f64>,
    /// Continue the run in --out from its checkpoint. Flags that contradict the checkpoint's
    /// settings are an error; --epochs may change (the new length is recorded).
    #[arg(long)]
    resume: bool,
    /// Start a new run in an --out folder that holds one, removing that run's outputs
    /// (checkpoints, predictions, metrics, weights) first.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Stop after this many steps in total (a checkpoint is written; continue with --resume).
    #[arg(long)]
    stop_after_steps: Option<usize>,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Train ActionFormer's head on pre-extracted features in this folder
    /// (`<prefix><id>.npy`, `[T, C]`, float32 or float16) instead of videos: ActionFormer's
    /// recipe by default; --config may be ActionFormer's YAML. Needs --dataset.
    #[arg(long, requires = "dataset", conflicts_with_all = ["resume", "retrain_head"])]
    features: Option<PathBuf>,
    /// The annotations of --features (ActivityNet JSON; ActionFormer's files load as they are).
    #[arg(long, requires = "features")]
    dataset: Option<PathBuf>,
}

/// `train --features`: flags of video training are refused by name.
fn train_features(a: &TrainArgs, features: &Path, device: &Device) -> Result<()> {
    let video_only = [
        (a.mode.is_some(), "--mode"),
        (a.backbone.is_some(), "--backbone"),
        (a.from_scratch, "--from-scratch"),
        (a.family.is_some(), "--family"),
        (a.lr_backbone.is_some(), "--lr-backbone"),
        (a.max_clips.is_some(), "--max-clips"),
        (a.clips_per_video.is_some(), "--clips-per-video"),
        (a.temporal_tokens, "--temporal-tokens"),
        (a.frame_size.is_some(), "--frame-size"),
        (a.lofi.is_some(), "--lofi"),
        (a.memory_budget.is_some(), "--memory-budget"),
        (a.no_feature_cache, "--no-feature-cache"),
        (a.augment, "--augment"),
        (a.rewired, "--rewired"),
        (a.checkpointing, "--checkpointing"),
        (a.precision.is_some(), "--precision"),
        (a.drift_every.is_some(), "--drift-every"),
        (a.drift_tolerance.is_some(), "--drift-tolerance"),
        (a.stop_after_steps.is_some(), "--stop-after-steps"),
    ];
    if let Some((_, flag)) = video_only.iter().find(|(given, _)| *given) {
        return Err(Error::Config(format!(
            "{flag} applies to training on videos, not on --features"
        )));
    }
    super::features::train(
        super::features::FeatureTrainFlags {
            features: features.to_path_buf(),
            dataset: a
                .dataset
                .clone()
                .expect("clap requires --dataset with --features"),
            config: a.config.clone(),
            out: a
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs/features")),
            epochs: a.epochs,
            seed: a.seed,
            ema_decay: a.ema_decay,
            eval_every: a.eval_every,
            batch_size: a.videos_per_step,
            lr: a.lr_head,
            overwrite: a.overwrite,
            quiet: a.quiet,
            init: a.weights.clone(),
        },
        device,
    )
}

/// Apply the configuration flags of `a` to `cfg` (a new run's starting configuration, or a
/// checkpoint's when resuming, to see what the flags would change).
fn apply_flags(a: &TrainArgs, cfg: &mut TrainConfig) -> Result<()> {
    if let Some(m) = a.mode {
        cfg.mode = m;
    }
    match a.backbone {
        None => {}
        Some(BackboneArg::Synthetic) => cfg.backbone = BackboneConfig::synthetic_vit(),
        Some(BackboneArg::Preset(p)) => {
            cfg.backbone = BackboneConfig::preset(p);
            // Real video: the field's training crops and flips, and a VideoMAE's clips as it
            // was pretrained on them (16 consecutive frames; a clip every 4 frames).
            let size = cfg.transform.size;
            cfg.transform = FrameTransformConfig::field().with_size(size);
            if let BackboneConfig::Vit(v) = &cfg.backbone {
                cfg.clips.clip_frames = v.num_frames;
                cfg.clips.frame_stride = 1;
            }
        }
    }
    if let Some(n) = a.max_clips {
        cfg.max_train_clips = n;
    }
    if let Some(n) = a.clips_per_video {
        cfg.clips.fixed_clips = n;
    }
    if a.temporal_tokens {
        cfg.clips = cfg.backbone.temporal_tokens(&cfg.clips)?;
    }
    if let Some(n) = a.videos_per_step {
        cfg.videos_per_step = n;
    }
    if let Some(s) = a.frame_size {
        cfg.transform.size = Some(s);
    }
    macro_rules! set {
        ($($f:ident),*) => { $(if let Some(v) = a.$f { cfg.$f = v; })* };
    }
    set!(
        epochs,
        lr_head,
        lr_backbone,
        eval_every,
        ema_decay,
        precision,
        seed
    );
    if let Some(l) = a.lofi {
        cfg.lofi.mode = l.mode();
    }
    if let Some(n) = a.drift_every {
        cfg.drift.every = n;
    }
    if let Some(t) = a.drift_tolerance {
        cfg.drift.tolerance = t;
    }
    if a.no_feature_cache {
        cfg.cache_features = false;
    }
    if a.augment {
        cfg.augment = e2e_tal::data::AugmentConfig::synthetic();
    }
    if a.rewired {
        cfg.rewired = true;
    }
    if a.checkpointing {
        cfg.checkpointing = true;
    }
    Ok(())
}

/// The flags of `a` that contradict the checkpoint configuration `ck` of a resumed run (all
/// but --epochs, which may change), each with both values.
fn resume_conflicts(a: &TrainArgs, ck: &TrainConfig) -> Result<Vec<String>> {
    let mut wanted = ck.clone();
    apply_flags(a, &mut wanted)?;
    let (Ok(serde_json::Value::Object(w)), Ok(serde_json::Value::Object(c))) =
        (serde_json::to_value(&wanted), serde_json::to_value(ck))
    else {
        return Ok(vec!["the configuration cannot be compared".into()]);
    };
    let mut out: Vec<String> = w
        .iter()
        .filter(|(k, v)| k.as_str() != "epochs" && c.get(k.as_str()) != Some(v))
        .map(|(k, v)| {
            let flag = match k.as_str() {
                "cache_features" => "--no-feature-cache".to_string(),
                "transform" => "--frame-size".into(),
                "clips" => "--clips-per-video / --temporal-tokens".into(),
                "lofi" => "--lofi".into(),
                "drift" => "--drift-every / --drift-tolerance".into(),
                other => format!("--{}", other.replace('_', "-")),
            };
            let short = |x: &serde_json::Value| {
                let t = x.to_string();
                if t.len() > 60 {
                    format!("{}...", &t[..57])
                } else {
                    t
                }
            };
            format!(
                "{flag} asks for {} where the run has {}",
                short(v),
                c.get(k.as_str()).map_or("nothing".into(), short)
            )
        })
        .collect();
    for (given, flag) in [
        (a.weights.is_some(), "--weights"),
        (a.from_scratch, "--from-scratch"),
        (a.family.is_some(), "--family"),
        (a.config.is_some(), "--config"),
        (a.memory_budget.is_some(), "--memory-budget"),
    ] {
        if given {
            out.push(format!(
                "{flag} only applies when a run starts (the checkpoint holds the weights and \
                 settings)"
            ));
        }
    }
    Ok(out)
}

/// The input pipeline of `--workers` and `--prefetch`.
fn loader(a: &TrainArgs) -> LoaderConfig {
    LoaderConfig::new()
        .with_workers(a.workers)
        .with_prefetch(a.prefetch)
}

/// A whole number of at least 1 (`--max-clips 0` would be a window of no clips).
fn positive(s: &str) -> std::result::Result<usize, String> {
    at_least(s, 1)
}

/// A whole number of at least 2 (one clip per video has no spacing to put on a timeline).
fn at_least_two(s: &str) -> std::result::Result<usize, String> {
    at_least(s, 2)
}

/// `s` as a whole number of at least `min`.
fn at_least(s: &str, min: usize) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n < min => Err(format!("must be at least {min}")),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// The run folder of `mode` when `--out` is not given.
fn default_out(mode: TrainMode) -> PathBuf {
    PathBuf::from("runs").join(mode.to_string())
}

pub fn run(a: TrainArgs) -> Result<()> {
    let ranks = super::ranks::join()?;
    let result = run_on(a, &ranks);
    super::ranks::finish(&ranks, result)
}

/// `train` as one of `ranks` (one process, or a rank of an MPI job).
fn run_on(a: TrainArgs, ranks: &Ranks) -> Result<()> {
    let start = Instant::now();
    // One device per rank: the ranks on a machine take its GPUs in local-rank order.
    let device = match (ranks.is_distributed(), e2e_tal::distributed::local_rank()) {
        (true, Some(local)) => backend::device_numbered(a.backend, local)?,
        _ => backend::device(a.backend)?,
    };
    if let Some(f) = &a.features {
        if ranks.is_distributed() {
            return Err(Error::Config(
                "training on pre-extracted features (--features) runs in one process; start it \
                 without mpirun/srun"
                    .into(),
            ));
        }
        return train_features(&a, f, &device);
    }
    if a.resume {
        return resume(&a, ranks, &device, start);
    }
    let mut cfg = match &a.config {
        Some(p) => e2e_tal::train::read_config(p, &TrainConfig::new())?,
        None => TrainConfig::new(),
    };
    apply_flags(&a, &mut cfg)?;
    cfg.validate()?;
    let mode = cfg.mode;
    let out = a.out.clone().unwrap_or_else(|| default_out(mode));
    // Refuse an existing run before any work; with --overwrite its outputs are removed only
    // once the data and weights have loaded (below, or in `train`).
    if !a.overwrite {
        e2e_tal::train::prepare_run_folder(&out, false)?;
    }
    let opts = RunOptions {
        out_dir: out.clone(),
        quiet: a.quiet,
        stop_after_steps: a.stop_after_steps,
        overwrite: a.overwrite,
        loader: loader(&a),
        ranks: ranks.clone(),
    };
    // Rank 0 first: it generates a missing synthetic dataset or pretrained backbone, which the
    // other ranks then read.
    let data = ranks.root_first(|| dataset(&a.data, cfg.clips.span()))?;
    let backbone = ranks.root_first(|| start_backbone(&a, &cfg, &device))?;
    if let Some(b) = &a.memory_budget {
        if ranks.is_distributed() {
            return Err(Error::Config(
                "--memory-budget measures one process's step; choose the fidelity with \
                 `e2e-tal plan` and pass it as --lofi to a run on several ranks"
                    .into(),
            ));
        }
        let choice = budget_choice(&cfg, &data, &backbone, b, &device)?;
        outln!("{choice}")?;
        cfg.lofi.mode = choice.mode();
    }
    outln!(
        "training: mode {mode}, {} epochs, backbone {}, run folder {}",
        cfg.epochs,
        a.backbone.unwrap_or(BackboneArg::Synthetic),
        out.display()
    )?;
    if !a.retrain_head {
        let outcome = e2e_tal::train::train(cfg.clone(), &data, backbone, &opts, &device)?;
        return report_outcome(&outcome, &data, &cfg, &out, start);
    }
    let prepared = match ranks.is_root() {
        true => e2e_tal::train::prepare_run_folder(&out, a.overwrite),
        false => Ok(()),
    };
    ranks.all_ok(prepared)?;
    // LoFi-E2E stages 2 and 3: report stage 2, then continue with stage 3's run.
    let st = e2e_tal::train::end_to_end_then_head(
        cfg.clone(),
        cfg.epochs,
        &data,
        backbone,
        &opts,
        &device,
    )?;
    if let Some((_, r)) = &st.end_to_end.evaluation {
        outln!(
            "stage 2 ({mode}, end to end) validation avg mAP {:.2}% -> {}",
            100.0 * r.average_map,
            out.join("stage2").display()
        )?;
    }
    outln!("stage 3: head retrained at full fidelity on the frozen stage-2 backbone")?;
    let head_cfg = cfg.with_mode(TrainMode::HeadOnly);
    report_outcome(&st.head, &data, &head_cfg, &out.join("stage3"), start)
}

/// `--memory-budget`: the fidelity the memory planner predicts to fit, confirmed by a probe step
/// (more only when a measurement exceeds the budget), run in a scratch folder of the
/// system's temporary directory (removed afterwards), so a refused budget leaves `out` as it
/// was: no half-made run, and an existing run untouched (`--overwrite` removes its outputs only
/// once training starts).
fn budget_choice(
    cfg: &TrainConfig,
    data: &TalDataset,
    backbone: &Backbone,
    budget: &str,
    device: &Device,
) -> Result<e2e_tal::train::BudgetChoice> {
    let bytes = e2e_tal::train::parse_bytes(budget)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let scratch =
        std::env::temp_dir().join(format!("e2e-tal-budget-{}-{nanos}", std::process::id()));
    let candidates = e2e_tal::train::candidate_fidelities();
    let choice =
        e2e_tal::train::plan_fidelity(cfg, data, backbone, bytes, &candidates, &scratch, device);
    let _ = std::fs::remove_dir_all(&scratch);
    choice
}

/// `train --resume`: continue the run in `--out` (or the mode's default folder) where its last
/// checkpoint stopped, refusing flags that contradict its configuration.
fn resume(a: &TrainArgs, ranks: &Ranks, device: &Device, start: Instant) -> Result<()> {
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| default_out(a.mode.unwrap_or_default()));
    let ck = Checkpoint::load(&out)?;
    let conflicts = resume_conflicts(a, &ck.meta.config)?;
    if !conflicts.is_empty() {
        return Err(Error::ResumeConflict {
            path: out,
            conflicts: conflicts.join("; "),
        });
    }
    let span = ck.meta.config.clips.span();
    let data = ranks.root_first(|| load_dataset(&a.data, &SynthConfig::new(), span))?;
    outln!(
        "resuming {} at epoch {}, step {}",
        out.display(),
        ck.meta.state.epoch + 1,
        ck.meta.state.global_step
    )?;
    let opts = RunOptions {
        out_dir: out.clone(),
        quiet: a.quiet,
        stop_after_steps: a.stop_after_steps,
        overwrite: false,
        loader: loader(a),
        ranks: ranks.clone(),
    };
    let changes = e2e_tal::train::ResumeChanges { epochs: a.epochs };
    let mut cfg = ck.meta.config.clone();
    let outcome = e2e_tal::train::resume_with(ck, &data, &opts, &changes, device)?;
    cfg.epochs = a.epochs.unwrap_or(cfg.epochs);
    report_outcome(&outcome, &data, &cfg, &out, start)
}

/// The dataset in `dir` (the synthetic benchmark generated there when missing), announced.
fn dataset(dir: &Path, min_frames: usize) -> Result<TalDataset> {
    let t = Instant::now();
    let data = load_dataset(dir, &SynthConfig::new(), min_frames)?;
    outln!(
        "dataset: {} ({} training, {} validation videos, {} classes) loaded in {:.1}s",
        dir.display(),
        data.indices(Subset::Training).len(),
        data.indices(Subset::Validation).len(),
        data.classes.len(),
        t.elapsed().as_secs_f64()
    )?;
    Ok(data)
}

/// The backbone a new run starts from: `--weights`, the cached pretrained backbone (made first
/// when missing), or random weights with `--from-scratch`.
fn start_backbone(a: &TrainArgs, cfg: &TrainConfig, device: &Device) -> Result<Backbone> {
    let weights = match (&a.weights, a.from_scratch) {
        (Some(w), _) => Some(w.clone()),
        (None, false) => Some(pretrained_backbone(cfg, a.quiet, device)?),
        (None, true) => None,
    };
    device.seed(cfg.seed);
    let mut backbone = cfg.backbone.init(device);
    if let Some(w) = &weights {
        let family = match (a.family, a.backbone.unwrap_or(BackboneArg::Synthetic)) {
            (Some(f), _) => f,
            (None, BackboneArg::Preset(p)) => p.default_family(),
            (None, BackboneArg::Synthetic) => CheckpointFamily::Native,
        };
        let r = backbone.load(w, family)?;
        outln!("backbone: {} tensors from {}", r.applied.len(), w.display())?;
        for n in &r.notes {
            e2e_tal::io::warning(format_args!("note: {}: {n}", w.display()));
        }
    }
    Ok(backbone)
}

/// Print what a finished (or stopped) run produced and save a trained backbone's weights.
fn report_outcome(
    outcome: &e2e_tal::train::TrainOutcome,
    data: &TalDataset,
    cfg: &TrainConfig,
    out: &Path,
    start: Instant,
) -> Result<()> {
    // Rank 0 reports and writes the weights for all.
    if super::ranks::silent() {
        return Ok(());
    }
    if let Some(t) = outcome.first_step_after {
        outln!(
            "input pipeline: first step done {t:.1}s after the run started; steps waited \
             {:.1}s for data in all",
            outcome.data_wait
        )?;
    }
    if let Some(b) = outcome.peak_step_bytes {
        outln!(
            "peak memory of a training step: {} MiB",
            e2e_tal::memory::mib(b)
        )?;
    }
    // Files first: a closed standard output below must not cost the trained weights.
    let weights = match &outcome.evaluation {
        Some(_) if cfg.mode.trains_backbone() => {
            // The adapted backbone, for `--mode head-only --weights` (LoFi stage 3).
            let path = out.join("backbone.safetensors");
            let trained = outcome.ema.as_ref().unwrap_or(&outcome.model);
            trained.backbone.save(&path)?;
            Some(path)
        }
        _ => None,
    };
    match &outcome.evaluation {
        None if outcome.state.epoch >= cfg.epochs => outln!(
            "finished after {} steps; the dataset has no validation videos to evaluate",
            outcome.state.global_step
        )?,
        None => outln!(
            "stopped after {} steps; continue with --resume",
            outcome.state.global_step
        )?,
        Some((preds, report)) => {
            outln!("\nvalidation mAP, THUMOS thresholds:")?;
            print_report(report, false)?;
            let anet = evaluate(
                &data.ground_truth,
                preds,
                &EvalOptions {
                    subset: Some(Subset::Validation),
                    thresholds: ThresholdSet::ActivityNet.values(),
                },
            )?;
            outln!(
                "(ActivityNet thresholds 0.5:0.95: average {:.2}%; mode {}, {} epochs)",
                100.0 * anet.average_map,
                cfg.mode,
                cfg.epochs
            )?;
            outln!("predictions: {}", out.join("predictions.json").display())?;
            if let Some(path) = &weights {
                outln!("backbone weights: {}", path.display())?;
            }
        }
    }
    outln!("total {:.1}s", start.elapsed().as_secs_f64())?;
    if let Some(b) = e2e_tal::memory::peak_rss() {
        outln!("peak resident memory: {} MiB", e2e_tal::memory::mib(b))?;
    }
    Ok(())
}
