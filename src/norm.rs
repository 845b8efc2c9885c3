//! Layer norm over the last axis with a fused backward: under autodiff one operation that keeps
//! its input, the row mean and the reciprocal standard deviation (Burn records layer norm as
//! about eight element-wise operations keeping about five tensors of the input's size, which
//! dominate a transformer branch's saved activations). The forward is the backend's own
//! `layer_norm` with and without autodiff, so tracked and untracked calls agree to the bit.
//!
//! Same fields and record keys (`gamma`, `beta`) as `burn::nn::LayerNorm`, so checkpoints and
//! key maps are unchanged; the epsilon is public.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, ExtensionType, Shape, TensorMetadata};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{DType, Device, Tensor};

use crate::extension::to;

backend_extension! {
    /// Layer norm with a fused backward as a backend extension: the custom autodiff operation
    /// on `Autodiff<B>`, the backend's `layer_norm` on the inner backends.
    pub trait NormBackend: Backend + FusedNorm {
        /// `(x - mean) / sqrt(var + epsilon) * gamma + beta` over the last axis.
        ///
        /// # Shapes
        /// - x `[..., C]`, gamma and beta `[C]` -> `[..., C]`
        fn fused_layer_norm(#[extension_type] i: LayerNormInputs<Self>) -> FloatTensor<Self> {
            if let Some([out, _, _]) = Self::layer_norm_forward(&i.x, &i.gamma, &i.beta, i.epsilon) {
                return to::<Self>(out, i.out);
            }
            to::<Self>(Self::layer_norm(i.x, i.gamma, Some(i.beta), i.epsilon), i.out)
        }
    }
}

/// One layer norm call's operands.
///
/// # Shapes
/// - x `[..., C]`, gamma and beta `[C]`
#[derive(ExtensionType, Clone, Debug)]
pub struct LayerNormInputs<B: Backend> {
    /// Input.
    pub x: FloatTensor<B>,
    /// Scale.
    pub gamma: FloatTensor<B>,
    /// Shift.
    pub beta: FloatTensor<B>,
    /// Added to the variance.
    pub epsilon: f64,
    /// Element type of the result (the normalisation itself runs in `x`'s).
    pub out: DType,
}

/// Fused layer-norm passes a backend may provide (the default: `None`, and the backend's
/// `layer_norm` and the backward built from tensor operations run). The CPU backend runs the
/// row kernels of `crate::cpu::layer_norm` on f32 tensors.
pub trait FusedNorm: Backend {
    /// The output and the row mean and reciprocal standard deviation (`[..., 1]`), or `None`.
    ///
    /// # Shapes
    /// - x `[..., C]`, gamma and beta `[C]` -> `[..., C]`, `[..., 1]`, `[..., 1]`
    fn layer_norm_forward(
        _x: &FloatTensor<Self>,
        _gamma: &FloatTensor<Self>,
        _beta: &FloatTensor<Self>,
        _epsilon: f64,
    ) -> Option<[FloatTensor<Self>; 3]> {
        None
    }

    /// The gradients of the input, gamma and beta from the input, its row statistics, gamma
    /// and the output's gradient, or `None`.
    ///
    /// # Shapes
    /// - x `[..., C]`, mean and rstd `[..., 1]`, gamma `[C]`, grad `[..., C]` ->
    ///   `[..., C]`, `[C]`, `[C]`
    fn layer_norm_backward(
        _x_mean_rstd: (&FloatTensor<Self>, &FloatTensor<Self>, &FloatTensor<Self>),
        _gamma: &FloatTensor<Self>,
        _grad: &FloatTensor<Self>,
    ) -> Option<[FloatTensor<Self>; 3]> {
        None
    }
}

#[cfg(feature = "flex")]
impl FusedNorm for burn::backend::Flex {
    fn layer_norm_forward(
        x: &FloatTensor<Self>,
        gamma: &FloatTensor<Self>,
        beta: &FloatTensor<Self>,
        epsilon: f64,
    ) -> Option<[FloatTensor<Self>; 3]> {
        crate::cpu::flex::layer_norm_forward(x, gamma, beta, epsilon)
    }

