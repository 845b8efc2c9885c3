//! One optimisation step, per training mode, behind one interface: the loop in
//! [`trainer`](super::trainer) picks a window of each of the step's videos, builds their
//! [`Objective`]s (one normaliser and one padded length for the step), asks the mode's
//! [`ModeStep`] for the loss and the gradients of the parts it trains over all of them, then
//! clips them and steps the optimizers. Several videos per step are one padded batch where the
//! mode holds little per video (head-only) and micro-batches whose gradients add up where it
//! holds a backbone's activations (full, reversible, LoSA), so memory stays that of one video. This is where the three papers compose: a step reads its clips at
//! the fidelity the LoFi sampler chose ([`Window`]), and the mode decides how the backbone runs
//! (frozen with LoSA adapters, plain autodiff, or the reversible pass).

#[cfg(test)]
mod batch_tests;
mod clip_groups;
mod fine_tune;
mod grads;
mod modes;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub(crate) use fine_tune::{BackboneRun, Clips};
pub(crate) use grads::{StepGrads, add_from, add_into, clip_grads};
pub(crate) use modes::for_plan;

use super::model::{Extraction, TalModel, run_head_batch};
use crate::backbone::BackboneOutput;
use crate::data::ClipSamplingConfig;
use crate::data::augment::AugmentConfig;
use crate::data::clips::ClipFrames;
use crate::error::{Error, Result};
use crate::reversible::SegmentDrift;
use crate::seed::mix;
use crate::tal::assign::Targets;
use crate::tal::head::TalHead;
use crate::tal::loss::{LossConfig, batch_loss};

/// The clips one step trains on: `count` consecutive clips of one video from `start`, at the
/// step's fidelity.
pub(crate) struct Window<'a> {
    /// The window's frames, decoded at the step's frame size (`None` when the step trains on
    /// cached features).
    pub frames: Option<&'a ClipFrames>,
    /// Clip sampling at the step's temporal fidelity.
    pub clips: ClipSamplingConfig,
    /// First clip.
    pub start: usize,
    /// Number of clips.
    pub count: usize,
    /// The frozen backbone's outputs for the whole video, when the run cached them.
    pub cached: Option<&'a BackboneOutput>,
    /// Clip augmentation, when the run augments.
    pub augment: Option<&'a AugmentConfig>,
    /// The step's seed: stochastic depth of the rewired network and the augmentation draws
    /// derive from it, so a resumed run replays them.
    pub seed: u64,
    /// The step's device (autodiff).
    pub device: &'a Device,
}

impl Window<'_> {
    /// The window's clips on `device`, augmented when the run augments.
    ///
    /// # Shapes
    /// - output: `[count, 3, F, H, W]`
    pub fn clips_on(&self, device: &Device) -> Result<Tensor<5>> {
        self.clip_range_on(0, self.count, device)
    }

    /// Clips `start..start + count` of the window on `device`, augmented as
    /// [`Window::clips_on`] augments the whole window (the same draws).
    ///
    /// # Shapes
    /// - output: `[count, 3, F, H, W]`
    pub fn clip_range_on(&self, start: usize, count: usize, device: &Device) -> Result<Tensor<5>> {
        let frames = self.frames.ok_or_else(|| {
            Error::Config("a step on cached features has no frames to cut clips from".into())
        })?;
        if start + count > self.count {
            return Err(Error::Config(format!(
                "clips {start}..{} of a window of {} clips",
                start + count,
                self.count
            )));
        }
        let x = frames.clips(&self.clips, self.start + start, count, device)?;
        Ok(match self.augment {
            // Drawn from the step's own generator: resume replays it.
            Some(a) => a.apply(x, &mut ChaCha8Rng::seed_from_u64(mix(self.seed, 0xA06))),
            None => x,
        })
    }

    /// The window's clips on the step's device as a [`Clips`] source (made range by range
    /// where the step runs in clip groups).
    pub fn clip_source(&self) -> Clips<'_> {
        Clips::new(self.count, self.device.clone(), |start, count| {
            self.clip_range_on(start, count, self.device)
        })
    }

    /// The frozen backbone's outputs for the window: the cached ones, or a forward without a
    /// graph now.
    pub fn frozen(&self, model: &TalModel, how: Extraction<'_>) -> Result<BackboneOutput> {
        if let Some(f) = self.cached {
            // Layers stay in the precision they were cached in: the adapters normalise them in
            // f32 without a graph and compute in the autocast precision.
            return Ok(f.clone().narrow(self.start, self.count));
        }
        let x = self.clips_on(&self.device.clone().without_autodiff())?;
        how.outputs(&model.backbone.valid(), x)
    }
}

