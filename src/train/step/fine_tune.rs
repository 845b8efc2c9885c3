//! How a backbone that learns runs in a step, shared by the detector's `full` and `reversible`
//! modes and by backbone pretraining: the forward under a caller's loss, then the backward
//! pass, leaving gradients the caller takes out per module.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Gradients, Tensor};

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

/// The gradients a step left: autodiff's store, or the reversible tape's.
pub(crate) enum LeftGrads {
    /// From `loss.backward()`.
    Autodiff(Gradients),
    /// From the reversible tape's backward pass.
    Reversible(ReversibleGrads),
}

impl LeftGrads {
    /// Move `module`'s parameter gradients out.
    pub fn params<M: Module>(&mut self, module: &M) -> GradientsParams {
        match self {
            LeftGrads::Autodiff(g) => GradientsParams::from_module(g, module),
            LeftGrads::Reversible(g) => g.params(module),
        }
    }

    /// The drift monitor's worst reading, on checked reversible steps.
    pub fn drift(&self) -> Option<SegmentDrift> {
        match self {
            LeftGrads::Autodiff(_) => None,
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
    /// - clips: `[N, 3, F, H, W]`; `loss_of` receives `[N, C]`
    pub fn step(
        &self,
        backbone: &Backbone,
        clips: Tensor<5>,
        seed: u64,
        step: usize,
        loss_of: impl FnOnce(Tensor<2>) -> Result<(Tensor<1>, f64)>,
    ) -> Result<(f64, LeftGrads)> {
        match self {
            BackboneRun::Autodiff(network) => {
                let features = match network {
                    Network::Plain => backbone.forward(clips, &[])?.features,
                    Network::Rewired => backbone.forward_rewired(clips, seed)?,
                };
                let (loss, value) = loss_of(features)?;
                Ok((value, LeftGrads::Autodiff(loss.backward())))
            }
            BackboneRun::Reversible(drift) => {
                let mut tape = drift.tape(step).with_seed(seed);
                let features = backbone.forward_reversible(clips, &mut tape)?;
                let (loss, value) = loss_of(features)?;
                Ok((value, LeftGrads::Reversible(tape.backward(loss)?)))
            }
            BackboneRun::Checkpointed => {
                let mut tape = ReversibleTape::new().with_seed(seed);
                let features = backbone.forward_checkpointed(clips, &mut tape)?;
                let (loss, value) = loss_of(features)?;
                Ok((value, LeftGrads::Reversible(tape.backward(loss)?)))
            }
        }
    }
}
