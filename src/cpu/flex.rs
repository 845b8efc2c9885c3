//! Flex tensors in and out of the slice kernels: f32 storage read in place through its strides
//! (a copy only when the last axis is not contiguous or a stride is negative), results built
//! from the kernels' vectors without a copy. Every function returns `None` when the kernels do
//! not cover the call (another dtype, an empty axis, a bias shape other than
//! `[B | 1, H | 1, Nq | 1, Nk]`), and the caller takes the backend-op version.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape, TensorData};

use super::attention::{self as kernel, Dims, GradsMut, Operands, View};

/// A Flex f32 tensor of rank 4 whose storage the kernels can read through its strides.
fn readable(t: &FlexTensor) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 || t.layout().num_dims() != 4 {
        return None;
    }
    let l = t.layout();
    let dims = l.shape();
    let ok = l.strides().iter().all(|&s| s >= 0) && (dims[3] == 1 || l.strides()[3] == 1);
    Some(if ok { t.clone() } else { t.to_contiguous() })
}

/// A view of a readable tensor read at `[B, H, rows, cols]`: its size-1 axes broadcast.
fn view(t: &FlexTensor, at: [usize; 4]) -> Option<View<'_>> {
    let l = t.layout();
    let (dims, strides) = (l.shape(), l.strides());
    let mut s = [0usize; 3];
    for axis in 0..3 {
        if dims[axis] == at[axis] && dims[axis] > 1 {
            s[axis] = strides[axis] as usize;
        } else if dims[axis] != 1 {
            return None;
        }
    }
    if dims[3] != at[3] {
        return None;
    }
    View::new(t.storage::<f32>(), l.start_offset(), s, at)
}

/// The call's sizes from q, k, v, checked against each other; `None` on an empty axis.
fn dims(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor) -> Option<Dims> {
    let (q, k, v) = (q.layout().shape(), k.layout().shape(), v.layout().shape());
    let dims = Dims {
        batch: q[0],
        heads: q[1],
        nq: q[2],
        nk: k[2],
        d: q[3],
        dv: v[3],
    };
    let agree = k[0] == q[0] && v[0] == q[0] && k[1] == q[1] && v[1] == q[1];
    (agree && k[3] == q[3] && v[2] == k[2] && !dims.sizes().contains(&0)).then_some(dims)
}

/// Readable copies of the operands (views when possible).
pub(crate) struct Inputs {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    bias: Option<FlexTensor>,
    dims: Dims,
}

impl Inputs {
    /// The operands when the kernels cover them.
    pub(crate) fn new(
        q: &FlexTensor,
        k: &FlexTensor,
        v: &FlexTensor,
        bias: Option<&FlexTensor>,
    ) -> Option<Self> {
        let (q, k, v) = (readable(q)?, readable(k)?, readable(v)?);
        let bias = match bias {
            Some(b) => Some(readable(b)?),
            None => None,
        };
        let dims = dims(&q, &k, &v)?;
        Some(Inputs {
            q,
            k,
            v,
            bias,
            dims,
        })
    }

