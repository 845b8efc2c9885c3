//! The training loop shared by every mode: one video per step (a random window of at most
//! `max_train_clips` clips, its frames decoded ahead by the input pipeline's workers),
//! AdamW with separate warm-up + cosine schedules for backbone and head, global gradient-norm
//! clipping, periodic evaluation, crash-safe checkpoints and exact resume.
//!
//! Why not burn-train's `Learner`: a step here is one variable-length video whose gradients
//! may come from the reversible pass (not `loss.backward()`), backbone and head have separate
//! optimizers and schedules, and resume must continue mid-epoch on the same data order; a
//! plain loop over library pieces says all of that directly and keeps the CI build small.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::checkpoint::{
    self, Checkpoint, CheckpointMeta, DriftLog, EpochLog, RanksLog, ScaleLog, TrainState,
};
use super::config::TrainConfig;
use super::data_parallel::{self, SumTime};
use super::dataset::TalDataset;
use super::ema::ema_update;
use super::lock::RunLock;
use super::loss_scale::LossScale;
use super::model::{Detector, TalModel, adapter_layers, materialize};
use super::plan::{Sampling, TrainPlan};
use super::schedule::WarmupCosine;
use super::step::{self, Computed, ModeStep, Objective, Window};
use crate::backbone::{Backbone, BackboneOutput};
use crate::data::ClipSamplingConfig;
use crate::data::annotations::{Predictions, Subset};
use crate::data::clips::ClipFrames;
use crate::data::lofi::Fidelity;
use crate::data::npy::FeatureSequence;
use crate::distributed::{Ranks, share};
use crate::error::{Error, Result};
use crate::eval::EvalReport;
use crate::optim::FusedAdamW;
use crate::pipeline::{ClipWindow, LoaderConfig, Prefetcher};
use crate::precision::{Precision, autocast};
use crate::reversible::SegmentDrift;
use crate::seed::mix;
use crate::tal::assign::assign;
use crate::tal::loss::LossNormalizer;

/// How a run is driven (not part of the model's configuration).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run folder: checkpoints, cached features, predictions, metrics.
    pub out_dir: PathBuf,
    /// No progress bar or per-epoch lines.
    pub quiet: bool,
    /// Stop (after writing a checkpoint) once this many steps have been taken in total.
    pub stop_after_steps: Option<usize>,
    /// Start a new run even where `out_dir` holds one, removing that run's outputs first
    /// ([`prepare_run_folder`]); without it [`train`] refuses such a folder.
    pub overwrite: bool,
    /// The input pipeline's workers and queue (results do not depend on them).
    pub loader: LoaderConfig,
    /// The processes training this model together ([`Ranks`]; one by default). Each takes its
    /// share of every step's videos; rank 0 alone writes the run folder and reports progress.
    pub ranks: Ranks,
}

/// What a run writes into its folder ([`prepare_run_folder`] removes these and nothing else).
pub const RUN_OUTPUTS: &[&str] = &[
    "checkpoint",
    "checkpoint.old",
    "checkpoint.tmp",
    "config.json",
    "metrics.json",
    "predictions.json",
    "features",
    "backbone.safetensors",
    "budget-probes",
    "stage2",
    "stage3",
];