/// The loss of one video of a step: the head on the window's features (padded to the step's
/// length) against its targets, with the loss normaliser's value of this step. A non-finite
/// loss is an error naming the video and step.
pub(crate) struct Objective<'a> {
    /// Targets for every point of the head's pyramid over the step's padded length.
    pub targets: Targets,
    /// The step's length: its longest window's clips (every video's features are padded to
    /// it, the padding masked).
    pub len: usize,
    /// The loss normaliser's value.
    pub norm: f64,
    /// Loss settings.
    pub cfg: &'a LossConfig,
    /// Video id (for errors).
    pub video: &'a str,
    /// Global step (for errors).
    pub step: usize,
    /// The f16 loss scale the backward pass starts from (1 otherwise).
    pub scale: f64,
}

impl Objective<'_> {
    /// The loss of `head` on `features` (`[T, C]`), times the loss scale, and its (unscaled)
    /// value, checked finite.
    pub fn loss(&self, head: &TalHead, features: Tensor<2>) -> Result<(Tensor<1>, f64)> {
        batch_objective(head, vec![features], &[self])
    }
}

/// The loss of `head` on a padded batch of the step's `features` (one `[T_i, C]` per video,
/// all objectives of one step), times the loss scale, and its (unscaled) value, checked finite.
pub(crate) fn batch_objective(
    head: &TalHead,
    features: Vec<Tensor<2>>,
    objectives: &[&Objective<'_>],
) -> Result<(Tensor<1>, f64)> {
    let first = objectives
        .first()
        .ok_or_else(|| Error::Config("a training step needs at least one video".into()))?;
    let out = run_head_batch(head, features, first.len)?;
    let targets: Vec<Targets> = objectives.iter().map(|o| o.targets.clone()).collect();
    let loss = batch_loss(&out, &targets, first.norm, first.cfg)?;
    let what = objectives
        .iter()
        .map(|o| o.video)
        .collect::<Vec<_>>()
        .join("`, `");
    let (loss, value) = finite_loss(loss, &what, first.step)?;
    Ok(match first.scale {
        1.0 => (loss, value),
        s => (loss * s, value),
    })
}

/// `loss` and its value when finite; otherwise an error naming `what` was trained on and the
/// step.
pub(crate) fn finite_loss(loss: Tensor<1>, what: &str, step: usize) -> Result<(Tensor<1>, f64)> {
    let value = loss.clone().into_scalar::<f64>();
    if value.is_finite() {
        Ok((loss, value))
    } else {
        Err(Error::NonFiniteLoss {
            video: what.to_string(),
            step,
            value,
        })
    }
}

/// What a mode's step computed.
pub(crate) struct Computed {
    /// The loss value.
    pub loss: f64,
    /// The gradients of the parts the mode trains.
    pub grads: StepGrads,
    /// The drift monitor's worst reading, on checked reversible steps.
    pub drift: Option<SegmentDrift>,
}

/// How one training mode turns windows into a loss and gradients. The loop around it (data
/// order, schedules, clipping, optimizers, checkpoints, resume) is the same for every mode.
pub(crate) trait ModeStep {
    /// The loss of `model` on `window` under `objective`, and its gradients.
    fn compute(
        &self,
        model: &TalModel,
        window: &Window<'_>,
        objective: &Objective<'_>,
    ) -> Result<Computed>;

    /// The loss of a step over several videos (one objective each) and its gradients: by
    /// default the videos one at a time as micro-batches, their gradients added, so memory is
    /// that of one video and the update that of the batch.
    fn compute_step(
        &self,
        model: &TalModel,
        videos: &[(Window<'_>, Objective<'_>)],
    ) -> Result<Computed> {
        let mut total: Option<Computed> = None;
        for (w, o) in videos {
            // Burn's generator (stochastic depth outside the reversible chain) restarts from
            // the video's own seed: a video draws the same whichever rank of a data-parallel
            // run computes it, and in whatever place of the step.
            w.device.seed(w.seed);
            let c = self.compute(model, w, o)?;
            total = Some(match total {
                None => c,
                Some(t) => t.add(c, model),
            });
        }
        total.ok_or_else(|| Error::Config("a training step needs at least one video".into()))
    }
}

impl Computed {
    /// The sum of two micro-batches' losses and gradients; the worse drift reading.
    pub fn add(mut self, other: Computed, model: &TalModel) -> Computed {
        self.grads.add(other.grads, model);
        Computed {
            loss: self.loss + other.loss,
            grads: self.grads,
            drift: match (self.drift, other.drift) {
                (Some(a), Some(b)) => Some(worse_drift(a, b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// The reading with the larger relative drift; fell back if either did.
pub(crate) fn worse_drift(a: SegmentDrift, b: SegmentDrift) -> SegmentDrift {
    let fell_back = a.fell_back || b.fell_back;
    let worse = if b.drift.max_rel > a.drift.max_rel {
        b
    } else {
        a
    };
    SegmentDrift { fell_back, ..worse }
}