    fn layer_norm_backward(
        x_mean_rstd: (&FloatTensor<Self>, &FloatTensor<Self>, &FloatTensor<Self>),
        gamma: &FloatTensor<Self>,
        grad: &FloatTensor<Self>,
    ) -> Option<[FloatTensor<Self>; 3]> {
        crate::cpu::flex::layer_norm_backward(x_mean_rstd, gamma, grad)
    }
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl FusedNorm for burn::backend::NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl FusedNorm for burn::backend::Cube {}

impl<B: Backend, C: CheckpointStrategy> FusedNorm for Autodiff<B, C> {}

impl FusedNorm for Dispatch {}

#[cfg(feature = "flex")]
impl NormBackend for burn::backend::Flex {}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl NormBackend for burn::backend::NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl NormBackend for burn::backend::Cube {}

/// What the backward keeps.
#[derive(Clone, Debug)]
struct Saved<B: Backend> {
    centre: Centre<B>,
    gamma: FloatTensor<B>,
    rstd: FloatTensor<B>,
}

/// How the backward recovers the normalised input `x_hat = (x - mean) * rstd`.
#[derive(Clone, Debug)]
enum Centre<B: Backend> {
    /// The input and its row means (output in the input's precision: `x_hat` is recomputed
    /// exactly).
    Input {
        x: FloatTensor<B>,
        mean: FloatTensor<B>,
    },
    /// `x_hat` itself in the output's lower precision: half the bytes of an f32 input, and the
    /// f32 input (the residual stream) need not outlive the forward. Its rounding is that of
    /// the output, which the next layer consumes anyway.
    Normalised(FloatTensor<B>),
}

#[derive(Debug)]
struct LayerNormOp;

impl<B: Backend + FusedNorm> Backward<B, 3> for LayerNormOp {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let wanted = ops.parents.each_ref().map(Option::is_some);
        let fused = match &ops.state.centre {
            Centre::Input { x, mean } => {
                B::layer_norm_backward((x, mean, &ops.state.rstd), &ops.state.gamma, &g)
            }
            Centre::Normalised(_) => None,
        };
        let parts = match fused {
            Some(parts) => parts.map(Some),
            None => unfused_backward(ops.state, g, wanted),
        };
        for (node, grad) in ops.parents.into_iter().zip(parts) {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The backward from tensor operations: the gradients of x, gamma and beta that `wanted`.
fn unfused_backward<B: Backend>(
    s: Saved<B>,
    g: FloatTensor<B>,
    [want_x, want_gamma, want_beta]: [bool; 3],
) -> [Option<FloatTensor<B>>; 3] {
    let xhat = match s.centre {
        Centre::Input { x, mean } => B::float_mul(B::float_sub(x, mean), s.rstd.clone()),
        Centre::Normalised(xhat) => to::<B>(xhat, s.rstd.dtype()),
    };
    let g = to::<B>(g, xhat.dtype());
    let shape = xhat.shape();
    let last = shape.num_dims() - 1;
    let c = shape[last];
    let rows = shape.num_elements() / c;
    // Parameter gradients: sums over every row.
    let over_rows = |t: FloatTensor<B>| {
        let t = B::float_reshape(t, Shape::new([rows, c]));
        B::float_reshape(B::float_sum_dim(t, 0), Shape::new([c]))
    };
    let dbeta = want_beta.then(|| over_rows(g.clone()));
    let dgamma = want_gamma.then(|| over_rows(B::float_mul(g.clone(), xhat.clone())));
    let dx = want_x.then(|| {
        // dx = rstd (gy - mean(gy) - xhat mean(gy xhat)), gy = g gamma.
        let mut bshape = vec![1; shape.num_dims()];
        bshape[last] = c;
        let gamma = B::float_reshape(s.gamma, Shape::from(bshape));
        let gy = B::float_mul(g, gamma);
        let m1 = B::float_mean_dim(gy.clone(), last);
        let m2 = B::float_mean_dim(B::float_mul(gy.clone(), xhat.clone()), last);
        let centred = B::float_sub(B::float_sub(gy, m1), B::float_mul(xhat, m2));
        B::float_mul(centred, s.rstd)
    });
    [dx, dgamma, dbeta]
}

impl<B: Backend + FusedNorm, C: CheckpointStrategy> NormBackend for Autodiff<B, C> {
    fn fused_layer_norm(i: LayerNormInputs<Self>) -> FloatTensor<Self> {
        let prep = LayerNormOp
            .prepare::<C>([i.x.node(), i.gamma.node(), i.beta.node()])
            .compute_bound()
            .stateful();
        let (x, gamma) = (i.x.into_primitive(), i.gamma.into_primitive());
        let (beta, epsilon, dtype) = (i.beta.into_primitive(), i.epsilon, i.out);
        match prep {
            OpsKind::Tracked(prep) => {
                let (out, mean, rstd) = forward_with_stats::<B>(&x, &gamma, beta, epsilon);
                let centred = || B::float_sub(x.clone(), mean.clone());
                let centre = if dtype == x.dtype() {
                    Centre::Input { x, mean }
                } else {
                    Centre::Normalised(to::<B>(B::float_mul(centred(), rstd.clone()), dtype))
                };
                let state = Saved {
                    centre,
                    gamma,
                    rstd,
                };
                prep.finish(state, to::<B>(out, dtype))
            }
            OpsKind::UnTracked(prep) => {
                let out = match B::layer_norm_forward(&x, &gamma, &beta, epsilon) {
                    Some([out, _, _]) => out,
                    None => B::layer_norm(x, gamma, Some(beta), epsilon),
                };
                prep.finish(to::<B>(out, dtype))
            }
        }
    }
}

/// The forward and its row mean and reciprocal standard deviation: the backend's fused pass,
/// else its `layer_norm` (the same values as an untracked call) and the statistics from tensor
/// operations.
fn forward_with_stats<B: Backend + FusedNorm>(
    x: &FloatTensor<B>,
    gamma: &FloatTensor<B>,
    beta: FloatTensor<B>,
    epsilon: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    if let Some([out, mean, rstd]) = B::layer_norm_forward(x, gamma, &beta, epsilon) {
        return (out, mean, rstd);
    }
    let last = x.shape().num_dims() - 1;
    let mean = B::float_mean_dim(x.clone(), last);
    let centred = B::float_sub(x.clone(), mean.clone());
    let var = B::float_mean_dim(B::float_mul(centred.clone(), centred), last);
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(var, epsilon.into())));
    let out = B::layer_norm(x.clone(), gamma.clone(), Some(beta), epsilon);
    (out, mean, rstd)
}

/// Configuration of a [`LayerNorm`].
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    /// Width of the normalised (last) axis.
    pub d_model: usize,
    /// Added to the variance. Default: 1e-5.
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

impl LayerNormConfig {
    /// A layer norm with `gamma` ones and `beta` zeros.
    pub fn init(&self, device: &Device) -> LayerNorm {
        LayerNorm {
            gamma: Initializer::Ones.init([self.d_model], device),
            beta: Some(Initializer::Zeros.init([self.d_model], device)),
            epsilon: self.epsilon,
        }
    }
}

/// Layer norm over the last axis, `(x - mean) / sqrt(var + epsilon) * gamma + beta`.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Scale.
    pub gamma: Param<Tensor<1>>,
    /// Shift (`None`: no shift).
    pub beta: Option<Param<Tensor<1>>>,
    /// Added to the variance.
    pub epsilon: f64,
}

