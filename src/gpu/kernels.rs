//! The flash-attention kernels in CubeCL: one unit per row, the softmax online, nothing of
//! size `Nq x Nk` in memory.
//!
//! Operands are contiguous: q `[B, H, Nq, D]`, k `[B, H, Nk, D]`, v `[B, H, Nk, Dv]`, the
//! optional bias `[B | 1, H | 1, Nq, Nk]` (a dummy operand when `has_bias` is false), the row
//! log-sum-exp and `delta = rowsum(dO * O)` `[B, H, Nq]` in f32. Scores are
//! `S = scale * q k^T + bias`, `P = exp(S - lse)`.

use cubecl::prelude::*;

/// Smallest score the online maximum starts from: finite, as WGSL has no infinities.
const LOWEST: f32 = -3.0e38;

/// Index of the bias entry for batch `b`, head `h`, query `i`, key `j`: an axis of size one
/// is broadcast (`x % 1 == 0`).
#[cube]
fn bias_index<E: Float>(bias: &Tensor<E>, b: usize, h: usize, i: usize, j: usize) -> usize {
    let s1 = bias.shape(1);
    let s2 = bias.shape(2);
    let s3 = bias.shape(3);
    (((b % bias.shape(0)) * s1 + h % s1) * s2 + i % s2) * s3 + j % s3
}

/// `t[base..base + width]` into registers.
#[cube]
fn load_row<E: Float>(reg: &mut Array<E>, t: &Tensor<E>, base: usize, #[comptime] width: usize) {
    for d in 0..width {
        reg[d] = t[base + d];
    }
}

/// Registers set to zero.
#[cube]
fn zero<E: Float>(reg: &mut Array<E>, #[comptime] width: usize) {
    for d in 0..width {
        reg[d] = E::new(0.0);
    }
}

/// `reg . t[base..base + width]`: a row held in registers against a row in memory.
#[cube]
fn dot_row<E: Float>(reg: &Array<E>, t: &Tensor<E>, base: usize, #[comptime] width: usize) -> E {
    let mut dot = E::new(0.0);
    for d in 0..width {
        dot += reg[d] * t[base + d];
    }
    dot
}

/// `s` plus the bias entry of query `i` and key `j` of head `bh` (of `heads` per batch),
/// when there is a bias.
#[cube]
#[allow(clippy::too_many_arguments)]
fn plus_bias<E: Float>(
    s: E,
    bias: &Tensor<E>,
    bh: usize,
    heads: usize,
    i: usize,
    j: usize,
    #[comptime] has_bias: bool,
) -> E {
    let mut s = s;
    if has_bias {
        s += bias[bias_index(bias, bh / heads, bh % heads, i, j)];
    }
    s
}

/// Forward: the output row and its log-sum-exp, one unit per query row.
#[cube(launch, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<E: Float>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    bias: &Tensor<E>,
    out: &mut Tensor<E>,
    lse: &mut Tensor<E>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] val_dim: usize,
    #[comptime] has_bias: bool,
    #[define(E)] _dtype: ElemType,
) {
    let row = ABSOLUTE_POS;
    if row >= lse.len() {
        terminate!();
    }
    let heads = q.shape(1);
    let seq_q = q.shape(2);
    let seq_k = k.shape(2);
    let bh = row / seq_q;
    let i = row % seq_q;
    let scale = E::cast_from(scale);

    let mut qr = Array::<E>::new(head_dim);
    load_row(&mut qr, q, row * head_dim, head_dim);
    let mut acc = Array::<E>::new(val_dim);
    zero(&mut acc, val_dim);
    let mut m = E::new(LOWEST);
    let mut l = E::new(0.0);
    for j in 0..seq_k {
        let dot = dot_row(&qr, k, (bh * seq_k + j) * head_dim, head_dim);
        let s = plus_bias(dot * scale, bias, bh, heads, i, j, has_bias);
        let m_new = max(m, s);
        let correction = (m - m_new).exp();
        let p = (s - m_new).exp();
        l = l * correction + p;
        let vb = (bh * seq_k + j) * val_dim;
        for d in 0..val_dim {
            acc[d] = acc[d] * correction + p * v[vb + d];
        }
        m = m_new;
    }
    for d in 0..val_dim {
        out[row * val_dim + d] = acc[d] / l;
    }
    lse[row] = m + l.ln();
}

/// Backward, query side: `delta_i = rowsum(dO_i * O_i)` and
/// `dQ_i = scale * sum_j P_ij (dO_i . v_j - delta_i) k_j`, one unit per query row.
#[cube(launch, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_query<E: Float>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    bias: &Tensor<E>,
    out: &Tensor<E>,
    lse: &Tensor<E>,
    grad: &Tensor<E>,
    delta: &mut Tensor<E>,
    dq: &mut Tensor<E>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] val_dim: usize,
    #[comptime] has_bias: bool,
    #[define(E)] _dtype: ElemType,
) {
    let row = ABSOLUTE_POS;
    if row >= lse.len() {
        terminate!();
    }
    let heads = q.shape(1);
    let seq_q = q.shape(2);
    let seq_k = k.shape(2);
    let bh = row / seq_q;
    let i = row % seq_q;
    let scale = E::cast_from(scale);

    let mut qr = Array::<E>::new(head_dim);
    load_row(&mut qr, q, row * head_dim, head_dim);
    let mut acc = Array::<E>::new(head_dim);
    zero(&mut acc, head_dim);
    let mut gr = Array::<E>::new(val_dim);
    load_row(&mut gr, grad, row * val_dim, val_dim);
    let dl = dot_row(&gr, out, row * val_dim, val_dim);
    delta[row] = dl;
    let lse_i = lse[row];
    for j in 0..seq_k {
        let kb = (bh * seq_k + j) * head_dim;
        let dot = dot_row(&qr, k, kb, head_dim);
        let s = plus_bias(dot * scale, bias, bh, heads, i, j, has_bias);
        let p = (s - lse_i).exp();
        let dp = dot_row(&gr, v, (bh * seq_k + j) * val_dim, val_dim);
        let ds = p * (dp - dl) * scale;
        for d in 0..head_dim {
            acc[d] += ds * k[kb + d];
        }
    }
    for d in 0..head_dim {
        dq[row * head_dim + d] = acc[d];
    }
}

