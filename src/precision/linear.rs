//! A linear layer computing in its input's (low) precision without keeping a low-precision
//! copy of its f32 weight.
//!
//! Casting the weight and calling Burn's linear under autodiff records the cast weight as the
//! matmul's saved operand: every projection of a branch keeps a bf16 / f16 copy of its weight
//! until the backward pass (12 C² values per transformer block, as much as a block's
//! activations at a few hundred tokens). This operation instead keeps the input and a handle
//! to the f32 weight itself (shared with the parameter, no copy) and casts it again in the
//! backward pass. Forward and gradients are the same arithmetic as autodiff through
//! `linear(x, cast(W), cast(b))`.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, OpsPrep};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, ExtensionType, TensorMetadata};

use crate::extension::{Bias, to};

backend_extension! {
    /// The mixed-precision linear as a backend extension: a custom autodiff operation on
    /// `Autodiff<B>`, cast-then-linear on the inner backends.
    pub trait CastLinearBackend: Backend + FastMatmul {
        /// `x W + b` in `x`'s precision, `W` and `b` cast to it.
        ///
        /// # Shapes
        /// - x `[..., in]`, weight `[in, out]`, bias `[out]` -> `[..., out]`
        fn cast_linear(#[extension_type] i: CastLinearInputs<Self>) -> FloatTensor<Self> {
            forward::<Self>(i.x, &i.weight, i.bias.into_option())
        }
    }
}

/// One mixed-precision linear call's operands.
///
/// # Shapes
/// - x `[..., in]` (the compute precision), weight `[in, out]` and bias `[out]` (f32)
#[derive(ExtensionType, Clone, Debug)]
pub struct CastLinearInputs<B: Backend> {
    /// Input, in the precision to compute in.
    pub x: FloatTensor<B>,
    /// Weight (the parameter's precision).
    pub weight: FloatTensor<B>,
    /// Bias, if any.
    #[extension_type]
    pub bias: Bias<B>,
}

/// Matrix products a backend may run faster than its `float_matmul` (the default: `None`).
/// The CPU backend threads f32 products by output blocks (`crate::cpu::matmul`): Flex's matmul
/// leaves products below 192^3 multiply-adds on one thread and threads larger ones through the
/// `gemm` crate's own split, which measured about half the blocked throughput on 2 cores.
pub trait FastMatmul: Backend {
    /// `a b` for `[m, k]` and `[k, n]` operands, plus `bias` (`[n]`) on every row when given,
    /// or `None` when the backend has no faster way.
    ///
    /// # Shapes
    /// - a `[m, k]`, b `[k, n]`, bias `[n]` -> `[m, n]`
    fn fast_matmul(
        _a: &FloatTensor<Self>,
        _b: &FloatTensor<Self>,
        _bias: Option<&FloatTensor<Self>>,
    ) -> Option<FloatTensor<Self>> {
        None
    }
}

