//! `C (+)= beta A B` through the `gemm` crate's register microkernels called directly, for
//! operands they read in place: `B` contiguous along its columns (each row of `B` is one run of
//! floats), `A` at any strides. The `gemm` crate's driver packs both operands into its panel
//! layouts on every call; attention's products are many small calls whose inner dimension is
//! a head's width (64), where that packing cost about a quarter of the time (a query tile's
//! scores against 1568 keys: 111-125 GFLOPS on one Xeon core through the driver, 154-156
//! here; its output against the values: 142-145 and 158-174).
//!
//! The microkernels compute an `MR x NR` block of a column-major product: `MR` (a multiple of
//! the SIMD width) rows read as vectors from the left operand, `NR` (6) columns broadcast from
//! the right one. For a row-major `C = A B` that is `C^T = B^T A^T`: `MR` columns of `C` from
//! `B`'s rows, `NR` rows of `C` from `A`'s, which is why `B` must be contiguous along its
//! columns and the number of columns a multiple of the SIMD width; other products go through
//! [`gemm_raw`].

use super::gemm::{Mat, gemm_raw};
use super::simd::{Level, level};

/// The microkernels' signature (`gemm-common`'s `MicroKernelFn<f32>`): `m`, `n`, `k`, `dst`,
/// `lhs`, `rhs`, `dst_cs`, `dst_rs`, `lhs_cs`, `rhs_rs`, `rhs_cs`, `alpha`, `beta`,
/// `alpha_status` (0: `dst = beta acc`, 1: `dst += beta acc`), three conjugation flags, and the
/// next left panel (a prefetch hint).
type Kernel = unsafe fn(
    usize,
    usize,
    usize,
    *mut f32,
    *const f32,
    *const f32,
    isize,
    isize,
    isize,
    isize,
    isize,
    f32,
    f32,
    u8,
    bool,
    bool,
    bool,
    *const f32,
);

/// Columns of the right operand per microkernel call.
const NR: usize = 6;

/// The microkernels of one instruction set: `table[r][c]` computes `(r + 1) lanes` rows by
/// `c + 1` columns.
struct Kernels {
    table: &'static [[Kernel; NR]],
    lanes: usize,
}

