//! Detection mAP, computed exactly as the official ActivityNet evaluation
//! (`Evaluation/eval_detection.py`, `compute_average_precision_detection`).
//!
//! The official code's semantics are kept down to its corner cases:
//! - classes are the labels of the ground truth of the evaluated subset, in order of first
//!   appearance; a class without predictions scores AP 0;
//! - predictions are taken in descending score order; equal scores keep the order numpy's
//!   `argsort()[::-1]` gives them for small arrays, i.e. the *later* one in the file first;
//! - each prediction tries the ground truths of its video and class by descending tIoU (ties:
//!   the later ground truth first), skipping locked ones, and stops at the first tIoU below the
//!   threshold; a prediction for a video without ground truth of its class is a false positive;
//! - AP is the area under the precision envelope at the points where recall changes.
//!
//! Predictions whose label is not a ground-truth class of the subset are ignored and counted in
//! [`EvalReport::ignored_predictions`] (the official script raises a `KeyError` on them).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::data::{GroundTruth, Predictions, Subset};
use crate::error::{Error, Result};

/// A set of tIoU thresholds.
#[derive(Debug, Clone, PartialEq)]
pub enum ThresholdSet {
    /// ActivityNet: 0.50:0.05:0.95 (10 thresholds).
    ActivityNet,
    /// THUMOS-14: 0.3:0.1:0.7 (5 thresholds).
    Thumos,
    /// Any list of thresholds in (0, 1].
    Custom(Vec<f64>),
}

impl ThresholdSet {
    /// The thresholds, computed like `numpy.linspace` for the named sets.
    pub fn values(&self) -> Vec<f64> {
        match self {
            ThresholdSet::ActivityNet => linspace(0.5, 0.95, 10),
            ThresholdSet::Thumos => linspace(0.3, 0.7, 5),
            ThresholdSet::Custom(v) => v.clone(),
        }
    }
}

impl FromStr for ThresholdSet {
    type Err = Error;
    /// `anet` / `activitynet`, `thumos`, or a comma-separated list such as `0.3,0.5`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "anet" | "activitynet" => Ok(Self::ActivityNet),
            "thumos" | "thumos14" => Ok(Self::Thumos),
            list => {
                let v = list
                    .split(',')
                    .map(|x| {
                        x.trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|t| *t > 0.0 && *t <= 1.0)
                            .ok_or_else(|| {
                                Error::Config(format!(
                                    "threshold `{x}` is not a number in (0, 1] (use anet, thumos or a list like 0.3,0.5)"
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Self::Custom(v))
            }
        }
    }
}

/// `numpy.linspace(start, stop, n)` bit for bit: `start + i * step`, last value exactly `stop`.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Ground-truth subset to evaluate on (`None`: every video).
    pub subset: Option<Subset>,
    /// tIoU thresholds.
    pub thresholds: Vec<f64>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            subset: Some(Subset::Validation),
            thresholds: ThresholdSet::ActivityNet.values(),
        }
    }
}

/// mAP results.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The tIoU thresholds.
    pub thresholds: Vec<f64>,
    /// mAP per threshold.
    pub map: Vec<f64>,
    /// Mean of `map`.
    pub average_map: f64,
    /// AP per threshold, per class (ground-truth class order).
    #[serde(serialize_with = "per_class_as_object")]
    pub per_class: Vec<(String, Vec<f64>)>,
    /// Predictions skipped because their label is not a class of the evaluated ground truth.
    pub ignored_predictions: usize,
}

fn per_class_as_object<S: serde::Serializer>(
    v: &[(String, Vec<f64>)],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(v.len()))?;
    for (k, ap) in v {
        m.serialize_entry(k, ap)?;
    }
    m.end()
}

impl fmt::Display for EvalReport {
    /// A table: one row per threshold, then the average.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "| tIoU | mAP (%) |")?;
        writeln!(f, "|------|---------|")?;
        for (t, m) in self.thresholds.iter().zip(&self.map) {
            writeln!(f, "| {t:.2} | {:7.2} |", m * 100.0)?;
        }
        write!(f, "| avg  | {:7.2} |", self.average_map * 100.0)
    }
}

