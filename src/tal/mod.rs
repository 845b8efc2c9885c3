//! The TAL head's side of the pipeline: the feature pyramid's points, label assignment, losses,
//! and post-processing of detections (ActionFormer's conventions).

pub mod assign;
pub mod conv1d;
pub mod decode;
pub mod head;
pub mod local_attention;
pub mod loss;
pub mod points;
pub mod postprocess;

use burn::tensor::{Bool, Tensor};

/// A bool tensor's values on the host, on every backend (wgpu and cuda store bools as `u32`,
/// which `TensorData::to_vec::<bool>` refuses).
pub(crate) fn bool_values<const D: usize>(t: Tensor<D, Bool>) -> Vec<bool> {
    t.int()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("int data converted to i64")
        .into_iter()
        .map(|v| v != 0)
        .collect()
}
