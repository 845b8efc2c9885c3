//! Evaluation: the official ActivityNet detection mAP.

mod map;

pub use map::{EvalOptions, EvalReport, ThresholdSet, average_precision, evaluate, segment_iou};
