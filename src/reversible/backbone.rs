//! Rewired and reversible passes of a whole [`Backbone`], whatever its family: ViT and Video
//! Swin. ResNets are refused here: their chains rewire and pass the gradient tests, but whole-
//! model training would need BatchNorm frozen everywhere (`docs/reversible.md`).

use burn::tensor::Tensor;

use super::ReversibleTape;
use crate::backbone::Backbone;
use crate::error::{Error, Result};

fn unsupported(what: &str) -> Error {
    Error::Config(format!(
        "{what} is implemented for ViT and Video Swin backbones (a ResNet's chains rewire, but \
         whole-model reversible training needs every BatchNorm frozen)"
    ))
}

/// A backbone whose residual chains run as Re2TAL's rewired network: the same parameters, three
/// passes. The parts between chains (stem, patch merging, norm, pooling) keep ordinary autodiff.
pub trait RewiredBackbone {
    /// Per-clip features of the rewired network with ordinary autodiff (every activation
    /// cached), stochastic depth keyed by `seed`: the reference the reversible pass equals.
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, C]`
    fn forward_rewired(&self, clips: Tensor<5>, seed: u64) -> Result<Tensor<2>>;

    /// Per-clip features of the rewired network for inference: no stochastic depth, no graph
    /// wanted (run it on a device without autodiff, e.g. `model.valid()`).
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, C]`
    fn forward_rewired_inference(&self, clips: Tensor<5>) -> Result<Tensor<2>>;

    /// The reversible training forward: each chain recorded on `tape` as one segment without
    /// its activations, stochastic depth keyed by [`ReversibleTape::seed`] exactly as
    /// [`RewiredBackbone::forward_rewired`] keys it. Build the loss from the features, then
    /// `tape.backward(loss)`.
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, C]`
    fn forward_reversible<'a>(
        &'a self,
        clips: Tensor<5>,
        tape: &mut ReversibleTape<'a>,
    ) -> Result<Tensor<2>>;
}

impl RewiredBackbone for Backbone {
    fn forward_rewired(&self, clips: Tensor<5>, seed: u64) -> Result<Tensor<2>> {
        match self {
            Backbone::Vit(m) => m.forward_rewired(clips, seed),
            Backbone::Swin(m) => m.forward_rewired(clips, seed),
            Backbone::ResNet(_) => Err(unsupported("the rewired network")),
        }
    }

    fn forward_rewired_inference(&self, clips: Tensor<5>) -> Result<Tensor<2>> {
        match self {
            Backbone::Vit(m) => m.forward_rewired_inference(clips),
            Backbone::Swin(m) => m.forward_rewired_inference(clips),
            Backbone::ResNet(_) => Err(unsupported("the rewired network")),
        }
    }

    fn forward_reversible<'a>(
        &'a self,
        clips: Tensor<5>,
        tape: &mut ReversibleTape<'a>,
    ) -> Result<Tensor<2>> {
        match self {
            Backbone::Vit(m) => m.forward_reversible(clips, tape),
            Backbone::Swin(m) => m.forward_reversible(clips, tape),
            Backbone::ResNet(_) => Err(unsupported("reversible training")),
        }
    }
}

impl Backbone {
    /// The plain network's training forward with activation checkpointing per block (what
    /// `torch.utils.checkpoint` around each block does): each chain recorded on `tape`
    /// keeping only its blocks' inputs, stochastic depth keyed by [`ReversibleTape::seed`].
    /// Build the loss from the features, then `tape.backward(loss)`. ResNets are refused
    /// (a recomputed training-mode BatchNorm would update its statistics twice).
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N * P, C]`
    pub fn forward_checkpointed<'a>(
        &'a self,
        clips: Tensor<5>,
        tape: &mut ReversibleTape<'a>,
    ) -> Result<Tensor<2>> {
        match self {
            Backbone::Vit(m) => m.forward_checkpointed(clips, tape),
            Backbone::Swin(m) => m.forward_checkpointed(clips, tape),
            Backbone::ResNet(_) => Err(Error::Config(
                "activation checkpointing is implemented for ViT and Video Swin backbones (a \
                 recomputed training-mode BatchNorm would update its statistics twice)"
                    .into(),
            )),
        }
    }
}
