//! A noisy-oracle detector: detections made from the ground truth with boundary noise, misses,
//! label confusion and false positives, then soft-NMS. It learns nothing; it checks that the
//! pipeline from annotations to post-processing to mAP works, and gives mAP a known scale
//! (perfect detections score 100%, the noise knobs lower it predictably).

use burn::config::Config;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::synth::gaussian;
use crate::data::{GroundTruth, Predictions, Subset, VideoDetections};
use crate::tal::postprocess::{PostProcessConfig, Segment, postprocess};

/// Noise of the noisy-oracle detector.
#[derive(Config, Debug)]
pub struct NoisyOracleConfig {
    /// Random seed.
    #[config(default = 0)]
    pub seed: u64,
    /// Standard deviation of each boundary's error, as a fraction of the action's length.
    #[config(default = 0.15)]
    pub boundary_noise: f64,
    /// Probability that an action gets no detection at all.
    #[config(default = 0.1)]
    pub miss_rate: f64,
    /// Probability that a detection carries another (random) class.
    #[config(default = 0.1)]
    pub label_confusion: f64,
    /// Jittered candidates per action before NMS.
    #[config(default = 3)]
    pub candidates: usize,
    /// Random false positives per video.
    #[config(default = 5)]
    pub false_positives: usize,
}

/// Detections for the videos of `subset`, over `classes` (the label space).
pub fn noisy_oracle(
    gt: &GroundTruth,
    subset: Option<Subset>,
    classes: &[String],
    cfg: &NoisyOracleConfig,
    post: &PostProcessConfig,
) -> Predictions {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let class_of = |l: &str| classes.iter().position(|c| c == l);
    let videos = gt
        .subset(subset)
        .map(|v| {
            let mut raw = Vec::new();
            for a in &v.annotations {
                let Some(label) = class_of(&a.label) else {
                    continue;
                };
                if rng.random::<f64>() < cfg.miss_rate {
                    continue;
                }
                let len = a.segment[1] - a.segment[0];
                for _ in 0..cfg.candidates {
                    let s = a.segment[0] + gaussian(&mut rng) * cfg.boundary_noise * len;
                    let e = a.segment[1] + gaussian(&mut rng) * cfg.boundary_noise * len;
                    let label = if rng.random::<f64>() < cfg.label_confusion {
                        rng.random_range(0..classes.len())
                    } else {
                        label
                    };
                    raw.push(Segment {
                        start: s.min(e).max(0.0),
                        end: s.max(e).min(v.duration),
                        score: rng.random_range(0.3..1.0),
                        label,
                    });
                }
            }
            for _ in 0..cfg.false_positives {
                let a = rng.random_range(0.0..v.duration);
                let b = rng.random_range(0.0..v.duration);
                raw.push(Segment {
                    start: a.min(b),
                    end: a.max(b),
                    score: rng.random_range(0.0..0.6),
                    label: rng.random_range(0..classes.len()),
                });
            }
            VideoDetections::from_segments(&v.id, postprocess(raw, post), classes)
        })
        .collect();
    Predictions { videos }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SynthConfig;
    use crate::eval::{EvalOptions, ThresholdSet, evaluate};

    #[test]
    fn noise_free_oracle_is_perfect_and_noise_lowers_map() {
        let gt = SynthConfig::new().with_videos(12).ground_truth().unwrap();
        let classes = gt.classes(None);
        let opts = EvalOptions {
            subset: Some(Subset::Validation),
            thresholds: ThresholdSet::Thumos.values(),
        };
        let clean = NoisyOracleConfig::new()
            .with_boundary_noise(0.0)
            .with_miss_rate(0.0)
            .with_label_confusion(0.0)
            .with_candidates(1)
            .with_false_positives(0);
        let post = PostProcessConfig::new();
        let p = noisy_oracle(&gt, opts.subset, &classes, &clean, &post);
        let r = evaluate(&gt, &p, &opts).unwrap();
        assert!((r.average_map - 1.0).abs() < 1e-12, "{}", r.average_map);
        let noisy = noisy_oracle(&gt, opts.subset, &classes, &NoisyOracleConfig::new(), &post);
        let r2 = evaluate(&gt, &noisy, &opts).unwrap();
        assert!(
            r2.average_map < 0.95 && r2.average_map > 0.2,
            "{}",
            r2.average_map
        );
        // mAP falls with the threshold under boundary noise.
        assert!(r2.map[0] > r2.map[4]);
    }
}
