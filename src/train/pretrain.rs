//! Clip-classification pretraining of a backbone on trimmed action clips: the synthetic
//! benchmark's analogue of Kinetics pretraining (LoFi-E2E's stage 1, the "classification-only
//! pretraining" baseline of its Table 2). The backbone and a linear classifier learn to name
//! the action of single clips cut from annotated videos; the backbone then starts a TAL run.

use std::time::Instant;

use burn::config::Config;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::seq::IndexedRandom;
use rand::{SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::config::BackboneConfig;
use super::dataset::TalDataset;
use super::schedule::WarmupCosine;
use super::step::{BackboneRun, Clips, finite_loss};
use crate::backbone::{Backbone, Network, VideoBackbone};
use crate::data::annotations::Subset;
use crate::data::augment::AugmentConfig;
use crate::data::clips::ClipSamplingConfig;
use crate::error::{Error, Result};
use crate::optim::FusedAdamW;
use crate::pipeline::{FrameTransformConfig, InSequence};
use crate::precision::{Precision, autocast, carried};
use crate::reversible::{DriftMonitor, RewiredBackbone};

/// Settings of clip-classification pretraining.
#[derive(Config, Debug)]
pub struct PretrainConfig {
    /// Backbone to pretrain (default: the synthetic benchmark's ViT).
    #[config(default = "BackboneConfig::synthetic_vit()")]
    pub backbone: BackboneConfig,
    /// Clip sampling; must match the TAL run the backbone is for.
    #[config(
        default = "ClipSamplingConfig::new().with_clip_frames(8).with_frame_stride(2).with_snippet_stride(4)"
    )]
    pub clips: ClipSamplingConfig,
    /// A clip is labelled with an action when at least this share of its frame span lies inside
    /// one instance of it; clips between this and zero overlap are not used.
    #[config(default = 0.75)]
    pub min_overlap: f64,
    /// Add a background class (clips that touch no action), at most as many clips as the
    /// average action class has.
    #[config(default = true)]
    pub background: bool,
    /// Augmentation of each training clip (default: channel permutation and roll, which suit
    /// the synthetic benchmark; without it the backbone memorises instances).
    #[config(default = "AugmentConfig::synthetic()")]
    pub augment: AugmentConfig,
    /// Train (and evaluate) a ViT in its rewired, reversible form (Re2TAL's recipe: rewire a
    /// pretrained network, then fine-tune it on the classification task before TAL).
    #[config(default = false)]
    pub rewired: bool,
    /// Precision of the backbone's residual branches: f32 or bf16 (f32 master weights).
    #[config(default = "Precision::F32")]
    pub precision: Precision,
    /// Clips per optimisation step.
    #[config(default = 16)]
    pub batch_size: usize,
    /// Optimisation steps.
    #[config(default = 800)]
    pub steps: usize,
    /// Peak learning rate (AdamW, linear warm-up then cosine).
    #[config(default = 1e-3)]
    pub lr: f64,
    /// Warm-up steps.
    #[config(default = 50)]
    pub warmup_steps: usize,
    /// AdamW weight decay.
    #[config(default = 0.05)]
    pub weight_decay: f64,
    /// Seed of the batch order and the classifier's initialisation.
    #[config(default = 0)]
    pub seed: u64,
}

/// One trimmed clip: video index in the dataset, first frame, class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrimmedClip {
    /// Index into [`TalDataset::videos`].
    pub video: usize,
    /// First frame: clips start at every frame, not only on the TAL grid, for more distinct
    /// training clips (temporal jitter).
    pub start: usize,
    /// Class index; `num_classes` is background.
    pub label: usize,
}

/// Cut the labelled clips of the videos in `subset` (see [`PretrainConfig::min_overlap`] and
/// [`PretrainConfig::background`]); background clips are subsampled with `seed`.
pub fn trimmed_clips(
    data: &TalDataset,
    subset: Subset,
    cfg: &PretrainConfig,
) -> Result<Vec<TrimmedClip>> {
    let span = cfg.clips.span() as f64;
    let k = data.classes.len();
    let (mut actions, mut background) = (Vec::new(), Vec::new());
    for vi in data.indices(subset) {
        let v = &data.videos[vi];
        let n = every_frame(&cfg.clips).num_clips(&v.id, v.len())?;
        for c in 0..n {
            let s = c as f64;
            let e = s + span;
            let mut best: Option<(f64, usize)> = None;
            let mut touches = false;
            for &([a, b], label) in &v.segments {
                let (a, b) = (a * v.fps, b * v.fps);
                let inter = (e.min(b) - s.max(a)).max(0.0);
                touches |= inter > 0.0;
                if best.is_none_or(|(o, _)| inter > o) {
                    best = Some((inter, label));
                }
            }
            match best {
                Some((inter, label)) if inter / span >= cfg.min_overlap => {
                    actions.push(TrimmedClip {
                        video: vi,
                        start: c,
                        label,
                    })
                }
                _ if !touches => background.push(TrimmedClip {
                    video: vi,
                    start: c,
                    label: k,
                }),
                _ => {}
            }
        }
    }
    if actions.is_empty() {
        return Err(Error::EmptyInput {
            path: "annotations".into(),
            reason: format!(
                "no {subset:?} clip lies inside an action by {}",
                cfg.min_overlap
            ),
        });
    }
    if cfg.background {
        let keep = actions.len().div_ceil(k);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xB6);
        background.shuffle(&mut rng);
        actions.extend(background.into_iter().take(keep));
    }
    Ok(actions)
}

