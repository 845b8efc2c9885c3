//! Vectorised `exp` and GELU for the CPU backend, with GELU's own backward.
//!
//! Flex evaluates `exp` and `erf` one element at a time through libm on one thread; in a ViT
//! training step that made GELU 14x and the softmax exponentials several times slower than
//! PyTorch's vectorised versions. Here both are branch-free polynomials the compiler vectorises
//! (AVX2/FMA when the CPU has it, chosen at run time), spread over the thread pool:
//!
//! - `exp`: range reduction `x = n ln 2 + r` and a degree-6 polynomial for `e^r` (the Cephes
//!   `expf` scheme), within 2 ulp of libm on `[-87, 88]`; 0 below the smallest normal result.
//! - `erf` (for GELU): Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7 (the formula
//!   PyTorch's vectorised CPU `erf` uses), so GELU differs from the libm version by less than
//!   `3e-7 |x|` and its derivative by less than `5e-7` (tested on a fine grid).
//!
//! Other backends (GPU kernels, NdArray) keep their own `exp` / `gelu`; everything goes through
//! one backend extension, so modules call [`gelu`] and run everywhere.

use std::marker::PhantomData;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::retro_forward::RetroForward;
use burn::backend::autodiff::checkpoint::state::BackwardStates;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch};
use burn::tensor::Tensor;

backend_extension! {
    /// `exp` and GELU as a backend extension: vectorised on Flex, the backend's own elsewhere.
    pub trait FastMath: Backend {
        /// Element-wise `e^x`.
        ///
        /// # Shapes
        /// - any -> same
        fn fast_exp(x: FloatTensor<Self>) -> FloatTensor<Self> {
            Self::float_exp(x)
        }

        /// Element-wise GELU, `x Phi(x)`.
        ///
        /// # Shapes
        /// - any -> same
        fn fast_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            Self::gelu(x)
        }

        /// `grad * GELU'(x)`.
        ///
        /// # Shapes
        /// - x, grad: same shape -> same
        fn fast_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            Self::gelu_backward(x, grad)
        }
    }
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl FastMath for burn::backend::NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl FastMath for burn::backend::Cube {}

#[cfg(feature = "flex")]
use burn::backend::ops::{ActivationOps, FloatTensorOps};

#[cfg(feature = "flex")]
impl FastMath for burn::backend::Flex {
    fn fast_exp(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match flex::map(x, kernels::exp) {
            Ok(y) => y,
            Err(x) => Self::float_exp(x),
        }
    }

    fn fast_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match flex::map(x, kernels::gelu) {
            Ok(y) => y,
            Err(x) => Self::gelu(x),
        }
    }

    fn fast_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        match flex::zip(x, grad, kernels::gelu_backward) {
            Ok(y) => y,
            Err(both) => Self::gelu_backward(both.0, both.1),
        }
    }
}

#[derive(Debug)]
struct Gelu;

/// Recomputes GELU's output from its input, so gradient checkpointing may drop it (GELU is
/// memory-bound, as Burn's own).
#[derive(Debug, Clone)]
struct RetroGelu<B> {
    input: NodeId,
    _backend: PhantomData<B>,
}

impl<B: Backend + FastMath> RetroForward for RetroGelu<B> {
    fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
        let input = states.get_state::<FloatTensor<B>>(&self.input);
        states.save(out_node, B::fast_gelu(input))
    }
}

impl<B: Backend + FastMath> Backward<B, 1> for Gelu {
    type State = NodeId;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let x = ckpt.retrieve_node_output::<FloatTensor<B>>(ops.state);
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::fast_gelu_backward(x, grad)
        });
    }
}

impl<B: Backend + FastMath, C: CheckpointStrategy> FastMath for Autodiff<B, C> {
    fn fast_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let retro = RetroGelu::<B> {
            input: x.id(),
            _backend: PhantomData,
        };
        match Gelu
            .prepare::<C>([x.node()])
            .memory_bound()
            .retro_forward(retro)
            .parents([&x])
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::fast_gelu(x.primitive().clone()))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fast_gelu(x.into_primitive())),
        }
    }
}

/// GELU (exact form `x Phi(x)`, vectorised `erf` on the CPU backend; module docs).
///
/// # Shapes
/// - any -> same
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FastMath>::fast_gelu(x.into_dispatch()))
}

/// Element-wise `e^x` (vectorised on the CPU backend).
///
/// # Shapes
/// - any -> same
pub fn exp<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FastMath>::fast_exp(x.into_dispatch()))
}

