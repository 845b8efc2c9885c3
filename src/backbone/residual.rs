//! Residual branches: the `F` in `x + F(x)`.
//!
//! Every backbone is an explicit chain of residual modules whose branches implement
//! [`ResidualBranch`], with stage boundaries (patch merging, downsampling) kept outside the
//! chains. Reversible rewiring (Re2TAL) wraps exactly these chains without touching parameters.

use crate::fastmath::gelu;
use crate::norm::LayerNorm;
use crate::precision::{compute, linear, up};
use crate::reversible::ResidualBlock;
use burn::module::{Module, ModuleDisplay};
use burn::nn::Linear;
use burn::tensor::Tensor;

/// A residual branch `F`: the block computes `x + F(x)` (before any post-activation).
pub trait ResidualBranch<const D: usize> {
    /// `F(x)`, same shape as `x`.
    fn branch(&self, x: Tensor<D>) -> Tensor<D>;
}

/// A transformer block: two residual branches, `x + attn(x)` then `x + mlp(x)`. The ViT block
/// (global attention) and the Swin block (shifted-window attention) differ only in `A`.
#[derive(Module, Debug)]
pub struct TransformerBlock<A: Module> {
    /// `x + attn(x)`.
    pub attn: A,
    /// `x + mlp(x)`.
    pub mlp: MlpBranch,
}

impl<const D: usize, A> ResidualBlock<D> for TransformerBlock<A>
where
    A: Module + ModuleDisplay + ResidualBranch<D>,
{
    fn num_branches(&self) -> usize {
        2
    }

    fn branch(&self, k: usize, x: Tensor<D>) -> Tensor<D> {
        match k {
            0 => self.attn.branch(x),
            _ => self.mlp.branch(x),
        }
    }
}

impl<A: Module> TransformerBlock<A> {
    /// The block's ordinary (non-reversible) forward.
    ///
    /// # Shapes
    /// - x: `[..., C]` -> same
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D>
    where
        A: ResidualBranch<D>,
    {
        let x = x.clone() + self.attn.branch(x);
        x.clone() + ResidualBranch::<D>::branch(&self.mlp, x)
    }
}

thread_local! {
    static DROP_PATH_KEY: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
    static DROP_PATH_STREAM: std::cell::RefCell<Option<rand_chacha::ChaCha8Rng>> =
        const { std::cell::RefCell::new(None) };
    static DROP_PATH_ROWS: std::cell::Cell<Option<(usize, usize)>> =
        const { std::cell::Cell::new(None) };
}

/// Run `f` on samples `offset..` of a batch of `total`: inside, a keyed [`drop_path`] draws the
/// whole batch's mask from its key and keeps this part's rows, so a batch run in parts drops
/// the samples the whole batch would (the clip groups of a CPU training step through the
/// rewired network, which the reversible pass must match).
pub fn with_drop_path_rows<T>(offset: usize, total: usize, f: impl FnOnce() -> T) -> T {
    let prev = DROP_PATH_ROWS.with(|r| r.replace(Some((offset, total))));
    let out = f();
    DROP_PATH_ROWS.with(|r| r.set(prev));
    out
}

/// Stochastic-depth probabilities of `n` blocks: rising linearly from 0 at the first block to
/// `rate` at the last (the schedule VideoMAE, Video Swin and timm use).
pub fn drop_path_schedule(rate: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            if n > 1 {
                rate * i as f64 / (n - 1) as f64
            } else {
                0.0
            }
        })
        .collect()
}

/// Run `f` with stochastic depth replayable under `key`: inside, every [`drop_path`] call is
/// active and draws its per-sample mask from a host RNG seeded with `key`, so calling a branch
/// twice under the same key drops the same samples. Reversible training wraps each branch call,
/// forward and recompute, in the same key (step seed and branch index).
pub fn with_drop_path_key<T>(key: u64, f: impl FnOnce() -> T) -> T {
    let prev = DROP_PATH_KEY.with(|k| k.replace(Some(key)));
    let out = f();
    DROP_PATH_KEY.with(|k| k.set(prev));
    out
}