/// Backbone + linear classifier over its pooled clip features.
#[derive(Module, Debug)]
pub struct ClipClassifier {
    /// The backbone being pretrained.
    pub backbone: Backbone,
    /// Classifier.
    pub fc: Linear,
}

impl PretrainConfig {
    /// An error naming the first field out of its range (zero sizes, heads that do not divide
    /// a width, rates outside `[0, 1)`), before any data is read or anything is built.
    pub fn validate(&self) -> Result<()> {
        super::validate::check_pretrain(self)
    }
}

impl ClipClassifier {
    /// Class logits of a batch of clips through `network` (rewired: the reversible form in
    /// inference, without stochastic depth; training it goes through the reversible tape).
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, K]`
    pub fn forward(&self, clips: Tensor<5>, network: Network) -> Result<Tensor<2>> {
        let features = match network {
            Network::Plain => self.backbone.forward(clips, &[])?.features,
            Network::Rewired => self.backbone.forward_rewired_inference(clips)?,
        };
        Ok(self.fc.forward(features))
    }
}

/// What pretraining produced.
pub struct PretrainOutcome {
    /// The pretrained backbone (on the autodiff device).
    pub backbone: Backbone,
    /// Mean training loss of every `log_every` steps.
    pub losses: Vec<f32>,
    /// Clip accuracy on the training clips seen in the last 10% of steps.
    pub train_accuracy: f64,
    /// Clip accuracy on the validation videos' clips (`None` without validation videos).
    pub val_accuracy: Option<f64>,
    /// Training clips (actions + background) and validation clips.
    pub clips: (usize, usize),
    /// Wall time of the optimisation.
    pub seconds: f64,
    /// Of which the steps waited for their batches (drawn, decoded and augmented ahead).
    pub input_wait_seconds: f64,
}

/// Pretrain `cfg.backbone` (freshly initialised under the device's current seed) on the
/// trimmed clips of `data`'s training videos; accuracy on its validation videos.
pub fn pretrain(
    cfg: &PretrainConfig,
    data: &TalDataset,
    quiet: bool,
    device: &Device,
) -> Result<PretrainOutcome> {
    let backbone = cfg.backbone.init(device);
    pretrain_from(cfg, data, backbone, quiet, device)
}

/// [`pretrain`] starting from `backbone` (e.g. loaded weights to fine-tune, or to rewire with
/// `cfg.rewired`); the classifier is new.
pub fn pretrain_from(
    cfg: &PretrainConfig,
    data: &TalDataset,
    backbone: Backbone,
    quiet: bool,
    device: &Device,
) -> Result<PretrainOutcome> {
    cfg.validate()?;
    match cfg.precision {
        Precision::F16 => {
            return Err(Error::Config(
                "f16 pretraining would need loss scaling, which only `train` does; use bf16".into(),
            ));
        }
        Precision::Bf16 if matches!(backbone, Backbone::ResNet(_)) => {
            return Err(Error::Config(
                "precision bf16 is implemented for the transformer backbones (ViT, Swin)".into(),
            ));
        }
        p => p.check(device)?,
    }
    autocast(cfg.precision, || {
        pretrain_scoped(cfg, data, backbone, quiet, device)
    })
}

fn pretrain_scoped(
    cfg: &PretrainConfig,
    data: &TalDataset,
    backbone: Backbone,
    quiet: bool,
    device: &Device,
) -> Result<PretrainOutcome> {
    if cfg.batch_size == 0 || cfg.steps == 0 {
        return Err(Error::Config(
            "pretraining needs batch_size and steps of at least 1".into(),
        ));
    }
    if !(cfg.lr.is_finite() && cfg.lr >= 0.0) {
        return Err(Error::InvalidValue {
            name: "lr".into(),
            reason: format!("must be a finite non-negative number, got {}", cfg.lr),
        });
    }
    let device = device.clone().autodiff();
    let train_clips = trimmed_clips(data, Subset::Training, cfg)?;
    let val_clips = if data.indices(Subset::Validation).is_empty() {
        Vec::new()
    } else {
        trimmed_clips(data, Subset::Validation, cfg)?
    };
    if cfg.rewired && matches!(backbone, Backbone::ResNet(_)) {
        return Err(Error::Config(
            "rewired (reversible) pretraining is implemented for ViT and Swin backbones".into(),
        ));
    }
    let k = data.classes.len() + usize::from(cfg.background);
    // Fix lazily initialised values, then track gradients on the autodiff device.
    super::model::materialize(&backbone);
    let backbone = backbone.fork(&device).train();
    let plain = device.clone().without_autodiff();
    let size = cfg.backbone.input_size();
    let probe = Tensor::<5>::zeros([1, 3, cfg.clips.clip_frames, size, size], &plain);
    let dim = backbone.valid().forward(probe, &[])?.features.dims()[1];
    let model = ClipClassifier {
        backbone,
        fc: LinearConfig::new(dim, k).init(&device),
    };
    let mut optim = FusedAdamW::new(cfg.weight_decay as f32).init();
    let sched = WarmupCosine {
        peak: cfg.lr,
        warmup: cfg.warmup_steps,
        total: cfg.steps,
    };
    let ce = CrossEntropyLossConfig::new().init(&device);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let log_every = (cfg.steps / 20).max(1);
    let (mut losses, mut acc_loss, mut acc_n) = (Vec::new(), 0f32, 0usize);
    let (mut late_right, mut late_total) = (0usize, 0usize);
    // Rewired: Re2TAL's reversible step (blocks recomputed from their outputs in the backward
    // pass, no cached activations); gradients equal autodiff's.
    let run = if cfg.rewired {
        BackboneRun::Reversible(DriftMonitor::new().with_every(0))
    } else {
        BackboneRun::Autodiff(Network::Plain)
    };
    let start = Instant::now();
    let (model, input_wait_seconds) =
        std::thread::scope(|scope| -> Result<(ClipClassifier, f64)> {
            let mut model = model;
            // Each batch is drawn, decoded and augmented on a thread of its own while the step
            // before it computes, in the generator's order (the batches a seed gives do not change).
            let mut batches = InSequence::spawn(scope, cfg.steps, 2, |_| {
                let batch: Vec<TrimmedClip> = (0..cfg.batch_size)
                    .map(|_| *train_clips.choose(&mut rng).expect("non-empty"))
                    .collect();
                let (x, y) = batch_tensors(data, &cfg.clips, size, &batch, &device)?;
                Ok((cfg.augment.apply_per_clip(x, &mut rng), y))
            });
            for step in 0..cfg.steps {
                let (x, y) = batches.next_item().expect("one batch per step")?;
                let seed = crate::seed::mix(cfg.seed, step as u64);
                let late = step * 10 >= cfg.steps * 9;
                let (l, mut g) = run.step(&model.backbone, Clips::of(x), seed, step, |f| {
                    let logits = model.fc.forward(f);
                    if late {
                        late_right += correct(logits.clone(), y.clone());
                        late_total += cfg.batch_size;
                    }
                    finite_loss(ce.forward(logits, y), "pretraining batch", step)
                })?;
                let grads = g.params(&model);
                model = optim.step(sched.at(step), model, grads);
                acc_loss += l as f32;
                acc_n += 1;
                if acc_n == log_every || step + 1 == cfg.steps {
                    losses.push(acc_loss / acc_n as f32);
                    if !quiet {
                        say!(
                            "pretrain step {:>5}/{}: loss {:.4} ({:.0}s)",
                            step + 1,
                            cfg.steps,
                            acc_loss / acc_n as f32,
                            start.elapsed().as_secs_f64()
                        );
                    }
                    (acc_loss, acc_n) = (0.0, 0);
                }
            }
            Ok((model, batches.waited().as_secs_f64()))
        })?;
    let seconds = start.elapsed().as_secs_f64();
    let val_accuracy = if val_clips.is_empty() {
        None
    } else {
        let pass = Network::rewired_if(cfg.rewired);
        Some(clip_accuracy(
            &model.valid(),
            data,
            &cfg.clips,
            size,
            &val_clips,
            pass,
            &plain,
        )?)
    };
    Ok(PretrainOutcome {
        backbone: model.backbone,
        losses,
        train_accuracy: late_right as f64 / late_total.max(1) as f64,
        val_accuracy,
        clips: (train_clips.len(), val_clips.len()),
        seconds,
        input_wait_seconds,
    })
}

/// Clip accuracy of `model` on `clips` (no graph), 32 clips at a time, their frames brought to
/// `size` x `size` (the backbone's input).
pub fn clip_accuracy(
    model: &ClipClassifier,
    data: &TalDataset,
    clips_cfg: &ClipSamplingConfig,
    size: usize,
    clips: &[TrimmedClip],
    network: Network,
    device: &Device,
) -> Result<f64> {
    // Chunks side by side on the pool (a chunk's small operations leave a core idle; the
    // count of right answers does not depend on the order), each in the caller's precision.
    let right = clips
        .par_chunks(32)
        .map(carried(|chunk: &[TrimmedClip]| {
            let (x, y) = batch_tensors(data, clips_cfg, size, chunk, device)?;
            Ok(correct(model.forward(x, network)?, y))
        }))
        .collect::<Result<Vec<usize>>>()?;
    Ok(right.iter().sum::<usize>() as f64 / clips.len().max(1) as f64)
}

fn correct(logits: Tensor<2>, y: Tensor<1, Int>) -> usize {
    let pred = logits.argmax(1).flatten::<1>(0, 1);
    pred.equal(y).int().sum().into_scalar::<i64>() as usize
}

fn batch_tensors(
    data: &TalDataset,
    clips: &ClipSamplingConfig,
    backbone_size: usize,
    batch: &[TrimmedClip],
    device: &Device,
) -> Result<(Tensor<5>, Tensor<1, Int>)> {
    let clips = every_frame(clips);
    // Clips decoded side by side (in order: the batch is the same whatever the threads).
    let xs = batch
        .par_iter()
        .map(|c| {
            // The backbone's input size, short side resized and the centre kept.
            let v = &data.videos[c.video];
            let out = (backbone_size, backbone_size);
            let op = FrameTransformConfig::new().eval_op(v.frame_size()?, out);
            v.read_clips(&clips, c.start, 1, &op)?
                .clips(&clips, c.start, 1, device)
        })
        .collect::<Result<Vec<_>>>()?;
    let labels: Vec<i64> = batch.iter().map(|c| c.label as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch.len()]), device);
    Ok((Tensor::cat(xs, 0), y))
}

/// `clips` with a clip starting at every frame (clip index = first frame).
fn every_frame(clips: &ClipSamplingConfig) -> ClipSamplingConfig {
    clips.clone().with_snippet_stride(1).with_fixed_clips(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::annotations::GroundTruth;
    use crate::data::frames::Frames;
    use crate::train::dataset::TalVideo;

    fn video(id: &str, len: usize, segments: Vec<([f64; 2], usize)>) -> TalVideo {
        TalVideo {
            id: id.into(),
            subset: Subset::Training,
            duration: len as f64 / 10.0,
            fps: 10.0,
            source: std::sync::Arc::new(Frames {
                video: id.into(),
                len,
                height: 2,
                width: 2,
                rgb: vec![0; len * 12],
            }),
            segments,
        }
    }

    /// Clips span 15 frames (8 frames, stride 2) and start at every frame.
    #[test]
    fn trimmed_clips_label_by_overlap_and_balance_background() {
        let data = TalDataset {
            classes: vec!["a".into(), "b".into()],
            ground_truth: GroundTruth { videos: vec![] },
            source: "frames".into(),
            videos: vec![
                // Frames 10..30: clips starting at 7..=18 overlap it by >= 11.25 of 15 frames;
                // every clip of this video touches it, so none is background.
                video("v0", 40, vec![([1.0, 3.0], 0)]),
                // Frames 50..60 (shorter than 0.75 of a clip): no clip of class 1; clips
                // starting at 0..=35 end before it and are background.
                video("v1", 60, vec![([5.0, 6.0], 1)]),
            ],
        };
        let cfg = PretrainConfig::new();
        let clips = trimmed_clips(&data, Subset::Training, &cfg).unwrap();
        let actions: Vec<_> = clips.iter().filter(|c| c.label == 0).collect();
        assert_eq!(
            actions
                .iter()
                .map(|c| (c.video, c.start))
                .collect::<Vec<_>>(),
            (7..=18).map(|s| (0, s)).collect::<Vec<_>>()
        );
        assert!(clips.iter().all(|c| c.label != 1));
        let bg: Vec<_> = clips.iter().filter(|c| c.label == 2).collect();
        // At most as many as the average action class: ceil(12 / 2).
        assert_eq!(bg.len(), 6);
        assert!(bg.iter().all(|c| c.video == 1 && c.start <= 35));
        let no_bg = trimmed_clips(&data, Subset::Training, &cfg.clone().with_background(false));
        assert_eq!(no_bg.unwrap().len(), 12);
        // No validation videos: a clear error, not an empty set.
        assert!(matches!(
            trimmed_clips(&data, Subset::Validation, &cfg),
            Err(Error::EmptyInput { .. })
        ));
    }
}
