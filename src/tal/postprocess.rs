//! Post-processing of 1-D detections: score threshold, top-k, hard NMS and Gaussian soft-NMS
//! (per class or class-agnostic), conversion from the head's feature grid to seconds, and
//! clipping to the video's duration. Defaults follow ActionFormer's THUMOS-14 setting.

use burn::config::Config;

/// A detection on a 1-D time axis, with its class index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    /// Start (feature-grid units or seconds, depending on the stage).
    pub start: f64,
    /// End.
    pub end: f64,
    /// Confidence.
    pub score: f64,
    /// Class index.
    pub label: usize,
}

impl Segment {
    /// Length, never negative.
    pub fn length(&self) -> f64 {
        (self.end - self.start).max(0.0)
    }

    /// Temporal IoU with `other` (0 when both are empty).
    pub fn iou(&self, other: &Segment) -> f64 {
        let inter = (self.end.min(other.end) - self.start.max(other.start)).max(0.0);
        let union = self.length() + other.length() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// How overlapping detections are suppressed.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum NmsMethod {
    /// Drop every detection whose IoU with a kept, higher-scored one exceeds the IoU threshold.
    Hard,
    /// Gaussian soft-NMS: multiply each score by `exp(-iou^2 / sigma)` (Bodla et al. 2017, as in
    /// ActionFormer).
    Gaussian,
    /// Linear soft-NMS: multiply by `1 - iou` where `iou` exceeds the IoU threshold.
    Linear,
}

/// Post-processing settings (defaults: ActionFormer, THUMOS-14).
#[derive(Config, Debug)]
pub struct PostProcessConfig {
    /// Only detections scoring above this enter NMS (ActionFormer's `pre_nms_thresh`).
    #[config(default = 0.001)]
    pub score_threshold: f64,
    /// At most this many detections (highest scores) of each pyramid level enter NMS.
    #[config(default = 2000)]
    pub pre_nms_topk: usize,
    /// Detections no longer than this (base-grid units) are dropped before NMS (ActionFormer's
    /// `duration_thresh`).
    #[config(default = 0.05)]
    pub duration_threshold: f64,
    /// Suppression method.
    #[config(default = "NmsMethod::Gaussian")]
    pub method: NmsMethod,
    /// IoU threshold for hard and linear NMS.
    #[config(default = 0.1)]
    pub iou_threshold: f64,
    /// Gaussian soft-NMS width.
    #[config(default = 0.5)]
    pub sigma: f64,
    /// Detections whose score decays below this are removed during soft-NMS.
    #[config(default = 0.001)]
    pub min_score: f64,
    /// Suppress within each class (true) or across classes (false).
    #[config(default = true)]
    pub per_class: bool,
    /// At most this many detections are kept per video (200 THUMOS, 100 ActivityNet).
    #[config(default = 200)]
    pub max_detections: usize,
}

/// Sort by descending score (stable, so equal scores keep their order).
fn sort_desc(v: &mut [Segment]) {
    v.sort_by(|a, b| b.score.total_cmp(&a.score));
}

/// Keep detections scoring above `threshold`, then the `k` best (one pyramid level's
/// candidates, as ActionFormer selects them).
pub fn threshold_topk(mut dets: Vec<Segment>, threshold: f64, k: usize) -> Vec<Segment> {
    dets.retain(|d| d.score > threshold);
    sort_desc(&mut dets);
    dets.truncate(k);
    dets
}

/// IoU as ActionFormer's NMS kernels compute it: each length plus `1e-6`, so two empty
/// segments at one point do not divide by zero.
fn nms_iou(a: &Segment, b: &Segment) -> f64 {
    let inter = (a.end.min(b.end) - a.start.max(b.start)).max(0.0);
    let area = |s: &Segment| s.end - s.start + 1e-6;
    inter / (area(a) + area(b) - inter)
}

/// Suppress overlapping detections among `dets` (all treated as one group), as ActionFormer's
/// `nms_1d_cpu` kernels do (hard NMS first drops scores not above `min_score`; soft-NMS drops a
/// detection once its decayed score falls below `min_score`). Returns the kept detections with
/// their (possibly decayed) scores, in descending score order.
pub fn nms(
    mut dets: Vec<Segment>,
    method: NmsMethod,
    iou_threshold: f64,
    sigma: f64,
    min_score: f64,
) -> Vec<Segment> {
    if method == NmsMethod::Hard && min_score > 0.0 {
        dets.retain(|d| d.score > min_score);
    }
    let mut kept = Vec::with_capacity(dets.len());
    while !dets.is_empty() {
        // Greedy: take the best remaining, decay the rest against it.
        let best = (0..dets.len())
            .max_by(|&a, &b| dets[a].score.total_cmp(&dets[b].score).then(b.cmp(&a)))
            .expect("non-empty");
        let top = dets.swap_remove(best);
        dets.retain_mut(|d| {
            let iou = nms_iou(&top, d);
            let weight = match method {
                NmsMethod::Hard => {
                    if iou >= iou_threshold {
                        0.0
                    } else {
                        1.0
                    }
                }
                NmsMethod::Linear => {
                    if iou >= iou_threshold {
                        1.0 - iou
                    } else {
                        1.0
                    }
                }
                NmsMethod::Gaussian => (-(iou * iou) / sigma).exp(),
            };
            d.score *= weight;
            match method {
                NmsMethod::Hard => weight > 0.0,
                _ => d.score >= min_score,
            }
        });
        kept.push(top);
    }
    kept
}

/// Post-processing of one video's candidates (already selected per pyramid level, see
/// [`threshold_topk`]): NMS (per class or class-agnostic), then the `max_detections` best.
pub fn postprocess(dets: Vec<Segment>, cfg: &PostProcessConfig) -> Vec<Segment> {
    let run = |group: Vec<Segment>| {
        nms(
            group,
            cfg.method,
            cfg.iou_threshold,
            cfg.sigma,
            cfg.min_score,
        )
    };
    let mut out = if cfg.per_class {
        let mut labels: Vec<usize> = dets.iter().map(|d| d.label).collect();
        labels.sort_unstable();
        labels.dedup();
        labels
            .into_iter()
            .flat_map(|l| run(dets.iter().copied().filter(|d| d.label == l).collect()))
            .collect()
    } else {
        run(dets)
    };
    sort_desc(&mut out);
    out.truncate(cfg.max_detections);
    out
}

/// How feature-grid positions map to time: clip `i` starts at frame `i * stride_frames` and
/// spans `span_frames` frames; its centre is the point the head predicts around.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridToTime {
    /// Frames between consecutive feature positions (snippet stride).
    pub stride_frames: f64,
    /// Frames one clip spans (clip length x frame stride).
    pub span_frames: f64,
    /// Frame rate.
    pub fps: f64,
}

