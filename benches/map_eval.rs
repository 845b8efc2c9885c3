//! mAP evaluation speed: 5,000 videos x 100 predictions x 200 classes (ActivityNet scale),
//! ActivityNet thresholds. Target: under 1 s on a 2-core machine (release build).
//!
//! `cargo bench --bench map_eval` prints a table; `-- --videos N` changes the size.

use std::time::Instant;

use e2e_tal::data::{
    Annotation, Detection, GroundTruth, Predictions, Subset, VideoAnnotations, VideoDetections,
};
use e2e_tal::eval::{EvalOptions, ThresholdSet, evaluate};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn workload(videos: usize, preds: usize, classes: usize) -> (GroundTruth, Predictions) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let names: Vec<String> = (0..classes).map(|c| format!("class_{c:03}")).collect();
    let mut gt = GroundTruth::default();
    let mut pr = Predictions::default();
    for v in 0..videos {
        let id = format!("v_{v:06}");
        let duration = rng.random_range(30.0..240.0);
        let annotations: Vec<Annotation> = (0..rng.random_range(1..=3))
            .map(|_| {
                let a = rng.random_range(0.0..duration * 0.8);
                let b = rng.random_range(a + 1.0..duration);
                Annotation {
                    segment: [a, b],
                    label: names[rng.random_range(0..classes)].clone(),
                }
            })
            .collect();
        let detections = (0..preds)
            .map(|i| {
                // Half the detections near a ground truth, half anywhere.
                let (a, b, label) = if i % 2 == 0 {
                    let g = &annotations[i % annotations.len()];
                    let l = g.segment[1] - g.segment[0];
                    let a = g.segment[0] + rng.random_range(-0.3..0.3) * l;
                    (a, a + l * rng.random_range(0.6..1.4), g.label.clone())
                } else {
                    let a = rng.random_range(0.0..duration);
                    (
                        a,
                        rng.random_range(a..duration + 1.0),
                        names[rng.random_range(0..classes)].clone(),
                    )
                };
                Detection {
                    label,
                    score: rng.random(),
                    segment: [a, b],
                }
            })
            .collect();
        gt.videos.push(VideoAnnotations {
            id: id.clone(),
            subset: Subset::Validation,
            duration,
            fps: None,
            num_frames: None,
            annotations,
        });
        pr.videos.push(VideoDetections { id, detections });
    }
    (gt, pr)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let videos = args
        .iter()
        .position(|a| a == "--videos")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let (preds, classes) = (100, 200);
    let (gt, pr) = workload(videos, preds, classes);
    let dir = std::env::temp_dir().join(format!("e2e-tal-map-bench-{}", std::process::id()));
    let (gt_path, pr_path) = (dir.join("gt.json"), dir.join("pred.json"));
    gt.write_json(&gt_path).unwrap();
    pr.write_json(&pr_path).unwrap();

    let t = Instant::now();
    let gt2 = GroundTruth::from_json_file(&gt_path).unwrap();
    let pr2 = Predictions::from_json_file(&pr_path).unwrap();
    let parse = t.elapsed().as_secs_f64();
    assert_eq!(pr2.len(), videos * preds);

    println!("\nmAP evaluation: {videos} videos x {preds} predictions x {classes} classes\n");
    println!("| thresholds | evaluate (best of 3) | JSON parse (gt + pred) | total | avg mAP |");
    println!("|---|---|---|---|---|");
    for (name, set) in [
        ("ActivityNet (10)", ThresholdSet::ActivityNet),
        ("THUMOS (5)", ThresholdSet::Thumos),
    ] {
        let opts = EvalOptions {
            subset: Some(Subset::Validation),
            thresholds: set.values(),
        };
        let mut best = f64::MAX;
        let mut avg = 0.0;
        for _ in 0..3 {
            let t = Instant::now();
            avg = evaluate(&gt2, &pr2, &opts).unwrap().average_map;
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "| {name} | {best:.3} s | {parse:.3} s | {:.3} s | {avg:.4} |",
            best + parse
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
