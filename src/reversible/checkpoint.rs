//! Activation checkpointing of a plain residual chain, per block: what `torch.utils.checkpoint`
//! around each block does (AdaTAD's `with_cp`), on the same tape as the reversible segments.
//! The forward runs without a graph and keeps each block's input only; the backward recomputes
//! one block at a time under a local graph from its kept input. Memory between the passes:
//! one `[N, L, C]` tensor per block, instead of every activation (plain autodiff) or two for
//! the whole chain (reversible).

use burn::optim::GradientsParams;
use burn::tensor::{Gradients, Tensor};

use super::chain::ResidualChain;
use crate::backbone::residual::with_drop_path_key;

/// A plain chain whose blocks are checkpoints: `branches` consecutive branches per block (2 for
/// a transformer block: attention, MLP). Borrows the chain; the parameters are its own.
pub struct CheckpointChain<'a, C: ?Sized> {
    /// The chain.
    pub chain: &'a C,
    /// Branches per checkpointed block.
    pub branches: usize,
    /// Stochastic-depth key of this step: the recompute replays the forward's draws.
    pub drop_path_seed: u64,
}

impl<'a, C: ?Sized> CheckpointChain<'a, C> {
    /// `chain` checkpointed every `branches` branches, stochastic depth keyed by `seed`.
    pub fn new(chain: &'a C, branches: usize, seed: u64) -> Self {
        Self {
            chain,
            branches: branches.max(1),
            drop_path_seed: seed,
        }
    }
}

impl<C: ?Sized> CheckpointChain<'_, C> {
    fn call<const D: usize>(&self, i: usize, x: Tensor<D>, graph: bool) -> Tensor<D>
    where
        C: ResidualChain<D>,
    {
        with_drop_path_key(crate::seed::mix(self.drop_path_seed, i as u64), || {
            if graph {
                self.chain.branch(i, x)
            } else {
                self.chain.branch_no_graph(i, x)
            }
        })
    }

    /// Block `k`'s branches from `x`: `x = x + F_i(x)` for each.
    fn block<const D: usize>(&self, k: usize, mut x: Tensor<D>, graph: bool) -> Tensor<D>
    where
        C: ResidualChain<D>,
    {
        let n = self.chain.num_branches();
        for i in k * self.branches..((k + 1) * self.branches).min(n) {
            x = x.clone() + self.call(i, x, graph);
        }
        x
    }

    /// Number of checkpointed blocks.
    pub fn num_blocks<const D: usize>(&self) -> usize
    where
        C: ResidualChain<D>,
    {
        self.chain.num_branches().div_ceil(self.branches)
    }

    /// The chain's forward with ordinary autodiff under the same stochastic-depth draws (the
    /// reference the checkpointed gradients equal).
    ///
    /// # Shapes
    /// - x: any -> same
    pub fn forward<const D: usize>(&self, mut x: Tensor<D>) -> Tensor<D>
    where
        C: ResidualChain<D>,
    {
        for k in 0..self.num_blocks() {
            x = self.block(k, x, true);
        }
        x
    }

    /// The forward without a graph: the output as a fresh autodiff leaf that requires a
    /// gradient, and each block's input (no graph).
    pub fn forward_no_graph<const D: usize>(&self, x: Tensor<D>) -> (Tensor<D>, Vec<Tensor<D>>)
    where
        C: ResidualChain<D>,
    {
        let mut x = x.without_autodiff();
        let mut inputs = Vec::with_capacity(self.num_blocks());
        for k in 0..self.num_blocks() {
            inputs.push(x.clone());
            x = self.block(k, x, false);
        }
        (x.autodiff().require_grad(), inputs)
    }

    /// Walk the blocks back from the output gradient, recomputing each from its kept input
    /// under a local graph (freed before the next). Returns the input gradient and the
    /// chain's parameter gradients.
    pub fn backward<const D: usize>(
        &self,
        inputs: Vec<Tensor<D>>,
        grad_out: Tensor<D>,
    ) -> (Tensor<D>, GradientsParams)
    where
        C: ResidualChain<D>,
    {
        let n = self.chain.num_branches();
        let mut params = GradientsParams::new();
        let mut g = grad_out.without_autodiff();
        for (k, x) in inputs.into_iter().enumerate().rev() {
            let z = x.autodiff().require_grad();
            let y = self.block(k, z.clone(), true);
            let mut grads: Gradients = (y * g.autodiff()).sum().backward();
            g = z.grad(&grads).expect("block input gradient");
            for i in k * self.branches..((k + 1) * self.branches).min(n) {
                self.chain.branch_grads(i, &mut grads, &mut params);
            }
        }
        (g, params)
    }
}
