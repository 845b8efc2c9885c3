//! From head outputs to detections: each valid point and class gives a segment
//! `[t - left * stride, t + right * stride]` (base-grid units) scored by the class probability;
//! then post-processing and conversion to seconds.

use burn::tensor::activation::sigmoid;

use super::head::HeadOutput;
use super::points::Point;
use super::postprocess::{GridToTime, PostProcessConfig, Segment, postprocess, threshold_topk};
use crate::error::{Error, Result};

/// Detections of video `b` of the batch, in seconds, after post-processing.
///
/// `points` are the head's points ([`super::points::PyramidConfig::points`] of the padded
/// length), `grid` maps base-grid positions to seconds, `duration` clips the segments.
pub fn decode_video(
    out: &HeadOutput,
    b: usize,
    points: &[Point],
    grid: &GridToTime,
    duration: f64,
    cfg: &PostProcessConfig,
) -> Result<Vec<Segment>> {
    let [batch, p, c] = out.cls_logits.dims();
    if b >= batch || p != points.len() {
        return Err(Error::Config(format!(
            "decode: video {b} of a batch of {batch}, {p} outputs for {} points",
            points.len()
        )));
    }
    let to_vec = |t: burn::tensor::Tensor<2>| -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_to_vec()
            .expect("converted to f32")
    };
    let probs = to_vec(sigmoid(
        out.cls_logits.clone().narrow(0, b, 1).reshape([p, c]),
    ));
    let offs = to_vec(out.offsets.clone().narrow(0, b, 1).reshape([p, 2]));
    let mask = super::bool_values(out.mask.clone().narrow(0, b, 1).reshape([p]));
    // ActionFormer's candidates: per pyramid level, the scores above the threshold, the
    // `pre_nms_topk` best, then segments longer than `duration_threshold`.
    let levels = points.iter().map(|pt| pt.level + 1).max().unwrap_or(0);
    let mut per_level = vec![Vec::new(); levels];
    for (i, pt) in points.iter().enumerate() {
        if !mask[i] {
            continue;
        }
        for k in 0..c {
            let score = probs[i * c + k] as f64;
            if score > cfg.score_threshold {
                per_level[pt.level].push(Segment {
                    start: pt.t - offs[i * 2] as f64 * pt.stride,
                    end: pt.t + offs[i * 2 + 1] as f64 * pt.stride,
                    score,
                    label: k,
                });
            }
        }
    }
    let raw = per_level
        .into_iter()
        .flat_map(|l| threshold_topk(l, cfg.score_threshold, cfg.pre_nms_topk))
        .filter(|d| d.end - d.start > cfg.duration_threshold)
        .collect();
    Ok(postprocess(raw, cfg)
        .into_iter()
        .map(|d| grid.to_seconds(d, duration))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tal::points::PyramidConfig;
    use burn::tensor::{Bool, Tensor, TensorData};

    #[test]
    fn decodes_a_confident_point_into_seconds() {
        let device = crate::backend::cpu_device();
        let pyr = PyramidConfig::new()
            .with_strides(vec![1, 2])
            .with_regression_ranges(vec![(0.0, 4.0), (4.0, 8.0)]);
        let points = pyr.points(4); // t = 0,1,2,3 (stride 1), 0,2 (stride 2)
        let p = points.len();
        // Point 4 (t = 0, stride 2) of class 1 is confident with offsets (0, 1.5) -> [0, 3].
        let mut logits = vec![-10f32; p * 2];
        logits[4 * 2 + 1] = 10.0;
        let mut offs = vec![0f32; p * 2];
        offs[4 * 2 + 1] = 1.5;
        let out = HeadOutput {
            cls_logits: Tensor::from_data(TensorData::new(logits, [1, p, 2]), &device),
            offsets: Tensor::from_data(TensorData::new(offs, [1, p, 2]), &device),
            mask: Tensor::<2, Bool>::from_data(TensorData::new(vec![true; p], [1, p]), &device),
        };
        // Snippet stride 4 frames, clips of 8 frames, 8 fps: grid x -> (4x + 4) / 8 s.
        let grid = GridToTime {
            stride_frames: 4.0,
            span_frames: 8.0,
            fps: 8.0,
        };
        let dets = decode_video(&out, 0, &points, &grid, 100.0, &PostProcessConfig::new()).unwrap();
        assert_eq!(dets.len(), 1);
        let d = dets[0];
        assert_eq!((d.label, d.start, d.end), (1, 0.5, 2.0));
        assert!(d.score > 0.99);
        assert!(decode_video(&out, 1, &points, &grid, 100.0, &PostProcessConfig::new()).is_err());
    }
}
