//! Evaluation: the official ActivityNet detection mAP, and PNG timelines of detections.

mod map;
mod timeline;

pub use map::{EvalOptions, EvalReport, ThresholdSet, average_precision, evaluate, segment_iou};
pub use timeline::{GtInterval, write_timeline};
