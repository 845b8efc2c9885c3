//! Rewired and reversible passes of a whole [`Backbone`], whatever its family: ViT and Video
//! Swin. ResNets are refused here: their chains rewire and pass the gradient tests, but whole-
//! model training would need BatchNorm frozen everywhere (`docs/reversible.md`).

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use super::{ReversibleSwinStep, ReversibleVitStep};
use crate::backbone::Backbone;
use crate::error::{Error, Result};

/// A reversible training step of a whole backbone, between its forward and backward.
pub enum ReversibleStep<'a> {
    /// A ViT's.
    Vit(Box<ReversibleVitStep<'a>>),
    /// A Video Swin's.
    Swin(Box<ReversibleSwinStep<'a>>),
}

impl ReversibleStep<'_> {
    /// Per-clip features `[N, C]` for the head and the loss.
    pub fn features(&self) -> Tensor<2> {
        match self {
            Self::Vit(s) => s.features.clone(),
            Self::Swin(s) => s.features.clone(),
        }
    }

    /// Gradients of every backbone and `head` parameter for `loss` (built from
    /// [`Self::features`]).
    pub fn backward<M: Module>(self, loss: Tensor<1>, head: &M) -> GradientsParams {
        match self {
            Self::Vit(s) => (*s).backward(loss, head),
            Self::Swin(s) => (*s).backward(loss, head),
        }
    }
}

fn unsupported(what: &str) -> Error {
    Error::Config(format!(
        "{what} is implemented for ViT and Video Swin backbones (a ResNet's chains rewire, but \
         whole-model reversible training needs every BatchNorm frozen)"
    ))
}

impl Backbone {
    /// [`crate::backbone::vit::VisionTransformer::forward_reversible`] /
    /// [`crate::backbone::swin::VideoSwin::forward_reversible`].
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]`; features `[N, C]`
    pub fn forward_reversible(&self, clips: Tensor<5>, seed: u64) -> Result<ReversibleStep<'_>> {
        match self {
            Backbone::Vit(m) => Ok(ReversibleStep::Vit(Box::new(
                m.forward_reversible(clips, seed)?,
            ))),
            Backbone::Swin(m) => Ok(ReversibleStep::Swin(Box::new(
                m.forward_reversible(clips, seed)?,
            ))),
            Backbone::ResNet(_) => Err(unsupported("reversible training")),
        }
    }

    /// Per-clip features of the rewired network with ordinary autodiff (the reference).
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, C]`
    pub fn forward_rewired(&self, clips: Tensor<5>, seed: u64) -> Result<Tensor<2>> {
        match self {
            Backbone::Vit(m) => m.forward_rewired(clips, seed),
            Backbone::Swin(m) => m.forward_rewired(clips, seed),
            Backbone::ResNet(_) => Err(unsupported("the rewired network")),
        }
    }

    /// Per-clip features of the rewired network for inference (no graph wanted).
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, C]`
    pub fn forward_rewired_inference(&self, clips: Tensor<5>) -> Result<Tensor<2>> {
        match self {
            Backbone::Vit(m) => m.forward_rewired_inference(clips),
            Backbone::Swin(m) => m.forward_rewired_inference(clips),
            Backbone::ResNet(_) => Err(unsupported("the rewired network")),
        }
    }
}
