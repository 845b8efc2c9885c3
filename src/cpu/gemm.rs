//! `C (+)= beta A B` on strided `f32` matrices through the `gemm` crate's single-threaded
//! microkernels (the callers run many of them at once on the thread pool).

use std::mem::MaybeUninit;

/// A strided matrix operand: element `(i, j)` at `ptr + i rs + j cs`.
#[derive(Clone, Copy)]
pub struct Mat {
    /// First element.
    pub ptr: *const f32,
    /// Row stride (elements).
    pub rs: isize,
    /// Column stride (elements).
    pub cs: isize,
}

// SAFETY: a `Mat` only reads; the functions that dereference it are `unsafe` and their callers
// vouch that the data is valid, and not written, while they run (tasks of one product share it).
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    /// A row-major matrix with `ld` elements between rows.
    pub fn rows(data: &[f32], ld: usize) -> Mat {
        Mat {
            ptr: data.as_ptr(),
            rs: ld as isize,
            cs: 1,
        }
    }

    /// Its transpose (no copy).
    pub fn t(self) -> Mat {
        Mat {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `dst = beta a b` (`accumulate`: `dst += beta a b`) with `a` `[m, k]`, `b` `[k, n]` and `dst`
/// `[m, n]` row-major with `ld` elements between rows: the `gemm` crate's call on a
/// destination of `len` elements (checked to hold the product), read first when `accumulate`.
///
/// # Safety
/// `a` and `b` must address `[m, k]` and `[k, n]` valid elements; `dst` must be valid for
/// `len` elements (initialised when `accumulate`).
pub unsafe fn gemm_raw(
    (m, n, k): (usize, usize, usize),
    (dst, len): (*mut f32, usize),
    ld: usize,
    accumulate: bool,
    (a, b, beta): (Mat, Mat, f32),
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(len >= (m - 1) * ld + n, "gemm: destination too small");
    // SAFETY: the destination is checked above; the operands are the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ld as isize,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// A vector of `n` uninitialised floats, for outputs a kernel writes in full (a zeroed one
/// costs a pass over memory: calloc clears reused heap memory).
pub fn uninit(n: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit` needs no initialisation; the capacity is `n`.
    unsafe { v.set_len(n) };
    v
}

/// The vector as floats once every element has been written.
///
/// # Safety
/// Every element must be initialised.
pub unsafe fn assume_init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same allocation, layout and length; the elements are initialised (contract).
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// The slice as floats once every element has been written.
///
/// # Safety
/// Every element must be initialised.
pub unsafe fn assume_init_mut(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has f32's layout; the elements are initialised (contract).
    unsafe { &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32]) }
}
