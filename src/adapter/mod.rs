//! Adapters on a frozen backbone: LoSA's long-short range adapters ([`Losa`]) and the
//! cross-attention they are built from.

mod cross_attention;
mod losa;

pub use cross_attention::{CrossAttention, CrossAttentionConfig};
pub use losa::{Losa, LosaConfig, LosaInput, RangeAdapter};
