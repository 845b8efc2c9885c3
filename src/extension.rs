//! Pieces shared by the crate's backend extensions (attention, layer norm, mixed-precision
//! linear): an optional tensor operand that crosses the dispatch boundary, and a dtype cast on
//! backend primitives.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, ExtensionType, TensorMetadata};

/// An optional additive operand: an attention's score bias, a linear layer's bias (an
/// `Option` that crosses the dispatch boundary, which plain options do not).
#[derive(ExtensionType, Clone, Debug)]
#[extension_type(fusion: cfg(any(feature = "wgpu", feature = "cuda")))]
pub enum Bias<B: Backend> {
    /// No bias.
    None,
    /// Added to the result.
    Additive(FloatTensor<B>),
}

impl<B: Backend> Bias<B> {
    /// The bias as an option.
    pub fn into_option(self) -> Option<FloatTensor<B>> {
        match self {
            Bias::None => None,
            Bias::Additive(b) => Some(b),
        }
    }
}

impl<B: Backend> From<Option<FloatTensor<B>>> for Bias<B> {
    fn from(bias: Option<FloatTensor<B>>) -> Self {
        bias.map_or(Bias::None, Bias::Additive)
    }
}

/// `t` as `dtype`, unchanged when it already is.
pub(crate) fn to<B: Backend>(t: FloatTensor<B>, dtype: DType) -> FloatTensor<B> {
    if t.dtype() == dtype {
        t
    } else {
        B::float_cast(t, dtype.into())
    }
}
