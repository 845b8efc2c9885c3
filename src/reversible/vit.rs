//! A whole ViT through the rewired network: the tubelet embedding (stem) and the pooling keep
//! ordinary autodiff; the blocks are one reversible segment.

use burn::tensor::Tensor;

use super::backbone::RewiredBackbone;
use super::chain::RevChain;
use super::checkpoint::CheckpointChain;
use super::tape::ReversibleTape;
use crate::backbone::vit::VisionTransformer;
use crate::error::Result;

/// The blocks are one chain.
impl RewiredBackbone for VisionTransformer {
    fn forward_rewired(&self, clips: Tensor<5>, seed: u64) -> Result<Tensor<2>> {
        self.check_clips(&clips)?;
        let frames = clips.dims()[2];
        let x = self.embed(clips);
        let y = RevChain::new(self.blocks.as_slice())
            .with_drop_path_seed(seed)
            .forward(x);
        Ok(self.pool(y, frames))
    }

    fn forward_rewired_inference(&self, clips: Tensor<5>) -> Result<Tensor<2>> {
        self.check_clips(&clips)?;
        let frames = clips.dims()[2];
        let x = self.embed(clips);
        let y = RevChain::new(self.blocks.as_slice()).forward_inference(x);
        Ok(self.pool(y, frames))
    }

    fn forward_reversible<'a>(
        &'a self,
        clips: Tensor<5>,
        tape: &mut ReversibleTape<'a>,
    ) -> Result<Tensor<2>> {
        self.check_clips(&clips)?;
        let frames = clips.dims()[2];
        let x = self.embed(clips);
        let chain = RevChain::new(self.blocks.as_slice()).with_drop_path_seed(tape.seed());
        Ok(self.pool(tape.forward(chain, x), frames))
    }
}

impl VisionTransformer {
    /// The plain blocks with activation checkpointing per block (see
    /// `Backbone::forward_checkpointed`).
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N * P, D]`
    pub fn forward_checkpointed<'a>(
        &'a self,
        clips: Tensor<5>,
        tape: &mut ReversibleTape<'a>,
    ) -> Result<Tensor<2>> {
        self.check_clips(&clips)?;
        let frames = clips.dims()[2];
        let x = self.embed(clips);
        let chain = CheckpointChain::new(self.blocks.as_slice(), 2, tape.seed());
        Ok(self.pool(tape.checkpoint(chain, x), frames))
    }
}
