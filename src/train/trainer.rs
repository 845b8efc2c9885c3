//! The training loop shared by every mode: one video per step (a random window of at most
//! `max_train_clips` clips), AdamW with separate warm-up + cosine schedules for backbone and
//! head, global gradient-norm clipping, periodic evaluation, crash-safe checkpoints and exact
//! resume.
//!
//! Why not burn-train's `Learner`: a step here is one variable-length video whose gradients
//! may come from the reversible pass (not `loss.backward()`), backbone and head have separate
//! optimizers and schedules, and resume must continue mid-epoch on the same data order; a
//! plain loop over library pieces says all of that directly and keeps the CI build small.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checkpoint::{
    self, Checkpoint, CheckpointMeta, DriftLog, EpochLog, ScaleLog, TrainState,
};
use super::config::TrainConfig;
use super::dataset::TalDataset;
use super::ema::ema_update;
use super::loss_scale::LossScale;
use super::model::{Detector, TalModel, adapter_layers, materialize};
use super::plan::TrainPlan;
use super::schedule::WarmupCosine;
use super::step::{self, Computed, ModeStep, Objective, Window};
use crate::backbone::{Backbone, BackboneOutput};
use crate::data::annotations::{Predictions, Subset, VideoDetections};
use crate::data::frames::Frames;
use crate::data::lofi::{Fidelity, LoFiMode};
use crate::data::npy::FeatureSequence;
use crate::error::{Error, Result};
use crate::eval::EvalReport;
use crate::precision::{Precision, autocast};
use crate::reversible::SegmentDrift;
use crate::seed::mix;
use crate::tal::assign::{GtSegment, assign};
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
    for name in present {
        let p = out.join(name);
        let removed = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        removed.map_err(|e| Error::io(&p, e))?;
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
    prepare_run_folder(&opts.out_dir, opts.overwrite)?;
    check_trainable(data)?;
    let device = device.clone().autodiff();
    let frame_size = frame_size(data)?;
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
            epoch_drift: None,
            loss_scale: (cfg.precision == Precision::F16).then(|| LossScale::new(&cfg.loss_scale)),
            history: Vec::new(),
        },
        config: cfg,
    };
    let optims = new_optimizers(&meta.config);
    let ema = (meta.config.ema_decay > 0.0).then(|| model.valid());
    run(meta, model, ema, optims, data, opts, &device)
}

