//! The backbones' residual chains, as [`ResidualChain`]s.
//!
//! - ViT and Swin: a block is two branches (attention, MLP), so the rewired chain is exactly the
//!   additive coupling `Y1 = X1 + Attn(X2); Y2 = X2 + MLP(Y1)`.
//! - ResNet: each basic block is one branch; the ReLU that followed the addition moves inside
//!   the branch (`F'(x) = relu(F(x))`), since `relu(x + F(x))` cannot be inverted. Only blocks
//!   that keep the shape belong to a chain: the first block of a stage that downsamples stays
//!   ordinary. BatchNorm must be frozen (`norm_eval`): a training-mode BatchNorm would normalise
//!   with batch statistics in the recompute but not in the graph-free forward, and update its
//!   running statistics twice.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::activation::relu;
use burn::tensor::{Gradients, Tensor};

use super::chain::{ResidualChain, collect};
use crate::backbone::residual::{CoupledBlock, ResidualBranch};
use crate::backbone::resnet3d::BasicBlock;

/// Branch `2k` is block `k`'s attention, branch `2k + 1` its MLP.
impl<const D: usize, B: CoupledBlock<D>> ResidualChain<D> for [B] {
    fn num_branches(&self) -> usize {
        2 * self.len()
    }

    fn branch(&self, i: usize, x: Tensor<D>) -> Tensor<D> {
        let b = &self[i / 2];
        if i.is_multiple_of(2) {
            b.attn().branch(x)
        } else {
            b.mlp().branch(x)
        }
    }

    fn branch_no_graph(&self, i: usize, x: Tensor<D>) -> Tensor<D> {
        let b = &self[i / 2];
        if i.is_multiple_of(2) {
            b.attn().valid().branch(x)
        } else {
            b.mlp().valid().branch(x)
        }
    }

    fn branch_grads(&self, i: usize, grads: &mut Gradients, into: &mut GradientsParams) {
        let b = &self[i / 2];
        if i.is_multiple_of(2) {
            collect(b.attn(), grads, into)
        } else {
            collect(b.mlp(), grads, into)
        }
    }
}

impl ResidualChain<5> for [BasicBlock] {
    fn num_branches(&self) -> usize {
        self.len()
    }

    fn branch(&self, i: usize, x: Tensor<5>) -> Tensor<5> {
        debug_assert!(
            self[i].downsample.is_none(),
            "shape-changing blocks are not reversible"
        );
        relu(self[i].branch.branch(x))
    }

    fn branch_no_graph(&self, i: usize, x: Tensor<5>) -> Tensor<5> {
        relu(self[i].branch.valid().branch(x))
    }

    fn branch_grads(&self, i: usize, grads: &mut Gradients, into: &mut GradientsParams) {
        collect(&self[i].branch, grads, into)
    }
}