/// The element kernels, on plain `f32` slices.
pub mod kernels {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// Below this `e^x` is not a normal f32: return 0.
    const EXP_MIN: f32 = -87.336_55;
    /// Keeps `2^n` finite; `e^88` is within 2x of `f32::MAX`.
    const EXP_MAX: f32 = 88.0;
    /// `1.5 * 2^23`: adding it rounds to the nearest integer in float arithmetic.
    const ROUND: f32 = 12_582_912.0;

    /// `a b + c`: one fused multiply-add (one rounding) in the kernels compiled with FMA
    /// (`FUSED`), a product and a sum otherwise. Rust never contracts `a * b + c` by itself,
    /// so without this the polynomials below ran as two instructions per term; with it the
    /// attention softmax and GELU kernels run about a third fewer instructions.
    #[inline(always)]
    fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
        if FUSED { a.mul_add(b, c) } else { a * b + c }
    }

    /// `e^x` of one value (the kernels' polynomial; inlined into vectorised loops; `FUSED`: see
    /// [`madd`]).
    #[inline(always)]
    pub fn exp1<const FUSED: bool>(x: f32) -> f32 {
        let xc = x.clamp(EXP_MIN, EXP_MAX);
        let shifted = xc * LOG2E + ROUND;
        let n = shifted - ROUND;
        let ni = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
        let r = madd::<FUSED>(-n, LN2_LO, madd::<FUSED>(-n, LN2_HI, xc));
        let mut p = 1.987_569_1e-4_f32;
        p = madd::<FUSED>(p, r, 1.398_199_9e-3);
        p = madd::<FUSED>(p, r, 8.333_452e-3);
        p = madd::<FUSED>(p, r, 4.166_579_6e-2);
        p = madd::<FUSED>(p, r, 1.666_666_5e-1);
        p = madd::<FUSED>(p, r, 0.5);
        let y = madd::<FUSED>(p * r, r, r) + 1.0;
        let scale = f32::from_bits(((ni + 127) as u32) << 23);
        if x < EXP_MIN { 0.0 } else { y * scale }
    }

    /// `erf(x)`, Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
    #[inline(always)]
    fn erf1<const FUSED: bool>(x: f32) -> f32 {
        let z = x.abs();
        let t = 1.0 / madd::<FUSED>(0.327_591_1, z, 1.0);
        let mut p = 1.061_405_4_f32;
        p = madd::<FUSED>(p, t, -1.453_152_1);
        p = madd::<FUSED>(p, t, 1.421_413_8);
        p = madd::<FUSED>(p, t, -0.284_496_74);
        p = madd::<FUSED>(p, t, 0.254_829_6);
        let y = 1.0 - p * t * exp1::<FUSED>(-z * z);
        y.copysign(x)
    }

    const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    /// `1 / sqrt(2 pi)`.
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

    #[inline(always)]
    fn gelu1<const FUSED: bool>(x: f32) -> f32 {
        0.5 * x * (1.0 + erf1::<FUSED>(x * FRAC_1_SQRT_2))
    }

    #[inline(always)]
    fn gelu_grad1<const FUSED: bool>(x: f32, g: f32) -> f32 {
        let cdf = 0.5 * (1.0 + erf1::<FUSED>(x * FRAC_1_SQRT_2));
        let pdf = FRAC_1_SQRT_2PI * exp1::<FUSED>(-0.5 * x * x);
        g * (cdf + x * pdf)
    }

    /// One body, compiled three times: for the baseline target, with AVX2 + FMA and with
    /// AVX-512, the widest the CPU runs picked at run time.
    macro_rules! multiversion {
        ($name:ident, $avx:ident, |$($arg:ident: $ty:ty),*| $body:block) => {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn $avx($($arg: $ty),*) {
                const FUSED: bool = true;
                $body
            }

            /// Applies the kernel to every element.
            pub fn $name($($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx512f,avx2,fma")]
                    fn avx512($($arg: $ty),*) {
                        const FUSED: bool = true;
                        $body
                    }
                    let avx2 = std::is_x86_feature_detected!("avx2")
                        && std::is_x86_feature_detected!("fma");
                    if avx2 && std::is_x86_feature_detected!("avx512f") {
                        // SAFETY: the CPU supports the features the function was compiled for.
                        return unsafe { avx512($($arg),*) };
                    }
                    if avx2 {
                        // SAFETY: as above.
                        return unsafe { $avx($($arg),*) };
                    }
                }
                const FUSED: bool = false;
                $body
            }
        };
    }

    multiversion!(exp, exp_avx2, |xs: &mut [f32]| {
        for x in xs.iter_mut() {
            *x = exp1::<FUSED>(*x);
        }
    });

    multiversion!(gelu, gelu_avx2, |xs: &mut [f32]| {
        for x in xs.iter_mut() {
            *x = gelu1::<FUSED>(*x);
        }
    });

    multiversion!(
        gelu_backward,
        gelu_backward_avx2,
        |xs: &[f32], gs: &mut [f32]| {
            for (g, &x) in gs.iter_mut().zip(xs) {
                *g = gelu_grad1::<FUSED>(x, *g);
            }
        }
    );
}

