//! Fused CPU kernels on plain `f32` slices: the attention forward and FlashAttention-2 backward,
//! layer norm's forward statistics and backward, and matrix products threaded by output blocks
//! (the linear layers'), each one pass per tile or row with its
//! element work in SIMD registers (AVX-512 where present, AVX2 + FMA otherwise, picked at run
//! time) and the tile products in the `gemm` crate's microkernels (the ones Flex's matmul runs),
//! spread over the rayon pool (the one Flex runs on).
//!
//! Nothing here knows about tensors: `attention.rs`, `norm.rs` and `precision/linear.rs` route
//! f32 Flex tensors to
//! these kernels (`flex.rs`) and keep the backend-op versions for every other backend and
//! precision, so the kernels are checked against those and against the naive formulas.

pub mod attention;
pub(crate) mod flex;
pub(crate) mod gemm;
pub mod layer_norm;
pub mod matmul;
pub mod patches;
pub(crate) mod simd;
pub(crate) mod ukernel;
