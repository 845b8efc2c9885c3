//! Row kernels compiled for three instruction sets and picked at run time: AVX-512, AVX2 + FMA,
//! and the build's baseline. The bodies are plain loops over `f32` slices written so the
//! compiler vectorises them (reductions keep [`LANES`] partial results), which keeps them
//! portable and safe; the exponential is `fastmath`'s branch-free polynomial.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use crate::fastmath::kernels::exp1;

/// Independent partial results per reduction: one AVX-512 register of f32.
pub const LANES: usize = 16;

/// Columns [`softmax_cols`] walks down the rows at a time (four AVX-512 registers).
const COLS: usize = 64;

/// The widest instruction set this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// AVX-512 (F) with AVX2 and FMA.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// The build's baseline.
    Baseline,
}

/// The level detected once per process.
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            if avx2 && std::is_x86_feature_detected!("avx512f") {
                return Level::Avx512;
            }
            if avx2 {
                return Level::Avx2;
            }
        }
        Level::Baseline
    })
}

/// One body compiled for each [`Level`], dispatched on [`level`].
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    #[allow(dead_code)]
                    const FUSED: bool = true;
                    $body
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    #[allow(dead_code)]
                    const FUSED: bool = true;
                    $body
                }
                match level() {
                    // SAFETY: the CPU has the features each function was compiled for.
                    Level::Avx512 => return unsafe { avx512($($arg),*) },
                    Level::Avx2 => return unsafe { avx2($($arg),*) },
                    Level::Baseline => {}
                }
            }
            #[allow(dead_code)]
            const FUSED: bool = false;
            $body
        }
    };
}

#[inline(always)]
fn max2(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

#[inline(always)]
fn lanes_sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            acc[j] += c[j];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

#[inline(always)]
fn lanes_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..LANES {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

multiversion! {
    /// Softmax down the columns of `z` (`[rows, t]` row-major, `t = max.len()`: column `i`
    /// holds one query's scores against every key), in place: `p = exp(z - m)` with `m` the
    /// column's maximum, written to `max`, and the column's sum of `p` to `sum`. The vectors
    /// run along the rows, across queries: no reduction inside a register.
    pub fn softmax_cols(z: &mut [f32], max: &mut [f32], sum: &mut [f32]) {
        let t = max.len();
        // Column blocks of `COLS` queries walked down the rows, their maxima and sums held in
        // registers (a loop over whole rows reloaded and stored them for every row).
        let mut c0 = 0;
        while c0 + COLS <= t {
            let (mut m, mut s) = ([f32::NEG_INFINITY; COLS], [0.0f32; COLS]);
            for row in z.chunks_exact(t) {
                let row: &[f32; COLS] = row[c0..c0 + COLS].try_into().expect("COLS wide");
                for j in 0..COLS {
                    m[j] = max2(m[j], row[j]);
                }
            }
            for row in z.chunks_exact_mut(t) {
                let row: &mut [f32; COLS] = (&mut row[c0..c0 + COLS]).try_into().expect("COLS wide");
                for j in 0..COLS {
                    row[j] = exp1::<FUSED>(row[j] - m[j]);
                    s[j] += row[j];
                }
            }
            max[c0..c0 + COLS].copy_from_slice(&m);
            sum[c0..c0 + COLS].copy_from_slice(&s);
            c0 += COLS;
        }
        // The last columns (fewer than `COLS`).
        let (max, sum) = (&mut max[c0..], &mut sum[c0..]);
        max.fill(f32::NEG_INFINITY);
        for row in z.chunks_exact(t.max(1)) {
            max.iter_mut().zip(&row[c0..]).for_each(|(m, &x)| *m = max2(*m, x));
        }
        sum.fill(0.0);
        for row in z.chunks_exact_mut(t.max(1)) {
            row[c0..].iter_mut().zip(max.iter()).zip(sum.iter_mut()).for_each(|((x, &m), s)| {
                *x = exp1::<FUSED>(*x - m);
                *s += *x;
            });
        }
    }
}

multiversion! {
    /// Probabilities down the columns of `z` (`[rows, t]`, `t = lse.len()`) from each column's
    /// log-sum-exp, in place: `p = exp(z - lse)`.
    pub fn probs_cols(z: &mut [f32], lse: &[f32]) {
        for row in z.chunks_exact_mut(lse.len().max(1)) {
            row.iter_mut().zip(lse).for_each(|(x, &l)| *x = exp1::<FUSED>(*x - l));
        }
    }
}

multiversion! {
    /// The softmax backward down the columns (`[rows, t]`, `t = delta.len()`), in place in
    /// `dp`: `ds = p (dp - delta)`, one `delta` per column.
    pub fn dsoftmax_cols(p: &[f32], dp: &mut [f32], delta: &[f32]) {
        let t = delta.len().max(1);
        for (dp, p) in dp.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
            dp.iter_mut().zip(p).zip(delta).for_each(|((d, &p), &delta)| *d = p * (*d - delta));
        }
    }
}

multiversion! {
    /// `sum a b`.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        lanes_dot(a, b)
    }
}