/// Make `out` ready for a new run. A folder that already holds a run (any of
/// [`RUN_OUTPUTS`]) is refused unless `overwrite`, in which case exactly those outputs are
/// removed, so no stale predictions or weights stay beside the new run's.
pub fn prepare_run_folder(out: &Path, overwrite: bool) -> Result<()> {
    let present: Vec<&str> = RUN_OUTPUTS
        .iter()
        .copied()
        .filter(|name| out.join(name).symlink_metadata().is_ok())
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    if !overwrite {
        return Err(Error::WouldOverwrite {
            path: out.to_path_buf(),
            reason: format!(
                "it holds a run ({}); continue it with --resume, start over with --overwrite, \
                 or choose another --out",
                present.join(", ")
            ),
        });
    }
    // Only a run's own outputs go: the folder must hold the configuration a run writes first.
    let config = out.join("config.json");
    let is_run = config.symlink_metadata().is_ok_and(|m| m.is_file())
        && crate::io::read_json::<TrainConfig>(&config).is_ok();
    if !is_run {
        return Err(Error::WouldOverwrite {
            path: out.to_path_buf(),
            reason: format!(
                "it holds files named like a run's outputs ({}) but no run's config.json, so \
                 they are not a run's and --overwrite removes nothing; choose another --out",
                present.join(", ")
            ),
        });
    }
    for name in present {
        let p = out.join(name);
        remove_output(&p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// What a run produced.
pub struct TrainOutcome {
    /// The trained model (on the autodiff device).
    pub model: TalModel,
    /// The EMA of the weights (inference device), when `ema_decay > 0`; evaluation used it.
    pub ema: Option<TalModel>,
    /// Loop state at the end (history included).
    pub state: TrainState,
    /// Validation detections and mAP, when the run finished (not stopped early) and the
    /// dataset has validation videos.
    pub evaluation: Option<(Predictions, EvalReport)>,
    /// Peak bytes allocated during one training step (counting allocator installed only).
    pub peak_step_bytes: Option<usize>,
    /// The same over the steps after this run's first one (`None` with a single step). The
    /// first update allocates the optimizers' state, which stays allocated afterwards like
    /// the parameters: this is what each later step needs on top of it.
    pub steady_step_bytes: Option<usize>,
    /// Seconds this call's steps waited for their frames (the input pipeline's decoding that
    /// its workers had not done ahead of time).
    pub data_wait: f64,
    /// Seconds from the call to the end of its first step (`None` when it took none).
    pub first_step_after: Option<f64>,
}

/// Start a new run: build the model around `backbone` (fresh or with loaded weights) and train.
pub fn train(
    cfg: TrainConfig,
    data: &TalDataset,
    backbone: Backbone,
    opts: &RunOptions,
    device: &Device,
) -> Result<TrainOutcome> {
    cfg.validate()?;
    check_trainable(data, &cfg)?;
    data_parallel::check_batch(&opts.ranks, &cfg)?;
    // Rank 0 alone owns the run folder; every rank learns whether it could claim it.
    let claimed = match opts.ranks.is_root() {
        true => claim_run_folder(opts).map(Some),
        false => Ok(None),
    };
    let claimed = opts.ranks.all_ok(claimed)?;
    let device = device.clone().autodiff();
    let frame_size = cfg.frame_size();
    // Burn initialises parameters lazily, at first use: fix the backbone's values now (under
    // the caller's seed), then move it onto the autodiff device with gradients tracked.
    materialize(&backbone);
    let backbone = backbone.fork(&device).train();
    // The head's (and adapters') initial weights follow the run's seed.
    device.seed(mix(cfg.seed, u64::MAX));
    let model = TalModel::new(&cfg, backbone, data.classes.len(), frame_size, &device)?;
    materialize(&model);
    let fps = data.videos.first().map(|v| v.fps);
    let meta = CheckpointMeta {
        classes: data.classes.clone(),
        frame_size,
        fps: fps.filter(|&f| data.videos.iter().all(|v| (v.fps - f).abs() < 1e-9)),
        state: TrainState {
            epoch: 0,
            step_in_epoch: 0,
            global_step: 0,
            normalizer: LossNormalizer::new(&cfg.loss).value,
            epoch_loss_sum: 0.0,
            epoch_seconds: 0.0,
            epoch_data_wait: 0.0,
            epoch_sum_seconds: 0.0,
            epoch_wait_seconds: 0.0,
            epoch_drift: None,
            loss_scale: (cfg.precision == Precision::F16).then(|| LossScale::new(&cfg.loss_scale)),
            history: Vec::new(),
        },
        config: cfg,
    };
    let optims = new_optimizers(&meta.config);
    let ema = (meta.config.ema_decay > 0.0).then(|| model.valid());
    let outcome = run(meta, model, ema, optims, data, opts, &device);
    if let (Err(_), Some((existed, lock))) = (&outcome, claimed) {
        undo_failed_start(&opts.out_dir, existed, lock);
    }
    outcome
}

/// Make `opts.out_dir` this run's: never inside another run, a dataset or a frame folder;
/// locked before anything in it is removed or written; emptied of an old run's outputs with
/// `overwrite`. Returns whether the folder existed before, and the lock.
fn claim_run_folder(opts: &RunOptions) -> Result<(bool, RunLock)> {
    let parent = std::path::absolute(&opts.out_dir)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    if let Some(parent) = parent {
        crate::io::check_output_dir(&parent).map_err(|_| Error::WouldOverwrite {
            path: opts.out_dir.clone(),
            reason: format!(
                "{} is a run, a dataset or a frame folder, or lies inside one; make runs \
                 outside them",
                parent.display()
            ),
        })?;
    }
    let existed = opts.out_dir.exists();
    let lock = RunLock::acquire(&opts.out_dir)?;
    if let Err(e) = prepare_run_folder(&opts.out_dir, opts.overwrite) {
        lock.release_unused();
        return Err(e);
    }
    Ok((existed, lock))
}

/// Remove one of a run's outputs, a folder with its contents or a file.
fn remove_output(p: &Path) -> std::io::Result<()> {
    if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}

/// A new run that failed before its first checkpoint (a video that cannot be read, a
/// non-finite first loss) leaves nothing behind: [`prepare_run_folder`] made sure no run
/// output was there, so every one present now is this run's, and the folder goes too when the
/// run made it and nothing else is in it. A run with a checkpoint keeps everything: it resumes
/// once its input is mended.
fn undo_failed_start(out: &Path, existed: bool, lock: RunLock) {
    if out.join("checkpoint").exists() || out.join("checkpoint.old").exists() {
        return;
    }
    lock.release_unused();
    for name in RUN_OUTPUTS {
        // Best effort: the run's error is what the caller reports.
        let _ = remove_output(&out.join(name));
    }
    if !existed {
        let _ = std::fs::remove_dir(out);
    }
}

/// A dataset a run can learn from: some action to learn and some video to train on, at least
/// as many as a step takes. Errors name the dataset.
fn check_trainable(data: &TalDataset, cfg: &TrainConfig) -> Result<()> {
    if data.classes.is_empty() {
        return Err(Error::EmptyInput {
            path: data.source.clone(),
            reason: "no video of the dataset has an annotated action, so there is no class to \
                     learn"
                .into(),
        });
    }
    let n = data.indices(Subset::Training).len();
    if n == 0 {
        return Err(Error::EmptyInput {
            path: data.source.clone(),
            reason: "the dataset has no training videos (subset `training`)".into(),
        });
    }
    if cfg.videos_per_step > n {
        return Err(Error::EmptyInput {
            path: data.source.clone(),
            reason: format!(
                "videos_per_step (--videos-per-step) is {}, more than the dataset's {n} \
                 training videos",
                cfg.videos_per_step
            ),
        });
    }
    Ok(())
}

/// Settings a resumed run may change; everything else comes from its checkpoint.
#[derive(Debug, Clone, Default)]
pub struct ResumeChanges {
    /// Train to this many epochs in total instead of the checkpoint's (no fewer than it has
    /// finished). The learning-rate schedule follows the new length from the current step on,
    /// and the new value is recorded in the run's configuration and checkpoints.
    pub epochs: Option<usize>,
}

/// Continue the run whose checkpoint is in `opts.out_dir` on `data` (the same dataset).
pub fn resume(data: &TalDataset, opts: &RunOptions, device: &Device) -> Result<TrainOutcome> {
    let ck = Checkpoint::load(&opts.out_dir)?;
    resume_with(ck, data, opts, &ResumeChanges::default(), device)
}

/// [`resume`] from the already loaded checkpoint `ck` of the run in `opts.out_dir`, applying
/// `changes` to its configuration.
pub fn resume_with(
    ck: Checkpoint,
    data: &TalDataset,
    opts: &RunOptions,
    changes: &ResumeChanges,
    device: &Device,
) -> Result<TrainOutcome> {
    data_parallel::check_batch(&opts.ranks, &ck.meta.config)?;
    let lock = match opts.ranks.is_root() {
        true => RunLock::acquire(&opts.out_dir).map(Some),
        false => Ok(None),
    };
    let _lock = opts.ranks.all_ok(lock)?;
    let device = device.clone().autodiff();
    let mut meta = ck.meta.clone();
    if let Some(epochs) = changes.epochs {
        let s = &meta.state;
        let done = s.epoch + usize::from(s.step_in_epoch > 0);
        if epochs < done.max(1) {
            return Err(Error::ResumeConflict {
                path: opts.out_dir.clone(),
                conflicts: format!(
                    "--epochs {epochs} is fewer than the {done} epochs the run has started"
                ),
            });
        }
        meta.config.epochs = epochs;
    }
    if meta.classes != data.classes {
        return Err(Error::Checkpoint {
            path: ck.dir.clone(),
            reason: format!(
                "was trained on classes {:?}, the dataset has {:?}",
                meta.classes, data.classes
            ),
        });
    }
    let mut model = load_model(&ck, &device)?;
    ck.load_model(&mut model)?;
    let ema = if meta.config.ema_decay > 0.0 {
        let mut e = model.valid();
        ck.load_ema(&mut e)?;
        Some(e)
    } else {
        None
    };
    let (b, h) = new_optimizers(&meta.config);
    let optims = (
        b.load_record(ck.optim_backbone),
        h.load_record(ck.optim_head),
    );
    run(meta, model, ema, optims, data, opts, &device)
}

/// The model a checkpoint describes, freshly initialised (load the weights with
/// [`Checkpoint::load_model`]).
pub fn load_model(ck: &Checkpoint, device: &Device) -> Result<TalModel> {
    let m = &ck.meta;
    let backbone = m.config.backbone.init(device);
    TalModel::new(&m.config, backbone, m.classes.len(), m.frame_size, device)
}

fn new_optimizers(cfg: &TrainConfig) -> (ModuleOptimizer, ModuleOptimizer) {
    let adamw = || FusedAdamW::new(cfg.weight_decay as f32).init();
    (adamw(), adamw())
}

/// Everything fixed during a run.
struct Ctx<'a> {
    cfg: &'a TrainConfig,
    /// The run's mode with its settings.
    plan: TrainPlan,
    /// The mode's step.
    step: Box<dyn ModeStep>,
    data: &'a TalDataset,
    train_idx: Vec<usize>,
    val_idx: Vec<usize>,
    device: Device,
    /// Frozen-backbone modes with `cache_features`: every video's backbone outputs (head-only:
    /// the last layer, `[T, C]`; adapter: also the tapped layers), extracted once, no graph.
    cached: Vec<Option<BackboneOutput>>,
    /// Frame size of the backbone's input.
    out_size: (usize, usize),
    /// Frame sizes must be multiples of this (the backbone's patch).
    spatial_multiple: usize,
    steps_per_epoch: usize,
    sched_head: WarmupCosine,
    sched_backbone: WarmupCosine,
}

/// What the input pipeline's workers read to prepare an epoch's steps (shared by them).
struct StepFeed {
    cfg: TrainConfig,
    data: Arc<TalDataset>,
    sampling: Option<Sampling>,
    /// The epoch's video order.
    order: Vec<usize>,
    epoch: usize,
    /// Step in the epoch and global step the feed starts at.
    first: (usize, usize),
    /// Frame size of the backbone's input.
    out_size: (usize, usize),
    /// Frame sizes must be multiples of this (the backbone's patch).
    spatial_multiple: usize,
    /// This process's rank and the number of ranks: a rank decodes its share of a step's
    /// videos only.
    rank: (usize, usize),
}

/// Everything one step trains on, prepared off the training thread.
struct StepInput {
    /// Clip sampling at the step's temporal fidelity.
    clips: ClipSamplingConfig,
    /// Global step.
    step: usize,
    /// The step's seed (Burn's generator: stochastic depth outside the reversible chain).
    seed: u64,
    /// The step's videos.
    videos: Vec<VideoInput>,
}

/// One video of a step.
struct VideoInput {
    /// Video index.
    video: usize,
    /// The clips the step reads.
    window: ClipWindow,
    /// Their frames, decoded and transformed (`None` on cached features, and for the videos
    /// of other ranks).
    frames: Option<ClipFrames>,
    /// This rank's to train on (its window still counts for the step's padding and loss
    /// normaliser on every rank).
    mine: bool,
    /// The video's seed in the step (window, crop, flip, augmentation, drop-path keys): the
    /// step's own for its first video.
    seed: u64,
}

impl StepFeed {
    /// Step `i` of the epoch: its videos, fidelity, windows and frames, all drawn from the
    /// step's own seed (the same whichever worker prepares it, and on resume).
    fn prepare(&self, i: usize) -> Result<StepInput> {
        let cfg = &self.cfg;
        let step = self.first.1 + (i - self.first.0);
        let fidelity = self
            .sampling
            .as_ref()
            .map_or(Fidelity::full(), |s| s.fidelity(self.epoch, i));
        // LoFi: fewer snippets (the grid's stride times r_t) and/or smaller frames.
        let clips = fidelity.clips(&cfg.clips);
        let seed = mix(cfg.seed ^ 0x5EED, step as u64);
        let per = cfg.videos_per_step.max(1);
        let step_videos = &self.order[i * per..((i + 1) * per).min(self.order.len())];
        let mine = share(step_videos.len(), self.rank.0, self.rank.1);
        let videos = step_videos
            .iter()
            .enumerate()
            .map(|(k, &v)| {
                let own = if k == 0 { seed } else { mix(seed, k as u64) };
                self.video(v, &clips, &fidelity, own, mine.contains(&k))
            })
            .collect::<Result<_>>()?;
        Ok(StepInput {
            clips,
            step,
            seed,
            videos,
        })
    }

    /// Video `v` of a step at `fidelity`, drawn from `seed`; its frames only when `mine`.
    fn video(
        &self,
        v: usize,
        clips: &ClipSamplingConfig,
        fidelity: &Fidelity,
        seed: u64,
        mine: bool,
    ) -> Result<VideoInput> {
        let cfg = &self.cfg;
        let video = &self.data.videos[v];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = clips.num_clips(&video.id, video.len())?;
        let window = ClipWindow::choose(n, cfg.max_train_clips, &mut rng);
        let frames = match &self.sampling {
            Some(_) if mine => {
                let (h, w) = self.out_size;
                let out = fidelity.frame_size_snapped(h, w, self.spatial_multiple);
                let op = cfg.transform.train_op(
                    video.frame_size()?,
                    out,
                    &mut ChaCha8Rng::seed_from_u64(mix(seed, 0xC809)),
                );
                Some(video.read_clips(clips, window.start, window.count, &op)?)
            }
            _ => None,
        };
        Ok(VideoInput {
            video: v,
            window,
            frames,
            mine,
            seed,
        })
    }
}

/// The run, with the backbone's branches in the configured precision.
fn run(
    meta: CheckpointMeta,
    model: TalModel,
    ema: Option<TalModel>,
    optims: (ModuleOptimizer, ModuleOptimizer),
    data: &TalDataset,
    opts: &RunOptions,
    device: &Device,
) -> Result<TrainOutcome> {
    let precision = meta.config.precision;
    precision.check(device)?;
    autocast(precision, || {
        run_scoped(meta, model, ema, optims, data, opts, device)
    })
}

fn run_scoped(
    mut meta: CheckpointMeta,
    mut model: TalModel,
    mut ema: Option<TalModel>,
    (mut opt_backbone, mut opt_head): (ModuleOptimizer, ModuleOptimizer),
    data: &TalDataset,
    opts: &RunOptions,
    device: &Device,
) -> Result<TrainOutcome> {
    let began = Instant::now();
    let cfg = meta.config.clone();
    let ranks = &opts.ranks;
    // Rank 0 writes the run's files and reports; the others train and keep quiet.
    let root = ranks.is_root();
    let quiet = opts.quiet || !root;
    check_trainable(data, &cfg)?;
    data_parallel::check_start(ranks, &meta, data, &model)?;
    if root {
        std::fs::create_dir_all(&opts.out_dir).map_err(|e| Error::io(&opts.out_dir, e))?;
        crate::io::write_json_atomic(&opts.out_dir.join("config.json"), &cfg)?;
    }
    let train_idx = data.indices(Subset::Training);
    let steps_per_epoch = train_idx.len().div_ceil(cfg.videos_per_step.max(1));
    let total = steps_per_epoch * cfg.epochs;
    let warmup = (cfg.warmup_epochs * steps_per_epoch as f64).round() as usize;
    let plan = TrainPlan::from_config(&cfg)?;
    let layers = match model.adapter {
        Some(_) => adapter_layers(&cfg, &model.backbone)?,
        None => Vec::new(),
    };
    let mut ctx = Ctx {
        cfg: &cfg,
        step: step::for_plan(&plan, layers),
        plan,
        data,
        train_idx,
        val_idx: data.indices(Subset::Validation),
        device: device.clone(),
        cached: vec![None; data.videos.len()],
        out_size: cfg.frame_size(),
        spatial_multiple: model.backbone.spatial_multiple(),
        steps_per_epoch,
        sched_head: WarmupCosine {
            peak: cfg.lr_head,
            warmup,
            total,
        },
        sched_backbone: WarmupCosine {
            peak: cfg.lr_backbone,
            warmup,
            total,
        },
    };
    if ctx.plan.caches_features() {
        let run = root.then_some(opts.out_dir.as_path());
        cache_features(&mut ctx, &model, run, quiet)?;
    }
    // The workers' view of the dataset (they outlive no borrow).
    let shared = Arc::new(data.clone());
    let bar = if quiet {
        ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} steps, ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    bar.set_prefix(format!("train ({})", cfg.mode));
    bar.set_position(meta.state.global_step as u64);
    let mut normalizer = LossNormalizer::new(&cfg.loss);
    normalizer.value = meta.state.normalizer;
    let mut peak: Option<usize> = None;
    let mut steady: Option<usize> = None;
    let mut measured_steps = 0usize;
    let mut stopped = false;
    let mut data_wait = 0.0;
    let mut first_step_after = None;
    // Everything a checkpoint holds, as it stands at the call, written by rank 0.
    macro_rules! write_checkpoint {
        () => {
            match root {
                true => checkpoint::save(
                    &opts.out_dir,
                    &meta,
                    &model,
                    ema.as_ref(),
                    &opt_backbone,
                    &opt_head,
                ),
                false => Ok(()),
            }
        };
    }
    // The same once every rank is known to hold the same parameters.
    macro_rules! save_checkpoint {
        () => {
            data_parallel::check_params(ranks, &model, ema.as_ref())
                .and_then(|_| write_checkpoint!())
        };
    }
    while meta.state.epoch < cfg.epochs {
        let epoch = meta.state.epoch;
        let mut order = ctx.train_idx.clone();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(cfg.seed, epoch as u64)));
        let first = meta.state.step_in_epoch;
        let feed = StepFeed {
            cfg: cfg.clone(),
            data: shared.clone(),
            sampling: ctx.plan.sampling().cloned(),
            order,
            epoch,
            first: (first, meta.state.global_step),
            out_size: ctx.out_size,
            spatial_multiple: ctx.spatial_multiple,
            rank: (ranks.rank(), ranks.size()),
        };
        let mut inputs = Prefetcher::spawn(
            &opts.loader,
            first..ctx.steps_per_epoch,
            Arc::new(move |i| feed.prepare(i)),
        );
        while meta.state.step_in_epoch < ctx.steps_per_epoch {
            if opts
                .stop_after_steps
                .is_some_and(|s| meta.state.global_step >= s)
            {
                stopped = true;
                break;
            }
            let t0 = Instant::now();
            let before = inputs.waited();
            let input = inputs.next_result().expect("one input per step")?;
            let waited = (inputs.waited() - before).as_secs_f64();
            let scaler = &mut meta.state.loss_scale;
            let (result, bytes) = crate::memory::measure_on(&ctx.device, || {
                let optims = (&mut opt_backbone, &mut opt_head);
                train_step(&ctx, ranks, model, optims, &mut normalizer, scaler, input)
            });
            let (m, report) = result?;
            model = m;
            if let Some(e) = ema.take() {
                ema = Some(ema_update(e, &model, cfg.ema_decay));
            }
            if let Some(b) = bytes {
                peak = Some(peak.unwrap_or(0).max(b));
                if measured_steps > 0 {
                    steady = Some(steady.unwrap_or(0).max(b));
                }
                measured_steps += 1;
            }
            let st = &mut meta.state;
            st.epoch_seconds += t0.elapsed().as_secs_f64();
            st.epoch_data_wait += waited;
            st.epoch_sum_seconds += report.sum_time.sum;
            st.epoch_wait_seconds += report.sum_time.wait;
            data_wait += waited;
            first_step_after.get_or_insert(began.elapsed().as_secs_f64());
            st.epoch_loss_sum += report.loss;
            if let Some(d) = report.drift {
                st.epoch_drift = Some(DriftLog::record(st.epoch_drift, d));
            }
            st.step_in_epoch += 1;
            st.global_step += 1;
            st.normalizer = normalizer.value;
            bar.set_position(st.global_step as u64);
            bar.set_message(format!(
                "epoch {}/{} loss {:.4}",
                epoch + 1,
                cfg.epochs,
                st.epoch_loss_sum / st.step_in_epoch as f64
            ));
            if cfg.checkpoint_every > 0 && st.global_step.is_multiple_of(cfg.checkpoint_every) {
                save_checkpoint!()?;
            }
        }
        drop(inputs);
        if stopped {
            break;
        }
        let st = &mut meta.state;
        let mut log = EpochLog {
            epoch,
            mean_loss: st.epoch_loss_sum / ctx.steps_per_epoch as f64,
            seconds: st.epoch_seconds,
            data_wait: st.epoch_data_wait,
            val_average_map: None,
            drift: st.epoch_drift.take(),
            loss_scale: st.loss_scale.map(|s| ScaleLog {
                skipped: s.skipped,
                scale: s.scale,
            }),
            ranks: None,
        };
        // Several ranks: checked to hold the same parameters (the checkpoint below is written
        // without checking again), their hash recorded.
        if let Some(sha) = data_parallel::check_params(ranks, &model, ema.as_ref())? {
            log.ranks = Some(RanksLog {
                size: ranks.size(),
                sum_seconds: st.epoch_sum_seconds,
                wait_seconds: st.epoch_wait_seconds,
                parameters_sha256: sha,
            });
        }
        let last = epoch + 1 == cfg.epochs;
        if !last
            && cfg.eval_every > 0
            && (epoch + 1).is_multiple_of(cfg.eval_every)
            && !ctx.val_idx.is_empty()
        {
            let (_, report) = evaluate_model(&ctx, ranks, ema.as_ref().unwrap_or(&model))?;
            log.val_average_map = Some(report.average_map);
        }
        if !quiet {
            bar.println(format!(
                "epoch {:>3}: loss {:.4}, {:.1}s (waited {:.1}s for data){}",
                epoch + 1,
                log.mean_loss,
                log.seconds,
                log.data_wait,
                log.val_average_map
                    .map(|m| format!(", val avg mAP {:.2}%", 100.0 * m))
                    .unwrap_or_default()
                    + &log
                        .ranks
                        .as_ref()
                        .map(|r| format!(
                            ", {:.1}s summing gradients over {} ranks ({:.1}s waiting for them)",
                            r.sum_seconds, r.size, r.wait_seconds
                        ))
                        .unwrap_or_default()
                    + &log
                        .drift
                        .map(|d| format!(
                            ", drift max {:.1e} ({} of {} checks fell back)",
                            d.max_rel, d.fallbacks, d.checks
                        ))
                        .unwrap_or_default()
            ));
        }
        st.history.push(log);
        st.epoch += 1;
        st.step_in_epoch = 0;
        st.epoch_loss_sum = 0.0;
        st.epoch_seconds = 0.0;
        st.epoch_data_wait = 0.0;
        st.epoch_sum_seconds = 0.0;
        st.epoch_wait_seconds = 0.0;
        write_checkpoint!()?;
    }
    if stopped {
        save_checkpoint!()?;
    }
    bar.finish_and_clear();
    let metrics = opts.out_dir.join("metrics.json");
    if root {
        crate::io::write_json_atomic(&metrics, &meta.state.history)?;
    }
    let evaluation = if stopped || ctx.val_idx.is_empty() {
        None
    } else {
        let (preds, report) = evaluate_model(&ctx, ranks, ema.as_ref().unwrap_or(&model))?;
        if let Some(last) = meta.state.history.last_mut() {
            last.val_average_map = Some(report.average_map);
        }
        if root {
            preds.write_json(&opts.out_dir.join("predictions.json"))?;
            crate::io::write_json_atomic(&metrics, &meta.state.history)?;
        }
        Some((preds, report))
    };
    Ok(TrainOutcome {
        model,
        ema,
        state: meta.state,
        evaluation,
        peak_step_bytes: peak,
        steady_step_bytes: steady,
        data_wait,
        first_step_after,
    })
}