/// tIoU of `target` with `candidate`, with the official operation order (bit-identical results).
pub fn segment_iou(target: [f64; 2], candidate: [f64; 2]) -> f64 {
    let tt1 = target[0].max(candidate[0]);
    let tt2 = target[1].min(candidate[1]);
    let inter = (tt2 - tt1).max(0.0);
    let union = (candidate[1] - candidate[0]) + (target[1] - target[0]) - inter;
    inter / union
}

/// One prediction of a class.
#[derive(Clone, Copy)]
struct Pred {
    /// Index of the video among the evaluated ground-truth videos, `None` if unknown.
    video: Option<u32>,
    score: f64,
    segment: [f64; 2],
}

/// The ground truth of one class.
#[derive(Default)]
struct ClassGt {
    segments: Vec<[f64; 2]>,
    /// Video index -> indices into `segments`, in file order.
    by_video: HashMap<u32, Vec<u32>>,
}

/// Evaluate `preds` against `gt`.
pub fn evaluate(gt: &GroundTruth, preds: &Predictions, opts: &EvalOptions) -> Result<EvalReport> {
    if opts.thresholds.is_empty() {
        return Err(Error::Config("no tIoU threshold given".into()));
    }
    let classes = gt.classes(opts.subset);
    if classes.is_empty() {
        let which = opts.subset.map_or("any".to_string(), |s| s.to_string());
        return Err(Error::Config(format!(
            "the ground truth has no annotated video in subset `{which}`"
        )));
    }
    let class_idx: HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut video_idx: HashMap<&str, u32> = HashMap::new();
    let mut gts: Vec<ClassGt> = (0..classes.len()).map(|_| ClassGt::default()).collect();
    for v in gt.subset(opts.subset) {
        let vi = video_idx.len() as u32;
        video_idx.entry(v.id.as_str()).or_insert(vi);
        let vi = video_idx[v.id.as_str()];
        for a in &v.annotations {
            let g = &mut gts[class_idx[a.label.as_str()]];
            g.by_video
                .entry(vi)
                .or_default()
                .push(g.segments.len() as u32);
            g.segments.push(a.segment);
        }
    }
    let mut by_class: Vec<Vec<Pred>> = vec![Vec::new(); classes.len()];
    let mut ignored = 0;
    for v in &preds.videos {
        let video = video_idx.get(v.id.as_str()).copied();
        for d in &v.detections {
            match class_idx.get(d.label.as_str()) {
                Some(&c) => by_class[c].push(Pred {
                    video,
                    score: d.score,
                    segment: d.segment,
                }),
                None => ignored += 1,
            }
        }
    }

    let per_class_ap = parallel_map(classes.len(), |c| {
        class_average_precision(&gts[c], &by_class[c], &opts.thresholds)
    });
    let nt = opts.thresholds.len();
    let map: Vec<f64> = (0..nt)
        .map(|t| per_class_ap.iter().map(|ap| ap[t]).sum::<f64>() / classes.len() as f64)
        .collect();
    let average_map = map.iter().sum::<f64>() / nt as f64;
    Ok(EvalReport {
        thresholds: opts.thresholds.clone(),
        map,
        average_map,
        per_class: classes.into_iter().zip(per_class_ap).collect(),
        ignored_predictions: ignored,
    })
}

/// Run `f(0..n)` on all cores, keeping the order of results.
fn parallel_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .min(n.max(1));
    if workers <= 1 {
        return (0..n).map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, T)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            break out;
                        }
                        out.push((i, f(i)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("evaluation worker panicked"))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, t)| t).collect()
}

