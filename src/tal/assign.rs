//! Label assignment (ActionFormer's `label_points_single_video`): each point takes the shortest
//! ground-truth segment whose centre region contains it and whose regression distance falls in
//! the point's level range.

use burn::config::Config;

use super::points::Point;

/// Label assignment settings (defaults: ActionFormer).
#[derive(Config, Debug)]
pub struct AssignConfig {
    /// Centre sampling: a point is positive only within `radius * stride` of a segment's centre
    /// (and inside the segment). Zero or negative: anywhere inside the segment.
    #[config(default = 1.5)]
    pub center_radius: f64,
}

/// A ground-truth segment in base-grid units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GtSegment {
    /// Start.
    pub start: f64,
    /// End.
    pub end: f64,
    /// Class index.
    pub label: usize,
}

/// Targets for every point.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    /// `[points, classes]` row-major, 1 for each class of the chosen (shortest) segments.
    pub cls: Vec<f32>,
    /// `[points, 2]` distances to the chosen segment's start and end, divided by the stride
    /// (meaningful for positive points only).
    pub reg: Vec<f32>,
    /// Whether each point is positive (has a segment).
    pub positive: Vec<bool>,
}

/// Assign `gts` to `points` over `num_classes` classes.
pub fn assign(
    points: &[Point],
    gts: &[GtSegment],
    num_classes: usize,
    cfg: &AssignConfig,
) -> Targets {
    let n = points.len();
    let mut cls = vec![0f32; n * num_classes];
    let mut reg = vec![0f32; n * 2];
    let mut positive = vec![false; n];
    if gts.is_empty() {
        return Targets { cls, reg, positive };
    }
    for (i, p) in points.iter().enumerate() {
        // Length of every segment this point may regress to (infinite when it may not).
        let lens: Vec<f64> = gts
            .iter()
            .map(|g| {
                let (left, right) = (p.t - g.start, g.end - p.t);
                let inside = if cfg.center_radius > 0.0 {
                    let c = 0.5 * (g.start + g.end);
                    let lo = (c - p.stride * cfg.center_radius).max(g.start);
                    let hi = (c + p.stride * cfg.center_radius).min(g.end);
                    (p.t - lo).min(hi - p.t) > 0.0
                } else {
                    left.min(right) > 0.0
                };
                let dist = left.max(right);
                let in_range = dist >= p.range_lo && dist <= p.range_hi;
                if inside && in_range {
                    g.end - g.start
                } else {
                    f64::INFINITY
                }
            })
            .collect();
        let (best, min_len) =
            lens.iter().enumerate().fold(
                (0, f64::INFINITY),
                |acc, (j, &l)| if l < acc.1 { (j, l) } else { acc },
            );
        if !min_len.is_finite() {
            continue;
        }
        positive[i] = true;
        // Every segment as short as the shortest (within 1e-3) lends its class.
        for (g, &l) in gts.iter().zip(&lens) {
            if l <= min_len + 1e-3 {
                cls[i * num_classes + g.label] = 1.0;
            }
        }
        let g = gts[best];
        reg[i * 2] = ((p.t - g.start) / p.stride) as f32;
        reg[i * 2 + 1] = ((g.end - p.t) / p.stride) as f32;
    }
    Targets { cls, reg, positive }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tal::points::PyramidConfig;

    fn seg(start: f64, end: f64, label: usize) -> GtSegment {
        GtSegment { start, end, label }
    }

    #[test]
    fn centre_sampling_and_regression_ranges() {
        // One segment [2, 8] (centre 5) on 16 positions, level 0 only (stride 1, range 0..4)
        // and level 1 (stride 2, range 4..8).
        let pyr = PyramidConfig::new()
            .with_strides(vec![1, 2])
            .with_regression_ranges(vec![(0.0, 4.0), (4.0, 8.0)]);
        let pts = pyr.points(16);
        let t = assign(&pts, &[seg(2.0, 8.0, 1)], 2, &AssignConfig::new());
        // Level 0: centre region (3.5, 6.5) -> t = 4, 5, 6; max distance there: 4, 3, 4 -> all
        // within [0, 4].
        let pos0: Vec<usize> = (0..16).filter(|&i| t.positive[i]).collect();
        assert_eq!(pos0, vec![4, 5, 6]);
        // t = 5: distances (3, 3) / stride 1.
        assert_eq!(&t.reg[10..12], &[3.0, 3.0]);
        assert_eq!(&t.cls[10..12], &[0.0, 1.0]);
        // Level 1 (t = 0, 2, ..., 14): centre region (2, 8) -> t = 4, 6; distances max(2, 4) = 4
        // and max(4, 2) = 4, in [4, 8].
        let pos1: Vec<f64> = (16..24)
            .filter(|&i| t.positive[i])
            .map(|i| pts[i].t)
            .collect();
        assert_eq!(pos1, vec![4.0, 6.0]);
        let i = 16 + 2; // t = 4
        assert_eq!(&t.reg[i * 2..i * 2 + 2], &[1.0, 2.0]);
    }

    #[test]
    fn shortest_segment_wins_and_ties_share_classes() {
        let pyr = PyramidConfig::new()
            .with_strides(vec![1])
            .with_regression_ranges(vec![(0.0, 100.0)]);
        let pts = pyr.points(20);
        let cfg = AssignConfig::new().with_center_radius(0.0);
        // Long [0, 20] class 0, short [8, 12] class 1: at t = 10 the short one wins.
        let t = assign(&pts, &[seg(0.0, 20.0, 0), seg(8.0, 12.0, 1)], 2, &cfg);
        assert_eq!(&t.cls[20..22], &[0.0, 1.0]);
        assert_eq!(&t.reg[20..22], &[2.0, 2.0]);
        // t = 3: only the long one.
        assert_eq!(&t.cls[6..8], &[1.0, 0.0]);
        // Two equal segments with different classes: both classes.
        let t = assign(&pts, &[seg(5.0, 15.0, 0), seg(5.0, 15.0, 1)], 2, &cfg);
        assert_eq!(&t.cls[20..22], &[1.0, 1.0]);
        // Points on a boundary are not inside; no GT -> no positive.
        assert!(!t.positive[5] && !t.positive[15]);
        assert!(assign(&pts, &[], 2, &cfg).positive.iter().all(|p| !p));
    }
}