/// Frozen-backbone modes: run the frozen backbone once over every video and keep its outputs in
/// memory (head-only: the last layer's features, also written to `run/features/<id>.npy`;
/// adapter: the tapped layers too, `clips x layers x max_tokens x width` floats per video).
/// `run`: the run folder the features go to (`None`: written by another rank).
fn cache_features(ctx: &mut Ctx, model: &TalModel, run: Option<&Path>, quiet: bool) -> Result<()> {
    let t0 = Instant::now();
    let valid = model.valid();
    let det = Detector::new(&valid, ctx.cfg, &ctx.device)?;
    let mut bytes = 0usize;
    for (i, v) in ctx.data.videos.iter().enumerate() {
        let mut f = det.features(v)?;
        if let (true, Some(run)) = (det.layers().is_empty(), run) {
            FeatureSequence::from_tensor(f.features.clone()).write(
                &run.join("features")
                    .join(format!("{}.npy", crate::io::file_stem_for(&v.id))),
            )?;
        }
        // Mixed precision: the adapters' layers are held in the branches' precision (half
        // the memory) and read back in f32.
        f.layers = f.layers.into_iter().map(crate::precision::down).collect();
        bytes += f.num_bytes();
        ctx.cached[i] = Some(f);
    }
    if !quiet {
        let written = match run {
            Some(run) if det.layers().is_empty() => {
                format!(" -> {}", run.join("features").display())
            }
            _ => String::new(),
        };
        say!(
            "{}: backbone outputs of {} videos extracted in {:.1}s ({:.1} MiB held){written}",
            ctx.cfg.mode,
            ctx.data.videos.len(),
            t0.elapsed().as_secs_f64(),
            bytes as f64 / (1u64 << 20) as f64,
        );
    }
    Ok(())
}

