//! Training the head on pre-extracted features with ActionFormer's recipe: shuffled batches of
//! `batch_size` videos (the last incomplete one dropped), each cropped as `truncate_feats`
//! does, padded into one batch; the loss normaliser updated once per batch from the positives
//! at valid points; AdamW with weight decay on convolution weights only; warm-up + cosine per
//! step; global-norm clipping; an EMA of the weights, which evaluation and inference use.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::config::FeatureTrainConfig;
use super::crop::truncate;
use super::dataset::{FeatureDataset, FeatureVideo};
use super::run::{FeatureRun, batch, predict, prepare_feature_run};
use crate::data::{FeatureSequence, Predictions};
use crate::error::{Error, Result};
use crate::eval::{EvalOptions, EvalReport, evaluate};
use crate::optim::FusedAdamW;
use crate::seed::mix;
use crate::tal::assign::{Targets, assign};
use crate::tal::head::TalHead;
use crate::tal::loss::batch_loss;

/// ActionFormer's `LinearWarmupCosineAnnealingLR` in closed form, per step: linear from 0 over
/// `warmup` steps (reaching `peak` at the last), then cosine to `1e-8` at `total`.
pub fn actionformer_lr(peak: f64, warmup: usize, total: usize, step: usize) -> f64 {
    const ETA_MIN: f64 = 1e-8;
    if step < warmup {
        return if warmup > 1 {
            step as f64 * peak / (warmup - 1) as f64
        } else {
            peak
        };
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let x = (step - warmup) as f64 / span;
    ETA_MIN + 0.5 * (peak - ETA_MIN) * (1.0 + (std::f64::consts::PI * x).cos())
}

/// One epoch's record in `metrics.json`.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureEpoch {
    /// 1-based epoch (warm-up included).
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Wall time of the epoch's steps.
    pub seconds: f64,
    /// Average mAP on the evaluation subsets, when evaluated after this epoch.
    pub average_map: Option<f64>,
}

/// What training returns.
#[derive(Debug)]
pub struct FeatureOutcome {
    /// One record per epoch.
    pub epochs: Vec<FeatureEpoch>,
    /// The final evaluation (EMA weights), when there are evaluation videos.
    pub evaluation: Option<EvalReport>,
    /// The final detections on the evaluation videos.
    pub predictions: Option<Predictions>,
    /// The weights inference uses (EMA, or the trained ones without EMA).
    pub head: TalHead,
}

/// Moves the gradients of rank-3 parameters (every convolution weight; ActionFormer's
/// weight-decayed set) out of `all`.
struct ConvWeights<'a> {
    all: &'a mut GradientsParams,
    decayed: GradientsParams,
}

impl ModuleVisitor for ConvWeights<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if D == 3
            && let Some(g) = self.all.remove::<D>(param.id)
        {
            self.decayed.register(param.id, g);
        }
    }
}

/// Where and how [`train_features`] runs.
#[derive(Debug, Clone, Copy)]
pub struct FeatureRunOptions<'a> {
    /// The run folder to write (refused when it holds a run, unless `overwrite`).
    pub out: &'a Path,
    /// Replace the feature run in `out`.
    pub overwrite: bool,
    /// No per-epoch lines.
    pub quiet: bool,
    /// Start from these weights (fine-tuning an imported or trained head) instead of an
    /// initialisation; they must fit `cfg.head`.
    pub init: Option<&'a TalHead>,
}

/// Train a head on `data` under `cfg`, writing the run into `opts.out`.
pub fn train_features(
    cfg: &FeatureTrainConfig,
    data: &FeatureDataset,
    opts: &FeatureRunOptions<'_>,
    device: &Device,
) -> Result<FeatureOutcome> {
    let (out, overwrite, quiet) = (opts.out, opts.overwrite, opts.quiet);
    cfg.validate()?;
    let train: Vec<&FeatureVideo> = data.subset(&cfg.data.train_subsets);
    if train.len() < cfg.batch_size {
        return Err(Error::EmptyInput {
            path: data.annotations.clone(),
            reason: format!(
                "{} videos with features in the training subsets {:?}, fewer than one batch of {}",
                train.len(),
                cfg.data.train_subsets,
                cfg.batch_size
            ),
        });
    }
    if data.classes.is_empty() {
        return Err(Error::EmptyInput {
            path: data.annotations.clone(),
            reason: "no annotated action, so no class to learn".into(),
        });
    }
    let mut cfg = cfg.clone();
    cfg.head.input_dim = data.channels;
    cfg.head.num_classes = data.classes.len();
    let existed = out.exists();
    prepare_feature_run(out, overwrite)?;
    let lock = crate::train::RunLock::acquire(out)?;
    let result = run_epochs(&cfg, data, &train, quiet, opts.init, device).and_then(|o| {
        write_run(&cfg, data, out, &o)?;
        Ok(o)
    });
    drop(lock);
    let _ = std::fs::remove_file(out.join(crate::train::LOCK_FILE));
    if result.is_err() {
        // No half-made run: what this start wrote goes, and the folder when it made it.
        for n in super::run::FEATURE_RUN_OUTPUTS {
            let _ = std::fs::remove_file(out.join(n));
        }
        if !existed {
            let _ = std::fs::remove_dir(out);
        }
    }
    result
}