impl GridToTime {
    /// Seconds of grid position `x` (fractional positions allowed).
    pub fn seconds(&self, x: f64) -> f64 {
        (x * self.stride_frames + 0.5 * self.span_frames) / self.fps
    }

    /// Convert a detection's boundaries from grid units to seconds, clipped to `[0, duration]`.
    pub fn to_seconds(&self, d: Segment, duration: f64) -> Segment {
        Segment {
            start: self.seconds(d.start).clamp(0.0, duration),
            end: self.seconds(d.end).clamp(0.0, duration),
            ..d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: f64, end: f64, score: f64, label: usize) -> Segment {
        Segment {
            start,
            end,
            score,
            label,
        }
    }

    #[test]
    fn hard_nms_hand_computed() {
        // IoU(a, b) = 5/15 = 0.333 > 0.3 -> b removed; c does not overlap a.
        let dets = vec![
            seg(0., 10., 0.9, 0),
            seg(5., 15., 0.8, 0),
            seg(20., 30., 0.7, 0),
        ];
        let kept = nms(dets, NmsMethod::Hard, 0.3, 0.5, 0.001);
        assert_eq!(kept.len(), 2);
        assert_eq!((kept[0].score, kept[1].score), (0.9, 0.7));
        // Threshold above the IoU keeps all three.
        let dets = vec![
            seg(0., 10., 0.9, 0),
            seg(5., 15., 0.8, 0),
            seg(20., 30., 0.7, 0),
        ];
        assert_eq!(nms(dets, NmsMethod::Hard, 0.34, 0.5, 0.001).len(), 3);
    }

    #[test]
    fn gaussian_soft_nms_hand_computed() {
        // b overlaps a with IoU 1/3: score 0.8 * exp(-(1/9)/0.5) = 0.8 * exp(-2/9).
        // c [2,12] overlaps a with IoU 8/12 and b with IoU 7/13.
        let dets = vec![
            seg(0., 10., 0.9, 0),
            seg(5., 15., 0.8, 0),
            seg(2., 12., 0.3, 0),
        ];
        let kept = nms(dets, NmsMethod::Gaussian, 0.1, 0.5, 0.001);
        assert_eq!(kept.len(), 3);
        let b = 0.8 * (-2.0f64 / 9.0).exp();
        assert!((kept[1].score - b).abs() < 1e-6);
        let c = 0.3 * (-(4.0f64 / 9.0) / 0.5).exp() * (-(49.0f64 / 169.0) / 0.5).exp();
        assert!((kept[2].score - c).abs() < 1e-6, "{} vs {c}", kept[2].score);
        // A min score above c's decayed score removes it.
        let dets = vec![
            seg(0., 10., 0.9, 0),
            seg(5., 15., 0.8, 0),
            seg(2., 12., 0.3, 0),
        ];
        assert_eq!(nms(dets, NmsMethod::Gaussian, 0.1, 0.5, 0.1).len(), 2);
    }

    #[test]
    fn soft_nms_reorders_when_decay_drops_below_later_detection() {
        // b (0.8) overlaps a fully: 0.8 * exp(-2) = 0.108 < c's 0.5, so c is picked second.
        let dets = vec![
            seg(0., 10., 0.9, 0),
            seg(0., 10., 0.8, 0),
            seg(50., 60., 0.5, 0),
        ];
        let kept = nms(dets, NmsMethod::Gaussian, 0.1, 0.5, 0.001);
        assert_eq!(kept[1].start, 50.0);
        assert!((kept[2].score - 0.8 * (-2.0f64).exp()).abs() < 1e-6);
    }

    #[test]
    fn linear_soft_nms() {
        let dets = vec![seg(0., 10., 1.0, 0), seg(5., 15., 0.9, 0)];
        let kept = nms(dets, NmsMethod::Linear, 0.3, 0.5, 0.001);
        assert!((kept[1].score - 0.9 * (1.0 - 1.0 / 3.0)).abs() < 1e-6);
    }

    #[test]
    fn per_class_vs_agnostic() {
        let dets = vec![seg(0., 10., 0.9, 0), seg(0., 10., 0.8, 1)];
        let cfg = PostProcessConfig::new().with_method(NmsMethod::Hard);
        assert_eq!(postprocess(dets.clone(), &cfg).len(), 2);
        let cfg = cfg.with_per_class(false);
        assert_eq!(postprocess(dets, &cfg).len(), 1);
    }

    #[test]
    fn threshold_topk_and_max_detections() {
        let dets: Vec<_> = (0..10)
            .map(|i| seg(i as f64 * 20.0, i as f64 * 20.0 + 5.0, i as f64 / 10.0, 0))
            .collect();
        let kept = threshold_topk(dets.clone(), 0.35, 3);
        let scores: Vec<f64> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.8, 0.7]);
        let cfg = PostProcessConfig::new().with_max_detections(4);
        assert_eq!(postprocess(dets, &cfg).len(), 4);
    }

    #[test]
    fn grid_to_seconds_and_clipping() {
        // Stride 4 frames, clips of 16 frames, 8 fps: position 2 -> (8 + 8) / 8 = 2 s.
        let g = GridToTime {
            stride_frames: 4.0,
            span_frames: 16.0,
            fps: 8.0,
        };
        assert_eq!(g.seconds(2.0), 2.0);
        let d = g.to_seconds(seg(-5.0, 100.0, 0.5, 3), 30.0);
        assert_eq!((d.start, d.end, d.label), (0.0, 30.0, 3));
    }
}