    fn operands(&self, scale: f64, tile: usize) -> Option<Operands<'_>> {
        let [b, h, nq, nk, d, dv] = self.dims.sizes();
        let bias = match &self.bias {
            Some(t) => Some(view(t, [b, h, nq, nk])?),
            None => None,
        };
        Some(Operands {
            q: view(&self.q, [b, h, nq, d])?,
            k: view(&self.k, [b, h, nk, d])?,
            v: view(&self.v, [b, h, nk, dv])?,
            bias,
            scale: scale as f32,
            tile,
        })
    }

    /// The output `[B, H, Nq, Dv]` and the row log-sum-exp `[B, H, Nq, 1]`.
    pub(crate) fn forward(&self, scale: f64, tile: usize) -> Option<(FlexTensor, FlexTensor)> {
        let x = self.operands(scale, tile)?;
        let [b, h, nq, _, _, dv] = self.dims.sizes();
        let mut out = super::gemm::uninit(b * h * nq * dv);
        let mut lse = vec![0.0f32; b * h * nq];
        kernel::forward(&self.dims, &x, &mut out, &mut lse);
        // SAFETY: the forward writes every output element.
        let out = unsafe { super::gemm::assume_init(out) };
        Some((heads_inner(out, [b, h, nq, dv]), tensor(lse, [b, h, nq, 1])))
    }

    /// Gradients of q, k, v and (when `want_bias`) the bias, in the bias's shape.
    pub(crate) fn backward(
        &self,
        (out, lse, grad_out): (&FlexTensor, &FlexTensor, &FlexTensor),
        scale: f64,
        tile: usize,
        want_bias: bool,
    ) -> Option<[Option<FlexTensor>; 4]> {
        let x = self.operands(scale, tile)?;
        let [b, h, nq, nk, d, dv] = self.dims.sizes();
        let (out, grad_out, lse) = (
            readable(out)?,
            readable(grad_out)?,
            readable(lse)?.to_contiguous(),
        );
        let lse = &lse.storage::<f32>()[..b * h * nq];
        let saved = kernel::Saved {
            out: view(&out, [b, h, nq, dv])?,
            lse,
            grad_out: view(&grad_out, [b, h, nq, dv])?,
        };
        let uninit = super::gemm::uninit;
        let (mut gq, mut gk, mut gv) = (
            uninit(b * h * nq * d),
            uninit(b * h * nk * d),
            uninit(b * h * nk * dv),
        );
        let bias_shape = self.bias.as_ref().filter(|_| want_bias).map(|t| {
            let s = t.layout().shape();
            [s[0], s[1], s[2], s[3]]
        });
        let mut gb = bias_shape.map(|s| zeros(s.iter().product()));
        let grads = GradsMut {
            dq: &mut gq,
            dk: &mut gk,
            dv: &mut gv,
            dbias: gb.as_deref_mut().zip(bias_shape),
        };
        kernel::backward(&self.dims, &x, &saved, grads);
        // SAFETY: the backward writes every element of the three gradients.
        let (gq, gk, gv) = unsafe {
            use super::gemm::assume_init;
            (assume_init(gq), assume_init(gk), assume_init(gv))
        };
        Some([
            Some(heads_inner(gq, [b, h, nq, d])),
            Some(heads_inner(gk, [b, h, nk, d])),
            Some(heads_inner(gv, [b, h, nk, dv])),
            gb.zip(bias_shape).map(|(g, s)| tensor(g, s)),
        ])
    }
}

fn zeros(n: usize) -> Vec<f32> {
    vec![0.0; n]
}

/// A `[B, H, N, C]` tensor over `data` laid out as `[B, N, H, C]` (the kernels' result order):
/// a view with the heads' axis swapped, which the model's head merge reads without a copy.
fn heads_inner(data: Vec<f32>, [b, h, n, c]: [usize; 4]) -> FlexTensor {
    use burn::backend::{Flex, ops::FloatTensorOps};
    Flex::float_swap_dims(tensor(data, [b, n, h, c]), 1, 2)
}

/// A contiguous f32 Flex tensor over `data` (no copy).
fn tensor(data: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// Whether the tensor's elements are its storage's first ones in row-major order.
pub(crate) fn is_dense(t: &FlexTensor) -> bool {
    t.layout().is_contiguous() && t.layout().start_offset() == 0
}

/// The tensor with its elements in row-major order from the start of its storage (a copy only
/// when they are not).
pub(crate) fn contiguous(t: FlexTensor) -> FlexTensor {
    if is_dense(&t) { t } else { t.to_contiguous() }
}

/// A Flex f32 tensor's elements in row-major order (a copy only when it is not contiguous).
fn dense(t: &FlexTensor) -> Option<FlexTensor> {
    (t.dtype() == DType::F32).then(|| contiguous(t.clone()))
}

fn elements(t: &FlexTensor) -> &[f32] {
    &t.storage::<f32>()[..t.layout().num_elements()]
}

/// The shape of `t` with its last axis 1 (the row statistics' shape).
fn rows_shape(t: &FlexTensor) -> Vec<usize> {
    let mut s = t.layout().shape().to_vec();
    if let Some(last) = s.last_mut() {
        *last = 1;
    }
    s
}

/// Layer norm over the last axis of `x` (f32, `[..., C]` with `C > 0`): the output and the row
/// mean and reciprocal standard deviation (`[..., 1]`).
pub(crate) fn layer_norm_forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
) -> Option<[FlexTensor; 3]> {
    let (x, gamma, beta) = (dense(x)?, dense(gamma)?, dense(beta)?);
    let c = *x.layout().shape().last()?;
    let (gs, bs) = (elements(&gamma), elements(&beta));
    if c == 0 || gs.len() != c || bs.len() != c {
        return None;
    }
    let xs = elements(&x);
    let rows = xs.len() / c;
    let (mut out, mut mean, mut rstd) = (super::gemm::uninit(xs.len()), zeros(rows), zeros(rows));
    let p = super::layer_norm::Affine {
        gamma: gs,
        beta: bs,
        epsilon: epsilon as f32,
    };
    super::layer_norm::forward(xs, &p, &mut out, &mut mean, &mut rstd);
    // SAFETY: the forward writes every element of `out`.
    let out = unsafe { super::gemm::assume_init(out) };
    let stats = rows_shape(&x);
    Some([
        tensor(out, x.layout().shape().to_vec()),
        tensor(mean, stats.clone()),
        tensor(rstd, stats),
    ])
}