fn write_run(
    cfg: &FeatureTrainConfig,
    data: &FeatureDataset,
    out: &Path,
    o: &FeatureOutcome,
) -> Result<()> {
    let run = FeatureRun {
        config: cfg.clone(),
        classes: data.classes.clone(),
        origin: format!("trained on {}", data.annotations.display()),
    };
    run.save(out, &o.head)?;
    if let Some(p) = &o.predictions {
        p.write_json(&predictions_path(out))?;
    }
    crate::io::write_json_atomic(
        &out.join("metrics.json"),
        &serde_json::json!({
            "epochs": o.epochs,
            "evaluation": o.evaluation.as_ref().map(|r| serde_json::json!({
                "average_map": r.average_map,
                "thresholds": r.thresholds,
                "map": r.map,
            })),
        }),
    )
}

fn run_epochs(
    cfg: &FeatureTrainConfig,
    data: &FeatureDataset,
    train: &[&FeatureVideo],
    quiet: bool,
    init: Option<&TalHead>,
    device: &Device,
) -> Result<FeatureOutcome> {
    let ad = device.clone().autodiff();
    ad.seed(cfg.seed);
    let mut head = cfg.head.init(&ad)?;
    if let Some(w) = init {
        let fresh = head.valid();
        let same = |m: &TalHead| -> Vec<Vec<usize>> {
            use burn::store::ModuleSnapshot;
            m.collect(None, None, false)
                .iter()
                .map(|s| s.shape.to_vec())
                .collect()
        };
        if same(&fresh) != same(w) {
            return Err(Error::Config(
                "the starting weights do not fit the configured head (another width, window, \
                 number of levels or classes)"
                    .into(),
            ));
        }
        head = w.clone().fork(&ad).train();
    }
    let mut ema = (cfg.ema_decay > 0.0).then(|| head.valid());
    let adamw = |decay: f64| FusedAdamW::new(decay as f32).with_epsilon(cfg.adam_eps as f32);
    let mut decayed_opt = adamw(cfg.weight_decay).init();
    let mut plain_opt = adamw(0.0).init();
    let per_epoch = train.len() / cfg.batch_size;
    let total_epochs = cfg.epochs + cfg.warmup_epochs;
    let (warmup, total) = (cfg.warmup_epochs * per_epoch, total_epochs * per_epoch);
    let mut norm = cfg.loss.normalizer_init;
    let mut epochs = Vec::new();
    let mut evaluation = None;
    let mut predictions = None;
    let mut step = 0;
    for epoch in 0..total_epochs {
        let t0 = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(cfg.seed, epoch as u64)));
        let (mut sum, mut lr) = (0.0, 0.0);
        for (i, chunk) in order.chunks_exact(cfg.batch_size).enumerate() {
            lr = actionformer_lr(cfg.lr, warmup, total, step);
            let videos: Vec<&FeatureVideo> = chunk.iter().map(|&k| train[k]).collect();
            let rng_seed = mix(mix(cfg.seed, epoch as u64), i as u64 + 1);
            let (loss, grads) = batch_step(cfg, &head, &videos, &mut norm, rng_seed, &ad)?;
            sum += loss;
            let mut all = grads;
            crate::train::clip_grads(&head, &mut all, cfg.clip_grad_norm);
            let mut split = ConvWeights {
                all: &mut all,
                decayed: GradientsParams::new(),
            };
            head.visit(&mut split);
            let decayed = split.decayed;
            head = decayed_opt.step(lr, head, decayed);
            head = plain_opt.step(lr, head, all);
            if let Some(e) = ema.take() {
                ema = Some(crate::train::ema_update(e, &head, cfg.ema_decay));
            }
            step += 1;
        }
        let mut record = FeatureEpoch {
            epoch: epoch + 1,
            loss: sum / per_epoch as f64,
            lr,
            seconds: t0.elapsed().as_secs_f64(),
            average_map: None,
        };
        let last = epoch + 1 == total_epochs;
        if last || (cfg.eval_every > 0 && (epoch + 1) % cfg.eval_every == 0) {
            let eval_head = ema.clone().unwrap_or_else(|| head.valid());
            if let Some((report, preds)) = evaluate_head(&eval_head, cfg, data, device)? {
                record.average_map = Some(report.average_map);
                evaluation = Some(report);
                predictions = Some(preds);
            }
        }
        if !quiet {
            let map = record
                .average_map
                .map_or(String::new(), |m| format!(", avg mAP {:.2}%", 100.0 * m));
            crate::io::progress(format_args!(
                "epoch {}/{total_epochs}: loss {:.4}, lr {:.2e}, {:.1}s{map}",
                record.epoch, record.loss, record.lr, record.seconds
            ));
        }
        epochs.push(record);
    }
    Ok(FeatureOutcome {
        epochs,
        evaluation,
        predictions,
        head: ema.unwrap_or_else(|| head.valid()),
    })
}