impl LayerNorm {
    /// Normalise the last axis; f32 inputs with a shift take the fused operation.
    ///
    /// # Shapes
    /// - x: `[..., C]` -> same
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        self.forward_as(x, dtype)
    }

    /// Normalise the last axis in `x`'s precision and return the result as `dtype` (mixed
    /// precision: an f32 norm feeding bf16 / f16 layers). Under autodiff the fused operation
    /// then keeps the normalised input in `dtype` instead of the f32 input.
    ///
    /// # Shapes
    /// - x: `[..., C]` -> same
    pub fn forward_as<const D: usize>(&self, x: Tensor<D>, dtype: DType) -> Tensor<D> {
        let gamma = self.gamma.val();
        match &self.beta {
            Some(beta) if x.dtype() == DType::F32 => {
                let inputs = LayerNormInputs {
                    x: x.into_dispatch(),
                    gamma: gamma.into_dispatch(),
                    beta: beta.val().into_dispatch(),
                    epsilon: self.epsilon,
                    out: dtype,
                };
                Tensor::from_dispatch(<Dispatch as NormBackend>::fused_layer_norm(inputs))
            }
            beta => {
                let beta = beta.as_ref().map(|b| b.val());
                let y = burn::tensor::module::layer_norm(x, gamma, beta, self.epsilon);
                if y.dtype() == dtype { y } else { y.cast(dtype) }
            }
        }
    }
}

