//! The flash-attention passes on the CubeCL backends, as a backend extension so they run lazily
//! inside Burn's fusion streams like any other operation.

use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, ExtensionType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

use super::kernels;
use crate::extension::{Bias, BiasMetadata};

/// The gradients of a flash-attention backward: q, k, v and, when asked for, the bias's (in
/// the bias's shape).
#[derive(ExtensionType, Clone, Debug)]
#[extension_type(fusion)]
pub struct FlashGrads<B: Backend> {
    /// Of the queries.
    pub q: FloatTensor<B>,
    /// Of the keys.
    pub k: FloatTensor<B>,
    /// Of the values.
    pub v: FloatTensor<B>,
    /// Of the bias, if asked for.
    #[extension_type]
    pub bias: Bias<B>,
}

/// Flash attention in f32 on the CubeCL backends (see `super::kernels`).
#[burn::backend::backend_extension(Cube, Fusion)]
pub trait FlashKernels: Backend {
    /// The output `[B, H, Nq, Dv]` and the row log-sum-exp `[B, H, Nq, 1]` of
    /// `softmax(q k^T * scale + bias) v`.
    ///
    /// # Shapes
    /// - q `[B, H, Nq, D]`, k `[B, H, Nk, D]`, v `[B, H, Nk, Dv]`,
    ///   bias `[B | 1, H | 1, Nq, Nk]`
    #[fusion(meta = forward_meta)]
    fn flash_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        #[extension_type] bias: Bias<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients of q, k, v and (when `want_bias`) the bias from the forward's output,
    /// its log-sum-exp and the output's gradient.
    ///
    /// # Shapes
    /// - as [`FlashKernels::flash_forward`]; out and grad `[B, H, Nq, Dv]`, lse `[B, H, Nq, 1]`
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = backward_meta)]
    fn flash_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        #[extension_type] bias: Bias<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f64,
        want_bias: bool,
    ) -> FlashGrads<Self>;
}

fn forward_meta(
    q: &TensorSpec,
    _k: &TensorSpec,
    v: &TensorSpec,
    _bias: &BiasMetadata,
    _scale: &f64,
) -> (TensorSpec, TensorSpec) {
    let s = &q.shape;
    (
        TensorSpec::new(Shape::new([s[0], s[1], s[2], v.shape[3]]), q.dtype),
        TensorSpec::new(Shape::new([s[0], s[1], s[2], 1]), DType::F32),
    )
}

#[allow(clippy::too_many_arguments)]
fn backward_meta(
    q: &TensorSpec,
    k: &TensorSpec,
    v: &TensorSpec,
    bias: &BiasMetadata,
    _out: &TensorSpec,
    _lse: &TensorSpec,
    _grad: &TensorSpec,
    _scale: &f64,
    want_bias: &bool,
) -> FlashGradsMetadata {
    let bias = match bias {
        BiasMetadata::Additive(spec) if *want_bias => BiasMetadata::Additive(spec.clone()),
        _ => BiasMetadata::None,
    };
    FlashGradsMetadata {
        q: q.clone(),
        k: k.clone(),
        v: v.clone(),
        bias,
    }
}

/// The operands made contiguous, with the launch geometry they share.
struct Operands {
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    /// The bias, or a stand-in (the queries) the kernels never read.
    bias: CubeTensor,
    has_bias: bool,
    head_dim: usize,
    val_dim: usize,
}

impl Operands {
    fn new(q: CubeTensor, k: CubeTensor, v: CubeTensor, bias: Bias<CubeBackend>) -> Self {
        let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
        let bias = bias.into_option().map(into_contiguous);
        Self {
            head_dim: q.meta.shape[3],
            val_dim: v.meta.shape[3],
            has_bias: bias.is_some(),
            bias: bias.unwrap_or_else(|| q.clone()),
            q,
            k,
            v,
        }
    }

    /// A new contiguous f32 tensor on the operands' device.
    fn empty(&self, shape: [usize; 4]) -> CubeTensor {
        let client = self.q.client.clone();
        let bytes = shape.iter().product::<usize>() * DType::F32.size();
        let handle = client.empty(bytes);
        CubeTensor::new_contiguous(
            client,
            self.q.device.clone(),
            Shape::new(shape),
            handle,
            DType::F32,
        )
    }

    fn dims(&self) -> [usize; 4] {
        let s = &self.q.meta.shape;
        [s[0], s[1], s[2], self.k.meta.shape[2]]
    }
}

/// The kernel argument of `t` (a cheap handle clone).
fn arg(t: &CubeTensor) -> TensorArg {
    t.clone().binding().into_tensor_arg()
}