/// One batch: crops, targets, the normaliser's update from the positives at valid points, then
/// each video's forward and backward on its own thread (the head's outputs at valid positions
/// do not depend on how much padding follows, so this equals ActionFormer's padded batch) and
/// the gradients summed. Returns the loss value.
fn batch_step(
    cfg: &FeatureTrainConfig,
    head: &TalHead,
    videos: &[&FeatureVideo],
    norm: &mut f64,
    seed: u64,
    device: &Device,
) -> Result<(f64, GradientsParams)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let offset = 0.5 * cfg.data.num_frames as f64 / cfg.data.feat_stride as f64;
    let mut items = Vec::with_capacity(videos.len());
    let mut positives = 0;
    for v in videos {
        let seq = v.read()?;
        let crop = truncate(
            seq.len,
            &v.grid_segments(&cfg.data),
            cfg.head.max_seq_len,
            cfg.data.trunc_thresh,
            offset,
            cfg.data.crop_ratio,
            &mut rng,
        );
        let len = crop.end - crop.start;
        let points = cfg.head.pyramid.points(head.padded_len(len));
        let targets = assign(&points, &crop.segments, cfg.head.num_classes, &cfg.assign);
        // A point is valid where its position lies inside the sequence.
        positives += points
            .iter()
            .zip(&targets.positive)
            .filter(|(p, pos)| **pos && p.t < len as f64)
            .count();
        items.push((seq, crop, targets));
    }
    let m = cfg.loss.normalizer_momentum;
    *norm = m * *norm + (1.0 - m) * positives.max(1) as f64;
    let normaliser = *norm;
    let one = |(seq, crop, targets): &(FeatureSequence, super::crop::Crop, Targets)| {
        let local = head.valid().fork(device).train();
        let (x, mask) = batch(&[(seq, crop.start..crop.end)], device);
        let out = local.forward(x, mask)?;
        let loss = batch_loss(&out, std::slice::from_ref(targets), normaliser, &cfg.loss)?;
        let value = loss.clone().into_scalar::<f64>();
        Ok((value, GradientsParams::from_grads(loss.backward(), &local)))
    };
    let results: Vec<Result<(f64, GradientsParams)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .iter()
            .map(|it| scope.spawn(move || one(it)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Config("a training thread panicked".into())))
            })
            .collect()
    });
    let (mut value, mut grads) = (0.0, GradientsParams::new());
    for r in results {
        let (v, g) = r?;
        value += v;
        crate::train::add_grads(head, &mut grads, g);
    }
    if !value.is_finite() {
        let ids: Vec<&str> = videos.iter().map(|v| v.id.as_str()).collect();
        return Err(Error::NonFiniteLoss {
            video: ids.join("`, `"),
            step: 0,
            value,
        });
    }
    Ok((value, grads))
}

/// The evaluation of `head` on the evaluation subsets' videos and its detections (None when
/// no evaluation video is annotated).
fn evaluate_head(
    head: &TalHead,
    cfg: &FeatureTrainConfig,
    data: &FeatureDataset,
    device: &Device,
) -> Result<Option<(EvalReport, Predictions)>> {
    let videos = data.subset(&cfg.data.val_subsets);
    let gt = data.ground_truth_of(&videos);
    if gt.classes(None).is_empty() {
        return Ok(None);
    }
    let preds = predict(head, cfg, &data.classes, &videos, device)?;
    let opts = EvalOptions {
        subset: None,
        thresholds: cfg.thresholds()?.values(),
    };
    let report = evaluate(&gt, &preds, &opts)?;
    Ok(Some((report, preds)))
}

/// Where `train_features` writes the detections on the evaluation videos.
pub fn predictions_path(out: &Path) -> PathBuf {
    out.join("predictions.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule equals ActionFormer's scheduler stepped per iteration (values printed by
    /// `LinearWarmupCosineAnnealingLR(opt, 4, 14)` with base lr 1).
    #[test]
    fn schedule_matches_actionformer() {
        let lr = |s| actionformer_lr(1.0, 4, 14, s);
        assert_eq!(lr(0), 0.0);
        assert!((lr(1) - 1.0 / 3.0).abs() < 1e-12);
        assert!((lr(3) - 1.0).abs() < 1e-12);
        assert!((lr(4) - 1.0).abs() < 1e-12);
        // Halfway through the cosine.
        assert!((lr(9) - (1e-8 + 0.5 * (1.0 - 1e-8))).abs() < 1e-9);
        assert!(lr(13) > 0.0 && lr(13) < 0.03);
    }
}
