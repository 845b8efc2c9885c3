//! Re2TAL reversible rewiring (Zhao et al. 2023): a chain of residual modules
//! `x_i = x_{i-1} + F_i(x_{i-1})` becomes, with the same `F_i` and parameters,
//!
//! ```text
//! y_{-1} = y_0 = x,   y_i = y_{i-2} + F_i(y_{i-1}),   output = (y_{N-1} + y_N) / 2
//! inverse: y_{i-2} = y_i - F_i(y_{i-1})
//! ```
//!
//! so block inputs can be recomputed from outputs instead of cached. [`RevChain`] runs the
//! forward without recording a graph (keeping only the last two states) and a manual backward
//! that walks the branches in reverse, reconstructing each input and recomputing its branch under
//! a small local graph. See `docs/reversible.md` for why the backward is a documented call rather
//! than a custom autodiff op.

mod backbone;
mod chain;
mod grads;
mod impls;
mod swin;
mod vit;

pub use crate::backbone::residual::CoupledBlock;
pub use backbone::ReversibleStep;
pub use chain::{CheckedBackward, Drift, ResidualChain, RevChain, RevState};
pub use grads::merge_grads;
pub use swin::ReversibleSwinStep;
pub use vit::ReversibleVitStep;
