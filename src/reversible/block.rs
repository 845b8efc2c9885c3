//! The one trait a residual module implements to be rewired.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Gradients, Tensor};

use super::chain::{ResidualChain, collect};

/// A module made of residual branches applied in order: `x = x + F_0(x)`, then
/// `x = x + F_1(x)`, and so on. A ViT or Swin block is two branches (attention, MLP), a ResNet
/// basic block one, a user's MLP-mixer block two (token mixing, channel mixing). Any slice of
/// such modules is a [`ResidualChain`] and can be rewired with
/// [`RevChain`](super::RevChain) and trained through a [`ReversibleTape`](super::ReversibleTape).
///
/// # Randomness contract
///
/// The reversible backward calls each branch twice, once in the graph-free forward and once
/// while walking back, and subtracts the second result from the output to reconstruct the
/// input. A branch must therefore return the same values for the same input and parameters in
/// both calls. Stochastic depth through [`drop_path`](crate::backbone::residual::drop_path)
/// satisfies this (its mask is replayed from the chain's per-step seed). A branch that draws
/// fresh randomness on every call (Burn's `Dropout`, `Tensor::random`) breaks the
/// reconstruction: the [`DriftMonitor`](super::DriftMonitor) detects it on every step it
/// checks (the drift is of the order of the activations, not of rounding) and recomputes that
/// step's gradients with ordinary autodiff; keep such layers out of reversible branches.
pub trait ResidualBlock<const D: usize>: Module {
    /// Number of residual branches in the block (1 unless overridden).
    fn num_branches(&self) -> usize {
        1
    }

    /// `F_k(x)` for `k` in `0..num_branches()`, same shape as `x`.
    fn branch(&self, k: usize, x: Tensor<D>) -> Tensor<D>;
}

/// Branch index `i` of the flattened chain -> (block, branch within the block).
fn locate<const D: usize, M: ResidualBlock<D>>(blocks: &[M], mut i: usize) -> (&M, usize) {
    for b in blocks {
        let n = b.num_branches();
        if i < n {
            return (b, i);
        }
        i -= n;
    }
    panic!("branch index out of range of the chain")
}

impl<const D: usize, M: ResidualBlock<D>> ResidualChain<D> for [M] {
    fn num_branches(&self) -> usize {
        self.iter().map(|b| b.num_branches()).sum()
    }

    fn branch(&self, i: usize, x: Tensor<D>) -> Tensor<D> {
        let (b, k) = locate(self, i);
        b.branch(k, x)
    }

    fn branch_no_graph(&self, i: usize, x: Tensor<D>) -> Tensor<D> {
        let (b, k) = locate(self, i);
        b.valid().branch(k, x)
    }

    fn branch_untracked(&self, i: usize, x: Tensor<D>) -> Tensor<D> {
        let (b, k) = locate(self, i);
        b.clone()
            .no_grad()
            .branch(k, x.autodiff())
            .without_autodiff()
    }

    fn branch_grads(&self, i: usize, grads: &mut Gradients, into: &mut GradientsParams) {
        // Only branch k's parameters took part in the local graph; the block's others have no
        // gradient there and are skipped.
        collect(locate(self, i).0, grads, into)
    }
}
