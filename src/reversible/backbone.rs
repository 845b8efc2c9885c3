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

impl Backbone {
    /// The reversible training forward ([`crate::backbone::vit::VisionTransformer::forward_reversible`]
    /// / [`crate::backbone::swin::VideoSwin::forward_reversible`]): per-clip features, with the
    /// blocks recorded on `tape`; finish with `tape.backward(loss)`.
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, C]`
    pub fn forward_reversible<'a>(
        &'a self,
        clips: Tensor<5>,
        seed: u64,
        tape: &mut ReversibleTape<'a>,
    ) -> Result<Tensor<2>> {
        match self {
            Backbone::Vit(m) => m.forward_reversible(clips, seed, tape),
            Backbone::Swin(m) => m.forward_reversible(clips, seed, tape),
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
