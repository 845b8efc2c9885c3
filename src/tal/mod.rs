//! The TAL head's side of the pipeline: post-processing of raw detections.

pub mod postprocess;
