//! The TAL head's side of the pipeline: the feature pyramid's points, label assignment, losses,
//! and post-processing of detections (ActionFormer's conventions).

pub mod assign;
pub mod decode;
pub mod head;
pub mod loss;
pub mod points;
pub mod postprocess;