#[cfg(feature = "flex")]
impl FastMatmul for burn::backend::Flex {
    fn fast_matmul(
        a: &FloatTensor<Self>,
        b: &FloatTensor<Self>,
        bias: Option<&FloatTensor<Self>>,
    ) -> Option<FloatTensor<Self>> {
        crate::cpu::flex::matmul(a, b, bias)
    }
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl FastMatmul for burn::backend::NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl FastMatmul for burn::backend::Cube {}

impl<B: Backend, C: CheckpointStrategy> FastMatmul for Autodiff<B, C> {}

impl FastMatmul for burn::backend::Dispatch {}

/// `a b` through the backend's faster product where it has one.
fn matmul<B: FastMatmul>(a: FloatTensor<B>, b: FloatTensor<B>) -> FloatTensor<B> {
    B::fast_matmul(&a, &b, None).unwrap_or_else(|| B::float_matmul(a, b))
}

#[cfg(feature = "flex")]
impl CastLinearBackend for burn::backend::Flex {}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl CastLinearBackend for burn::backend::NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl CastLinearBackend for burn::backend::Cube {}

/// The forward on a backend without autodiff, shared by tracked and untracked calls so they
/// agree to the bit: in f32 on `[rows, in]` inputs the backend's faster product plus the bias,
/// else Burn's `linear`.
fn forward<B: Backend + FastMatmul>(
    x: FloatTensor<B>,
    weight: &FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let dtype = x.dtype();
    let bias = bias.map(|b| to::<B>(b, dtype));
    let f32_rows = dtype == DType::F32 && x.shape().num_dims() == 2;
    if f32_rows
        && weight.dtype() == DType::F32
        && let Some(y) = B::fast_matmul(&x, weight, bias.as_ref())
    {
        return y;
    }
    B::linear(x, to::<B>(weight.clone(), dtype), bias)
}

/// What the backward keeps, as Burn's own linear does: the input only when the weight needs a
/// gradient and the weight only when the input does, both through the checkpointer (so a
/// checkpointing strategy may recompute the input instead of keeping it), the weight as the
/// f32 parameter itself (its own storage, no low-precision copy).
#[derive(Clone, Debug)]
struct Saved {
    x: Option<NodeId>,
    weight: Option<NodeId>,
    /// The input's (compute) precision and the weight's.
    dtypes: (DType, DType),
    /// Whether the input is `[rows, in]` (the blocked product's shape).
    rows: bool,
}

/// The operation with `N` parents: x, the weight and, when there is one, the bias.
#[derive(Debug)]
struct CastLinearOp;

impl<B: Backend + FastMatmul, const N: usize> Backward<B, N> for CastLinearOp {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let Saved {
            x,
            weight,
            dtypes: (low, full),
            rows,
        } = ops.state;
        let mut x = x.map(|id| ckpt.retrieve_node_output::<FloatTensor<B>>(id));
        let mut weight = weight.map(|id| ckpt.retrieve_node_output::<FloatTensor<B>>(id));
        let parents = ops.parents;
        // Each gradient as autodiff of cast-then-linear computes it: the product in the low
        // precision, cast to the parameter's precision afterwards.
        if let Some(Some(node)) = parents.get(2) {
            let db = B::linear_bias_backward(g.clone());
            grads.register::<B>(node.id, to::<B>(db, full));
        }
        let fast = low == DType::F32 && full == DType::F32 && rows;
        if let (Some(node), Some(x)) = (&parents[1], x.take()) {
            let dw = if fast {
                matmul::<B>(B::float_transpose(x), g.clone())
            } else {
                B::linear_weight_backward(x, g.clone())
            };
            grads.register::<B>(node.id, to::<B>(dw, full));
        }
        if let (Some(node), Some(weight)) = (&parents[0], weight.take()) {
            let dx = if fast {
                matmul::<B>(g, B::float_transpose(weight))
            } else {
                B::linear_x_backward(to::<B>(weight, low), g)
            };
            grads.register::<B>(node.id, dx);
        }
    }
}

impl<B: Backend + FastMatmul, C: CheckpointStrategy> CastLinearBackend for Autodiff<B, C> {
    fn cast_linear(i: CastLinearInputs<Self>) -> FloatTensor<Self> {
        let (x, w) = (i.x.node(), i.weight.node());
        match i.bias.clone() {
            Bias::None => record(CastLinearOp.prepare::<C>([x, w]), i),
            Bias::Additive(b) => record(CastLinearOp.prepare::<C>([x, w, b.node()]), i),
        }
    }
}