/// Descending order with numpy's `argsort()[::-1]` tie rule (later index first); NaN sorts
/// first, as numpy puts it last in ascending order.
fn desc_order(values: &[f64], order: &mut Vec<u32>) {
    order.clear();
    order.extend(0..values.len() as u32);
    order.sort_unstable_by(|&a, &b| {
        let (x, y) = (values[a as usize], values[b as usize]);
        let key = |v: f64| (v.is_nan(), if v.is_nan() { 0.0 } else { v });
        let (kx, ky) = (key(x), key(y));
        ky.0.cmp(&kx.0)
            .then(ky.1.partial_cmp(&kx.1).expect("no NaN left"))
            .then(b.cmp(&a))
    });
}

fn class_average_precision(gt: &ClassGt, preds: &[Pred], thresholds: &[f64]) -> Vec<f64> {
    let nt = thresholds.len();
    if preds.is_empty() {
        return vec![0.0; nt];
    }
    let ngt = gt.segments.len();
    let scores: Vec<f64> = preds.iter().map(|p| p.score).collect();
    let mut order = Vec::new();
    desc_order(&scores, &mut order);

    let mut locked = vec![false; nt * ngt];
    // tp[t * n + rank]: prediction at `rank` is a true positive at threshold t.
    let n = preds.len();
    let mut tp = vec![false; nt * n];
    let (mut ious, mut iou_order) = (Vec::new(), Vec::new());
    for (rank, &pi) in order.iter().enumerate() {
        let p = &preds[pi as usize];
        let Some(cands) = p.video.and_then(|v| gt.by_video.get(&v)) else {
            continue; // no ground truth of this class in this video: false positive
        };
        ious.clear();
        ious.extend(
            cands
                .iter()
                .map(|&g| segment_iou(p.segment, gt.segments[g as usize])),
        );
        desc_order(&ious, &mut iou_order);
        for (t, &thr) in thresholds.iter().enumerate() {
            for &j in &iou_order {
                // `NaN < thr` is false, as in numpy: a NaN tIoU passes the threshold.
                if ious[j as usize] < thr {
                    break;
                }
                let g = cands[j as usize] as usize;
                if locked[t * ngt + g] {
                    continue;
                }
                locked[t * ngt + g] = true;
                tp[t * n + rank] = true;
                break;
            }
        }
    }
    let (mut prec, mut rec) = (Vec::with_capacity(n), Vec::with_capacity(n));
    (0..nt)
        .map(|t| {
            prec.clear();
            rec.clear();
            let mut tp_sum = 0.0;
            let mut fp_sum = 0.0;
            for &is_tp in &tp[t * n..(t + 1) * n] {
                if is_tp {
                    tp_sum += 1.0;
                } else {
                    fp_sum += 1.0;
                }
                rec.push(tp_sum / ngt as f64);
                prec.push(tp_sum / (tp_sum + fp_sum));
            }
            average_precision(&prec, &rec)
        })
        .collect()
}

