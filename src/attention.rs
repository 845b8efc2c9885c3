//! Memory-efficient scaled dot-product attention with an exact gradient.
//!
//! `softmax(q k^T * scale + bias) v` written the ordinary way keeps the score and probability
//! matrices (`[B, H, Nq, Nk]` each) for the backward pass; at 1568 tokens and 6 heads that is
//! 59 MB per matrix per block, more than everything else a ViT-S block keeps. [`attention`]
//! instead runs as one custom autodiff operation:
//!
//! - **forward** (graph recorded): query tiles, each a full softmax row; it keeps only the output
//!   and the row log-sum-exp (`[B, H, Nq, 1]`), never a full score matrix;
//! - **backward**: the FlashAttention-2 recurrence, recomputing each tile's probabilities from the
//!   log-sum-exp: `dV += P_i^T dO_i`, `dS_i = P_i * (dO_i V^T - rowsum(dO_i * O_i))`,
//!   `dQ_i = dS_i K`, `dK += dS_i^T Q_i`, `dBias_i = dS_i` (summed over broadcast axes). The
//!   gradient is exact (the same arithmetic as autodiff through the naive formula, in another
//!   order);
//! - **no graph** (frozen backbones, feature extraction, inference, the reversible forward):
//!   Burn's fused attention kernel of the backend (a tiled kernel on Flex, CubeCL kernels on GPU).
//!
//! The tiled passes are built from the backend's own tensor operations, so they run on every
//! Burn backend. Peak extra memory is a few `[B, H, tile, Nk]` tiles of 64-128 query rows (at
//! most [`TILE_ELEMENTS`] scores each).

use std::ops::Range;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, OpsPrep};
use burn::backend::ops::AttentionModuleOptions;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, Dispatch, ExtensionType, Slice, TensorMetadata};
use burn::tensor::Tensor;

pub use crate::extension::Bias;
use crate::extension::to;
use crate::fastmath::FastMath;

/// Scores per tile the tiled passes aim for at most (4 MiB in f32): small against the full
/// matrix at video token counts.
pub const TILE_ELEMENTS: usize = 1 << 20;

/// Smallest query tile (keeps the matmuls from degenerating on very long key sequences).
const MIN_TILE: usize = 64;

/// Largest query tile: beyond it the tile's scores fall out of cache and the step gets slower
/// (the tile sweep is in `docs/performance.md`).
const MAX_TILE: usize = 128;

backend_extension! {
    /// Attention as a backend extension: one custom autodiff operation on `Autodiff<B>`, Burn's
    /// fused kernel on the inner backends.
    pub trait AttentionBackend: Backend + FastMath + FusedAttention {
        /// `softmax(q k^T * scale + bias) v`, with the optional additive `bias` broadcast over
        /// batch and heads.
        ///
        /// # Shapes
        /// - q `[B, H, Nq, D]`, k `[B, H, Nk, D]`, v `[B, H, Nk, Dv]`,
        ///   bias `[B | 1, H | 1, Nq, Nk]` -> `[B, H, Nq, Dv]`
        fn memory_efficient_attention(
            #[extension_type] inputs: AttentionInputs<Self>,
        ) -> FloatTensor<Self> {
            fused::<Self>(inputs)
        }
    }
}

/// One attention call's operands.
///
/// # Shapes
/// - q `[B, H, Nq, D]`, k `[B, H, Nk, D]`, v `[B, H, Nk, Dv]`, bias `[B | 1, H | 1, Nq, Nk]`
#[derive(ExtensionType, Clone, Debug)]
pub struct AttentionInputs<B: Backend> {
    /// Queries.
    pub q: FloatTensor<B>,
    /// Keys.
    pub k: FloatTensor<B>,
    /// Values.
    pub v: FloatTensor<B>,
    /// The additive bias, if any.
    #[extension_type]
    pub bias: Bias<B>,
    /// Multiplies the scores before the bias is added.
    pub scale: f64,
    /// Query rows per tile of the tiled pass.
    pub tile: usize,
}