/// Runs the linear for a prepared operation, keeping the backward's state when tracked.
fn record<B: Backend + FastMatmul, C: CheckpointStrategy, const N: usize>(
    prep: OpsPrep<CastLinearOp, B, Saved, C, N>,
    i: CastLinearInputs<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let (x_tracked, w_tracked) = (i.x.is_tracked(), i.weight.is_tracked());
    let bias = i.bias.into_option().map(|b| b.into_primitive());
    match prep.compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let state = Saved {
                x: w_tracked.then(|| prep.checkpoint(&i.x)),
                weight: x_tracked.then(|| prep.checkpoint(&i.weight)),
                dtypes: (i.x.dtype(), i.weight.dtype()),
                rows: i.x.shape().num_dims() == 2,
            };
            let out = forward::<B>(i.x.into_primitive(), &i.weight.into_primitive(), bias);
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => {
            let out = forward::<B>(i.x.into_primitive(), &i.weight.into_primitive(), bias);
            prep.finish(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::LinearConfig;
    use burn::tensor::{DType, Distribution, Tensor};

    use crate::precision::{Precision, linear};

    /// Autodiff through `linear(x, cast(W), cast(b))`, the formula the operation replaces.
    fn reference(l: &burn::nn::Linear, x: Tensor<2>) -> Tensor<2> {
        let dtype = x.dtype();
        let w = l.weight.val().cast(dtype);
        let b = l.bias.as_ref().map(|b| b.val().cast(dtype));
        burn::tensor::module::linear(x, w, b)
    }

    fn bits(t: Tensor<2>) -> Vec<f32> {
        t.cast(DType::F32).into_data().try_to_vec().unwrap()
    }

    /// max |a - b| / max |b|.
    fn rel(a: Tensor<2>, b: Tensor<2>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>();
        (a - b).abs().max().into_scalar::<f32>() / scale.max(1e-30)
    }

    /// In f32 the operation (the CPU backend's blocked product) gives Burn's linear values and
    /// gradients, large enough to be split over threads, for 2-D and 3-D inputs.
    #[test]
    fn f32_values_and_gradients_equal_burns_linear() {
        let device = crate::backend::device_from_env()
            .expect("E2E_TAL_BACKEND names a compiled-in backend")
            .autodiff();
        for bias in [true, false] {
            let l = LinearConfig::new(300, 257).with_bias(bias).init(&device);
            let x = Tensor::<2>::random([410, 300], Distribution::Default, &device);
            let w = Tensor::<2>::random([410, 257], Distribution::Default, &device);
            let (xa, xb) = (x.clone().require_grad(), x.clone().require_grad());
            let ya = linear(&l, xa.clone().reshape([2, 205, 300])).reshape([410, 257]);
            let yb = reference(&l, xb.clone());
            assert!(rel(ya.clone(), yb.clone()) < 1e-5, "bias {bias}: forward");
            let (ga, gb) = (
                (ya * w.clone()).sum().backward(),
                (yb * w.clone()).sum().backward(),
            );
            let dx = rel(xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap());
            assert!(dx < 1e-5, "bias {bias}: input gradient {dx}");
            let gw = |g| l.weight.val().grad(g).unwrap();
            assert!(rel(gw(&ga), gw(&gb)) < 1e-5, "bias {bias}: weight gradient");
            if let Some(b) = &l.bias {
                let db = |g| b.val().grad(g).unwrap().unsqueeze::<2>();
                assert!(rel(db(&ga), db(&gb)) < 1e-5, "bias gradient");
            }
        }
    }

    /// The CPU backend takes its blocked product for 2-D f32 operands, transposed views
    /// included, and leaves other dtypes to Flex.
    #[cfg(feature = "flex")]
    #[test]
    fn flex_runs_the_blocked_product_on_f32() {
        use super::FastMatmul;
        use burn::backend::Flex;
        use burn::backend::flex::FlexTensor;
        let device = crate::backend::cpu_device();
        let t = |shape: [usize; 2], dtype: DType| {
            let x = Tensor::<2>::random(shape, Distribution::Default, &device);
            FlexTensor::from_data(x.cast(dtype).into_data())
        };
        let (a, b) = (t([30, 20], DType::F32), t([40, 20], DType::F32));
        assert!(Flex::fast_matmul(&a, &b.transpose(0, 1), None).is_some());
        let bias = t([1, 40], DType::F32);
        assert!(Flex::fast_matmul(&a, &b.transpose(0, 1), Some(&bias)).is_some());
        let (a, b) = (t([30, 20], DType::F16), t([20, 40], DType::F16));
        assert!(Flex::fast_matmul(&a, &b, None).is_none());
    }

    #[test]
    fn gradients_equal_autodiff_of_cast_then_linear() {
        let device = crate::backend::cpu_device().autodiff();
        for bias in [true, false] {
            let l = LinearConfig::new(12, 5).with_bias(bias).init(&device);
            for p in [Precision::Bf16, Precision::F16] {
                let x =
                    Tensor::<2>::random([14, 12], Distribution::Default, &device).cast(p.dtype());
                let w = Tensor::<2>::random([14, 5], Distribution::Default, &device);
                let (xa, xb, xc) = (
                    x.clone().require_grad(),
                    x.clone().require_grad(),
                    x.clone().reshape([2, 7, 12]).require_grad(),
                );
                let ya = linear(&l, xa.clone());
                let yb = reference(&l, xb.clone());
                // Leading axes are rows: a 3-D input gives the same values and gradients.
                let yc = linear(&l, xc.clone()).reshape([14, 5]);
                assert_eq!(ya.dtype(), p.dtype());
                assert_eq!(bits(ya.clone()), bits(yb.clone()), "{p} forward");
                assert_eq!(bits(ya.clone()), bits(yc.clone()), "{p} 3-D forward");
                let untracked = linear(&l, x.clone().set_require_grad(false));
                assert_eq!(bits(untracked), bits(ya.clone()), "{p} untracked");
                let loss = |y: Tensor<2>| (y.cast(DType::F32) * w.clone()).sum().backward();
                let (ga, gb, gc) = (loss(ya), loss(yb), loss(yc));
                let gw = |g| l.weight.val().grad(g).unwrap();
                assert_eq!(gw(&ga).dtype(), DType::F32);
                assert_eq!(bits(gw(&ga)), bits(gw(&gb)), "{p} bias {bias}: weight");
                assert_eq!(bits(gw(&ga)), bits(gw(&gc)), "{p} bias {bias}: 3-D weight");
                let (dxa, dxb) = (xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap());
                assert_eq!(dxa.dtype(), p.dtype());
                assert_eq!(bits(dxa.clone()), bits(dxb), "{p} bias {bias}: input");
                let dxc = xc.grad(&gc).unwrap().reshape([14, 12]);
                assert_eq!(bits(dxa), bits(dxc), "{p} bias {bias}: 3-D input");
                if let Some(b) = &l.bias {
                    let db = |g| b.val().grad(g).unwrap().unsqueeze::<2>();
                    assert_eq!(bits(db(&ga)), bits(db(&gb)), "{p}: bias");
                }
            }
        }
    }
}
