//! mAP parity with the official ActivityNet evaluation.
//!
//! Fixtures come from `scripts/anet_eval_reference.py` (the official code, run on random inputs
//! with duplicates, score ties, tIoU ties, empty classes, videos without predictions and
//! predictions for unknown videos and labels). Required: equal to 1e-6; asserted: 1e-9.

use std::path::Path;

use e2e_tal::data::{GroundTruth, Predictions};
use e2e_tal::eval::{EvalOptions, ThresholdSet, evaluate};
use serde_json::Value;

const TOL: f64 = 1e-9;

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= TOL, "{what}: e2e-tal {a} vs official {b}");
}

fn check_case(path: &Path) {
    let case: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let gt = GroundTruth::from_json_str(&case["gt"].to_string(), path).unwrap();
    let pred = Predictions::from_json_str(&case["pred"].to_string(), path).unwrap();
    let subset = case["subset"].as_str().unwrap().parse().unwrap();
    for (key, set) in [
        ("anet", ThresholdSet::ActivityNet),
        ("thumos", ThresholdSet::Thumos),
    ] {
        let want = &case["expected"][key];
        let opts = EvalOptions {
            subset: Some(subset),
            thresholds: set.values(),
        };
        let got = evaluate(&gt, &pred, &opts).unwrap();
        let name = format!("{} / {key}", path.file_name().unwrap().to_string_lossy());
        let want_t: Vec<f64> = serde_json::from_value(want["thresholds"].clone()).unwrap();
        assert_eq!(got.thresholds, want_t, "{name}: thresholds");
        for (i, m) in want["map"].as_array().unwrap().iter().enumerate() {
            close(got.map[i], m.as_f64().unwrap(), &format!("{name} mAP[{i}]"));
        }
        close(
            got.average_map,
            want["average_map"].as_f64().unwrap(),
            &format!("{name} average"),
        );
        let want_pc = want["per_class"].as_object().unwrap();
        assert_eq!(got.per_class.len(), want_pc.len(), "{name}: class count");
        for ((class, ap), (wclass, wap)) in got.per_class.iter().zip(want_pc) {
            assert_eq!(class, wclass, "{name}: class order");
            for (i, w) in wap.as_array().unwrap().iter().enumerate() {
                close(
                    ap[i],
                    w.as_f64().unwrap(),
                    &format!("{name} {class} AP[{i}]"),
                );
            }
        }
    }
}

#[test]
fn map_equals_official_activitynet_evaluation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/map");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 6, "fixtures missing in {}", dir.display());
    for c in &cases {
        check_case(c);
    }
}
