//! The `e2e-tal` command line: synthetic data, evaluation, conversion, and its error messages.

use std::path::Path;
use std::process::{Command, Output};

fn e2e_tal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_e2e-tal"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap();
}

#[test]
fn synth_then_eval_ground_truth_against_itself() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("ds");
    let o = e2e_tal(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--videos",
        "4",
        "--seed",
        "3",
        "--size",
        "32",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let gt_path = out.join("annotations.json");
    // Predictions = ground truth with score 1: every threshold scores 100.
    let gt: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&gt_path).unwrap()).unwrap();
    let mut results = serde_json::Map::new();
    for (vid, v) in gt["database"].as_object().unwrap() {
        let dets: Vec<serde_json::Value> = v["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .map(
                |a| serde_json::json!({"label": a["label"], "score": 1.0, "segment": a["segment"]}),
            )
            .collect();
        results.insert(vid.clone(), serde_json::Value::Array(dets));
    }
    let pred = d.path().join("pred.json");
    write(&pred, &serde_json::json!({"results": results}).to_string());
    let o = e2e_tal(&[
        "eval",
        "--gt",
        gt_path.to_str().unwrap(),
        "--pred",
        pred.to_str().unwrap(),
        "--subset",
        "all",
        "--thresholds",
        "thumos",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["average_map"], 1.0);
    assert_eq!(r["map"].as_array().unwrap().len(), 5);
    assert!(r["per_class"].as_object().unwrap().len() >= 2);
    let o = e2e_tal(&[
        "eval",
        "--gt",
        gt_path.to_str().unwrap(),
        "--pred",
        pred.to_str().unwrap(),
        "--subset",
        "all",
    ]);
    assert!(
        text(&o).contains("| 0.95 |") && text(&o).contains("| avg  |"),
        "{}",
        text(&o)
    );
}

#[test]
fn bad_inputs_fail_with_named_errors() {
    let d = tempfile::tempdir().unwrap();
    let gt = d.path().join("gt.json");
    let pred = d.path().join("pred.json");
    write(
        &gt,
        r#"{"database": {"v1": {"subset": "validation", "duration": 9, "annotations": [{"segment": [1, 2], "label": "a"}]}}}"#,
    );
    write(
        &pred,
        r#"{"results": {"v1": [{"label": "a", "score": 0.9, "segment": [5]}]}}"#,
    );
    let run = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--gt",
            gt.to_str().unwrap(),
            "--pred",
            pred.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        e2e_tal(&args)
    };
    let o = run(&[]);
    assert!(!o.status.success());
    let msg = text(&o);
    assert!(
        msg.contains("pred.json") && msg.contains("`v1`") && msg.contains("results[0].segment"),
        "{msg}"
    );
    write(&pred, "{\"results\": ");
    assert!(
        text(&run(&[])).contains("malformed JSON"),
        "{}",
        text(&run(&[]))
    );
    write(&pred, r#"{"results": {}}"#);
    assert!(text(&run(&["--thresholds", "0.5,2"])).contains("threshold"));
    let msg = text(&run(&["--subset", "holdout"]));
    assert!(
        msg.contains("'holdout'")
            && msg.contains("[possible values: training, validation, testing, all]"),
        "{msg}"
    );
    let o = e2e_tal(&[
        "eval",
        "--gt",
        d.path().join("nope.json").to_str().unwrap(),
        "--pred",
        pred.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && text(&o).contains("nope.json"));
}

#[test]
fn convert_thumos_writes_activitynet_json() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("Diving_val.txt"),
        "video_validation_1 1.5 3.0\n",
    );
    let out = d.path().join("gt.json");
    let o = e2e_tal(&[
        "convert-thumos",
        "--dir",
        d.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let gt = e2e_tal::data::GroundTruth::from_json_file(&out).unwrap();
    assert_eq!(gt.videos[0].annotations[0].label, "Diving");
}