multiversion! {
    /// `x *= a`.
    pub fn scale(x: &mut [f32], a: f32) {
        x.iter_mut().for_each(|x| *x *= a);
    }
}

multiversion! {
    /// `acc += x`.
    pub fn add(acc: &mut [f32], x: &[f32]) {
        acc.iter_mut().zip(x).for_each(|(a, &x)| *a += x);
    }
}

multiversion! {
    /// Layer norm of one row into `out`: `(x - mean) rstd gamma + beta`; returns
    /// `(mean, rstd)`, `rstd = 1 / sqrt(var + epsilon)` (variance about the mean, two passes).
    pub fn layer_norm_row(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f32, out: &mut [MaybeUninit<f32>]) -> (f32, f32) {
        let n = x.len() as f32;
        let mean = lanes_sum(x) / n;
        let mut acc = [0.0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let tail: f32 = chunks.remainder().iter().map(|&v| (v - mean) * (v - mean)).sum();
        for c in chunks {
            for j in 0..LANES {
                acc[j] += (c[j] - mean) * (c[j] - mean);
            }
        }
        let var = (acc.iter().sum::<f32>() + tail) / n;
        let rstd = 1.0 / (var + epsilon).sqrt();
        for (((o, &x), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
            o.write((x - mean) * rstd * g + b);
        }
        (mean, rstd)
    }
}

/// What layer norm's backward reads for one row.
#[derive(Clone, Copy, Debug)]
pub struct NormRow<'a> {
    /// The input row.
    pub x: &'a [f32],
    /// The output's gradient.
    pub g: &'a [f32],
    /// The scale.
    pub gamma: &'a [f32],
    /// The row's mean.
    pub mean: f32,
    /// The row's reciprocal standard deviation.
    pub rstd: f32,
}

multiversion! {
    /// Layer norm's backward for one row: `dx = rstd (gy - mean(gy) - x_hat mean(gy x_hat))`
    /// with `gy = g gamma`, `x_hat = (x - mean) rstd`; adds `g x_hat` to `dgamma` and `g` to
    /// `dbeta`.
    pub fn layer_norm_row_backward(
        row: NormRow,
        dx: &mut [MaybeUninit<f32>],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
        let NormRow { x, g, gamma, mean, rstd } = row;
        let n = x.len();
        let (mut s1, mut s2) = ([0.0f32; LANES], [0.0f32; LANES]);
        let mut at = 0;
        while at + LANES <= n {
            for j in 0..LANES {
                let i = at + j;
                let xhat = (x[i] - mean) * rstd;
                let gy = g[i] * gamma[i];
                s1[j] += gy;
                s2[j] += gy * xhat;
                dgamma[i] += g[i] * xhat;
                dbeta[i] += g[i];
            }
            at += LANES;
        }
        let (mut t1, mut t2) = (0.0f32, 0.0f32);
        for i in at..n {
            let xhat = (x[i] - mean) * rstd;
            let gy = g[i] * gamma[i];
            t1 += gy;
            t2 += gy * xhat;
            dgamma[i] += g[i] * xhat;
            dbeta[i] += g[i];
        }
        let m1 = (s1.iter().sum::<f32>() + t1) / n as f32;
        let m2 = (s2.iter().sum::<f32>() + t2) / n as f32;
        for i in 0..n {
            let xhat = (x[i] - mean) * rstd;
            dx[i].write(rstd * (g[i] * gamma[i] - m1 - xhat * m2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_kernels_match_scalar_formulas() {
        // 37 keys (rows) by 21 queries (columns): each column is one query's softmax.
        let (rows, t) = (37, 21);
        let z: Vec<f32> = (0..rows * t)
            .map(|i| (i as f32 * 0.37).sin() * 5.0)
            .collect();
        let mut p = z.clone();
        let (mut max, mut sum) = (vec![0.0; t], vec![0.0; t]);
        softmax_cols(&mut p, &mut max, &mut sum);
        let lse: Vec<f32> = max.iter().zip(&sum).map(|(m, l)| m + l.ln()).collect();
        let mut q = z.clone();
        probs_cols(&mut q, &lse);
        let delta: Vec<f32> = (0..t).map(|i| i as f32 * 0.01).collect();
        let dp: Vec<f32> = z.iter().map(|x| x.cos()).collect();
        let mut ds = dp.clone();
        dsoftmax_cols(&q, &mut ds, &delta);
        for i in 0..t {
            let col: Vec<f64> = (0..rows).map(|j| z[j * t + i] as f64).collect();
            let m64 = col.iter().cloned().fold(f64::MIN, f64::max);
            assert_eq!(max[i] as f64, m64);
            let l64: f64 = col.iter().map(|z| (z - m64).exp()).sum();
            assert!((sum[i] as f64 - l64).abs() <= 1e-6 * l64);
            for (j, &zj) in col.iter().enumerate() {
                let at = j * t + i;
                assert!((p[at] as f64 - (zj - m64).exp()).abs() <= 1e-6);
                assert!((q[at] as f64 - (zj - m64).exp() / l64).abs() <= 1e-6);
                assert!((ds[at] - q[at] * (dp[at] - delta[i])).abs() <= 1e-7);
            }
        }
        let (a, b) = (&z[..40], &dp[..40]);
        let want: f64 = a.iter().zip(b).map(|(a, b)| (a * b) as f64).sum();
        assert!((dot(a, b) as f64 - want).abs() < 1e-4);
    }
}

/// The per-element scalars of one AdamW update (`crate::optim`), as f32.
#[derive(Clone, Copy, Debug)]
pub struct AdamWRow {
    /// `beta_1`, `1 - beta_1`.
    pub b1: (f32, f32),
    /// `beta_2`, `1 - beta_2`.
    pub b2: (f32, f32),
    /// The bias corrections `1 - beta^t`.
    pub corrections: (f32, f32),
    /// Added to the corrected second moment's square root.
    pub epsilon: f32,
    /// The decay factor (`None`: no decay).
    pub keep: Option<f32>,
    /// The learning rate.
    pub lr: f32,
}

multiversion! {
    /// AdamW's update in place, element by element in the order of Burn's tensor operations
    /// (no fused multiply-adds: the results are Burn's bit for bit).
    pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWRow) {
        let (c1, c2) = s.corrections;
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = *m * s.b1.0 + g * s.b1.1;
            *v = *v * s.b2.0 + (g * g) * s.b2.1;
            let delta = (*m / c1) / ((*v / c2).sqrt() + s.epsilon);
            let kept = match s.keep {
                Some(k) => *p * k,
                None => *p,
            };
            *p = kept - delta * s.lr;
        }
    }
}