/// Backward, key side: `dV_j = sum_i P_ij dO_i` and
/// `dK_j = scale * sum_i P_ij (dO_i . v_j - delta_i) q_i`, one unit per key row.
#[cube(launch, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_key<E: Float>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    bias: &Tensor<E>,
    lse: &Tensor<E>,
    grad: &Tensor<E>,
    delta: &Tensor<E>,
    dk: &mut Tensor<E>,
    dv: &mut Tensor<E>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] val_dim: usize,
    #[comptime] has_bias: bool,
    #[define(E)] _dtype: ElemType,
) {
    let row = ABSOLUTE_POS;
    if row >= k.len() / head_dim {
        terminate!();
    }
    let heads = q.shape(1);
    let seq_q = q.shape(2);
    let seq_k = k.shape(2);
    let bh = row / seq_k;
    let j = row % seq_k;
    let scale = E::cast_from(scale);

    let mut kr = Array::<E>::new(head_dim);
    load_row(&mut kr, k, row * head_dim, head_dim);
    let mut dk_acc = Array::<E>::new(head_dim);
    zero(&mut dk_acc, head_dim);
    let mut vr = Array::<E>::new(val_dim);
    load_row(&mut vr, v, row * val_dim, val_dim);
    let mut dv_acc = Array::<E>::new(val_dim);
    zero(&mut dv_acc, val_dim);
    for i in 0..seq_q {
        let qrow = bh * seq_q + i;
        let dot = dot_row(&kr, q, qrow * head_dim, head_dim);
        let s = plus_bias(dot * scale, bias, bh, heads, i, j, has_bias);
        let p = (s - lse[qrow]).exp();
        let mut dp = E::new(0.0);
        for d in 0..val_dim {
            let g = grad[qrow * val_dim + d];
            dp += g * vr[d];
            dv_acc[d] += p * g;
        }
        let ds = p * (dp - delta[qrow]) * scale;
        for d in 0..head_dim {
            dk_acc[d] += ds * q[qrow * head_dim + d];
        }
    }
    for d in 0..head_dim {
        dk[row * head_dim + d] = dk_acc[d];
    }
    for d in 0..val_dim {
        dv[row * val_dim + d] = dv_acc[d];
    }
}

/// Backward, bias side: `dBias = P (dO v^T - delta)` summed over the axes the bias is
/// broadcast along, one unit per bias element, in a fixed order (deterministic).
#[cube(launch, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_bias<E: Float>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    bias: &Tensor<E>,
    lse: &Tensor<E>,
    grad: &Tensor<E>,
    delta: &Tensor<E>,
    dbias: &mut Tensor<E>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] val_dim: usize,
    #[define(E)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= dbias.len() {
        terminate!();
    }
    let s1 = bias.shape(1);
    let s2 = bias.shape(2);
    let s3 = bias.shape(3);
    let heads = q.shape(1);
    let seq_q = q.shape(2);
    let seq_k = k.shape(2);
    // This entry's coordinates; each axis of size one covers the whole range of the operands'.
    let jb = pos % s3;
    let ib = (pos / s3) % s2;
    let hb = (pos / (s3 * s2)) % s1;
    let bb = pos / (s3 * s2 * s1);
    let (b_lo, b_hi) = span(bb, bias.shape(0), q.shape(0));
    let (h_lo, h_hi) = span(hb, s1, heads);
    let (i_lo, i_hi) = span(ib, s2, seq_q);
    let (j_lo, j_hi) = span(jb, s3, seq_k);
    let scale = E::cast_from(scale);
    let b_bias = bias[pos];

    let mut acc = E::new(0.0);
    for b in b_lo..b_hi {
        for h in h_lo..h_hi {
            let bh = b * heads + h;
            for i in i_lo..i_hi {
                let qrow = bh * seq_q + i;
                for j in j_lo..j_hi {
                    let kb = (bh * seq_k + j) * head_dim;
                    let vb = (bh * seq_k + j) * val_dim;
                    let mut dot = E::new(0.0);
                    for d in 0..head_dim {
                        dot += q[qrow * head_dim + d] * k[kb + d];
                    }
                    let p = (dot * scale + b_bias - lse[qrow]).exp();
                    let mut dp = E::new(0.0);
                    for d in 0..val_dim {
                        dp += grad[qrow * val_dim + d] * v[vb + d];
                    }
                    acc += p * (dp - delta[qrow]);
                }
            }
        }
    }
    dbias[pos] = acc;
}

/// The operands' indices one bias coordinate `x` stands for along an axis of bias size
/// `size` and operand size `full`: all of them when the bias broadcasts, else `x` alone.
#[cube]
fn span(x: usize, size: usize, full: usize) -> (usize, usize) {
    let all = size == 1;
    (select(all, 0, x), select(all, full, x + 1))
}