/// Attention without a graph: the backend's fused pass where it has one (the same forward as
/// under autodiff), else Burn's fused kernel in f32; in a low precision the tiled forward,
/// whose softmax runs in f32, so the reversible pass's recompute (which runs it under autodiff)
/// repeats the forward bit for bit.
fn fused<B: Backend + FastMath + FusedAttention>(i: AttentionInputs<B>) -> FloatTensor<B> {
    if let Some((out, _)) = B::fused_attention_forward(&i) {
        return out;
    }
    let bias = i.bias.into_option();
    if i.q.dtype() != DType::F32 {
        return tiled_forward::<B>(&i.q, &i.k, &i.v, bias.as_ref(), i.scale, i.tile).0;
    }
    let options = AttentionModuleOptions {
        scale: Some(i.scale),
        softcap: None,
        is_causal: false,
    };
    B::attention(i.q, i.k, i.v, None, bias, options)
}

#[cfg(feature = "flex")]
impl AttentionBackend for burn::backend::Flex {}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl AttentionBackend for burn::backend::NdArray {}

/// Gradients of q, k, v and the bias (in the bias's shape), as a backward pass returns them.
pub type AttentionGrads<B> = [Option<FloatTensor<B>>; 4];

/// Fused attention passes a backend may provide: the tiled passes built from tensor operations
/// run where it does not (the default: `None`). The CPU backend runs the kernels of
/// `crate::cpu::attention` on f32 operands.
pub trait FusedAttention: Backend {
    /// The output `[B, H, Nq, Dv]` and the row log-sum-exp `[B, H, Nq, 1]`, or `None` when the
    /// backend has no fused pass for these operands.
    fn fused_attention_forward(
        _inputs: &AttentionInputs<Self>,
    ) -> Option<(FloatTensor<Self>, FloatTensor<Self>)> {
        None
    }

    /// The gradients of the operands from the forward's output and log-sum-exp and the
    /// output's gradient (the bias's only when `want_bias`), or `None` as above.
    fn fused_attention_backward(
        _inputs: &AttentionInputs<Self>,
        _out_lse_grad: (&FloatTensor<Self>, &FloatTensor<Self>, &FloatTensor<Self>),
        _want_bias: bool,
    ) -> Option<AttentionGrads<Self>> {
        None
    }
}

#[cfg(feature = "flex")]
impl FusedAttention for burn::backend::Flex {
    fn fused_attention_forward(
        i: &AttentionInputs<Self>,
    ) -> Option<(FloatTensor<Self>, FloatTensor<Self>)> {
        let bias = match &i.bias {
            Bias::None => None,
            Bias::Additive(b) => Some(b),
        };
        crate::cpu::flex::Inputs::new(&i.q, &i.k, &i.v, bias)?.forward(i.scale, i.tile)
    }

    fn fused_attention_backward(
        i: &AttentionInputs<Self>,
        out_lse_grad: (&FloatTensor<Self>, &FloatTensor<Self>, &FloatTensor<Self>),
        want_bias: bool,
    ) -> Option<AttentionGrads<Self>> {
        let bias = match &i.bias {
            Bias::None => None,
            Bias::Additive(b) => Some(b),
        };
        crate::cpu::flex::Inputs::new(&i.q, &i.k, &i.v, bias)?.backward(
            out_lse_grad,
            i.scale,
            i.tile,
            want_bias,
        )
    }
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl FusedAttention for burn::backend::NdArray {}

impl<B: Backend, C: CheckpointStrategy> FusedAttention for Autodiff<B, C> {}

impl FusedAttention for Dispatch {}

/// The GPU backends run the crate's flash-attention kernels (`crate::gpu`) on f32 operands,
/// with and without a graph, so the reversible pass's recompute repeats the forward exactly.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl FusedAttention for burn::backend::Cube {
    fn fused_attention_forward(
        i: &AttentionInputs<Self>,
    ) -> Option<(FloatTensor<Self>, FloatTensor<Self>)> {
        use crate::gpu::FlashKernels;
        all_f32(i).then(|| {
            Self::flash_forward(
                i.q.clone(),
                i.k.clone(),
                i.v.clone(),
                i.bias.clone(),
                i.scale,
            )
        })
    }

    fn fused_attention_backward(
        i: &AttentionInputs<Self>,
        (out, lse, grad): (&FloatTensor<Self>, &FloatTensor<Self>, &FloatTensor<Self>),
        want_bias: bool,
    ) -> Option<AttentionGrads<Self>> {
        use crate::gpu::FlashKernels;
        if !all_f32(i) || grad.dtype() != DType::F32 {
            return None;
        }
        let (q, k, v) = (i.q.clone(), i.k.clone(), i.v.clone());
        let (out, lse, grad) = (out.clone(), lse.clone(), grad.clone());
        let g = Self::flash_backward(q, k, v, i.bias.clone(), out, lse, grad, i.scale, want_bias);
        Some([Some(g.q), Some(g.k), Some(g.v), g.bias.into_option()])
    }
}