/// One optimisation step on the prepared `input`; returns the updated model and the loss.
fn train_step(
    ctx: &Ctx,
    ranks: &Ranks,
    model: TalModel,
    (opt_backbone, opt_head): (&mut ModuleOptimizer, &mut ModuleOptimizer),
    normalizer: &mut LossNormalizer,
    scaler: &mut Option<LossScale>,
    input: StepInput,
) -> Result<(TalModel, StepReport)> {
    let cfg = ctx.cfg;
    let step = input.step;
    // Burn's own randomness (stochastic depth outside the reversible chain) replays on resume.
    ctx.device.seed(input.seed);
    let scale = scaler.map_or(1.0, |s| s.scale);
    let mut sum_time = SumTime::default();
    let batch = step_batch(ctx, &model, &input, normalizer, scale)?;
    // A rank whose share of the step is empty (its last, short step) only joins the sum.
    let mine = match batch.is_empty() && ranks.is_distributed() {
        true => None,
        false => Some(ctx.step.compute_step(&model, &batch)?),
    };
    drop(batch);
    let Computed {
        loss,
        mut grads,
        drift,
    } = match mine {
        Some(c) if !ranks.is_distributed() => c,
        mine => {
            let (c, t) = data_parallel::sum_step(ranks, &model, cfg.mode, mine);
            sum_time = t;
            c
        }
    };
    if let Some(s) = scaler {
        grads.scale(&model, 1.0 / s.scale);
        let finite = grads.norm(&model).is_finite();
        if !s.update(finite, &cfg.loss_scale) {
            // Overflow in f16: no parameter moves, the next step tries half the scale.
            return Ok((
                model,
                StepReport {
                    loss,
                    drift,
                    sum_time,
                },
            ));
        }
    }
    grads.clip(&model, cfg.clip_grad_norm);
    let (lr_h, lr_b) = (ctx.sched_head.at(step), ctx.sched_backbone.at(step));
    let TalModel {
        backbone,
        adapter,
        head,
    } = model;
    // The backbone's update and the head's (with the adapters') touch different parameters
    // and optimizers: one on each thread (both are sequences of small passes).
    let (backbone, (adapter, head)) = rayon::join(
        || match grads.backbone {
            Some(g) => opt_backbone.step(lr_b, backbone, g),
            None => backbone,
        },
        || {
            let adapter = match (grads.adapter, adapter) {
                (Some(g), Some(a)) => Some(opt_head.step(lr_h, a, g)),
                (_, a) => a,
            };
            (adapter, opt_head.step(lr_h, head, grads.head))
        },
    );
    Ok((
        TalModel {
            backbone,
            adapter,
            head,
        },
        StepReport {
            loss,
            drift,
            sum_time,
        },
    ))
}