/// The microkernels compiled for `level`, `None` off x86-64 or below AVX2 + FMA. The caller
/// vouches that the CPU runs `level` ([`level`] does).
fn kernels(level: Level) -> Option<Kernels> {
    #[cfg(target_arch = "x86_64")]
    {
        use gemm_f32::microkernel::{avx512f, fma};
        match level {
            Level::Avx512 => Some(Kernels {
                table: &avx512f::f32::UKR,
                lanes: 16,
            }),
            Level::Avx2 => Some(Kernels {
                table: &fma::f32::UKR,
                lanes: 8,
            }),
            Level::Baseline => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = level;
        None
    }
}

/// Depth of one pass of the microkernels (the destination block is read and written once per
/// pass).
const KC: usize = 512;

/// `dst = beta a b` (`accumulate`: `dst += beta a b`), as [`gemm_raw`] (same arguments and
/// contract), through the microkernels when `b` is contiguous along its columns and `n` is a
/// multiple of the SIMD width, through [`gemm_raw`] otherwise.
///
/// # Safety
/// As [`gemm_raw`].
pub unsafe fn gemm_direct(
    mnk: (usize, usize, usize),
    dst: (*mut f32, usize),
    ld: usize,
    accumulate: bool,
    ab: (Mat, Mat, f32),
) {
    // SAFETY: the caller's contract; `level()` is what this CPU runs.
    unsafe { direct_with(kernels(level()), mnk, dst, ld, accumulate, ab) }
}

/// [`gemm_direct`] on the given microkernels.
///
/// # Safety
/// As [`gemm_raw`]; the CPU must run the microkernels' instruction set.
unsafe fn direct_with(
    kernels: Option<Kernels>,
    (m, n, k): (usize, usize, usize),
    (dst, len): (*mut f32, usize),
    ld: usize,
    accumulate: bool,
    (a, b, beta): (Mat, Mat, f32),
) {
    let Some(kernels) = kernels.filter(|kr| b.cs == 1 && n % kr.lanes == 0 && k > 0) else {
        // SAFETY: the caller's contract, unchanged.
        return unsafe { gemm_raw((m, n, k), (dst, len), ld, accumulate, (a, b, beta)) };
    };
    if m == 0 || n == 0 {
        return;
    }
    assert!(len >= (m - 1) * ld + n, "gemm: destination too small");
    let panel = kernels.table.len() * kernels.lanes;
    for (pass, p0) in (0..k).step_by(KC).enumerate() {
        let kc = (k - p0).min(KC);
        let add = accumulate || pass > 0;
        for j0 in (0..n).step_by(panel) {
            let cols = (n - j0).min(panel);
            // SAFETY: `b`'s rows `p0..p0 + kc`, columns `j0..j0 + cols` are inside it (the
            // caller's `[k, n]` contract).
            let lhs = b.ptr.wrapping_offset(p0 as isize * b.rs + j0 as isize);
            for i0 in (0..m).step_by(NR) {
                let rows = (m - i0).min(NR);
                let rhs = a
                    .ptr
                    .wrapping_offset(i0 as isize * a.rs + p0 as isize * a.cs);
                let kernel = kernels.table[cols / kernels.lanes - 1][rows - 1];
                // SAFETY: the kernel reads `cols` (a multiple of the lanes) contiguous floats
                // of `b` per step of depth, `rows` strided floats of `a`, and writes `rows`
                // runs of `cols` floats of `dst` from `(i0, j0)`: all inside the operands and
                // the destination (checked above).
                unsafe {
                    kernel(
                        cols,
                        rows,
                        kc,
                        dst.add(i0 * ld + j0),
                        lhs,
                        rhs,
                        ld as isize,
                        1,
                        b.rs,
                        a.cs,
                        a.rs,
                        if add { 1.0 } else { 0.0 },
                        beta,
                        u8::from(add),
                        false,
                        false,
                        false,
                        lhs,
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        (ars, acs): (usize, usize),
        b: &[f32],
        brs: usize,
    ) -> Vec<f32> {
        (0..m * n)
            .map(|x| {
                let (i, j) = (x / n, x % n);
                (0..k).map(|p| a[i * ars + p * acs] * b[p * brs + j]).sum()
            })
            .collect()
    }

    /// Each instruction set this CPU runs, widest first (the baseline: the fallback).
    fn levels() -> Vec<Level> {
        let all = [Level::Avx512, Level::Avx2, Level::Baseline];
        let from = all.iter().position(|&l| l == level()).unwrap_or(2);
        all[from..].to_vec()
    }

    #[test]
    fn direct_products_equal_the_naive_one() {
        // Widths that take the microkernels (multiples of 16 and 8) and ones that do not;
        // depths across a pass boundary; `a` row-major and transposed.
        for &(m, n, k) in &[
            (7, 64, 64),
            (13, 48, 1100),
            (64, 32, 5),
            (6, 16, 1),
            (5, 20, 9),
            (9, 64, 0),
        ] {
            for a_t in [false, true] {
                let a: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                    .collect();
                // `b` with a longer row than `n` (a view into a wider matrix).
                let brs = n + 3;
                let b: Vec<f32> = (0..k * brs)
                    .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                    .collect();
                let (ars, acs) = if a_t { (1, m) } else { (k, 1) };
                let am = Mat {
                    ptr: a.as_ptr(),
                    rs: ars as isize,
                    cs: acs as isize,
                };
                let bm = Mat::rows(&b, brs);
                let want = naive((m, n, k), &a, (ars, acs), &b, brs);
                let ld = n + 2;
                let runs = levels().into_iter().flat_map(|l| [(l, false), (l, true)]);
                for (at, accumulate) in runs {
                    let mut c = vec![0.5f32; m * ld];
                    // SAFETY: the operands are `[m, k]` and `[k, n]` views of the vectors; the
                    // CPU runs the level.
                    unsafe {
                        direct_with(
                            kernels(at),
                            (m, n, k),
                            (c.as_mut_ptr(), c.len()),
                            ld,
                            accumulate,
                            (am, bm, 0.5),
                        )
                    };
                    for i in 0..m {
                        for j in 0..n {
                            let w = 0.5 * want[i * n + j] + if accumulate { 0.5 } else { 0.0 };
                            let got = c[i * ld + j];
                            assert!(
                                (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                                "{at:?} {m}x{n}x{k} a_t {a_t} acc {accumulate} at ({i}, {j}): {got} vs {w}"
                            );
                        }
                        // Past the `n` columns of each row nothing is written.
                        assert!(c[i * ld + n..(i + 1) * ld].iter().all(|&x| x == 0.5));
                    }
                }
            }
        }
    }
}
