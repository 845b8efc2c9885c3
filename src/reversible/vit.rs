//! A whole ViT trained through the reversible pass: the tubelet embedding (stem), the pooling,
//! and the caller's head keep ordinary autodiff; the blocks run as a reversible chain.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use super::chain::{RevChain, RevState};
use super::grads::merge_grads;
use crate::backbone::vit::VisionTransformer;
use crate::error::Result;

/// The state of one reversible training step of a [`VisionTransformer`], between the forward
/// and [`ReversibleVitStep::backward`].
pub struct ReversibleVitStep<'a> {
    vit: &'a VisionTransformer,
    seed: u64,
    /// Stem output (autodiff graph back to the tubelet embedding).
    stem_out: Tensor<3>,
    /// The chain's output leaf.
    chain_out: Tensor<3>,
    state: RevState<3>,
    /// Per-clip features, `[N, D]`, on an autodiff graph starting at the chain's output: feed
    /// them to the head and the loss.
    pub features: Tensor<2>,
}

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

    /// Start a reversible training step: stem with autodiff, blocks without a graph. Build the
    /// loss from `step.features`, then call [`ReversibleVitStep::backward`]. Use a new `seed`
    /// every step (it keys stochastic depth).
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]`; `step.features`: `[N, D]`
    pub fn forward_reversible(&self, clips: Tensor<5>, seed: u64) -> Result<ReversibleVitStep<'_>> {
        self.check_clips(&clips)?;
        let stem_out = self.embed(clips);
        let (chain_out, state) = RevChain::new(self.blocks.as_slice())
            .with_drop_path_seed(seed)
            .forward_no_graph(stem_out.clone());
        let features = self.pool(chain_out.clone());
        Ok(ReversibleVitStep {
            vit: self,
            seed,
            stem_out,
            chain_out,
            state,
            features,
        })
    }
}

impl ReversibleVitStep<'_> {
    /// Back-propagate `loss` (built from `features` by `head` and whatever follows) through the
    /// head, the pooling, the reversible blocks and the stem. Returns one set of gradients for
    /// every parameter of the ViT and of `head`, ready for an optimizer.
    pub fn backward<M: Module>(self, loss: Tensor<1>, head: &M) -> GradientsParams {
        let vit = self.vit;
        let mut grads = loss.backward();
        let grad_out = self
            .chain_out
            .grad(&grads)
            .expect("the loss depends on the features");
        let mut all = GradientsParams::from_module(&mut grads, head);
        // Pooling-side norms (`norm`, `fc_norm`) were in the loss's graph.
        let mut tail = GradientsParams::from_module(&mut grads, vit);
        merge_grads(vit, &mut tail, &mut all);
        drop(grads);
        let rev = RevChain::new(vit.blocks.as_slice()).with_drop_path_seed(self.seed);
        let (grad_in, mut chain, _) = rev.backward(self.state, grad_out);
        merge_grads(&vit.blocks, &mut chain, &mut all);
        // Stem: vector-Jacobian product with the chain's input gradient.
        let mut stem = (self.stem_out * grad_in.autodiff()).sum().backward();
        let mut stem_grads = GradientsParams::from_module(&mut stem, &vit.patch_embed);
        merge_grads(&vit.patch_embed, &mut stem_grads, &mut all);
        all
    }
}