/// Whether every operand is f32 (the GPU kernels' one precision).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn all_f32<B: Backend>(i: &AttentionInputs<B>) -> bool {
    let bias_f32 = match &i.bias {
        Bias::None => true,
        Bias::Additive(b) => b.dtype() == DType::F32,
    };
    bias_f32 && [&i.q, &i.k, &i.v].iter().all(|t| t.dtype() == DType::F32)
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl AttentionBackend for burn::backend::Cube {}

/// What the backward pass keeps: the inputs, the output and the row log-sum-exp.
#[derive(Clone, Debug)]
struct Saved<B: Backend> {
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    scale: f64,
    tile: usize,
}

/// The attention operation with `N` parents: q, k, v and, when there is one, the bias.
#[derive(Debug)]
struct AttentionOp;

impl<B: Backend + FastMath + FusedAttention, const N: usize> Backward<B, N> for AttentionOp {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad_out = grads.consume::<B>(&ops.node);
        let want_bias = N == 4 && ops.parents[N - 1].is_some();
        let parent_grads = ops.state.backward(grad_out, want_bias);
        for (node, grad) in ops.parents.into_iter().zip(parent_grads) {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: Backend + FastMath + FusedAttention, C: CheckpointStrategy> AttentionBackend
    for Autodiff<B, C>
{
    fn memory_efficient_attention(inputs: AttentionInputs<Self>) -> FloatTensor<Self> {
        let qkv = [inputs.q.node(), inputs.k.node(), inputs.v.node()];
        match &inputs.bias {
            Bias::None => record(AttentionOp.prepare::<C>(qkv), inputs),
            Bias::Additive(bias) => {
                let [q, k, v] = qkv;
                record(AttentionOp.prepare::<C>([q, k, v, bias.node()]), inputs)
            }
        }
    }
}

/// Runs the attention for a prepared operation: tiled (keeping the backward's state) when a
/// parent is tracked, Burn's fused kernel otherwise.
fn record<B: Backend + FastMath + FusedAttention, C: CheckpointStrategy, const N: usize>(
    prep: OpsPrep<AttentionOp, B, Saved<B>, C, N>,
    inputs: AttentionInputs<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let inner = AttentionInputs {
        q: inputs.q.into_primitive(),
        k: inputs.k.into_primitive(),
        v: inputs.v.into_primitive(),
        bias: inputs.bias.into_option().map(|b| b.into_primitive()).into(),
        scale: inputs.scale,
        tile: inputs.tile,
    };
    match prep.compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (state, out) = Saved::forward(inner);
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(fused::<B>(inner)),
    }
}

impl<B: Backend + FastMath + FusedAttention> Saved<B> {
    /// The forward (the backend's fused pass, else the tiled one), keeping what the backward
    /// needs.
    fn forward(i: AttentionInputs<B>) -> (Self, FloatTensor<B>) {
        let fused = B::fused_attention_forward(&i);
        let bias = i.bias.into_option();
        let (out, lse) = fused.unwrap_or_else(|| {
            tiled_forward::<B>(&i.q, &i.k, &i.v, bias.as_ref(), i.scale, i.tile)
        });
        let saved = Saved {
            q: i.q,
            k: i.k,
            v: i.v,
            bias,
            out: out.clone(),
            lse,
            scale: i.scale,
            tile: i.tile,
        };
        (saved, out)
    }
}

impl<B: Backend + FastMath + FusedAttention> Saved<B> {
    /// The gradients of q, k, v and (when `want_bias`) the bias: the backend's fused pass,
    /// else the tiled one.
    fn backward(&self, grad_out: FloatTensor<B>, want_bias: bool) -> AttentionGrads<B> {
        let inputs = AttentionInputs {
            q: self.q.clone(),
            k: self.k.clone(),
            v: self.v.clone(),
            bias: self.bias.clone().into(),
            scale: self.scale,
            tile: self.tile,
        };
        let saved = (&self.out, &self.lse, &grad_out);
        if let Some(g) = B::fused_attention_backward(&inputs, saved, want_bias) {
            return g;
        }
        let g = tiled_backward::<B>(self, grad_out, want_bias);
        [Some(g.q), Some(g.k), Some(g.v), g.bias]
    }
}

/// Query tiles `[0, tile)`, `[tile, 2 tile)`, ... covering `0..n`.
fn tiles(n: usize, tile: usize) -> impl Iterator<Item = Range<usize>> {
    let tile = tile.max(1);
    (0..n.div_ceil(tile)).map(move |i| i * tile..((i + 1) * tile).min(n))
}

/// Rows `r` of axis 2 of a 4-D tensor (a view where the backend allows).
fn rows<B: Backend>(t: &FloatTensor<B>, r: &Range<usize>) -> FloatTensor<B> {
    let mut slices = [Slice::full(); 4];
    slices[2] = Slice::new(r.start as isize, Some(r.end as isize), 1);
    B::float_slice(t.clone(), &slices)
}

/// `a + b`, with `None` as zero.
fn accumulate<B: Backend>(acc: Option<FloatTensor<B>>, t: FloatTensor<B>) -> FloatTensor<B> {
    match acc {
        Some(acc) => B::float_add(acc, t),
        None => t,
    }
}

/// Scores of one query tile against every key: `(q * scale)[r] k^T + bias[.., r, ..]`.
fn tile_scores<B: Backend>(
    qs_r: &FloatTensor<B>,
    k: &FloatTensor<B>,
    bias: Option<&FloatTensor<B>>,
    r: &Range<usize>,
) -> FloatTensor<B> {
    let s = to::<B>(
        B::float_matmul(qs_r.clone(), B::float_transpose(k.clone())),
        DType::F32,
    );
    match bias {
        // A bias broadcast over the queries (axis 2 of size 1) is the same for every tile.
        Some(bias) if bias.shape()[2] == 1 => B::float_add(s, to::<B>(bias.clone(), DType::F32)),
        Some(bias) => B::float_add(s, to::<B>(rows::<B>(bias, r), DType::F32)),
        None => s,
    }
}

/// Forward over query tiles, each a full softmax row: returns the output `[B, H, Nq, Dv]` and
/// the row log-sum-exp `[B, H, Nq, 1]`. Only one tile's scores exist at a time.
fn tiled_forward<B: Backend + FastMath>(
    q: &FloatTensor<B>,
    k: &FloatTensor<B>,
    v: &FloatTensor<B>,
    bias: Option<&FloatTensor<B>>,
    scale: f64,
    tile: usize,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let qs = B::float_mul_scalar(q.clone(), scale.into());
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for r in tiles(q.shape()[2], tile) {
        let s = tile_scores::<B>(&rows::<B>(&qs, &r), k, bias, &r);
        let m = B::float_max_dim(s.clone(), 3);
        let p = B::fast_exp(B::float_sub(s, m.clone()));
        let l = B::float_sum_dim(p.clone(), 3);
        let pv = to::<B>(
            B::float_matmul(to::<B>(p, v.dtype()), v.clone()),
            DType::F32,
        );
        // Each tile's rows heads-inner (`[B, rows, H, Dv]`), so the whole output is laid out
        // as `[B, Nq, H, Dv]`: the model's head merge then reshapes it without a copy.
        let out = to::<B>(B::float_div(pv, l.clone()), v.dtype());
        outs.push(B::float_swap_dims(out, 1, 2));
        lses.push(B::float_add(m, B::float_log(l)));
    }
    let out = B::float_swap_dims(B::float_cat(outs, 1), 1, 2);
    (out, B::float_cat(lses, 2))
}

/// Gradients of one attention call.
struct Grads<B: Backend> {
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
}

/// FlashAttention-2 backward over query tiles, probabilities recomputed from the log-sum-exp.
fn tiled_backward<B: Backend + FastMath>(
    s: &Saved<B>,
    grad_out: FloatTensor<B>,
    want_bias: bool,
) -> Grads<B> {
    let qs = B::float_mul_scalar(s.q.clone(), s.scale.into());
    let nq = s.q.shape()[2];
    // rowsum(dO * O) = rowsum(P * dP): the softmax Jacobian's diagonal term.
    let delta = B::float_sum_dim(
        B::float_mul(
            to::<B>(grad_out.clone(), DType::F32),
            to::<B>(s.out.clone(), DType::F32),
        ),
        3,
    );
    let low = |t: FloatTensor<B>| to::<B>(t, s.q.dtype());
    let f32 = |t: FloatTensor<B>| to::<B>(t, DType::F32);
    let (mut dq, mut dk, mut dv, mut db) = (Vec::new(), None, None, Vec::new());
    for r in tiles(nq, s.tile) {
        let qs_r = rows::<B>(&qs, &r);
        let go_r = rows::<B>(&grad_out, &r);
        let scores = tile_scores::<B>(&qs_r, &s.k, s.bias.as_ref(), &r);
        let p = B::fast_exp(B::float_sub(scores, rows::<B>(&s.lse, &r)));
        dv = Some(accumulate::<B>(
            dv,
            f32(B::float_matmul(
                B::float_transpose(low(p.clone())),
                go_r.clone(),
            )),
        ));
        let dp = f32(B::float_matmul(go_r, B::float_transpose(s.v.clone())));
        let ds = B::float_mul(p, B::float_sub(dp, rows::<B>(&delta, &r)));
        let ds_low = low(ds.clone());
        dq.push(f32(B::float_matmul(ds_low.clone(), s.k.clone())));
        dk = Some(accumulate::<B>(
            dk,
            f32(B::float_matmul(B::float_transpose(ds_low), qs_r)),
        ));
        if want_bias && let Some(bias) = &s.bias {
            // Sum over the axes the bias broadcasts along (size 1 in the bias, not in the
            // scores).
            let mut g = ds;
            for (axis, (&size, &full)) in bias.shape().iter().zip(g.shape().iter()).enumerate() {
                if size == 1 && full > 1 {
                    g = B::float_sum_dim(g, axis);
                }
            }
            db.push(g);
        }
    }
    let dq = B::float_mul_scalar(B::float_cat(dq, 2), s.scale.into());
    let bias = match &s.bias {
        // Broadcast over the queries: every tile's part adds up; otherwise they stack.
        Some(b) if b.shape()[2] == 1 && !db.is_empty() => {
            db.into_iter().reduce(|a, g| B::float_add(a, g))
        }
        _ => (!db.is_empty()).then(|| B::float_cat(db, 2)),
    };
    Grads {
        q: low(dq),
        k: to::<B>(dk.expect("attention over zero queries"), s.k.dtype()),
        v: to::<B>(dv.expect("attention over zero queries"), s.v.dtype()),
        bias: bias
            .zip(s.bias.as_ref())
            .map(|(g, b)| to::<B>(g, b.dtype())),
    }
}

/// Query tile for a call: at most [`TILE_ELEMENTS`] scores per tile and `MAX_TILE` (128) rows,
/// at least `MIN_TILE` (64) rows.
pub fn default_tile(batch: usize, heads: usize, queries: usize, keys: usize) -> usize {
    let row = (batch * heads * keys).max(1);
    (TILE_ELEMENTS / row)
        .clamp(MIN_TILE, MAX_TILE)
        .min(queries.max(1))
}

/// Scaled dot-product attention `softmax(q k^T * scale + bias) v`, memory-efficient under
/// autodiff with an exact gradient (module docs), Burn's fused kernel without a graph.
///
/// `bias` is additive (relative-position biases, or large negative values as masks) and may
/// broadcast over batch and heads (size-1 axes); it receives a gradient when it requires one.
///
/// # Shapes
/// - q `[B, H, Nq, D]`, k `[B, H, Nk, D]`, v `[B, H, Nk, Dv]`,
///   bias `[B | 1, H | 1, Nq, Nk]` -> `[B, H, Nq, Dv]`
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    bias: Option<Tensor<4>>,
    scale: f64,
) -> Tensor<4> {
    let [b, h, nq, _] = q.dims();
    let nk = k.dims()[2];
    attention_tiled(q, k, v, bias, scale, default_tile(b, h, nq, nk))
}

