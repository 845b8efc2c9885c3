//! The feature workflow end to end through the binary: a small feature set in ActionFormer's
//! THUMOS layout (`Validation` to train on, `Test` to evaluate, `label_id`, per-video fps),
//! `train --features` with ActionFormer's YAML configuration, `infer --features` on the run,
//! and an imported ActionFormer checkpoint.

use std::path::Path;
use std::process::Command;

use e2e_tal::data::FeatureSequence;
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_e2e-tal");
const WIDTH: usize = 8;
const CLASSES: [&str; 2] = ["Jump", "Throw"];

/// `train` + `test` videos of 60-120 feature rows: noise, plus a class prototype inside each
/// action and start / end markers on its first and last rows.
fn feature_set(dir: &Path, train: usize, test: usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let noise = |rng: &mut rand_chacha::ChaCha8Rng| rng.random_range(-1.0f32..1.0);
    let protos: Vec<Vec<f32>> = (0..3)
        .map(|_| (0..WIDTH).map(|_| 2.0 * noise(&mut rng)).collect())
        .collect();
    std::fs::create_dir_all(dir.join("features")).unwrap();
    let mut db = serde_json::Map::new();
    for (subset, n) in [("Validation", train), ("Test", test)] {
        for i in 0..n {
            let id = format!("video_{}_{i:03}", subset.to_lowercase());
            let t = rng.random_range(60..=120usize);
            let mut x: Vec<f32> = (0..t * WIDTH).map(|_| noise(&mut rng)).collect();
            let mut acts = Vec::new();
            let mut pos = rng.random_range(3..10usize);
            loop {
                let len = rng.random_range(8..25usize);
                if pos + len + 3 >= t {
                    break;
                }
                let k = rng.random_range(0..2usize);
                for r in pos..pos + len {
                    for c in 0..WIDTH {
                        x[r * WIDTH + c] += protos[k][c];
                        if r == pos {
                            x[r * WIDTH + c] += protos[2][c];
                        }
                    }
                }
                let sec = |row: usize| ((row * 4 + 8) as f64 / 30.0 * 100.0).round() / 100.0;
                acts.push(serde_json::json!({
                    "label": CLASSES[k], "label_id": k,
                    "segment": [sec(pos), sec(pos + len)],
                    "segment(frames)": [pos * 4, (pos + len) * 4],
                }));
                pos += len + rng.random_range(5..20usize);
            }
            FeatureSequence {
                data: x,
                len: t,
                channels: WIDTH,
            }
            .write(&dir.join(format!("features/{id}.npy")))
            .unwrap();
            db.insert(
                id,
                serde_json::json!({"subset": subset, "duration": (t * 4 + 16) as f64 / 30.0,
                                   "fps": 30.0, "annotations": acts}),
            );
        }
    }
    std::fs::write(
        dir.join("annotations.json"),
        serde_json::json!({ "database": db }).to_string(),
    )
    .unwrap();
    // ActionFormer's THUMOS I3D file at this data's sizes, 6 + 2 warm-up epochs.
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/actionformer/thumos_tiny.yaml"),
    )
    .unwrap()
    .replace("num_classes: 4", "num_classes: 2")
    .replace("epochs: 30,", "epochs: 20, warmup_epochs: 2,")
    .replace("embd_dim: 8,", "embd_dim: 16,")
    .replace("fpn_dim: 8,", "fpn_dim: 16,")
    .replace("head_dim: 8,", "head_dim: 16,")
    .replace("learning_rate: 0.0001", "learning_rate: 0.001");
    std::fs::write(dir.join("config.yaml"), yaml).unwrap();
}

fn run(dir: &Path, args: &str) -> (bool, String) {
    let o = Command::new(BIN)
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!text.contains("panicked"), "`{args}` panicked: {text}");
    (o.status.success(), text)
}

fn results(path: &Path) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(path).unwrap()).unwrap()
        ["results"]
        .clone()
}

