//! Mixed precision: parameters (and optimizer state) stay f32, the backbone's residual branches
//! compute in bf16 or f16.
//!
//! Burn has no autocast, so the crate casts at module boundaries, the way PyTorch's autocast
//! does for its op lists: inside [`autocast`], a residual branch takes its f32 input, runs its
//! layer norm in f32, casts the normalised tokens down ([`down`]), runs its projections
//! ([`linear`], weights cast to the compute type; the cast's gradient arrives at the f32 weight in
//! f32), attention (scores, softmax and log-sum-exp in f32, see [`crate::attention`]) and GELU
//! in the low precision, and returns its output cast back to f32. The residual streams, and so
//! the additions and subtractions of the reversible pass, stay f32: reconstruction is as exact
//! as in f32 because the recomputed branch is deterministic. Everything outside the branches
//! (patch embedding, final norms, the head, the losses, gradient clipping) runs in f32.
//!
//! The setting is a thread-local scope, like PyTorch's `torch.autocast` context: modules read
//! it, nothing stores it.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use burn::backend::Dispatch;
use burn::nn::Linear;
use burn::tensor::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod linear;
pub use linear::{CastLinearBackend, CastLinearInputs, FastMatmul};

/// The precision the backbone's residual branches compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bfloat16 branches (8-bit exponent: no loss scaling needed).
    Bf16,
    /// float16 branches (5-bit exponent: training scales the loss, see `LossScale`).
    F16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::choice::write_name(self, f)
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::choice::parse("precision", s)
    }
}

impl Precision {
    /// The tensor element type.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// An error unless `device`'s backend computes in this precision.
    pub fn check(self, device: &Device) -> Result<()> {
        if device.supports_dtype(self.dtype()) {
            Ok(())
        } else {
            Err(Error::Backend {
                backend: format!("{device:?}"),
                reason: format!("does not compute in {self} (try --precision f32)"),
            })
        }
    }
}

thread_local! {
    static COMPUTE: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// Run `f` with the residual branches computing in `precision` (on this thread), restoring the
/// previous setting afterwards.
pub fn autocast<T>(precision: Precision, f: impl FnOnce() -> T) -> T {
    struct Restore(Precision);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPUTE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(COMPUTE.with(|c| c.replace(precision)));
    f()
}

/// The precision of the current [`autocast`] scope (f32 outside any).
pub fn compute() -> Precision {
    COMPUTE.with(Cell::get)
}

/// `f` made to run in the calling thread's current precision on whichever thread calls it
/// (the scope is per thread: a pool worker taking a share of the work is otherwise in f32).
pub fn carried<A, T>(f: impl Fn(A) -> T + Send + Sync) -> impl Fn(A) -> T + Send + Sync {
    let precision = compute();
    move |a| autocast(precision, || f(a))
}

/// `x` as `dtype`, unchanged (no cast recorded) when it already is.
pub fn cast<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// `x` in the scope's compute precision (unchanged at f32).
pub fn down<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    cast(x, compute().dtype())
}

/// `x` in f32 (unchanged when it is).
pub fn up<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    cast(x, DType::F32)
}

/// `linear` applied in `x`'s precision: its f32 weight and bias are cast to it (their
/// gradients come back in f32). Under autodiff the graph keeps `x` and the f32 weight itself,
/// not a low-precision copy of it (see [`CastLinearBackend`]).
///
/// # Shapes
/// - x: `[..., in]` -> `[..., out]`
pub fn linear<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    let bias = linear.bias.as_ref().map(|b| b.val());
    affine(x, linear.weight.val(), bias)
}

/// `x W + b` in `x`'s precision, `W` `[in, out]` and `b` `[out]` cast to it (their gradients
/// come back in their own precision); in f32 the backend's faster matrix product where it has
/// one ([`linear::FastMatmul`]).
///
/// # Shapes
/// - x: `[..., in]` -> `[..., out]`
pub fn affine<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    if D > 2 {
        // One `[rows, in] x [in, out]` product: a batched product would broadcast the weight
        // over the leading axes, and its backward would hold one `[in, out]` weight gradient
        // per leading index before summing them (a Swin block's MLP on `[N, T, H, W, C]`:
        // N x T x H of them, hundreds of MiB at video sizes).
        let dims = x.dims();
        let rows: usize = dims[..D - 1].iter().product();
        let out = weight.dims()[1];
        let mut to = dims;
        to[D - 1] = out;
        return affine(x.reshape([rows, dims[D - 1]]), weight, bias).reshape(to);
    }
    let inputs = CastLinearInputs {
        x: x.into_dispatch(),
        weight: weight.into_dispatch(),
        bias: bias.map(Tensor::into_dispatch).into(),
    };
    Tensor::from_dispatch(<Dispatch as CastLinearBackend>::cast_linear(inputs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;

    #[test]
    fn scope_restores_and_casts() {
        let device = crate::backend::cpu_device();
        let x = Tensor::<2>::ones([2, 3], &device);
        assert_eq!(compute(), Precision::F32);
        autocast(Precision::Bf16, || {
            assert_eq!(down(x.clone()).dtype(), DType::BF16);
            assert_eq!(up(down(x.clone())).dtype(), DType::F32);
            autocast(Precision::F16, || assert_eq!(compute(), Precision::F16));
            assert_eq!(compute(), Precision::Bf16);
        });
        assert_eq!(down(x).dtype(), DType::F32);
        assert_eq!(compute(), Precision::F32);
    }

    #[test]
    fn linear_in_low_precision_matches_f32() {
        let device = crate::backend::cpu_device();
        let l = LinearConfig::new(8, 4).init(&device);
        let x = Tensor::<2>::random([5, 8], burn::tensor::Distribution::Default, &device);
        let want = l.forward(x.clone());
        for p in [Precision::Bf16, Precision::F16] {
            let got = up(linear(&l, x.clone().cast(p.dtype())));
            let err = (got - want.clone()).abs().max().into_scalar::<f32>();
            // 8 products of values below 1: a few units of the low precision's rounding.
            assert!(err < 3e-2, "{p}: {err}");
        }
        assert_eq!(linear(&l, x.clone()).into_data(), l.forward(x).into_data());
    }
}