/// Layer norm's gradients of the input, the scale and the shift from the input, its row
/// statistics, the scale and the output's gradient.
pub(crate) fn layer_norm_backward(
    (x, mean, rstd): (&FlexTensor, &FlexTensor, &FlexTensor),
    gamma: &FlexTensor,
    grad: &FlexTensor,
) -> Option<[FlexTensor; 3]> {
    let (x, g, gamma) = (dense(x)?, dense(grad)?, dense(gamma)?);
    let (mean, rstd) = (dense(mean)?, dense(rstd)?);
    let c = *x.layout().shape().last()?;
    let (xs, gs, gam) = (elements(&x), elements(&g), elements(&gamma));
    let stats = super::layer_norm::Stats {
        mean: elements(&mean),
        rstd: elements(&rstd),
    };
    let rows = xs.len() / c.max(1);
    if c == 0
        || gs.len() != xs.len()
        || gam.len() != c
        || stats.mean.len() != rows
        || stats.rstd.len() != rows
    {
        return None;
    }
    let mut dx = super::gemm::uninit(xs.len());
    let (dgamma, dbeta) = super::layer_norm::backward(xs, gs, gam, &stats, &mut dx);
    // SAFETY: the backward writes every element of `dx`.
    let dx = unsafe { super::gemm::assume_init(dx) };
    Some([
        tensor(dx, x.layout().shape().to_vec()),
        tensor(dgamma, vec![c]),
        tensor(dbeta, vec![c]),
    ])
}

/// `a b (+ bias)` for 2-D f32 tensors `[m, k]` and `[k, n]` with non-negative strides (a
/// transposed view is read in place) and a bias of `n` elements, threaded by output blocks.
pub(crate) fn matmul(
    a: &FlexTensor,
    b: &FlexTensor,
    bias: Option<&FlexTensor>,
) -> Option<FlexTensor> {
    let mat = |t: &FlexTensor| {
        let l = t.layout();
        let (dims, strides) = (l.shape(), l.strides());
        if t.dtype() != DType::F32 || dims.num_dims() != 2 || strides.iter().any(|&s| s < 0) {
            return None;
        }
        let data = t.storage::<f32>();
        let last = l.start_offset()
            + (dims[0].max(1) - 1) * strides[0] as usize
            + (dims[1].max(1) - 1) * strides[1] as usize;
        (last < data.len()).then(|| super::gemm::Mat {
            ptr: data[l.start_offset()..].as_ptr(),
            rs: strides[0],
            cs: strides[1],
        })
    };
    let bias_absent = bias.is_none();
    let (am, bm) = (mat(a)?, mat(b)?);
    let (m, k, n) = (
        a.layout().shape()[0],
        a.layout().shape()[1],
        b.layout().shape()[1],
    );
    if b.layout().shape()[0] != k || m == 0 || k == 0 || n == 0 {
        return None;
    }
    let bias = match bias {
        Some(t) => Some(dense(t)?).filter(|t| t.layout().num_elements() == n),
        None => None,
    };
    if bias.is_none() != bias_absent {
        return None;
    }
    let mut out = super::gemm::uninit(m * n);
    // SAFETY: both operands were checked to lie inside their storage for every index; the
    // product writes every element of `out`.
    let out = unsafe {
        let bias = bias.as_ref().map(elements);
        super::matmul::matmul((m, n, k), (am, bm), bias, &mut out);
        super::gemm::assume_init(out)
    };
    Some(tensor(out, [m, n]))
}

