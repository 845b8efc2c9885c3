//! Property tests of every reader of user files: arbitrary bytes never panic (an `Err` naming
//! the file is the only other outcome), and every valid document round-trips through the
//! matching writer.

use std::path::Path;

use e2e_tal::data::FeatureSequence;
use e2e_tal::data::{
    Annotation, Detection, GroundTruth, Predictions, Subset, ThumosSource, VideoAnnotations,
    VideoDetections, load_thumos,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    }
}

/// Bytes biased towards the readers' own syntax, so that most cases get past the first byte.
fn noisy_text(alphabet: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let chars: Vec<u8> = alphabet.bytes().collect();
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(chars),
            1 => any::<u8>(),
        ],
        0..400,
    )
}

/// A valid JSON document with random structure mutations of an ActivityNet file.
fn mutated_json(valid: String) -> impl Strategy<Value = String> {
    (0..valid.len().max(1), 0..valid.len().max(1), any::<u8>()).prop_map(move |(a, b, c)| {
        let mut bytes = valid.clone().into_bytes();
        let (lo, hi) = (a.min(b), a.max(b));
        // Cut a slice and put one random ASCII character in its place.
        bytes.splice(lo..hi.min(lo + 8), [c % 95 + 32]);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn label() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9_ ]{0,10}"
}

fn segment() -> impl Strategy<Value = [f64; 2]> {
    (0.0f64..500.0, 0.0f64..100.0).prop_map(|(s, d)| [s, s + d])
}

fn subset() -> impl Strategy<Value = Subset> {
    prop::sample::select(vec![Subset::Training, Subset::Validation, Subset::Testing])
}

fn ground_truth() -> impl Strategy<Value = GroundTruth> {
    prop::collection::vec(
        (
            subset(),
            1.0f64..1000.0,
            prop::option::of(1.0f64..60.0),
            prop::option::of(1usize..100_000),
            prop::collection::vec((segment(), label()), 0..5),
        ),
        0..6,
    )
    .prop_map(|videos| GroundTruth {
        videos: videos
            .into_iter()
            .enumerate()
            .map(|(i, (subset, duration, fps, num_frames, anns))| {
                let duration = anns.iter().fold(duration, |d, (s, _)| d.max(s[1]));
                VideoAnnotations {
                    id: format!("video_{i}"),
                    subset,
                    duration,
                    fps,
                    num_frames,
                    annotations: anns
                        .into_iter()
                        .map(|(segment, label)| Annotation { segment, label })
                        .collect(),
                }
            })
            .collect(),
    })
}

fn predictions() -> impl Strategy<Value = Predictions> {
    prop::collection::vec(
        prop::collection::vec((label(), 0.0f64..1.0, segment()), 0..6),
        0..5,
    )
    .prop_map(|videos| Predictions {
        videos: videos
            .into_iter()
            .enumerate()
            .map(|(i, dets)| VideoDetections {
                id: format!("v{i}"),
                detections: dets
                    .into_iter()
                    .map(|(label, score, segment)| Detection {
                        label,
                        score,
                        segment,
                    })
                    .collect(),
            })
            .collect(),
    })
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// An error must name the file it is about.
fn assert_names(e: &e2e_tal::Error, file: &str) {
    let msg = e.to_string();
    assert!(msg.contains(file), "error does not name {file}: {msg}");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ground_truth_reader_never_panics(bytes in noisy_text("{}[]\":,.0123456789 databse")) {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "gt.json", &bytes);
        if let Err(e) = GroundTruth::from_json_file(&p) {
            assert_names(&e, "gt.json");
        }
    }

    #[test]
    fn ground_truth_round_trips(gt in ground_truth()) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("gt.json");
        gt.write_json(&p).unwrap();
        prop_assert_eq!(GroundTruth::from_json_file(&p).unwrap(), gt);
    }

    #[test]
    fn mutated_ground_truth_never_panics(text in ground_truth().prop_flat_map(|gt| {
        mutated_json(gt.to_json().to_string())
    })) {
        if let Err(e) = GroundTruth::from_json_str(&text, Path::new("m.json")) {
            assert_names(&e, "m.json");
        }
    }

    #[test]
    fn a_video_listed_twice_is_refused_by_name(
        gt in ground_truth().prop_filter("a video", |g| !g.videos.is_empty()),
        pred in predictions().prop_filter("a video", |p| !p.videos.is_empty()),
        at in 0usize..8,
    ) {
        // The JSON of each reader with one entry of its top object written again at `at`.
        let doubled = |doc: serde_json::Value, key: &str| -> (String, String) {
            let entries: Vec<(String, serde_json::Value)> = doc[key]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let (id, v) = entries[at % entries.len()].clone();
            let mut parts: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {v}", serde_json::Value::from(k.as_str())))
                .collect();
            parts.insert(at % (parts.len() + 1), format!("{}: {v}", serde_json::Value::from(id.as_str())));
            (format!("{{\"{key}\": {{{}}}}}", parts.join(", ")), id)
        };
        let (text, id) = doubled(gt.to_json(), "database");
        let e = GroundTruth::from_json_str(&text, Path::new("twice.json")).unwrap_err();
        assert_names(&e, "twice.json");
        prop_assert!(e.to_string().contains(&format!("`{id}` appears twice")), "{}", e);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pred.json");
        pred.write_json(&p).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let (text, id) = doubled(doc, "results");
        let e = Predictions::from_json_str(&text, Path::new("twice.json")).unwrap_err();
        assert_names(&e, "twice.json");
        prop_assert!(e.to_string().contains(&format!("`{id}` appears twice")), "{}", e);
    }

    #[test]
    fn results_reader_never_panics(bytes in noisy_text("{}[]\":,.0123456789 resultsgmn")) {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "pred.json", &bytes);
        if let Err(e) = Predictions::from_json_file(&p) {
            assert_names(&e, "pred.json");
        }
    }

    #[test]
    fn results_round_trip(pred in predictions()) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pred.json");
        pred.write_json(&p).unwrap();
        prop_assert_eq!(Predictions::from_json_file(&p).unwrap(), pred);
    }

    #[test]
    fn mutated_results_never_panic(text in predictions().prop_flat_map(|p| {
        mutated_json(p.to_json().to_string())
    })) {
        if let Err(e) = Predictions::from_json_str(&text, Path::new("m.json")) {
            assert_names(&e, "m.json");
        }
    }

    #[test]
    fn thumos_reader_never_panics(bytes in noisy_text("video_ 0123456789.-\n\t")) {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "Jump_val.txt", &bytes);
        let src = ThumosSource { dir: d.path(), split: "val", subset: Subset::Validation, durations: None };
        if let Err(e) = load_thumos(&src) {
            assert_names(&e, "Jump_val.txt");
        }
    }

    /// Lines written as THUMOS writes them come back as the same segments, with or without a
    /// byte-order mark and Windows line ends.
    #[test]
    fn thumos_round_trips(
        lines in prop::collection::vec((0usize..5, 0u32..10_000, 0u32..1_000), 1..20),
        bom in any::<bool>(),
        crlf in any::<bool>(),
    ) {
        let d = tempfile::tempdir().unwrap();
        let mut text = String::from(if bom { "\u{feff}" } else { "" });
        for (v, s, len) in &lines {
            let (s, e) = (*s as f64 / 10.0, (*s + *len) as f64 / 10.0);
            text.push_str(&format!("video_{v} {s:.1} {e:.1}{}", if crlf { "\r\n" } else { "\n" }));
        }
        write(d.path(), "Jump_val.txt", text.as_bytes());
        let src = ThumosSource { dir: d.path(), split: "val", subset: Subset::Validation, durations: None };
        let gt = load_thumos(&src).unwrap();
        let mut got: Vec<(String, [f64; 2])> = gt
            .videos
            .iter()
            .flat_map(|v| v.annotations.iter().map(|a| (v.id.clone(), a.segment)))
            .collect();
        let mut want: Vec<(String, [f64; 2])> = lines
            .iter()
            .map(|(v, s, len)| (format!("video_{v}"), [*s as f64 / 10.0, (*s + *len) as f64 / 10.0]))
            .collect();
        let key = |x: &(String, [f64; 2])| (x.0.clone(), (x.1[0] * 10.0).round() as i64, (x.1[1] * 10.0).round() as i64);
        got.sort_by_key(key);
        want.sort_by_key(key);
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert_eq!(&g.0, &w.0);
            prop_assert!((g.1[0] - w.1[0]).abs() < 1e-9 && (g.1[1] - w.1[1]).abs() < 1e-9);
        }
    }

    #[test]
    fn npy_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), magic in any::<bool>()) {
        let d = tempfile::tempdir().unwrap();
        let mut b = if magic { b"\x93NUMPY\x01\x00".to_vec() } else { Vec::new() };
        b.extend(bytes);
        let p = write(d.path(), "f.npy", &b);
        if let Err(e) = FeatureSequence::read(&p) {
            assert_names(&e, "f.npy");
        }
    }

    /// A valid file cut anywhere, or with a byte changed in its header, is an error, not a
    /// panic; whole, it round-trips.
    #[test]
    fn npy_round_trips_and_survives_damage(
        len in 0usize..12,
        channels in 1usize..9,
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let d = tempfile::tempdir().unwrap();
        let seq = FeatureSequence {
            data: (0..len * channels).map(|i| i as f32 * 0.5 - 3.0).collect(),
            len,
            channels,
        };
        let p = d.path().join("f.npy");
        seq.write(&p).unwrap();
        prop_assert_eq!(&FeatureSequence::read(&p).unwrap(), &seq);
        let bytes = std::fs::read(&p).unwrap();
        let q = write(d.path(), "cut.npy", &bytes[..cut.index(bytes.len())]);
        if let Err(e) = FeatureSequence::read(&q) { assert_names(&e, "cut.npy"); }
        let mut damaged = bytes.clone();
        let i = flip.index(damaged.len().min(128));
        damaged[i] ^= 0x5a;
        let q = write(d.path(), "flip.npy", &damaged);
        if let Err(e) = FeatureSequence::read(&q) { assert_names(&e, "flip.npy"); }
    }

    #[test]
    fn checkpoint_inspection_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), header in 0u64..400) {
        let d = tempfile::tempdir().unwrap();
        // Half the cases start with a plausible safetensors header length.
        let mut b = if header % 2 == 0 { header.to_le_bytes().to_vec() } else { Vec::new() };
        b.extend(bytes);
        let p = write(d.path(), "w.safetensors", &b);
        if let Err(e) = e2e_tal::weights::inspect(&p) {
            assert_names(&e, "w.safetensors");
        }
    }

    /// Random tensors written with the `safetensors` crate are listed with their names, dtypes
    /// and shapes; the same file cut short is an error naming it.
    #[test]
    fn safetensors_round_trip(
        shapes in prop::collection::vec(prop::collection::vec(1usize..5, 0..4), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let d = tempfile::tempdir().unwrap();
        let datas: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let n: usize = s.iter().product();
                (format!("t{i}.weight"), s.clone(), (0..n * 4).map(|b| b as u8).collect())
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = datas
            .iter()
            .map(|(k, s, b)| {
                (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
            })
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        let p = write(d.path(), "w.safetensors", &bytes);
        let listed = e2e_tal::weights::inspect(&p).unwrap();
        let want: Vec<(String, String, Vec<usize>)> =
            datas.iter().map(|(k, s, _)| (k.clone(), "F32".to_string(), s.clone())).collect();
        prop_assert_eq!(listed, want);
        let q = write(d.path(), "cut.safetensors", &bytes[..cut.index(bytes.len())]);
        let e = e2e_tal::weights::inspect(&q).unwrap_err();
        assert_names(&e, "cut.safetensors");
    }
}

/// A finished two-epoch run of a tiny model (made once by the binary): its `checkpoint` and
/// `checkpoint.old` folders are what the checkpoint property damages.
fn finished_run() -> &'static Path {
    static RUN: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        use e2e_tal::backbone::vit::VitConfig;
        use e2e_tal::tal::head::HeadConfig;
        use e2e_tal::train::{BackboneConfig, TrainConfig};
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig::new()
            .with_backbone(BackboneConfig::Vit(
                VitConfig::new()
                    .with_embed_dim(16)
                    .with_depth(1)
                    .with_num_heads(2)
                    .with_mlp_dim(32)
                    .with_patch_size(8)
                    .with_num_frames(8)
                    .with_image_size(16),
            ))
            .with_head(
                HeadConfig::new(0, 0)
                    .with_embed_dim(16)
                    .with_num_heads(2)
                    .with_window_size(9),
            )
            .with_epochs(2);
        std::fs::write(
            dir.path().join("c.json"),
            serde_json::to_string(&cfg).unwrap(),
        )
        .unwrap();
        for args in [
            "synth --out ds --videos 2 --size 16 --classes 2 --seed 1",
            "train --data ds --out run --config c.json --from-scratch --quiet",
        ] {
            let o = std::process::Command::new(env!("CARGO_BIN_EXE_e2e-tal"))
                .args(args.split(' '))
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{args}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert!(dir.path().join("run/checkpoint.old").is_dir());
        dir
    })
    .path()
}

