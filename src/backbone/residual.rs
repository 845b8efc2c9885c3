//! Residual branches: the `F` in `x + F(x)`.
//!
//! Every backbone is an explicit chain of residual modules whose branches implement
//! [`ResidualBranch`], with stage boundaries (patch merging, downsampling) kept outside the
//! chains. Reversible rewiring (Re2TAL) wraps exactly these chains without touching parameters.

use burn::tensor::Tensor;

/// A residual branch `F`: the block computes `x + F(x)` (before any post-activation).
pub trait ResidualBranch<const D: usize> {
    /// `F(x)`, same shape as `x`.
    fn branch(&self, x: Tensor<D>) -> Tensor<D>;
}

/// Stochastic depth: drops the whole branch output per sample with probability `prob` while
/// training (autodiff device), scaling kept samples by `1 / (1 - prob)`; identity otherwise.
pub fn drop_path<const D: usize>(x: Tensor<D>, prob: f64) -> Tensor<D> {
    if prob == 0.0 || !x.device().is_autodiff() {
        return x;
    }
    let keep = 1.0 - prob;
    let mut shape = [1usize; D];
    shape[0] = x.dims()[0];
    let mask = Tensor::<D>::random(
        shape,
        burn::tensor::Distribution::Bernoulli(keep),
        &x.device(),
    );
    x * mask / keep
}
