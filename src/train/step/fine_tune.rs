//! How a backbone that learns runs in a step, shared by the detector's `full` and `reversible`
//! modes and by backbone pretraining: the forward under a caller's loss, then the backward
//! pass, leaving gradients the caller takes out per module.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Gradients, Tensor};

use super::clip_groups::{self, GroupGrads};
use crate::backbone::{Backbone, Network, VideoBackbone};
use crate::error::Result;
use crate::reversible::{
    DriftMonitor, ReversibleGrads, ReversibleTape, RewiredBackbone, SegmentDrift,
};

/// How a learning backbone runs.
#[derive(Clone, Debug)]
pub(crate) enum BackboneRun {
    /// Ordinary autodiff through `network`, every activation kept (on the rewired network,
    /// the reference the reversible pass must match).
    Autodiff(Network),
    /// Re2TAL: the rewired network on a reversible tape (no block activations kept; the
    /// backward pass reconstructs them), checked as the monitor says.
    Reversible(DriftMonitor),
    /// The plain network with activation checkpointing per block: each block's input kept,
    /// the block recomputed in the backward.
    Checkpointed,
}

/// A step's clips, made range by range on the thread that needs them: the clip groups of a
/// CPU step each make their own (turning decoded frames into a clip tensor is a share of the
/// step's work).
pub(crate) struct Clips<'a> {
    count: usize,
    device: Device,
    make: Box<dyn Fn(usize, usize) -> Result<Tensor<5>> + Sync + 'a>,
}

impl<'a> Clips<'a> {
    /// `count` clips on `device`, clips `start..start + count` of them made by `make(start,
    /// count)`.
    pub fn new(
        count: usize,
        device: Device,
        make: impl Fn(usize, usize) -> Result<Tensor<5>> + Sync + 'a,
    ) -> Self {
        Clips {
            count,
            device,
            make: Box::new(make),
        }
    }

    /// Clips already made.
    ///
    /// # Shapes
    /// - x: `[N, 3, F, H, W]`
    pub fn of(x: Tensor<5>) -> Clips<'static> {
        Clips::new(x.dims()[0], x.device(), move |start, count| {
            Ok(x.clone().narrow(0, start, count))
        })
    }

    /// How many clips.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The device they are made on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Clips `start..start + count`.
    ///
    /// # Shapes
    /// - output: `[count, 3, F, H, W]`
    pub fn range(&self, start: usize, count: usize) -> Result<Tensor<5>> {
        (self.make)(start, count)
    }

    /// Every clip.
    pub fn all(&self) -> Result<Tensor<5>> {
        self.range(0, self.count)
    }
}

/// The gradients a step left: autodiff's store, or the reversible tape's.
pub(crate) enum LeftGrads {
    /// From `loss.backward()`.
    Autodiff(Gradients),
    /// From the reversible tape's backward pass.
    Reversible(ReversibleGrads),
    /// From the backward passes of the clip groups (CPU backend).
    Groups(GroupGrads),
}

impl LeftGrads {
    /// Move `module`'s parameter gradients out.
    pub fn params<M: Module>(&mut self, module: &M) -> GradientsParams {
        match self {
            LeftGrads::Autodiff(g) => GradientsParams::from_module(g, module),
            LeftGrads::Reversible(g) => g.params(module),
            LeftGrads::Groups(g) => g.params(module),
        }
    }

    /// The drift monitor's worst reading, on checked reversible steps.
    pub fn drift(&self) -> Option<SegmentDrift> {
        match self {
            LeftGrads::Autodiff(_) | LeftGrads::Groups(_) => None,
            LeftGrads::Reversible(g) => g.worst_drift(),
        }
    }
}

impl BackboneRun {
    /// `backbone` on `clips`, its pooled features into `loss_of` (which returns the loss and
    /// its value), then the backward pass. `seed` draws the rewired network's stochastic depth
    /// (replayed by the reversible backward); `step` schedules the drift checks.
    ///
    /// # Shapes
    /// - clips: `N` of `[3, F, H, W]`; `loss_of` receives `[N, C]`
    pub fn step(
        &self,
        backbone: &Backbone,
        clips: Clips<'_>,
        seed: u64,
        step: usize,
        loss_of: impl FnOnce(Tensor<2>) -> Result<(Tensor<1>, f64)>,
    ) -> Result<(f64, LeftGrads)> {
        match self {
            BackboneRun::Autodiff(network)
                if clip_groups::applies(clips.device(), clips.count()) =>
            {
                let (value, g) = clip_groups::step(backbone, *network, clips, seed, loss_of)?;
                Ok((value, LeftGrads::Groups(g)))
            }
            BackboneRun::Autodiff(network) => {
                let clips = clips.all()?;
                let features = match network {
                    Network::Plain => backbone.forward(clips, &[])?.features,
                    Network::Rewired => backbone.forward_rewired(clips, seed)?,
                };
                let (loss, value) = loss_of(features)?;
                Ok((value, LeftGrads::Autodiff(loss.backward())))
            }
            BackboneRun::Reversible(drift) => {
                let mut tape = drift.tape(step).with_seed(seed);
                let features = backbone.forward_reversible(clips.all()?, &mut tape)?;
                let (loss, value) = loss_of(features)?;
                Ok((value, LeftGrads::Reversible(tape.backward(loss)?)))
            }
            BackboneRun::Checkpointed => {
                let mut tape = ReversibleTape::new().with_seed(seed);
                let features = backbone.forward_checkpointed(clips.all()?, &mut tape)?;
                let (loss, value) = loss_of(features)?;
                Ok((value, LeftGrads::Reversible(tape.backward(loss)?)))
            }
        }
    }
}