/// Area under the interpolated precision-recall curve (the official `interpolated_prec_rec`).
pub fn average_precision(prec: &[f64], rec: &[f64]) -> f64 {
    let mut mprec = Vec::with_capacity(prec.len() + 2);
    mprec.push(0.0);
    mprec.extend_from_slice(prec);
    mprec.push(0.0);
    let mut mrec = Vec::with_capacity(rec.len() + 2);
    mrec.push(0.0);
    mrec.extend_from_slice(rec);
    mrec.push(1.0);
    for i in (0..mprec.len() - 1).rev() {
        mprec[i] = mprec[i].max(mprec[i + 1]);
    }
    (1..mrec.len())
        .filter(|&i| mrec[i] != mrec[i - 1])
        .map(|i| (mrec[i] - mrec[i - 1]) * mprec[i])
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Annotation, Detection, VideoAnnotations, VideoDetections};

    /// `(start, end, label)` per ground-truth instance.
    type GtRows<'a> = &'a [(f64, f64, &'a str)];
    /// `(start, end, label, score)` per detection.
    type PredRows<'a> = &'a [(f64, f64, &'a str, f64)];

    fn gt(videos: &[(&str, GtRows)]) -> GroundTruth {
        GroundTruth {
            videos: videos
                .iter()
                .map(|(id, anns)| VideoAnnotations {
                    id: id.to_string(),
                    subset: Subset::Validation,
                    duration: 100.0,
                    fps: None,
                    num_frames: None,
                    annotations: anns
                        .iter()
                        .map(|&(a, b, l)| Annotation {
                            segment: [a, b],
                            label: l.into(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn preds(videos: &[(&str, PredRows)]) -> Predictions {
        Predictions {
            videos: videos
                .iter()
                .map(|(id, d)| VideoDetections {
                    id: id.to_string(),
                    detections: d
                        .iter()
                        .map(|&(a, b, l, s)| Detection {
                            label: l.into(),
                            score: s,
                            segment: [a, b],
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn eval(g: &GroundTruth, p: &Predictions, th: &[f64]) -> EvalReport {
        evaluate(
            g,
            p,
            &EvalOptions {
                subset: Some(Subset::Validation),
                thresholds: th.to_vec(),
            },
        )
        .unwrap()
    }

    #[test]
    fn linspace_matches_numpy() {
        // repr() of numpy.linspace(0.5, 0.95, 10) and numpy.linspace(0.3, 0.7, 5) (numpy 2.4).
        assert_eq!(
            ThresholdSet::ActivityNet.values(),
            vec![
                0.5,
                0.55,
                0.6,
                0.65,
                0.7,
                0.75,
                0.8,
                0.85,
                0.8999999999999999,
                0.95
            ]
        );
        assert_eq!(
            ThresholdSet::Thumos.values(),
            vec![0.3, 0.39999999999999997, 0.5, 0.6, 0.7]
        );
    }

    #[test]
    fn iou_hand_computed() {
        assert_eq!(segment_iou([0.0, 10.0], [5.0, 15.0]), 5.0 / 15.0);
        assert_eq!(segment_iou([0.0, 10.0], [20.0, 30.0]), 0.0);
        assert_eq!(segment_iou([2.0, 4.0], [0.0, 10.0]), 0.2);
        assert!(segment_iou([1.0, 1.0], [1.0, 1.0]).is_nan());
    }

    #[test]
    fn perfect_predictions_score_one() {
        let g = gt(&[("v1", &[(0.0, 10.0, "a"), (20.0, 30.0, "b")])]);
        let p = preds(&[("v1", &[(0.0, 10.0, "a", 0.9), (20.0, 30.0, "b", 0.8)])]);
        let r = eval(&g, &p, &[0.5, 0.95]);
        assert_eq!(r.map, vec![1.0, 1.0]);
        assert_eq!(r.average_map, 1.0);
    }

    #[test]
    fn hand_computed_precision_envelope() {
        // One class, 2 GT. Ranked: TP, FP, TP -> prec [1, .5, .667], rec [.5, .5, 1].
        // Envelope: [1, .667, .667]; AP = .5 * 1 + .5 * 2/3.
        let g = gt(&[("v1", &[(0.0, 10.0, "a"), (50.0, 60.0, "a")])]);
        let p = preds(&[(
            "v1",
            &[
                (0.0, 10.0, "a", 0.9),
                (30.0, 40.0, "a", 0.8),
                (50.0, 60.0, "a", 0.7),
            ],
        )]);
        let r = eval(&g, &p, &[0.5]);
        assert!((r.map[0] - (0.5 + 0.5 * 2.0 / 3.0)).abs() < 1e-15);
    }

    #[test]
    fn duplicates_are_false_positives_and_classes_without_predictions_score_zero() {
        let g = gt(&[("v1", &[(0.0, 10.0, "a")]), ("v2", &[(0.0, 10.0, "b")])]);
        // Duplicate of the same TP: ranks TP, FP -> AP 1 (recall reached at rank 1).
        // Class b has no prediction: AP 0. mAP = 0.5.
        let p = preds(&[("v1", &[(0.0, 10.0, "a", 0.9), (0.0, 10.0, "a", 0.8)])]);
        let r = eval(&g, &p, &[0.5]);
        assert_eq!(r.per_class[0].1, vec![1.0]);
        assert_eq!(r.per_class[1].1, vec![0.0]);
        assert_eq!(r.map, vec![0.5]);
        // The duplicate ranked first with the higher score makes no difference, but a
        // higher-scored false positive does: FP, TP -> prec [0, .5] -> AP .5.
        let p = preds(&[("v1", &[(40.0, 50.0, "a", 0.95), (0.0, 10.0, "a", 0.8)])]);
        assert_eq!(eval(&g, &p, &[0.5]).per_class[0].1, vec![0.5]);
    }

    #[test]
    fn unknown_videos_and_labels() {
        let g = gt(&[("v1", &[(0.0, 10.0, "a")])]);
        // Unknown video: FP ranked first (AP .5); unknown label: ignored.
        let p = preds(&[
            ("ghost", &[(0.0, 10.0, "a", 0.99)]),
            ("v1", &[(0.0, 10.0, "a", 0.5), (0.0, 10.0, "zzz", 0.9)]),
        ]);
        let r = eval(&g, &p, &[0.5]);
        assert_eq!(r.map, vec![0.5]);
        assert_eq!(r.ignored_predictions, 1);
    }

    #[test]
    fn score_ties_take_later_prediction_first() {
        let g = gt(&[("v1", &[(0.0, 10.0, "a")])]);
        // Equal scores: the later one (the FP) is ranked first -> FP, TP -> AP .5.
        let p = preds(&[("v1", &[(0.0, 10.0, "a", 0.5), (40.0, 50.0, "a", 0.5)])]);
        assert_eq!(eval(&g, &p, &[0.5]).map, vec![0.5]);
        // Swapped file order: TP first -> AP 1.
        let p = preds(&[("v1", &[(40.0, 50.0, "a", 0.5), (0.0, 10.0, "a", 0.5)])]);
        assert_eq!(eval(&g, &p, &[0.5]).map, vec![1.0]);
    }

    #[test]
    fn locked_ground_truth_falls_through_to_next_best() {
        // GT g0 [0,10], g1 [4,14]. p1 [0,10] locks g0; p2 [2,12] has tIoU 8/12 with both,
        // tries the later (g1) first -> TP. With a threshold of 0.7 p2 is an FP.
        let g = gt(&[("v1", &[(0.0, 10.0, "a"), (4.0, 14.0, "a")])]);
        let p = preds(&[("v1", &[(0.0, 10.0, "a", 0.9), (2.0, 12.0, "a", 0.8)])]);
        let r = eval(&g, &p, &[0.5, 0.7]);
        assert_eq!(r.map[0], 1.0);
        assert_eq!(r.map[1], 0.5);
    }

    #[test]
    fn report_serialises_with_documented_keys() {
        let g = gt(&[("v1", &[(0.0, 10.0, "a")])]);
        let p = preds(&[("v1", &[(0.0, 10.0, "a", 0.9)])]);
        let v = serde_json::to_value(eval(&g, &p, &[0.5])).unwrap();
        for k in ["thresholds", "map", "average_map", "per_class"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["per_class"]["a"][0], 1.0);
    }

    #[test]
    fn threshold_parsing() {
        assert_eq!(
            "anet".parse::<ThresholdSet>().unwrap(),
            ThresholdSet::ActivityNet
        );
        assert_eq!(
            "THUMOS".parse::<ThresholdSet>().unwrap(),
            ThresholdSet::Thumos
        );
        assert_eq!(
            "0.3, 0.5".parse::<ThresholdSet>().unwrap().values(),
            vec![0.3, 0.5]
        );
        assert!("0.3,1.5".parse::<ThresholdSet>().is_err());
        assert!("x".parse::<ThresholdSet>().is_err());
    }

    #[test]
    fn empty_subset_is_an_error() {
        let g = gt(&[("v1", &[])]);
        let e = evaluate(&g, &Predictions::default(), &EvalOptions::default()).unwrap_err();
        assert!(e.to_string().contains("validation"), "{e}");
    }
}