/// Applying the kernels to Flex tensors: contiguous `f32` storage, in place when the tensor is
/// not shared, chunks spread over the thread pool.
#[cfg(feature = "flex")]
mod flex {
    use burn::backend::flex::FlexTensor;
    use burn::tensor::{DType, TensorData};
    use rayon::prelude::*;

    use std::mem::MaybeUninit;

    use crate::cpu::flex::{contiguous, is_dense};
    use crate::cpu::gemm::{assume_init, assume_init_mut, uninit};

    /// Elements per parallel chunk (and below which one thread does it all).
    const CHUNK: usize = 1 << 14;

    /// A contiguous f32 tensor's elements.
    fn elements(t: &FlexTensor) -> &[f32] {
        &t.storage::<f32>()[..t.layout().num_elements()]
    }

    /// `f` applied to a copy of `src`, chunk by chunk (each chunk copied and transformed while
    /// in cache: one pass over memory instead of a copy and then the kernel).
    fn apply_copied(src: &[f32], f: impl Fn(&mut [f32]) + Sync, shape: &FlexTensor) -> FlexTensor {
        let mut out = uninit(src.len());
        let run = |(o, s): (&mut [MaybeUninit<f32>], &[f32])| f(copied(o, s));
        if src.len() <= CHUNK {
            run((&mut out, src));
        } else {
            out.par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .for_each(run);
        }
        // SAFETY: every chunk was copied into.
        let out = unsafe { assume_init(out) };
        let shape = shape.layout().shape().clone();
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    /// `src` copied into `dst` (of the same length), which is then initialised.
    fn copied<'a>(dst: &'a mut [MaybeUninit<f32>], src: &[f32]) -> &'a mut [f32] {
        assert_eq!(dst.len(), src.len(), "copied: lengths");
        for (d, s) in dst.iter_mut().zip(src) {
            d.write(*s);
        }
        // SAFETY: every element was written just above.
        unsafe { assume_init_mut(dst) }
    }

    /// `t` with `f` applied to its elements (in place when `t` is unshared); `Err(t)` when it
    /// is not f32.
    pub fn map(t: FlexTensor, f: fn(&mut [f32])) -> Result<FlexTensor, FlexTensor> {
        if t.dtype() != DType::F32 {
            return Err(t);
        }
        if !(t.is_unique() && is_dense(&t)) {
            let t = contiguous(t);
            return Ok(apply_copied(elements(&t), f, &t));
        }
        let mut t = t;
        let n = t.layout().num_elements();
        let xs = &mut t.storage_mut::<f32>()[..n];
        if n <= CHUNK {
            f(xs);
        } else {
            xs.par_chunks_mut(CHUNK).for_each(f);
        }
        Ok(t)
    }

    /// `f(x, g)` into `g`'s storage; `Err` (both back) when not both f32 of one shape.
    pub fn zip(
        x: FlexTensor,
        g: FlexTensor,
        f: fn(&[f32], &mut [f32]),
    ) -> Result<FlexTensor, Box<(FlexTensor, FlexTensor)>> {
        if x.dtype() != DType::F32
            || g.dtype() != DType::F32
            || x.layout().shape() != g.layout().shape()
        {
            return Err(Box::new((x, g)));
        }
        let x = contiguous(x);
        if !(g.is_unique() && is_dense(&g)) {
            // A shared or strided gradient: the kernel writes a new buffer chunk by chunk.
            let g = contiguous(g);
            let xs = elements(&x);
            let mut out = uninit(xs.len());
            out.par_chunks_mut(CHUNK)
                .zip(xs.par_chunks(CHUNK).zip(elements(&g).par_chunks(CHUNK)))
                .for_each(|(o, (x, g))| f(x, copied(o, g)));
            // SAFETY: every chunk was copied into.
            let out = unsafe { assume_init(out) };
            let shape = g.layout().shape().clone();
            return Ok(FlexTensor::from_data(TensorData::new(out, shape)));
        }
        // Unshared, dense and f32 (checked above): the kernel writes in place.
        let mut g = g;
        let n = g.layout().num_elements();
        let xs = &x.storage::<f32>()[..n];
        let gs = &mut g.storage_mut::<f32>()[..n];
        if n <= CHUNK {
            f(xs, gs);
        } else {
            gs.par_chunks_mut(CHUNK)
                .zip(xs.par_chunks(CHUNK))
                .for_each(|(g, x)| f(x, g));
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, TensorData};

    use super::*;

    #[test]
    fn exp_kernel_within_two_ulp_of_libm() {
        let mut xs: Vec<f32> = (0..200_001)
            .map(|i| -87.0 + i as f32 * (175.0 / 200_000.0))
            .collect();
        xs.extend([0.0, -0.0, 1e-8, -1e-8, 88.0, -87.3]);
        let mut ys = xs.clone();
        kernels::exp(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = x.exp();
            let ulp = (want.to_bits() as i64 - y.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {y}, libm {want} ({ulp} ulp)");
        }
        let mut tiny = vec![-88.0, -100.0, -1e9, f32::NEG_INFINITY];
        kernels::exp(&mut tiny);
        assert!(tiny.iter().all(|&y| y == 0.0), "{tiny:?}");
    }

    /// Against the backend's own GELU (libm `erf`) and autodiff through it, on a fine grid.
    #[test]
    fn gelu_kernel_and_its_gradient_match_the_libm_versions() {
        let xs: Vec<f32> = (0..40_001).map(|i| -10.0 + i as f32 * 0.0005).collect();
        let mut ys = xs.clone();
        kernels::gelu(&mut ys);
        let mut gs = vec![1.0; xs.len()];
        kernels::gelu_backward(&xs, &mut gs);
        let device = crate::backend::cpu_device().autodiff();
        let x =
            Tensor::<1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device).require_grad();
        let y = burn::tensor::activation::gelu(x.clone());
        let grads = y.clone().sum().backward();
        let want: Vec<f32> = y.inner().into_data().try_to_vec().unwrap();
        let want_g: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
        for i in 0..xs.len() {
            // erf's error (1.5e-7 for the formula, up to ~5e-7 with f32 rounding near its
            // cancellation at small arguments) times |x| / 2, and the derivative's absolute error.
            let tol = 3e-7 * xs[i].abs() + 1e-12;
            assert!(
                (ys[i] - want[i]).abs() <= tol,
                "gelu({}) {} vs {}",
                xs[i],
                ys[i],
                want[i]
            );
            let tol_g = 5e-7;
            let dg = (gs[i] - want_g[i]).abs();
            assert!(dg <= tol_g, "gelu'({}) {} vs {}", xs[i], gs[i], want_g[i]);
        }
    }

    /// The Tensor-level ops on the CPU backend: forward equals the backend's own GELU / exp, and
    /// the custom backward equals autodiff through the backend's GELU.
    #[test]
    fn gelu_and_exp_on_tensors_equal_the_backend_ops() {
        let device = crate::backend::cpu_device().autodiff();
        // Large enough to take the parallel path, and a strided (transposed) input.
        let x = Tensor::<2>::random([300, 257], Distribution::Normal(0.0, 3.0), &device);
        let w = Tensor::<2>::random([257, 300], Distribution::Normal(0.0, 1.0), &device);
        let xt = x.clone().require_grad();
        let ours = gelu(xt.clone().swap_dims(0, 1));
        let g1 = (ours.clone() * w.clone()).sum().backward();
        let xr = x.clone().require_grad();
        let theirs = burn::tensor::activation::gelu(xr.clone().swap_dims(0, 1));
        let g2 = (theirs.clone() * w).sum().backward();
        let close = |a: Tensor<2>, b: Tensor<2>, tol: f32| {
            let d = (a - b).abs().max().into_scalar::<f32>();
            assert!(d <= tol, "max |diff| {d}");
        };
        close(ours.inner(), theirs.inner(), 3e-6);
        close(xt.grad(&g1).unwrap(), xr.grad(&g2).unwrap(), 3e-6);
        let e = exp(x.clone().inner() * 0.1);
        let want = (x.inner() * 0.1).exp();
        let rel = ((e - want.clone()).abs() / want).max().into_scalar::<f32>();
        assert!(rel <= 3e-7, "exp relative error {rel}");
        let small = Tensor::<1>::from_data(TensorData::from([0.5f32, -1.0]), &device);
        let _ = gelu(small).into_data();
    }
}
