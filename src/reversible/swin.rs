//! A whole Video Swin trained through the reversible pass: the patch embedding, the patch
//! merging between stages, the final norm, the pooling and the caller's head keep ordinary
//! autodiff; each stage's blocks run as a reversible chain (patch merging changes the shape and
//! stays ordinary, as in Re2TAL).
//!
//! Backward walks the stages in reverse: the loss's graph ends at the last chain's output leaf;
//! each chain's reversible walk returns the gradient at its input, and a vector-Jacobian product
//! through the small graph that made that input (the previous stage's merging, or the patch
//! embedding) gives the gradient at the previous chain's output leaf. Kept between forward and
//! backward: per stage, the chain's output pair and the merging's graph, never the blocks'
//! activations.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use super::chain::{RevChain, RevState};
use super::grads::merge_grads;
use crate::backbone::check_input;
use crate::backbone::swin::VideoSwin;
use crate::error::Result;

/// One stage between forward and backward.
struct StageRecord {
    /// The chain's input, with the graph that produced it (patch embedding or merging).
    input: Tensor<5>,
    /// The chain's output leaf.
    output: Tensor<5>,
    state: RevState<5>,
}

/// The state of one reversible training step of a [`VideoSwin`], between
/// [`VideoSwin::forward_reversible`] and [`ReversibleSwinStep::backward`].
pub struct ReversibleSwinStep<'a> {
    swin: &'a VideoSwin,
    seed: u64,
    stages: Vec<StageRecord>,
    /// Per-clip features, `[N, C]`, on an autodiff graph from the last chain's output: feed them
    /// to the head and the loss.
    pub features: Tensor<2>,
}

/// Stochastic-depth key of stage `i` (each stage's chain replays its own draws).
fn stage_seed(seed: u64, i: usize) -> u64 {
    seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl VideoSwin {
    /// Per-clip features of the *rewired* network with ordinary autodiff (every activation
    /// cached), drop path keyed by `seed`: the reference the reversible step equals.
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, C]`
    pub fn forward_rewired(&self, clips: Tensor<5>, seed: u64) -> Result<Tensor<2>> {
        check_input("swin", &clips)?;
        let mut x = self.patch_embed.forward(clips);
        for (i, stage) in self.stages.iter().enumerate() {
            x = RevChain::new(stage.blocks.as_slice())
                .with_drop_path_seed(stage_seed(seed, i))
                .forward(x);
            if let Some(m) = &stage.merge {
                x = m.forward(x);
            }
        }
        Ok(self.pool_map(x))
    }

    /// Per-clip features of the rewired network for inference (no stochastic depth; run it on
    /// a device without autodiff, e.g. `swin.valid()`).
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, C]`
    pub fn forward_rewired_inference(&self, clips: Tensor<5>) -> Result<Tensor<2>> {
        check_input("swin", &clips)?;
        let mut x = self.patch_embed.forward(clips);
        for stage in &self.stages {
            x = RevChain::new(stage.blocks.as_slice()).forward_inference(x);
            if let Some(m) = &stage.merge {
                x = m.forward(x);
            }
        }
        Ok(self.pool_map(x))
    }

    /// Start a reversible training step: patch embedding and merging with autodiff, every
    /// stage's blocks without a graph. Build the loss from `step.features`, then call
    /// [`ReversibleSwinStep::backward`]. Use a new `seed` every step (it keys stochastic depth).
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]`; `step.features`: `[N, C]`
    pub fn forward_reversible(
        &self,
        clips: Tensor<5>,
        seed: u64,
    ) -> Result<ReversibleSwinStep<'_>> {
        check_input("swin", &clips)?;
        let mut input = self.patch_embed.forward(clips);
        let mut stages = Vec::with_capacity(self.stages.len());
        for (i, stage) in self.stages.iter().enumerate() {
            let (output, state) = RevChain::new(stage.blocks.as_slice())
                .with_drop_path_seed(stage_seed(seed, i))
                .forward_no_graph(input.clone());
            let next = match &stage.merge {
                Some(m) => m.forward(output.clone()),
                None => output.clone(),
            };
            stages.push(StageRecord {
                input,
                output,
                state,
            });
            input = next;
        }
        let features = self.pool_map(input);
        Ok(ReversibleSwinStep {
            swin: self,
            seed,
            stages,
            features,
        })
    }
}

impl ReversibleSwinStep<'_> {
    /// Back-propagate `loss` (built from `features` by `head` and whatever follows) through the
    /// head, the norm and pooling, every stage's reversible blocks, the patch merging and the
    /// patch embedding. Returns one set of gradients for every parameter of the Swin and of
    /// `head`, ready for an optimizer.
    pub fn backward<M: Module>(self, loss: Tensor<1>, head: &M) -> GradientsParams {
        let swin = self.swin;
        let mut records = self.stages;
        let last = records.len() - 1;
        let mut grads = loss.backward();
        let mut grad_out = records[last]
            .output
            .grad(&grads)
            .expect("the loss depends on the features");
        let mut all = GradientsParams::from_module(&mut grads, head);
        // The tail (final norm, and a merging after the last stage if there were one).
        let mut tail = GradientsParams::from_module(&mut grads, &swin.norm);
        merge_grads(&swin.norm, &mut tail, &mut all);
        if let Some(m) = &swin.stages[last].merge {
            let mut g = GradientsParams::from_module(&mut grads, m);
            merge_grads(m, &mut g, &mut all);
        }
        drop(grads);
        while let Some(rec) = records.pop() {
            let i = records.len();
            let blocks = &swin.stages[i].blocks;
            let rev =
                RevChain::new(blocks.as_slice()).with_drop_path_seed(stage_seed(self.seed, i));
            let (grad_in, mut chain, _) = rev.backward(rec.state, grad_out.clone());
            merge_grads(blocks, &mut chain, &mut all);
            // Vector-Jacobian product through what made the chain's input.
            let mut g = (rec.input * grad_in.autodiff()).sum().backward();
            match records.last() {
                Some(prev) => {
                    grad_out = prev
                        .output
                        .grad(&g)
                        .expect("this chain's input comes from the previous chain's output");
                    if let Some(m) = &swin.stages[i - 1].merge {
                        let mut mg = GradientsParams::from_module(&mut g, m);
                        merge_grads(m, &mut mg, &mut all);
                    }
                }
                None => {
                    let mut sg = GradientsParams::from_module(&mut g, &swin.patch_embed);
                    merge_grads(&swin.patch_embed, &mut sg, &mut all);
                }
            }
        }
        all
    }
}