/// What happens to one file of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Damage {
    None,
    Removed,
    Flipped(usize),
    Cut,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => Just(Damage::None),
        1 => Just(Damage::Removed),
        1 => any::<usize>().prop_map(Damage::Flipped),
        1 => Just(Damage::Cut),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any file of either checkpoint removed, cut or with a byte flipped (the manifest
    /// `checksums.json` included): a checkpoint with damaged data is never loaded; the newest
    /// undamaged one is; with none left the error names the run.
    #[test]
    fn a_damaged_checkpoint_is_never_loaded(
        newest in prop::collection::vec(damage(), 8),
        older in prop::collection::vec(damage(), 8),
    ) {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        let mut newest = newest;
        let mut older = older;
        for (name, plan) in [("checkpoint", &mut newest), ("checkpoint.old", &mut older)] {
            let from = finished_run().join("run").join(name);
            let to = run.join(name);
            std::fs::create_dir_all(&to).unwrap();
            let mut files: Vec<_> = std::fs::read_dir(&from).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            prop_assert!(files.len() <= plan.len(), "{files:?}");
            plan.truncate(files.len());
            for (f, &dmg) in files.iter().zip(plan.iter()) {
                let mut b = std::fs::read(f).unwrap();
                match dmg {
                    Damage::None => {}
                    Damage::Removed => continue,
                    Damage::Flipped(i) => {
                        let i = i % b.len();
                        b[i] ^= 0xff;
                    }
                    Damage::Cut => b.truncate(b.len() / 2),
                }
                std::fs::write(to.join(f.file_name().unwrap()), b).unwrap();
            }
        }
        let intact = |plan: &[Damage]| plan.iter().all(|&x| x == Damage::None);
        match e2e_tal::train::Checkpoint::load(&run) {
            Ok(ck) => {
                let chosen = ck.dir.file_name().unwrap().to_str().unwrap().to_string();
                let plan = if chosen == "checkpoint" { &newest } else { &older };
                prop_assert!(intact(plan), "loaded {chosen} damaged by {plan:?}");
                prop_assert!(chosen == "checkpoint" || !intact(&newest), "passed over an intact newest");
            }
            Err(e) => {
                prop_assert!(!intact(&newest) && !intact(&older), "refused an intact checkpoint: {e}");
                assert_names(&e, "run");
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary text as an ActionFormer YAML configuration: a configuration or an error
    /// naming the file, never a panic.
    #[test]
    fn actionformer_config_reader_never_panics(bytes in noisy_text("{}[]:,-~ \n#'\"dataset_nmodel_ft0123456789.TrueFalse")) {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "c.yaml", &bytes);
        if let Err(e) = e2e_tal::features::read_actionformer_config(&p) {
            assert_names(&e, "c.yaml");
        }
    }

    /// ActionFormer's THUMOS configuration with one line dropped or a value replaced: read or
    /// refused naming the file.
    #[test]
    fn mutated_actionformer_configs_never_panic(
        drop in any::<prop::sample::Index>(),
        line in any::<prop::sample::Index>(),
        value in prop::sample::select(vec!["-1", "0", "1e300", "nan", "[1, 2]", "{}", "~", "True", "x", "''"]),
    ) {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/actionformer/thumos_tiny.yaml"),
        )
        .unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let n = lines.len();
        lines.remove(drop.index(n));
        let i = line.index(n - 1);
        if let Some((k, _)) = lines[i].clone().split_once(':') {
            lines[i] = format!("{k}: {value},");
        }
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "c.yaml", lines.join("\n").as_bytes());
        if let Err(e) = e2e_tal::features::read_actionformer_config(&p) {
            assert_names(&e, "c.yaml");
        }
    }

    /// Arbitrary bytes as an ActionFormer checkpoint: an error naming the file, never a panic.
    #[test]
    fn actionformer_import_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400), zip in any::<bool>()) {
        let d = tempfile::tempdir().unwrap();
        let mut b = if zip { b"PK\x03\x04".to_vec() } else { vec![0x80, 0x02] };
        b.extend(bytes);
        let p = write(d.path(), "ck.pth.tar", &b);
        let mut head = e2e_tal::tal::head::HeadConfig::new(8, 4)
            .with_embed_dim(8)
            .with_window_size(9)
            .init(&e2e_tal::backend::cpu_device())
            .unwrap();
        let e = e2e_tal::weights::actionformer::load_actionformer(&mut head, &p).unwrap_err();
        assert_names(&e, "ck.pth.tar");
    }
}
