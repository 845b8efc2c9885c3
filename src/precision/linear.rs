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

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, OpsPrep};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, ExtensionType, TensorMetadata};

use crate::extension::{Bias, to};

backend_extension! {
    /// The mixed-precision linear as a backend extension: a custom autodiff operation on
    /// `Autodiff<B>`, cast-then-linear on the inner backends.
    pub trait CastLinearBackend: Backend {
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

#[cfg(feature = "flex")]
impl CastLinearBackend for burn::backend::Flex {}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl CastLinearBackend for burn::backend::NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl CastLinearBackend for burn::backend::Cube {}

/// The forward on a backend without autodiff, shared by tracked and untracked calls so they
/// agree to the bit.
fn forward<B: Backend>(
    x: FloatTensor<B>,
    weight: &FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let dtype = x.dtype();
    let bias = bias.map(|b| to::<B>(b, dtype));
    B::linear(x, to::<B>(weight.clone(), dtype), bias)
}

/// What the backward keeps: the input and the f32 weight (the parameter's own storage).
#[derive(Clone, Debug)]
struct Saved<B: Backend> {
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
}

/// The operation with `N` parents: x, the weight and, when there is one, the bias.
#[derive(Debug)]
struct CastLinearOp;

impl<B: Backend, const N: usize> Backward<B, N> for CastLinearOp {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let Saved { x, weight } = ops.state;
        let (low, full) = (x.dtype(), weight.dtype());
        let parents = ops.parents;
        // Each gradient as autodiff of cast-then-linear computes it: the product in the low
        // precision, cast to the parameter's precision afterwards.
        if let Some(Some(node)) = parents.get(2) {
            let db = B::linear_bias_backward(g.clone());
            grads.register::<B>(node.id, to::<B>(db, full));
        }
        if let Some(node) = &parents[1] {
            let dw = B::linear_weight_backward(x, g.clone());
            grads.register::<B>(node.id, to::<B>(dw, full));
        }
        if let Some(node) = &parents[0] {
            grads.register::<B>(node.id, B::linear_x_backward(to::<B>(weight, low), g));
        }
    }
}

impl<B: Backend, C: CheckpointStrategy> CastLinearBackend for Autodiff<B, C> {
    fn cast_linear(i: CastLinearInputs<Self>) -> FloatTensor<Self> {
        let (x, w) = (i.x.node(), i.weight.node());
        match i.bias.clone() {
            Bias::None => record(CastLinearOp.prepare::<C>([x, w]), i),
            Bias::Additive(b) => record(CastLinearOp.prepare::<C>([x, w, b.node()]), i),
        }
    }
}

/// Runs the linear for a prepared operation, keeping the backward's state when tracked.
fn record<B: Backend, C: CheckpointStrategy, const N: usize>(
    prep: OpsPrep<CastLinearOp, B, Saved<B>, C, N>,
    i: CastLinearInputs<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let (x, weight) = (i.x.into_primitive(), i.weight.into_primitive());
    let bias = i.bias.into_option().map(|b| b.into_primitive());
    let out = forward::<B>(x.clone(), &weight, bias);
    match prep.compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(Saved { x, weight }, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
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