/// The windows and objectives of this rank's videos of a step: the ground truth inside each
/// window on the points of the step's longest window (every video's features are padded to
/// it), one loss normaliser update for the positives of all the step's videos (every rank's,
/// so the normaliser is the same everywhere).
fn step_batch<'a>(
    ctx: &'a Ctx,
    model: &TalModel,
    input: &'a StepInput,
    normalizer: &mut LossNormalizer,
    scale: f64,
) -> Result<Vec<(Window<'a>, Objective<'a>)>> {
    let cfg = ctx.cfg;
    let clips = &input.clips;
    // Lengths on the feature grid: clips, or with temporal tokens their positions.
    let on_grid = |w: &ClipWindow| ClipWindow {
        start: clips.positions(w.start),
        count: clips.positions(w.count),
    };
    let len = input
        .videos
        .iter()
        .map(|v| on_grid(&v.window).count)
        .max()
        .unwrap_or(0);
    let points = cfg.head.pyramid.points(model.head.padded_len(len));
    let mut positives = 0;
    let mut targets = Vec::with_capacity(input.videos.len());
    for vi in &input.videos {
        let video = &ctx.data.videos[vi.video];
        let n = clips.positions(clips.num_clips(&video.id, video.len())?);
        let window = on_grid(&vi.window);
        let gts = window.segments(&video.grid_segments(clips), n, cfg.trunc_thresh);
        let t = assign(&points, &gts, ctx.data.classes.len(), &cfg.assign);
        // Positives on the video's own points (the padding is masked out of the loss).
        let count = window.count as f64;
        positives += t
            .positive
            .iter()
            .zip(&points)
            .filter(|(p, pt)| **p && pt.t < count)
            .count();
        targets.push(t);
    }
    let norm = normalizer.update(positives);
    let augment = ctx
        .plan
        .sampling()
        .map(|s| &s.augment)
        .filter(|a| !a.is_identity());
    Ok(input
        .videos
        .iter()
        .zip(targets)
        .filter(|(vi, _)| vi.mine)
        .map(|(vi, targets)| {
            let window = Window {
                frames: vi.frames.as_ref(),
                clips: clips.clone(),
                start: vi.window.start,
                count: vi.window.count,
                cached: ctx.cached[vi.video].as_ref(),
                augment,
                seed: vi.seed,
                device: &ctx.device,
            };
            let objective = Objective {
                targets,
                len,
                norm,
                cfg: &cfg.loss,
                video: &ctx.data.videos[vi.video].id,
                step: input.step,
                scale,
            };
            (window, objective)
        })
        .collect())
}

/// What one step reports besides the updated model.
struct StepReport {
    loss: f64,
    /// The drift monitor's worst reading, on checked reversible steps.
    drift: Option<SegmentDrift>,
    /// Seconds spent waiting for the other ranks and summing the gradients over them.
    sum_time: SumTime,
}

/// Detect on every validation video (each rank its share) and compute mAP at THUMOS
/// thresholds; every rank gets the same result.
fn evaluate_model(ctx: &Ctx, ranks: &Ranks, model: &TalModel) -> Result<(Predictions, EvalReport)> {
    let valid = model.valid();
    let det = Detector::new(&valid, ctx.cfg, &ctx.device)?;
    let videos = data_parallel::detect_shared(ranks, &det, ctx.data, &ctx.val_idx, &ctx.cached)?;
    super::model::validation_report(ctx.data, videos)
}