/// `(x - mean) / sqrt(var + epsilon)` over the last axis (no scale or shift), computed in `x`'s
/// precision and returned as `dtype`, with the fused backward: under autodiff it keeps the
/// input and its row statistics, or (for a lower `dtype`) the result and the reciprocal
/// standard deviation only. The values are those of `layer_norm(x, 1, 0, epsilon)`.
///
/// # Shapes
/// - x: `[..., C]` -> same
pub fn normalise<const D: usize>(x: Tensor<D>, epsilon: f64, dtype: DType) -> Tensor<D> {
    let c = x.dims()[D - 1];
    let (device, in_dtype) = (x.device(), x.dtype());
    let inputs = LayerNormInputs {
        x: x.into_dispatch(),
        gamma: Tensor::<1>::ones([c], (&device, in_dtype)).into_dispatch(),
        beta: Tensor::<1>::zeros([c], (&device, in_dtype)).into_dispatch(),
        epsilon,
        out: dtype,
    };
    Tensor::from_dispatch(<Dispatch as NormBackend>::fused_layer_norm(inputs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::ModuleVisitor;
    use burn::tensor::Distribution;

    fn rel(a: Tensor<3>, b: Tensor<3>) -> f64 {
        let scale = b.clone().abs().max().into_scalar::<f64>();
        (a - b).abs().max().into_scalar::<f64>() / scale.max(1e-30)
    }

    struct Grads<'a>(&'a burn::tensor::Gradients, Vec<Tensor<1>>);

    impl ModuleVisitor for Grads<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let g = p.val().grad(self.0).unwrap();
            self.1.push(g.reshape([-1]).without_autodiff());
        }
    }

    /// Every parameter gradient of `ln` in `a` within 1e-5 (relative) of the one in `b`.
    fn assert_parameter_grads_close(
        ln: &LayerNorm,
        a: &burn::tensor::Gradients,
        b: &burn::tensor::Gradients,
        what: &str,
    ) {
        let (mut pa, mut pb) = (Grads(a, vec![]), Grads(b, vec![]));
        ln.visit(&mut pa);
        ln.visit(&mut pb);
        for (a, b) in pa.1.into_iter().zip(pb.1) {
            let e = (a - b.clone()).abs().max().into_scalar::<f64>()
                / b.abs().max().into_scalar::<f64>();
            assert!(e < 1e-5, "{what}parameter gradient {e}");
        }
    }

    #[test]
    fn fused_backward_equals_autodiff_of_the_formula() {
        let device = crate::backend::cpu_device().autodiff();
        let mut ln = LayerNormConfig::new(24).with_epsilon(1e-6).init(&device);
        ln.gamma = Param::from_tensor(Tensor::random(
            [24],
            Distribution::Normal(1.0, 0.5),
            &device,
        ));
        ln.beta = Some(Param::from_tensor(Tensor::random(
            [24],
            Distribution::Normal(0.0, 0.5),
            &device,
        )));
        let x = Tensor::<3>::random([3, 7, 24], Distribution::Normal(2.0, 3.0), &device);
        let w = Tensor::<3>::random([3, 7, 24], Distribution::Normal(0.0, 1.0), &device);
        let reference = |x: Tensor<3>| {
            burn::tensor::module::layer_norm(
                x,
                ln.gamma.val(),
                ln.beta.as_ref().map(|b| b.val()),
                1e-6,
            )
        };
        let (xa, xb) = (x.clone().require_grad(), x.clone().require_grad());
        let (ya, yb) = (ln.forward(xa.clone()), reference(xb.clone()));
        let untracked = ln.forward(x.clone());
        assert_eq!(
            untracked.into_data(),
            ya.clone().into_data(),
            "tracked and untracked differ"
        );
        let (ga, gb) = ((ya * w.clone()).sum().backward(), (yb * w).sum().backward());
        let dx = rel(xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap());
        assert_parameter_grads_close(&ln, &ga, &gb, "");
        assert!(dx < 1e-5, "input gradient {dx}");
    }

    /// Widths below, at and off the SIMD lane count, more rows than one parallel task, and a
    /// strided (transposed) input: forward and every gradient against autodiff through the
    /// formula.
    #[test]
    fn fused_kernels_across_widths_and_row_blocks() {
        let device = crate::backend::device_from_env()
            .expect("E2E_TAL_BACKEND names a compiled-in backend")
            .autodiff();
        for c in [5, 16, 37, 384] {
            let mut ln = LayerNormConfig::new(c).init(&device);
            ln.gamma =
                Param::from_tensor(Tensor::random([c], Distribution::Normal(1.0, 0.5), &device));
            let x = Tensor::<3>::random([2, c, 70], Distribution::Normal(1.0, 2.0), &device);
            let w = Tensor::<3>::random([2, 70, c], Distribution::Normal(0.0, 1.0), &device);
            let (xa, xb) = (x.clone().require_grad(), x.require_grad());
            let ya = ln.forward(xa.clone().swap_dims(1, 2));
            let beta = ln.beta.as_ref().map(|b| b.val());
            let yb = burn::tensor::module::layer_norm(
                xb.clone().swap_dims(1, 2),
                ln.gamma.val(),
                beta,
                ln.epsilon,
            );
            assert!(rel(ya.clone(), yb.clone()) < 1e-5, "C {c}: output");
            let (ga, gb) = ((ya * w.clone()).sum().backward(), (yb * w).sum().backward());
            let dx = rel(xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap());
            assert!(dx < 1e-5, "C {c}: input gradient {dx}");
            assert_parameter_grads_close(&ln, &ga, &gb, &format!("C {c}: "));
        }
    }

    /// The CPU backend takes the fused kernels for f32 (so the tests check them), not f16.
    #[cfg(feature = "flex")]
    #[test]
    fn flex_runs_the_fused_kernels_on_f32() {
        use burn::backend::Flex;
        use burn::backend::flex::FlexTensor;
        let device = crate::backend::cpu_device();
        let t = |shape: [usize; 2], dtype: DType| {
            let x = Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            FlexTensor::from_data(x.cast(dtype).into_data())
        };
        for (dtype, fused) in [(DType::F32, true), (DType::F16, false)] {
            let (x, gamma, beta) = (t([7, 9], dtype), t([1, 9], dtype), t([1, 9], dtype));
            let fwd = Flex::layer_norm_forward(&x, &gamma, &beta, 1e-5);
            assert_eq!(fwd.is_some(), fused, "{dtype:?} forward");
            if let Some([_, mean, rstd]) = fwd {
                let bwd = Flex::layer_norm_backward((&x, &mean, &rstd), &gamma, &x);
                assert!(bwd.is_some(), "backward");
            }
        }
    }

    #[test]
    fn low_precision_output_keeps_the_gradient_within_its_rounding() {
        let device = crate::backend::cpu_device().autodiff();
        let ln = LayerNormConfig::new(32).init(&device);
        let x = Tensor::<3>::random([2, 9, 32], Distribution::Normal(3.0, 2.0), &device);
        let w = Tensor::<3>::random([2, 9, 32], Distribution::Normal(0.0, 1.0), &device);
        for (dtype, unit) in [(DType::BF16, 2f64.powi(-8)), (DType::F16, 2f64.powi(-11))] {
            // Reference: the f32 norm, then the cast (the gradient sees the exact x_hat).
            let (xa, xb) = (x.clone().require_grad(), x.clone().require_grad());
            let ya = ln.forward_as(xa.clone(), dtype);
            let yb = ln.forward(xb.clone()).cast(dtype);
            assert_eq!(ya.dtype(), dtype);
            assert_eq!(
                ya.clone().into_data(),
                yb.clone().into_data(),
                "{dtype:?} forward"
            );
            let untracked = ln.forward_as(x.clone(), dtype);
            assert_eq!(
                untracked.into_data(),
                ya.clone().into_data(),
                "{dtype:?} untracked"
            );
            let loss = |y: Tensor<3>| (y.cast(DType::F32) * w.clone()).sum().backward();
            let (ga, gb) = (loss(ya), loss(yb));
            let dx = rel(xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap());
            // x_hat rounded once to the output's precision: a few units of its rounding.
            assert!(dx < 4.0 * unit, "{dtype:?} input gradient {dx}");
            let dg = |g| ln.gamma.val().grad(g).unwrap();
            let e = (dg(&ga) - dg(&gb)).abs().max().into_scalar::<f64>()
                / dg(&gb).abs().max().into_scalar::<f64>();
            assert!(e < 4.0 * unit, "{dtype:?} gamma gradient {e}");
        }
    }
}
