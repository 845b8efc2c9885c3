//! A whole ViT through the rewired network: the tubelet embedding (stem) and the pooling keep
//! ordinary autodiff; the blocks are one reversible segment.

use burn::tensor::Tensor;

use super::chain::RevChain;
use super::tape::ReversibleTape;
use crate::backbone::vit::VisionTransformer;
use crate::error::Result;

impl VisionTransformer {
    /// Per-clip features of the *rewired* network with ordinary autodiff (every activation
    /// cached), drop path keyed by `seed`: the reference the reversible step equals.
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, D]`
    pub fn forward_rewired(&self, clips: Tensor<5>, seed: u64) -> Result<Tensor<2>> {
        self.check_clips(&clips)?;
        let x = self.embed(clips);
        let y = RevChain::new(self.blocks.as_slice())
            .with_drop_path_seed(seed)
            .forward(x);
        Ok(self.pool(y))
    }

    /// Per-clip features of the rewired network for inference (no stochastic depth; run it on
    /// a device without autodiff, e.g. `vit.valid()`).
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, D]`
    pub fn forward_rewired_inference(&self, clips: Tensor<5>) -> Result<Tensor<2>> {
        self.check_clips(&clips)?;
        let x = self.embed(clips);
        let y = RevChain::new(self.blocks.as_slice()).forward_inference(x);
        Ok(self.pool(y))
    }

    /// The reversible training forward: stem with autodiff, the blocks recorded on `tape`
    /// without a graph. Build the loss from the features, then `tape.backward(loss)`. Use a new
    /// `seed` every step (it keys stochastic depth).
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, D]`
    pub fn forward_reversible<'a>(
        &'a self,
        clips: Tensor<5>,
        seed: u64,
        tape: &mut ReversibleTape<'a>,
    ) -> Result<Tensor<2>> {
        self.check_clips(&clips)?;
        let x = self.embed(clips);
        let chain = RevChain::new(self.blocks.as_slice()).with_drop_path_seed(seed);
        Ok(self.pool(tape.forward(chain, x)))
    }
}
