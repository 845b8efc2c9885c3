//! The reversible chain: forward without a graph, backward by reconstruction.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Gradients, Tensor};

use super::grads::merge_grads;
use crate::backbone::residual::with_drop_path_key;
use crate::precision::{self, Precision};

/// Branch outputs join an exact stream on multiples of this (2^-32).
const GRID: f64 = 4_294_967_296.0;

/// The two streams of a rewired chain. In f32 they are f32. Under mixed precision a branch
/// is a step function of its input (its input is rounded to 8 or 11 bits), so an f32 stream's
/// last-bit reconstruction error flips roundings and grows with depth; there the streams are
/// f64 and branch outputs are rounded to a 2^-32 grid before they join (straight through for
/// gradients), so every addition is exact below 2^21 and the inverse's subtraction returns the
/// input bit for bit. The forward runs each branch through the autodiff backend untracked
/// ([`ResidualChain::branch_untracked`]), the code path of the backward's recompute, because a
/// backend's kernels may round differently with and without autodiff. Backends without f64
/// keep f32 streams.
#[derive(Clone, Copy)]
struct Streams {
    exact: bool,
}

impl Streams {
    fn for_input<const D: usize>(x: &Tensor<D>) -> Self {
        let f64 = burn::tensor::DType::F64;
        Self {
            exact: precision::compute() != Precision::F32 && x.device().supports_dtype(f64),
        }
    }

    /// The chain's input as a stream value.
    fn enter<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        if self.exact {
            precision::cast(x, burn::tensor::DType::F64)
        } else {
            x
        }
    }

    /// A stream value as a branch input, or as the chain's output.
    fn leave<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        precision::up(x)
    }

    /// A branch output as the amount it adds to a stream.
    fn join<const D: usize>(self, f: Tensor<D>) -> Tensor<D> {
        if !self.exact {
            return f;
        }
        let f = precision::cast(f, burn::tensor::DType::F64);
        let on_grid = (f.clone() * GRID).round() / GRID;
        if f.device().is_autodiff() {
            f.clone() + (on_grid - f).detach()
        } else {
            on_grid
        }
    }
}

/// A chain of residual branches `F_1 .. F_N` that can be rewired.
pub trait ResidualChain<const D: usize> {
    /// Number of branches `N`.
    fn num_branches(&self) -> usize;

    /// `F_i(x)` for `i` in `0..N`.
    fn branch(&self, i: usize, x: Tensor<D>) -> Tensor<D>;

    /// `F_i(x)` without recording anything: the branch runs on its parameters' inner
    /// (non-autodiff) values (`Module::valid`), same ids. Mixing autodiff parameters with a
    /// plain input would still record a graph.
    fn branch_no_graph(&self, i: usize, x: Tensor<D>) -> Tensor<D>;

    /// `F_i(x)` through the autodiff backend's code path without recording a graph (same
    /// values as [`ResidualChain::branch`] to the bit, which mixed-precision reconstruction
    /// needs); `x` is not on the autodiff device. Defaults to
    /// [`ResidualChain::branch_no_graph`].
    fn branch_untracked(&self, i: usize, x: Tensor<D>) -> Tensor<D> {
        self.branch_no_graph(i, x)
    }

    /// Move branch `i`'s parameter gradients from a finished backward pass into `into`
    /// (adding to gradients already there).
    fn branch_grads(&self, i: usize, grads: &mut Gradients, into: &mut GradientsParams);
}

/// Reconstruction drift of a chain's input: how far the input recomputed by the inverse is from
/// the true one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drift {
    /// max |reconstructed - true|.
    pub max_abs: f64,
    /// `max_abs / max |true|`.
    pub max_rel: f64,
}

impl Drift {
    /// Compare a reconstruction with the true tensor.
    pub fn measure<const D: usize>(reconstructed: Tensor<D>, truth: Tensor<D>) -> Self {
        let truth = truth.without_autodiff();
        let scale = truth.clone().abs().max().into_scalar::<f32>() as f64;
        let max_abs = (reconstructed.without_autodiff() - truth)
            .abs()
            .max()
            .into_scalar::<f32>() as f64;
        Self {
            max_abs,
            max_rel: max_abs / scale.max(f64::MIN_POSITIVE),
        }
    }
}

/// Result of [`RevChain::backward_checked`].
#[derive(Debug)]
pub struct CheckedBackward<const D: usize> {
    /// Gradient at the chain's input.
    pub input_grad: Tensor<D>,
    /// The chain's parameter gradients.
    pub params: GradientsParams,
    /// Drift measured this step (when the true input was kept).
    pub drift: Option<Drift>,
    /// True when the drift reached the tolerance and the gradients come from a cached
    /// (ordinary autodiff) recompute of the stage instead.
    pub fell_back: bool,
}