/// [`attention`] with an explicit key tile (tests use small tiles to exercise many of them).
///
/// # Shapes
/// - as [`attention`]
pub fn attention_tiled(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    bias: Option<Tensor<4>>,
    scale: f64,
    tile: usize,
) -> Tensor<4> {
    let inputs = AttentionInputs {
        q: q.into_dispatch(),
        k: k.into_dispatch(),
        v: v.into_dispatch(),
        bias: bias.map(Tensor::into_dispatch).into(),
        scale,
        tile,
    };
    Tensor::from_dispatch(<Dispatch as AttentionBackend>::memory_efficient_attention(
        inputs,
    ))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, TensorData};

    use super::*;

    /// The ordinary formula, `softmax(q k^T * scale + bias) v`, kept as the reference the tests
    /// compare with.
    ///
    /// # Shapes
    /// - as [`attention`]
    fn attention_naive(
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        bias: Option<Tensor<4>>,
        scale: f64,
    ) -> Tensor<4> {
        let s = (q * scale).matmul(k.swap_dims(2, 3));
        let s = match bias {
            Some(b) => s + b,
            None => s,
        };
        burn::tensor::activation::softmax(s, 3).matmul(v)
    }

    /// The CPU backend, or the one `E2E_TAL_BACKEND` names (the same checks on wgpu through
    /// lavapipe, `docs/backends.md`).
    fn device() -> burn::tensor::Device {
        crate::backend::device_from_env()
            .expect("E2E_TAL_BACKEND names a compiled-in backend")
            .autodiff()
    }

    /// max |a - b| / max |b|.
    fn rel(a: Tensor<4>, b: Tensor<4>) -> f64 {
        let scale = b.clone().abs().max().into_scalar::<f32>() as f64;
        let diff = (a - b).abs().max().into_scalar::<f32>() as f64;
        diff / scale.max(1e-30)
    }

    fn rand(shape: [usize; 4], device: &burn::tensor::Device) -> Tensor<4> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    struct Case {
        b: usize,
        h: usize,
        nq: usize,
        nk: usize,
        d: usize,
        dv: usize,
        /// Bias shape (`None`: no bias); 1 in an axis broadcasts along it.
        bias: Option<[usize; 4]>,
        /// Some keys get -1e9 (masked) in the bias.
        masked: bool,
        /// q, k, v as the model's head split leaves them: `[B, N, H, D]` tensors seen as
        /// `[B, H, N, D]` (rows a whole token apart), not contiguous heads.
        split: bool,
    }

    impl Case {
        /// `b` x `h` heads, `nq` queries over `nk` keys, width `d` (values `dv`), no bias.
        fn new(b: usize, h: usize, nq: usize, nk: usize, d: usize, dv: usize) -> Self {
            Case {
                b,
                h,
                nq,
                nk,
                d,
                dv,
                bias: None,
                masked: false,
                split: false,
            }
        }

        fn split(self) -> Self {
            Case {
                split: true,
                ..self
            }
        }

        fn with_bias(self, bias: [usize; 4], masked: bool) -> Self {
            Case {
                bias: Some(bias),
                masked,
                ..self
            }
        }
    }

    /// Forward and every gradient (q, k, v, bias) of the tiled op against autodiff through
    /// the naive formula, for several tile sizes.
    fn check(case: &Case, tiles: &[usize]) {
        let device = device();
        let Case {
            b,
            h,
            nq,
            nk,
            d,
            dv,
            ..
        } = *case;
        let operand = |n: usize, width: usize| match case.split {
            true => rand([b, n, h, width], &device).swap_dims(1, 2),
            false => rand([b, h, n, width], &device),
        };
        let (q, k, v) = (operand(nq, d), operand(nk, d), operand(nk, dv));
        let w = rand([b, h, nq, dv], &device);
        let bias = case.bias.map(|shape| {
            let mut t = rand(shape, &device);
            if case.masked {
                // Mask every third entry (and, with keys in the bias, one whole key column).
                let (n, last) = (shape.iter().product::<usize>(), shape[3]);
                let mask: Vec<f32> = (0..n)
                    .map(|i| {
                        if i % 3 == 0 || (last > 1 && i % last == 1) {
                            -1e9
                        } else {
                            0.0
                        }
                    })
                    .collect();
                t = t + Tensor::from_data(TensorData::new(mask, shape), &device);
            }
            t
        });
        let scale = (d as f64).powf(-0.5);
        let run = |tile: Option<usize>| {
            let (q, k, v) = (
                q.clone().require_grad(),
                k.clone().require_grad(),
                v.clone().require_grad(),
            );
            let bias = bias.clone().map(|t| t.require_grad());
            let out = match tile {
                Some(t) => attention_tiled(q.clone(), k.clone(), v.clone(), bias.clone(), scale, t),
                None => attention_naive(q.clone(), k.clone(), v.clone(), bias.clone(), scale),
            };
            let g = (out.clone() * w.clone()).sum().backward();
            let grad = |t: &Tensor<4>| t.grad(&g).unwrap();
            let gb = bias.as_ref().map(grad);
            (out.inner(), grad(&q), grad(&k), grad(&v), gb)
        };
        let (o0, q0, k0, v0, b0) = run(None);
        for &tile in tiles {
            let (o, gq, gk, gv, gb) = run(Some(tile));
            let what = format!("tile {tile}");
            assert!(rel(o, o0.clone()) <= 1e-5, "{what}: output");
            assert!(rel(gq, q0.clone()) <= 1e-5, "{what}: dq");
            assert!(rel(gk, k0.clone()) <= 1e-5, "{what}: dk");
            assert!(rel(gv, v0.clone()) <= 1e-5, "{what}: dv");
            if let (Some(gb), Some(b0)) = (gb, b0.clone()) {
                assert_eq!(gb.dims(), b0.dims(), "{what}: bias grad shape");
                assert!(rel(gb, b0) <= 1e-5, "{what}: dbias");
            }
        }
    }

    #[test]
    fn self_attention_one_tile_and_many() {
        let case = Case::new(2, 3, 19, 19, 8, 8);
        check(&case, &[19, 64, 7, 4, 1]);
    }

    #[test]
    fn cross_attention_odd_lengths_and_value_width() {
        let case = Case::new(1, 2, 23, 5, 6, 10);
        check(&case, &[23, 8, 3]);
        let case = Case::new(1, 2, 5, 23, 6, 10);
        check(&case, &[5, 2]);
    }

    #[test]
    fn full_bias_gets_its_gradient() {
        let case = Case::new(2, 2, 9, 11, 4, 4).with_bias([2, 2, 9, 11], false);
        check(&case, &[11, 4]);
    }

    #[test]
    fn bias_broadcast_over_batch_and_over_heads() {
        // Batch, heads and queries (a key padding mask's shape), alone and together. (A bias
        // constant over the keys does not change the softmax: its gradient is zero.)
        for bias in [
            [1, 3, 10, 13],
            [2, 1, 10, 13],
            [1, 1, 10, 13],
            [2, 1, 1, 13],
            [1, 1, 1, 13],
        ] {
            let case = Case::new(2, 3, 10, 13, 4, 4).with_bias(bias, false);
            check(&case, &[13, 5]);
        }
    }

    #[test]
    fn masks_as_large_negative_bias() {
        let case = Case::new(2, 2, 12, 12, 4, 4).with_bias([2, 1, 12, 12], true);
        check(&case, &[12, 5, 2]);
        // A key padding mask broadcast over the queries, across several query tiles.
        let case = case.with_bias([2, 1, 1, 12], true);
        check(&case, &[12, 5, 2]);
    }

    #[test]
    fn without_a_graph_it_matches_the_naive_formula() {
        let device = crate::backend::device_from_env().expect("E2E_TAL_BACKEND names a backend");
        let (q, k, v) = (
            rand([1, 2, 40, 8], &device),
            rand([1, 2, 33, 8], &device),
            rand([1, 2, 33, 8], &device),
        );
        let bias = rand([1, 2, 40, 33], &device);
        for bias in [None, Some(bias)] {
            let got = attention(q.clone(), k.clone(), v.clone(), bias.clone(), 0.3);
            let want = attention_naive(q.clone(), k.clone(), v.clone(), bias, 0.3);
            assert!(rel(got, want) <= 1e-5);
        }
        // Untracked tensors on an autodiff device take the same fused path.
        let ad = device.autodiff();
        let got = attention(
            q.clone().autodiff(),
            k.clone().autodiff(),
            v.clone().autodiff(),
            None,
            0.3,
        );
        assert!(!got.is_require_grad());
        let want = attention_naive(q, k, v, None, 0.3);
        assert!(rel(got.inner(), want) <= 1e-5);
        let _ = ad;
    }

    #[test]
    fn many_tiles_heads_and_widths_across_threads() {
        // Widths and key counts off the SIMD lane count, more tasks than threads, a partial
        // last tile, a bias per head and one broadcast over the batch.
        let case = Case::new(3, 4, 150, 133, 20, 12);
        check(&case, &[64, 37]);
        check(&case.with_bias([3, 4, 150, 133], false), &[41]);
        let case = Case::new(3, 4, 70, 45, 8, 8).with_bias([1, 4, 70, 45], true);
        check(&case, &[16, 70]);
    }

    #[test]
    fn heads_split_from_the_token_axis() {
        // The model's layout: each head's rows a whole token apart (the kernel copies a head's
        // keys and values into rows of their own); odd sizes, whole registers, one head.
        check(&Case::new(2, 3, 100, 90, 32, 16).split(), &[64, 20]);
        let case = Case::new(2, 4, 37, 41, 8, 12).split();
        check(&case.with_bias([2, 4, 37, 41], true), &[16, 5]);
        check(&Case::new(1, 1, 30, 33, 16, 16).split(), &[16]);
        check(&Case::new(3, 2, 1, 3, 8, 8).split(), &[1]);
    }

    #[test]
    fn widths_of_whole_registers_take_the_direct_products() {
        // Head widths and tiles that are multiples of the SIMD width: every product of the
        // CPU kernel runs on the microkernels directly (`cpu/ukernel.rs`), partial last tiles
        // (100 = 64 + 36, 100 = 48 + 48 + 4) and a tile rounded down (20 -> 16) included.
        let case = || Case::new(2, 3, 100, 90, 32, 16);
        check(&case(), &[64, 48, 20]);
        check(&case().with_bias([2, 3, 100, 90], true), &[64]);
        check(&case().with_bias([1, 1, 1, 90], false), &[32]);
    }

    /// The CPU backend takes its fused kernels for f32 operands and the bias shapes they cover
    /// (so the tests above check them), and the tiled passes otherwise.
    /// Whether backend `B`'s fused passes take a call (q `[2, 3, 10, 8]` over 12 keys) with
    /// this bias shape in this dtype, forward and backward; `t` makes its random operands.
    #[allow(dead_code)] // used by the tests of the backends compiled in
    fn covers<B: FusedAttention>(
        t: &dyn Fn([usize; 4], DType) -> FloatTensor<B>,
        bias: Option<[usize; 4]>,
        dtype: DType,
    ) -> bool {
        let inputs = AttentionInputs::<B> {
            q: t([2, 3, 10, 8], dtype),
            k: t([2, 3, 12, 8], dtype),
            v: t([2, 3, 12, 8], dtype),
            bias: bias.map(|s| t(s, dtype)).into(),
            scale: 0.3,
            tile: 4,
        };
        let Some((out, lse)) = B::fused_attention_forward(&inputs) else {
            return false;
        };
        let g = (&out, &lse, &out);
        B::fused_attention_backward(&inputs, g, true).is_some()
    }

    #[cfg(feature = "flex")]
    #[test]
    fn flex_runs_the_fused_kernel_where_it_covers_the_call() {
        use burn::backend::Flex;
        let device = crate::backend::cpu_device();
        let t = |shape: [usize; 4], dtype: DType| {
            let data = rand(shape, &device).cast(dtype).into_data();
            burn::backend::flex::FlexTensor::from_data(data)
        };
        let covered = |bias, dtype| covers::<Flex>(&t, bias, dtype);
        assert!(covered(None, DType::F32));
        for bias in [[2, 3, 10, 12], [1, 3, 10, 12], [2, 1, 1, 12], [1, 1, 1, 12]] {
            assert!(covered(Some(bias), DType::F32), "{bias:?}");
        }
        assert!(
            !covered(Some([2, 3, 10, 1]), DType::F32),
            "bias constant over keys"
        );
        assert!(!covered(None, DType::F16), "f16");
    }

    /// The GPU backends take the crate's flash kernels for f32 operands, every bias shape
    /// included (so the tests above check them when `E2E_TAL_BACKEND` names one), and the
    /// tiled passes otherwise.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    #[test]
    fn gpu_runs_the_flash_kernels_on_f32() {
        use burn::backend::Cube;
        use burn::backend::ops::FloatTensorOps;
        let Ok(device) = crate::backend::device_from_env() else {
            return;
        };
        let burn::backend::DispatchDevice::Cube(cube) = device.as_dispatch().clone() else {
            return; // a CPU run of a GPU build: nothing to check here
        };
        let t = |shape: [usize; 4], dtype: DType| {
            let data = rand(shape, &device).cast(dtype).into_data();
            Cube::float_from_data(data, &cube)
        };
        let covered = |bias, dtype| covers::<Cube>(&t, bias, dtype);
        for bias in [
            None,
            Some([2, 3, 10, 12]),
            Some([2, 1, 1, 12]),
            Some([2, 3, 10, 1]),
        ] {
            assert!(covered(bias, DType::F32), "{bias:?}");
        }
        assert!(!covered(None, DType::F16), "f16");
    }

    #[test]
    fn default_tile_bounds() {
        assert_eq!(default_tile(1, 6, 392, 392), MAX_TILE);
        assert_eq!(default_tile(1, 6, 1568, 1568), TILE_ELEMENTS / (6 * 1568));
        assert_eq!(default_tile(1, 1, 10, 10), 10);
        assert_eq!(default_tile(64, 16, 4096, 4096), MIN_TILE);
    }
}