/// A dataset a run can learn from: some action to learn and some video to train on. Errors
/// name the dataset.
fn check_trainable(data: &TalDataset) -> Result<()> {
    if data.classes.is_empty() {
        return Err(Error::EmptyInput {
            path: data.source.clone(),
            reason: "no video of the dataset has an annotated action, so there is no class to \
                     learn"
                .into(),
        });
    }
    if data.indices(Subset::Training).is_empty() {
        return Err(Error::EmptyInput {
            path: data.source.clone(),
            reason: "the dataset has no training videos (subset `training`)".into(),
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

fn frame_size(data: &TalDataset) -> Result<(usize, usize)> {
    let f = &data.videos[0].frames;
    if let Some(v) = data
        .videos
        .iter()
        .find(|v| (v.frames.height, v.frames.width) != (f.height, f.width))
    {
        return Err(Error::Config(format!(
            "video `{}` has {}x{} frames, `{}` {}x{}: resize the dataset to one frame size",
            v.id, v.frames.height, v.frames.width, f.video, f.height, f.width
        )));
    }
    Ok((f.height, f.width))
}

fn new_optimizers(cfg: &TrainConfig) -> (ModuleOptimizer, ModuleOptimizer) {
    let adamw = || {
        AdamWConfig::new()
            .with_weight_decay(cfg.weight_decay as f32)
            .init()
    };
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
    /// LoFi: the videos' frames at each reduced frame size the sampler uses (training videos
    /// only; other entries empty), resized once.
    lofi_frames: HashMap<(usize, usize), Vec<Option<Frames>>>,
    /// Frame sizes must be multiples of this (the backbone's patch).
    spatial_multiple: usize,
    steps_per_epoch: usize,
    sched_head: WarmupCosine,
    sched_backbone: WarmupCosine,
}

impl Ctx<'_> {
    /// Frame size of `fidelity` for `height x width` frames, snapped to the nearest multiple
    /// of the backbone's patch (ST-LoFi's r_s = sqrt 2 on 64 pixels: 45 -> 48).
    fn lofi_size(&self, fidelity: &Fidelity, height: usize, width: usize) -> (usize, usize) {
        fidelity.frame_size_snapped(height, width, self.spatial_multiple)
    }

    /// The clip window of a step: `(start, count)`.
    fn window(&self, n: usize, rng: &mut ChaCha8Rng) -> (usize, usize) {
        let max = self.cfg.max_train_clips;
        if max == 0 || n <= max {
            (0, n)
        } else {
            (rng.random_range(0..=n - max), max)
        }
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
    let cfg = meta.config.clone();
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| Error::io(&opts.out_dir, e))?;
    crate::io::write_json_atomic(&opts.out_dir.join("config.json"), &cfg)?;
    check_trainable(data)?;
    let train_idx = data.indices(Subset::Training);
    let steps_per_epoch = train_idx.len();
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
        lofi_frames: HashMap::new(),
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
        cache_features(&mut ctx, &model, &opts.out_dir, opts.quiet)?;
    }
    resize_for_lofi(&mut ctx, frame_size(data)?);
    let bar = if opts.quiet {
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
    // Everything a checkpoint holds, as it stands at the call.
    macro_rules! save_checkpoint {
        () => {
            checkpoint::save(
                &opts.out_dir,
                &meta,
                &model,
                ema.as_ref(),
                &opt_backbone,
                &opt_head,
            )
        };
    }
    while meta.state.epoch < cfg.epochs {
        let epoch = meta.state.epoch;
        let mut order = ctx.train_idx.clone();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(cfg.seed, epoch as u64)));
        while meta.state.step_in_epoch < ctx.steps_per_epoch {
            if opts
                .stop_after_steps
                .is_some_and(|s| meta.state.global_step >= s)
            {
                stopped = true;
                break;
            }
            let v = order[meta.state.step_in_epoch];
            let fidelity = ctx.plan.sampling().map_or(Fidelity::full(), |s| {
                s.fidelity(epoch, meta.state.step_in_epoch)
            });
            let t0 = Instant::now();
            let at = StepAt {
                video: v,
                fidelity,
                step: meta.state.global_step,
            };
            let scaler = &mut meta.state.loss_scale;
            let (result, bytes) = crate::memory::measure_on(&ctx.device, || {
                let optims = (&mut opt_backbone, &mut opt_head);
                train_step(&ctx, model, optims, &mut normalizer, scaler, at)
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
        if stopped {
            break;
        }
        let st = &mut meta.state;
        let mut log = EpochLog {
            epoch,
            mean_loss: st.epoch_loss_sum / ctx.steps_per_epoch as f64,
            seconds: st.epoch_seconds,
            val_average_map: None,
            drift: st.epoch_drift.take(),
            loss_scale: st.loss_scale.map(|s| ScaleLog {
                skipped: s.skipped,
                scale: s.scale,
            }),
        };
        let last = epoch + 1 == cfg.epochs;
        if !last
            && cfg.eval_every > 0
            && (epoch + 1).is_multiple_of(cfg.eval_every)
            && !ctx.val_idx.is_empty()
        {
            let (_, report) = evaluate_model(&ctx, ema.as_ref().unwrap_or(&model))?;
            log.val_average_map = Some(report.average_map);
        }
        if !opts.quiet {
            bar.println(format!(
                "epoch {:>3}: loss {:.4}, {:.1}s{}",
                epoch + 1,
                log.mean_loss,
                log.seconds,
                log.val_average_map
                    .map(|m| format!(", val avg mAP {:.2}%", 100.0 * m))
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
        save_checkpoint!()?;
    }
    if stopped {
        save_checkpoint!()?;
    }
    bar.finish_and_clear();
    crate::io::write_json_atomic(&opts.out_dir.join("metrics.json"), &meta.state.history)?;
    let evaluation = if stopped || ctx.val_idx.is_empty() {
        None
    } else {
        let (preds, report) = evaluate_model(&ctx, ema.as_ref().unwrap_or(&model))?;
        preds.write_json(&opts.out_dir.join("predictions.json"))?;
        if let Some(last) = meta.state.history.last_mut() {
            last.val_average_map = Some(report.average_map);
        }
        crate::io::write_json_atomic(&opts.out_dir.join("metrics.json"), &meta.state.history)?;
        Some((preds, report))
    };
    Ok(TrainOutcome {
        model,
        ema,
        state: meta.state,
        evaluation,
        peak_step_bytes: peak,
        steady_step_bytes: steady,
    })
}

/// Resize the training videos once for every reduced frame size `cfg.lofi` can ask for.
fn resize_for_lofi(ctx: &mut Ctx, (h, w): (usize, usize)) {
    let Some(lofi) = ctx.plan.sampling().map(|s| s.lofi.clone()) else {
        return;
    };
    let used = match lofi.mode {
        LoFiMode::Full | LoFiMode::Temporal => vec![],
        LoFiMode::Spatial => vec![lofi.spatial],
        LoFiMode::SpatioTemporal => vec![lofi.spatio_temporal],
        LoFiMode::Fixed { fidelity } => vec![fidelity],
        LoFiMode::ShortCycle { .. } | LoFiMode::LongCycle => {
            vec![lofi.spatial, lofi.temporal, lofi.spatio_temporal]
        }
    };
    for f in used {
        let size = ctx.lofi_size(&f, h, w);
        if size == (h, w) || ctx.lofi_frames.contains_key(&size) {
            continue;
        }
        let mut vs = vec![None; ctx.data.videos.len()];
        for &i in &ctx.train_idx {
            vs[i] = Some(ctx.data.videos[i].frames.resized(size.0, size.1));
        }
        ctx.lofi_frames.insert(size, vs);
    }
}

/// Frozen-backbone modes: run the frozen backbone once over every video and keep its outputs in
/// memory (head-only: the last layer's features, also written to `run/features/<id>.npy`;
/// adapter: the tapped layers too, `clips x layers x max_tokens x width` floats per video).
fn cache_features(ctx: &mut Ctx, model: &TalModel, run: &Path, quiet: bool) -> Result<()> {
    let t0 = Instant::now();
    let valid = model.valid();
    let det = Detector::new(&valid, ctx.cfg, &ctx.device)?;
    let mut bytes = 0usize;
    for (i, v) in ctx.data.videos.iter().enumerate() {
        let mut f = det.features(v)?;
        if det.layers().is_empty() {
            FeatureSequence::from_tensor(f.features.clone())
                .write(&run.join("features").join(format!("{}.npy", v.id)))?;
        }
        // Mixed precision: the adapters' layers are held in the branches' precision (half
        // the memory) and read back in f32.
        f.layers = f.layers.into_iter().map(crate::precision::down).collect();
        bytes += f.num_bytes();
        ctx.cached[i] = Some(f);
    }
    if !quiet {
        let written = if det.layers().is_empty() {
            format!(" -> {}", run.join("features").display())
        } else {
            String::new()
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

/// What one step trains on.
struct StepAt {
    /// Video index.
    video: usize,
    /// Sampling fidelity (LoFi).
    fidelity: Fidelity,
    /// Global step (seeds its randomness).
    step: usize,
}

/// One optimisation step on video `v`; returns the updated model and the loss.
fn train_step(
    ctx: &Ctx,
    model: TalModel,
    (opt_backbone, opt_head): (&mut ModuleOptimizer, &mut ModuleOptimizer),
    normalizer: &mut LossNormalizer,
    scaler: &mut Option<LossScale>,
    at: StepAt,
) -> Result<(TalModel, StepReport)> {
    let StepAt {
        video: v,
        fidelity,
        step,
    } = at;
    let cfg = ctx.cfg;
    let video = &ctx.data.videos[v];
    // LoFi: fewer snippets (the grid's stride times r_t) and/or smaller frames.
    let clip_cfg = fidelity.clips(&cfg.clips);
    let frames = {
        let f = &video.frames;
        let size = ctx.lofi_size(&fidelity, f.height, f.width);
        match ctx.lofi_frames.get(&size).and_then(|vs| vs[v].as_ref()) {
            Some(small) => small,
            None => f,
        }
    };
    let step_seed = mix(cfg.seed ^ 0x5EED, step as u64);
    // Burn's own randomness (stochastic depth outside the reversible chain) replays on resume.
    ctx.device.seed(step_seed);
    let mut rng = ChaCha8Rng::seed_from_u64(step_seed);
    let n = clip_cfg.num_clips(&video.id, frames.len)?;
    let (start, count) = ctx.window(n, &mut rng);
    let gts: Vec<GtSegment> = video
        .grid_segments(&clip_cfg)
        .into_iter()
        .map(|g| GtSegment {
            start: g.start - start as f64,
            end: g.end - start as f64,
            ..g
        })
        .collect();
    let points = cfg.head.pyramid.points(model.head.padded_len(count));
    let targets = assign(&points, &gts, ctx.data.classes.len(), &cfg.assign);
    let positives = targets.positive.iter().filter(|&&p| p).count();
    let objective = Objective {
        targets,
        norm: normalizer.update(positives),
        cfg: &cfg.loss,
        video: &video.id,
        step,
        scale: scaler.map_or(1.0, |s| s.scale),
    };
    let window = Window {
        frames,
        clips: clip_cfg,
        start,
        count,
        cached: ctx.cached[v].as_ref(),
        augment: ctx
            .plan
            .sampling()
            .map(|s| &s.augment)
            .filter(|a| !a.is_identity()),
        seed: step_seed,
        device: &ctx.device,
    };
    let Computed {
        loss,
        mut grads,
        drift,
    } = ctx.step.compute(&model, &window, &objective)?;
    if let Some(s) = scaler {
        grads.scale(&model, 1.0 / s.scale);
        let finite = grads.norm(&model).is_finite();
        if !s.update(finite, &cfg.loss_scale) {
            // Overflow in f16: no parameter moves, the next step tries half the scale.
            return Ok((model, StepReport { loss, drift }));
        }
    }
    grads.clip(&model, cfg.clip_grad_norm);
    let (lr_h, lr_b) = (ctx.sched_head.at(step), ctx.sched_backbone.at(step));
    let TalModel {
        mut backbone,
        mut adapter,
        mut head,
    } = model;
    if let Some(g) = grads.backbone {
        backbone = opt_backbone.step(lr_b, backbone, g);
    }
    if let (Some(g), Some(a)) = (grads.adapter, adapter.take()) {
        adapter = Some(opt_head.step(lr_h, a, g));
    }
    head = opt_head.step(lr_h, head, grads.head);
    Ok((
        TalModel {
            backbone,
            adapter,
            head,
        },
        StepReport { loss, drift },
    ))
}

/// What one step reports besides the updated model.
struct StepReport {
    loss: f64,
    /// The drift monitor's worst reading, on checked reversible steps.
    drift: Option<SegmentDrift>,
}

/// Detect on every validation video and compute mAP at THUMOS thresholds.
fn evaluate_model(ctx: &Ctx, model: &TalModel) -> Result<(Predictions, EvalReport)> {
    let valid = model.valid();
    let det = Detector::new(&valid, ctx.cfg, &ctx.device)?;
    let mut videos = Vec::new();
    for &i in &ctx.val_idx {
        let v = &ctx.data.videos[i];
        let segs = match &ctx.cached[i] {
            Some(f) => det.detect_from_features(v, f.clone())?,
            None => det.detect(v)?,
        };
        videos.push(VideoDetections::from_segments(
            &v.id,
            segs,
            &ctx.data.classes,
        ));
    }
    super::model::validation_report(ctx.data, videos)
}