/// What the graph-free forward keeps: the last two states of the chain.
#[derive(Debug, Clone)]
pub struct RevState<const D: usize> {
    /// `y_{N-1}`.
    pub prev: Tensor<D>,
    /// `y_N`.
    pub last: Tensor<D>,
}

/// A residual chain rewired into a reversible one. It borrows the chain: the parameters are
/// the original module's, unchanged.
pub struct RevChain<'a, C: ?Sized> {
    /// The original chain.
    pub chain: &'a C,
    /// Stochastic-depth key of this training step (see [`RevChain::with_drop_path_seed`]).
    pub drop_path_seed: u64,
}

/// Fresh seeds for chains built without one, so drop path always replays within a step.
static NEXT_SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0x5EED);

impl<'a, C: ?Sized> RevChain<'a, C> {
    /// Rewire `chain` (no copy, same parameters).
    pub fn new(chain: &'a C) -> Self {
        Self {
            chain,
            drop_path_seed: NEXT_SEED.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Stochastic depth is active and replayed: branch `i` drops the samples drawn from the
    /// chain's seed and `i`, in the forward and again in the backward's recompute. Every
    /// `RevChain::new` takes a fresh seed (build one chain per training step); this sets it for
    /// reproducible runs.
    pub fn with_drop_path_seed(mut self, seed: u64) -> Self {
        self.drop_path_seed = seed;
        self
    }

    fn key(&self, i: usize) -> u64 {
        crate::seed::mix(self.drop_path_seed, i as u64)
    }

    /// Branch `i` under this step's drop-path key.
    fn call<const D: usize>(&self, i: usize, x: Tensor<D>) -> Tensor<D>
    where
        C: ResidualChain<D>,
    {
        with_drop_path_key(self.key(i), || self.chain.branch(i, x))
    }
}

impl<C: ?Sized> RevChain<'_, C> {
    /// The rewired forward with ordinary autodiff (every activation cached). Reference for
    /// tests, and the fallback when reconstruction drifts.
    ///
    /// # Shapes
    /// - x: any -> same
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D>
    where
        C: ResidualChain<D>,
    {
        let s = Streams::for_input(&x);
        let x = s.enter(x);
        let (mut a, mut b) = (x.clone(), x);
        for i in 0..self.chain.num_branches() {
            let next = a + s.join(self.call(i, s.leave(b.clone())));
            a = b;
            b = next;
        }
        s.leave((a + b) / 2.0)
    }

    /// The rewired forward for inference: stochastic depth off (outside a keyed scope and on a
    /// device without autodiff, drop path is the identity).
    ///
    /// # Shapes
    /// - x: any -> same
    pub fn forward_inference<const D: usize>(&self, x: Tensor<D>) -> Tensor<D>
    where
        C: ResidualChain<D>,
    {
        let s = Streams::for_input(&x);
        let x = s.enter(x);
        let (mut a, mut b) = (x.clone(), x);
        for i in 0..self.chain.num_branches() {
            let next = a + s.join(self.chain.branch(i, s.leave(b.clone())));
            a = b;
            b = next;
        }
        s.leave((a + b) / 2.0)
    }

    /// The rewired forward without recording a graph. Returns the stage output as a fresh
    /// autodiff leaf that requires a gradient (feed it to the rest of the model) and the state
    /// [`RevChain::backward`] needs. `x` may carry a graph (e.g. from the stem); it is not
    /// extended.
    ///
    /// Branches run through [`ResidualChain::branch_no_graph`] on `x.without_autodiff()`, so
    /// nothing is recorded and the activations are freed as the walk goes.
    pub fn forward_no_graph<const D: usize>(&self, x: Tensor<D>) -> (Tensor<D>, RevState<D>)
    where
        C: ResidualChain<D>,
    {
        let x = x.without_autodiff();
        let s = Streams::for_input(&x);
        let x = s.enter(x);
        let (mut a, mut b) = (x.clone(), x);
        for i in 0..self.chain.num_branches() {
            let input = s.leave(b.clone());
            let f = with_drop_path_key(self.key(i), || {
                if s.exact {
                    self.chain.branch_untracked(i, input)
                } else {
                    self.chain.branch_no_graph(i, input)
                }
            });
            let next = a + s.join(f);
            a = b;
            b = next;
        }
        let out = s
            .leave((a.clone() + b.clone()) / 2.0)
            .autodiff()
            .require_grad();
        (out, RevState { prev: a, last: b })
    }

    /// Walk the chain backwards from the output gradient: reconstruct each branch's input,
    /// recompute the branch under a local graph for its parameter and input gradients, free it.
    /// Returns the gradient with respect to the chain's input and the chain's parameter
    /// gradients. Peak memory holds one branch's graph, whatever the depth.
    ///
    /// Also returns the reconstructed input, so callers can measure drift.
    pub fn backward<const D: usize>(
        &self,
        state: RevState<D>,
        grad_out: Tensor<D>,
    ) -> (Tensor<D>, GradientsParams, Tensor<D>)
    where
        C: ResidualChain<D>,
    {
        let n = self.chain.num_branches();
        let mut params = GradientsParams::new();
        // (y_{i-1}, y_i) and their gradients; the output (y_{N-1} + y_N) / 2 sends half of its
        // gradient to each.
        let (mut ym1, mut yi) = (state.prev, state.last);
        let s = Streams::for_input(&yi);
        let half = grad_out.without_autodiff() / 2.0;
        let (mut gm1, mut gi) = (half.clone(), half);
        for i in (0..n).rev() {
            // Local graph: z = y_{i-1} as a fresh leaf, f = F_i(z).
            let z = s.leave(ym1.clone()).autodiff().require_grad();
            let f = self.call(i, z.clone());
            // Vector-Jacobian product with the gradient arriving at y_i.
            let mut grads = (f.clone() * gi.clone().autodiff()).sum().backward();
            let gz = z.grad(&grads).expect("branch input gradient");
            self.chain.branch_grads(i, &mut grads, &mut params);
            // Inverse: y_{i-2} = y_i - F_i(y_{i-1}).
            let ym2 = yi - s.join(f.without_autodiff());
            // y_i = y_{i-2} + F_i(y_{i-1}): the skip passes g_i to y_{i-2}; F_i passes J^T g_i.
            let gm2 = gi;
            gi = gm1 + gz;
            gm1 = gm2;
            yi = ym1;
            ym1 = ym2;
        }
        // Now (ym1, yi) = (y_{-1}, y_0), both the input x.
        (gm1 + gi, params, s.leave(yi))
    }

    /// The stage's gradients by ordinary autodiff from its true input (every activation of the
    /// stage cached for this one step): the fallback when reconstruction drifts.
    pub fn backward_cached<const D: usize>(
        &self,
        input: Tensor<D>,
        grad_out: Tensor<D>,
    ) -> (Tensor<D>, GradientsParams)
    where
        C: ResidualChain<D>,
    {
        let x = input.without_autodiff().autodiff().require_grad();
        let y = self.forward(x.clone());
        let mut grads = (y * grad_out.without_autodiff().autodiff())
            .sum()
            .backward();
        let gx = x.grad(&grads).expect("input gradient");
        let mut params = GradientsParams::new();
        for i in 0..self.chain.num_branches() {
            self.chain.branch_grads(i, &mut grads, &mut params);
        }
        (gx, params)
    }

    /// [`RevChain::backward`] with the drift monitor: when `input` (the stage's true input,
    /// kept on monitored steps) is given, the reconstruction is compared with it, and if the
    /// relative drift reaches `tolerance` the step's gradients are recomputed with caching
    /// (so a tolerance of 0 always falls back).
    pub fn backward_checked<const D: usize>(
        &self,
        state: RevState<D>,
        grad_out: Tensor<D>,
        input: Option<Tensor<D>>,
        tolerance: f64,
    ) -> CheckedBackward<D>
    where
        C: ResidualChain<D>,
    {
        let (input_grad, params, reconstructed) = self.backward(state, grad_out.clone());
        let Some(input) = input else {
            return CheckedBackward {
                input_grad,
                params,
                drift: None,
                fell_back: false,
            };
        };
        let drift = Drift::measure(reconstructed, input.clone());
        if drift.max_rel >= tolerance {
            let (input_grad, params) = self.backward_cached(input, grad_out);
            return CheckedBackward {
                input_grad,
                params,
                drift: Some(drift),
                fell_back: true,
            };
        }
        CheckedBackward {
            input_grad,
            params,
            drift: Some(drift),
            fell_back: false,
        }
    }
}

/// Move `module`'s parameter gradients from `grads` into `into` (for [`ResidualChain`] impls).
pub(crate) fn collect<M: Module>(module: &M, grads: &mut Gradients, into: &mut GradientsParams) {
    let mut own = GradientsParams::from_module(grads, module);
    merge_grads(module, &mut own, into);
}
