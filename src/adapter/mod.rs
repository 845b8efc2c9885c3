//! Adapters on a frozen backbone: LoSA's long-short range adapters ([`losa`]).

pub mod cross_attention;
pub mod losa;

pub use losa::{Losa, LosaConfig, LosaInput};