/// Run `f` with stochastic depth drawn from a generator of this thread seeded with `seed`:
/// inside, each [`drop_path`] call on an autodiff device takes its per-sample mask from the
/// generator's next draws (so successive blocks drop different samples), not from the backend's
/// shared generator. A forward pass on a thread of its own then draws the same masks however
/// the threads interleave (the clip groups of a CPU training step,
/// `train::step::clip_groups`). [`with_drop_path_key`] inside takes precedence.
pub fn with_drop_path_stream<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    use rand::SeedableRng;
    let rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let prev = DROP_PATH_STREAM.with(|s| s.replace(Some(rng)));
    let out = f();
    DROP_PATH_STREAM.with(|s| s.replace(prev));
    out
}

/// `n` keep (1) / drop (0) draws with keep probability `keep` from `rng`.
fn keep_mask(rng: &mut impl rand::Rng, n: usize, keep: f64) -> Vec<f32> {
    (0..n)
        .map(|_| if rng.random::<f64>() < keep { 1.0 } else { 0.0 })
        .collect()
}

/// Stochastic depth: drops the whole branch output per sample with probability `prob`, scaling
/// kept samples by `1 / (1 - prob)`. Active while training (autodiff device) or inside
/// [`with_drop_path_key`]; identity otherwise. The mask comes from the key's generator, else
/// from the thread's [`with_drop_path_stream`], else from the backend's generator.
pub fn drop_path<const D: usize>(x: Tensor<D>, prob: f64) -> Tensor<D> {
    if prob == 0.0 {
        return x;
    }
    let keep = 1.0 - prob;
    let mut shape = [1usize; D];
    shape[0] = x.dims()[0];
    let host = match DROP_PATH_KEY.with(|k| k.get()) {
        Some(key) => {
            use rand::SeedableRng;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(key);
            Some(match DROP_PATH_ROWS.with(|r| r.get()) {
                Some((offset, total)) if offset + shape[0] <= total => {
                    keep_mask(&mut rng, total, keep)[offset..offset + shape[0]].to_vec()
                }
                _ => keep_mask(&mut rng, shape[0], keep),
            })
        }
        None if x.device().is_autodiff() => DROP_PATH_STREAM.with(|s| {
            s.borrow_mut()
                .as_mut()
                .map(|rng| keep_mask(rng, shape[0], keep))
        }),
        None => return x,
    };
    let mask = match host {
        // A constant: created on x's device, it joins x's graph without being tracked.
        Some(m) => Tensor::<D>::from_data(burn::tensor::TensorData::new(m, shape), &x.device()),
        None => Tensor::<D>::random(
            shape,
            burn::tensor::Distribution::Bernoulli(keep),
            &x.device(),
        ),
    };
    // In x's precision (f16 / bf16 runs; backends do not promote mixed dtypes).
    let mask = mask.cast(x.dtype());
    x * mask / keep
}

/// The transformer MLP branch shared by ViT and Swin blocks: `fc2(gelu(fc1(norm(x))))`, on the
/// last dimension of tensors of any rank.
#[derive(Module, Debug)]
pub struct MlpBranch {
    /// Pre-norm (`layernorm_after` in VideoMAE, `norm2` in Swin).
    pub norm: LayerNorm,
    /// Expansion (Swin: `mlp.0`).
    pub fc1: Linear,
    /// Projection back (Swin: `mlp.3`).
    pub fc2: Linear,
    /// Stochastic depth probability.
    pub drop_path: f64,
}

impl<const D: usize> ResidualBranch<D> for MlpBranch {
    /// # Shapes
    /// - x: `[..., C]` -> same
    fn branch(&self, x: Tensor<D>) -> Tensor<D> {
        // Norm in f32, the rest in the autocast precision, the output back in f32.
        let h = gelu(linear(
            &self.fc1,
            self.norm.forward_as(x, compute().dtype()),
        ));
        up(drop_path(linear(&self.fc2, h), self.drop_path))
    }
}
