//! A whole Video Swin through the rewired network: the patch embedding, the patch merging
//! between stages, the final norm and the pooling keep ordinary autodiff; each stage's blocks are
//! one reversible segment (patch merging changes the shape and stays ordinary, as in Re2TAL).
//! The tape walks the stages back in reverse, each merging's small graph carrying the gradient
//! from one segment's input to the previous segment's output; between forward and backward it
//! keeps, per stage, the chain's output pair and the merging's graph, never the blocks'
//! activations.

use burn::tensor::Tensor;

use super::backbone::RewiredBackbone;
use super::chain::RevChain;
use super::checkpoint::CheckpointChain;
use super::tape::ReversibleTape;
use crate::backbone::check_input;
use crate::backbone::swin::{SwinBlock, VideoSwin};
use crate::error::Result;

/// Stochastic-depth key of stage `i` (each stage's chain replays its own draws).
fn stage_seed(seed: u64, i: usize) -> u64 {
    crate::seed::mix(seed, i as u64)
}

impl VideoSwin {
    /// Patch embedding, then per stage `run(stage index, its blocks, x)` and the stage's patch
    /// merging, then the norm and pooling: the three rewired passes differ only in `run`.
    fn through_rewired_stages<'a>(
        &'a self,
        clips: Tensor<5>,
        mut run: impl FnMut(usize, &'a [SwinBlock], Tensor<5>) -> Tensor<5>,
    ) -> Result<Tensor<2>> {
        check_input("swin", &clips)?;
        let mut x = self.patch_embed.forward(clips);
        for (i, stage) in self.stages.iter().enumerate() {
            x = run(i, stage.blocks.as_slice(), x);
            if let Some(m) = &stage.merge {
                x = m.forward(x);
            }
        }
        Ok(self.pool_map(x))
    }
}

/// Each stage's blocks are one chain, keyed by its own seed.
impl RewiredBackbone for VideoSwin {
    fn forward_rewired(&self, clips: Tensor<5>, seed: u64) -> Result<Tensor<2>> {
        self.through_rewired_stages(clips, |i, blocks, x| {
            RevChain::new(blocks)
                .with_drop_path_seed(stage_seed(seed, i))
                .forward(x)
        })
    }

    fn forward_rewired_inference(&self, clips: Tensor<5>) -> Result<Tensor<2>> {
        self.through_rewired_stages(clips, |_, blocks, x| {
            RevChain::new(blocks).forward_inference(x)
        })
    }

    fn forward_reversible<'a>(
        &'a self,
        clips: Tensor<5>,
        tape: &mut ReversibleTape<'a>,
    ) -> Result<Tensor<2>> {
        let seed = tape.seed();
        self.through_rewired_stages(clips, |i, blocks, x| {
            tape.forward(
                RevChain::new(blocks).with_drop_path_seed(stage_seed(seed, i)),
                x,
            )
        })
    }
}

impl VideoSwin {
    /// The plain stages with activation checkpointing per block (see
    /// `Backbone::forward_checkpointed`), each stage's chain keyed by its own seed.
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N * P, C]`
    pub fn forward_checkpointed<'a>(
        &'a self,
        clips: Tensor<5>,
        tape: &mut ReversibleTape<'a>,
    ) -> Result<Tensor<2>> {
        let seed = tape.seed();
        self.through_rewired_stages(clips, |i, blocks, x| {
            tape.checkpoint(CheckpointChain::new(blocks, 2, stage_seed(seed, i)), x)
        })
    }
}
