//! Kernels of the crate's own for the CubeCL backends (wgpu, CUDA): the flash-attention
//! forward (with the row log-sum-exp the backward needs) and its backward, biases and their
//! gradients included, behind [`crate::attention::FusedAttention`].

mod flash;
mod kernels;

pub use flash::{FlashGrads, FlashKernels};
