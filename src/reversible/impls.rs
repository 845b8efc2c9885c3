//! The ResNet rewiring, as a [`ResidualBlock`]. ViT and Swin blocks are
//! [`TransformerBlock`](crate::backbone::residual::TransformerBlock)s, whose two branches
//! (attention, MLP) make the rewired chain exactly the additive coupling
//! `Y1 = X1 + Attn(X2); Y2 = X2 + MLP(Y1)`.
//!
//! ResNet: each basic block is one branch; the ReLU that followed the addition moves inside the
//! branch (`F'(x) = relu(F(x))`), since `relu(x + F(x))` cannot be inverted. Only blocks that keep
//! the shape belong to a chain: the first block of a stage that downsamples stays ordinary.
//! BatchNorm must be frozen (`norm_eval`): a training-mode BatchNorm would normalise with batch
//! statistics in the recompute but not in the graph-free forward, and update its running
//! statistics twice.

use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use super::block::ResidualBlock;
use crate::backbone::residual::ResidualBranch;
use crate::backbone::resnet3d::BasicBlock;

/// The rewired branch `relu(F(x))` (not the block's own `relu(x + F(x))`).
impl ResidualBlock<5> for BasicBlock {
    fn branch(&self, _k: usize, x: Tensor<5>) -> Tensor<5> {
        debug_assert!(
            self.downsample.is_none(),
            "shape-changing blocks are not reversible"
        );
        relu(self.branch.branch(x))
    }
}