/// The tubelet patches of an f32 `[N, C, T, H, W]` tensor read in place (non-negative
/// strides, the last axis contiguous) for a kernel `k` (`crate::cpu::patches`); `None` when
/// the kernel does not cover it.
///
/// # Shapes
/// - x `[N, C, T, H, W]` -> `[N T' H' W', C kt kh kw]`, `T' = T / kt` rounded down
pub(crate) fn patchify(x: &FlexTensor, k: [usize; 3]) -> Option<FlexTensor> {
    let l = x.layout();
    let (dims, strides) = (l.shape(), l.strides());
    if x.dtype() != DType::F32 || dims.num_dims() != 5 || k.contains(&0) {
        return None;
    }
    let d: [usize; 5] = std::array::from_fn(|i| dims[i]);
    if d.contains(&0) || (strides[4] != 1 && d[4] != 1) || strides.iter().any(|&s| s < 0) {
        return None;
    }
    let data = x.storage::<f32>();
    let last = l.start_offset()
        + (0..5)
            .map(|i| (d[i] - 1) * strides[i] as usize)
            .sum::<usize>();
    if last >= data.len() {
        return None;
    }
    let clips = super::patches::ClipView {
        data,
        offset: l.start_offset(),
        dims: d,
        strides: std::array::from_fn(|i| strides[i] as usize),
    };
    let (out, shape) = super::patches::patchify(clips, k);
    Some(tensor(out, shape))
}

/// The four AdamW operands handed back when the kernel does not cover them.
pub(crate) type AdamWOperands = Box<(FlexTensor, FlexTensor, FlexTensor, FlexTensor)>;

/// AdamW's update (`crate::optim`) of f32 tensors of one shape: one parallel pass, in place
/// in the parameter and moments when they are unshared and dense (else on copies).
pub(crate) fn adamw(
    p: FlexTensor,
    g: FlexTensor,
    m: FlexTensor,
    v: FlexTensor,
    step: crate::optim::AdamWStep,
) -> Result<(FlexTensor, FlexTensor, FlexTensor), AdamWOperands> {
    use rayon::prelude::*;
    /// Elements per task (and below which one thread does it all).
    const CHUNK: usize = 1 << 14;
    let shape = p.layout().shape().clone();
    let fits = [&p, &g, &m, &v]
        .iter()
        .all(|t| t.dtype() == DType::F32 && *t.layout().shape() == shape);
    if !fits {
        return Err(Box::new((p, g, m, v)));
    }
    let owned = |t: FlexTensor| {
        if t.is_unique() && is_dense(&t) {
            t
        } else {
            tensor(elements(&contiguous(t)).to_vec(), shape.clone())
        }
    };
    let (mut p, g, mut m, mut v) = (owned(p), contiguous(g), owned(m), owned(v));
    let n = shape.num_elements();
    let (c1, c2) = step.corrections();
    let row = super::simd::AdamWRow {
        b1: (step.beta_1, 1.0 - step.beta_1),
        b2: (step.beta_2, 1.0 - step.beta_2),
        corrections: (c1, c2),
        epsilon: step.epsilon,
        keep: step.keep(),
        lr: step.lr as f32,
    };
    let gs = elements(&g);
    let (ps, ms, vs) = (
        &mut p.storage_mut::<f32>()[..n],
        &mut m.storage_mut::<f32>()[..n],
        &mut v.storage_mut::<f32>()[..n],
    );
    if n <= CHUNK {
        super::simd::adamw(ps, gs, ms, vs, row);
    } else {
        ps.par_chunks_mut(CHUNK)
            .zip(gs.par_chunks(CHUNK))
            .zip(ms.par_chunks_mut(CHUNK).zip(vs.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| super::simd::adamw(p, g, m, v, row));
    }
    Ok((p, m, v))
}