/// The launch geometry for `units` units, with the address width every operand fits.
fn geometry(client: &cubecl::client::Client, units: usize, all: &[&CubeTensor]) -> Launch {
    let cube_dim = CubeDim::new(client, units);
    let count = calculate_cube_count_elemwise(client, units, cube_dim);
    let address = all
        .iter()
        .map(|t| (*t).clone().binding().required_address_type(4))
        .max()
        .unwrap_or_default();
    Launch {
        count,
        cube_dim,
        address,
    }
}

struct Launch {
    count: CubeCount,
    cube_dim: CubeDim,
    address: AddressType,
}

impl FlashKernels for CubeBackend {
    fn flash_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: Bias<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let o = Operands::new(q, k, v, bias);
        let [b, h, nq, _] = o.dims();
        let out = o.empty([b, h, nq, o.val_dim]);
        let lse = o.empty([b, h, nq, 1]);
        let client = o.q.client.clone();
        let g = geometry(&client, b * h * nq, &[&o.q, &o.k, &o.v, &o.bias, &out]);
        kernels::forward::launch(
            &client,
            g.count,
            g.cube_dim,
            g.address,
            arg(&o.q),
            arg(&o.k),
            arg(&o.v),
            arg(&o.bias),
            arg(&out),
            arg(&lse),
            scale as f32,
            o.head_dim,
            o.val_dim,
            o.has_bias,
            f32::elem_type_native(),
        );
        (out, lse)
    }

    fn flash_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: Bias<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f64,
        want_bias: bool,
    ) -> FlashGrads<Self> {
        let o = Operands::new(q, k, v, bias);
        let (out, lse, grad) = (
            into_contiguous(out),
            into_contiguous(lse),
            into_contiguous(grad),
        );
        let [b, h, nq, _] = o.dims();
        let delta = o.empty([b, h, nq, 1]);
        let dq = o.empty([b, h, nq, o.head_dim]);
        let client = o.q.client.clone();
        let all = [&o.q, &o.k, &o.v, &o.bias, &out, &grad];
        let g = geometry(&client, b * h * nq, &all);
        kernels::backward_query::launch(
            &client,
            g.count,
            g.cube_dim,
            g.address,
            arg(&o.q),
            arg(&o.k),
            arg(&o.v),
            arg(&o.bias),
            arg(&out),
            arg(&lse),
            arg(&grad),
            arg(&delta),
            arg(&dq),
            scale as f32,
            o.head_dim,
            o.val_dim,
            o.has_bias,
            f32::elem_type_native(),
        );
        let (dk, dv) = key_grads(&o, &lse, &grad, &delta, scale);
        let bias = if want_bias && o.has_bias {
            Bias::Additive(bias_grad(&o, &lse, &grad, &delta, scale))
        } else {
            Bias::None
        };
        FlashGrads {
            q: dq,
            k: dk,
            v: dv,
            bias,
        }
    }
}

/// The key-side gradients `(dK, dV)`.
fn key_grads(
    o: &Operands,
    lse: &CubeTensor,
    grad: &CubeTensor,
    delta: &CubeTensor,
    scale: f64,
) -> (CubeTensor, CubeTensor) {
    let [b, h, _, nk] = o.dims();
    let dk = o.empty([b, h, nk, o.head_dim]);
    let dv = o.empty([b, h, nk, o.val_dim]);
    let client = o.q.client.clone();
    let g = geometry(&client, b * h * nk, &[&o.q, &o.k, &o.v, &o.bias, grad]);
    kernels::backward_key::launch(
        &client,
        g.count,
        g.cube_dim,
        g.address,
        arg(&o.q),
        arg(&o.k),
        arg(&o.v),
        arg(&o.bias),
        arg(lse),
        arg(grad),
        arg(delta),
        arg(&dk),
        arg(&dv),
        scale as f32,
        o.head_dim,
        o.val_dim,
        o.has_bias,
        f32::elem_type_native(),
    );
    (dk, dv)
}

/// The bias's gradient, in the bias's shape.
fn bias_grad(
    o: &Operands,
    lse: &CubeTensor,
    grad: &CubeTensor,
    delta: &CubeTensor,
    scale: f64,
) -> CubeTensor {
    let s = &o.bias.meta.shape;
    let dbias = o.empty([s[0], s[1], s[2], s[3]]);
    let client = o.q.client.clone();
    let units = s.num_elements();
    let g = geometry(&client, units, &[&o.q, &o.k, &o.v, &o.bias, grad]);
    kernels::backward_bias::launch(
        &client,
        g.count,
        g.cube_dim,
        g.address,
        arg(&o.q),
        arg(&o.k),
        arg(&o.v),
        arg(&o.bias),
        arg(lse),
        arg(grad),
        arg(delta),
        arg(&dbias),
        scale as f32,
        o.head_dim,
        o.val_dim,
        f32::elem_type_native(),
    );
    dbias
}