#[test]
fn train_on_features_with_an_actionformer_config_then_infer() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    feature_set(root, 24, 6);
    // 264 steps: an EMA of 0.999 (ActionFormer's) would still hold 77% of the initial weights.
    let (ok, out) = run(
        root,
        "train --features features --dataset annotations.json --config config.yaml --out run --quiet --ema-decay 0.98",
    );
    assert!(ok, "{out}");
    for f in [
        "feature_run.json",
        "head.safetensors",
        "metrics.json",
        "predictions.json",
    ] {
        assert!(root.join("run").join(f).is_file(), "{f}: {out}");
    }
    assert!(!root.join("run/.lock").exists());
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("run/metrics.json")).unwrap())
            .unwrap();
    let epochs = metrics["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 22, "20 epochs after 2 warm-up ones");
    let first = epochs[2]["loss"].as_f64().unwrap();
    let last = epochs[21]["loss"].as_f64().unwrap();
    assert!(last < 0.8 * first, "loss {first} -> {last}");
    // Classes and boundaries are learnable from these features: well above chance.
    let map = metrics["evaluation"]["average_map"].as_f64().unwrap();
    assert!(map > 0.3, "average mAP {map}: {out}");
    // Inference on the run gives the run's own evaluation detections.
    let (ok, out) = run(
        root,
        "infer --checkpoint run --dataset annotations.json --features features --subset testing --out res.json",
    );
    assert!(ok, "{out}");
    let got = results(&root.join("res.json"));
    let want = results(&root.join("run/predictions.json"));
    assert_eq!(got.as_object().unwrap().len(), 6);
    for (id, dets) in want.as_object().unwrap() {
        let g = got[id].as_array().unwrap();
        let w = dets.as_array().unwrap();
        assert_eq!(g.len(), w.len(), "{id}");
        for (a, b) in g.iter().zip(w) {
            assert_eq!(a["label"], b["label"]);
            assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-6);
        }
        assert!(
            g.iter()
                .all(|x| CLASSES.contains(&x["label"].as_str().unwrap()))
        );
    }
    // Fine-tuning starts from the run's head, with its configuration: at learning rate 0 the
    // evaluation is the run's own.
    let (ok, out) = run(
        root,
        "train --features features --dataset annotations.json --weights run --out tuned --quiet --epochs 1 --lr-head 0",
    );
    assert!(ok, "{out}");
    let tuned: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("tuned/metrics.json")).unwrap())
            .unwrap();
    let again = tuned["evaluation"]["average_map"].as_f64().unwrap();
    assert!(
        (again - map).abs() < 1e-9,
        "fine-tuning at lr 0: {again} vs {map}"
    );
    // The same run again is refused; --overwrite starts over.
    let (ok, out) = run(
        root,
        "train --features features --dataset annotations.json --config config.yaml --out run --quiet",
    );
    assert!(!ok && out.contains("feature run"), "{out}");
    let (ok, out) = run(
        root,
        "train --features features --dataset annotations.json --config config.yaml --out run --quiet --overwrite --epochs 1",
    );
    assert!(ok, "{out}");
}

#[test]
fn an_imported_actionformer_checkpoint_infers() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/actionformer");
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let f = |n: &str| fixtures.join(n).display().to_string();
    let (ok, out) = run(
        root,
        &format!(
            "weights import-actionformer --checkpoint {} --config {} --dataset {} --out imported",
            f("epoch_003.pth.tar"),
            f("thumos_tiny.yaml"),
            f("annotations.json")
        ),
    );
    assert!(ok && out.contains("state_dict_ema"), "{out}");
    let (ok, out) = run(
        root,
        &format!(
            "infer --checkpoint imported --dataset {} --features {} --subset testing --out res.json",
            f("annotations.json"),
            f("features")
        ),
    );
    assert!(ok, "{out}");
    let res = results(&root.join("res.json"));
    // ActionFormer's max_seg_num: 200 detections per video.
    for id in ["video_test_a", "video_test_b", "video_test_c"] {
        assert_eq!(res[id].as_array().unwrap().len(), 200, "{id}");
    }
}
