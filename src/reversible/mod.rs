//! Re2TAL reversible rewiring (Zhao et al. 2023): a chain of residual modules
//! `x_i = x_{i-1} + F_i(x_{i-1})` becomes, with the same `F_i` and parameters,
//!
//! ```text
//! y_{-1} = y_0 = x,   y_i = y_{i-2} + F_i(y_{i-1}),   output = (y_{N-1} + y_N) / 2
//! inverse: y_{i-2} = y_i - F_i(y_{i-1})
//! ```
//!
//! so block inputs can be recomputed from outputs instead of cached.
//!
//! - [`ResidualBlock`]: the one trait a residual module implements (its branches); any slice of
//!   such modules is a [`ResidualChain`].
//! - [`RevChain`]: a chain rewired, borrowing its parameters: the forward without a graph
//!   (keeping only the last two states) and the backward that walks the branches in reverse,
//!   reconstructing each input and recomputing its branch under a small local graph.
//! - [`ReversibleTape`]: the drop-in use in a model: `tape.forward(chain, x)` in the forward,
//!   `tape.backward(loss)` for the whole model's gradients, taken out per module; with a
//!   [`DriftMonitor`] it checks the reconstruction and falls back when it drifts.
//!
//! `docs/reversible.md` says why the backward is a call rather than a custom autodiff op.

mod backbone;
mod block;
mod chain;
mod checkpoint;
mod grads;
mod impls;
mod swin;
mod tape;
mod vit;

pub use backbone::RewiredBackbone;
pub use block::ResidualBlock;
pub use chain::{CheckedBackward, Drift, ResidualChain, RevChain, RevState};
pub use checkpoint::CheckpointChain;
pub use grads::merge_grads;
pub use tape::{DriftMonitor, ReversibleGrads, ReversibleTape, SegmentDrift};
