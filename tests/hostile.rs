//! Hostile input to every subcommand: for each case the exit code (1 for a refused or failed
//! command, 2 for a rejected flag, 0 where the input is odd but valid), no panic, an error
//! message that names the input, and no existing file changed (a failed command adds none
//! either). The cases run one after another over one shared workspace, which is snapshotted
//! around each of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use e2e_tal::backbone::vit::VitConfig;
use e2e_tal::tal::head::HeadConfig;
use e2e_tal::train::{BackboneConfig, TrainConfig};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_e2e-tal");

/// How a case's standard output is connected.
#[derive(Clone, Copy, PartialEq)]
enum Stdout {
    Captured,
    /// `> /dev/full`: every write fails with "no space left".
    Full,
    /// A pipe whose reader is gone (`| head -0`).
    Closed,
}

struct Case {
    args: Vec<String>,
    code: i32,
    /// Substrings the error (or, for code 0, the output) must contain.
    says: Vec<String>,
    stdout: Stdout,
}

fn case(args: &str, code: i32, says: &[&str]) -> Case {
    Case {
        args: split(args),
        code,
        says: says.iter().map(|s| s.to_string()).collect(),
        stdout: Stdout::Captured,
    }
}

fn piped(args: &str, stdout: Stdout, says: &[&str]) -> Case {
    Case {
        stdout,
        ..case(args, 1, says)
    }
}

/// Whitespace-separated arguments; `'...'` keeps spaces.
fn split(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Every file under `root`: relative path -> content hash.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, u64> {
    use std::hash::{Hash, Hasher};
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                // Folders count too: a refused command must not leave an empty one behind.
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), u64::MAX);
                stack.push(p);
            } else {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&p).unwrap_or_default().hash(&mut h);
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), h.finish());
            }
        }
    }
    out
}

fn run(root: &Path, args: &[String], stdout: Stdout) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(root)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    match stdout {
        Stdout::Captured => cmd.stdout(Stdio::piped()),
        // The reader is gone before the child starts: its first write fails, however fast it
        // is (closing the reader after spawning raced with short outputs).
        Stdout::Closed => cmd.stdout(std::io::pipe().expect("a pipe").1),
        Stdout::Full => cmd.stdout(std::fs::File::create("/dev/full").unwrap()),
    };
    let mut child = cmd.spawn().expect("binary runs");
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        out,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn sh(root: &Path, args: &str) {
    let (code, out, err) = run(root, &split(args), Stdout::Captured);
    assert_eq!(code, 0, "setup `{args}` failed: {out}{err}");
}

/// A training configuration small enough for a debug build to train in a second or two.
fn tiny_config() -> TrainConfig {
    TrainConfig::new()
        .with_backbone(BackboneConfig::Vit(
            VitConfig::new()
                .with_embed_dim(32)
                .with_depth(2)
                .with_num_heads(2)
                .with_mlp_dim(64)
                .with_patch_size(8)
                .with_num_frames(8)
                .with_image_size(32),
        ))
        .with_head(
            HeadConfig::new(0, 0)
                .with_embed_dim(32)
                .with_num_heads(2)
                .with_window_size(9),
        )
        .with_epochs(1)
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let t = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).unwrap();
        }
    }
}

fn first_video(ds: &Path) -> PathBuf {
    ds.join("frames/synth_00000")
}

/// The workspace: a small dataset and broken copies of it, a finished run and a damaged one,
/// results, THUMOS files, configurations and checkpoints, good and bad.
fn workspace(root: &Path) {
    let w = |name: &str, bytes: &[u8]| std::fs::write(root.join(name), bytes).unwrap();
    sh(
        root,
        "synth --out ds --videos 3 --size 32 --classes 2 --seed 3",
    );
    w(
        "tiny.json",
        serde_json::to_string(&tiny_config()).unwrap().as_bytes(),
    );
    sh(
        root,
        "train --data ds --out run --config tiny.json --from-scratch --quiet",
    );
    // Results equal to the ground truth.
    let gt: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("ds/annotations.json")).unwrap())
            .unwrap();
    let mut results = serde_json::Map::new();
    for (id, v) in gt["database"].as_object().unwrap() {
        let dets: Vec<_> = v["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .map(
                |a| serde_json::json!({"label": a["label"], "score": 1.0, "segment": a["segment"]}),
            )
            .collect();
        results.insert(id.clone(), dets.into());
    }
    w(
        "pred.json",
        serde_json::json!({ "results": results })
            .to_string()
            .as_bytes(),
    );
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend(std::fs::read(root.join("pred.json")).unwrap());
    w("pred_bom.json", &bom);
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend(std::fs::read(root.join("ds/annotations.json")).unwrap());
    w("gt_bom.json", &bom);
    w("bad.json", b"{\"database\": {\"v\": [1, 2,");
    w("empty.json", b"");
    w("garbage.bin", &[0xff, 0x00, 0x93, 0x12, 0x80, 0x01, 0x7f]);
    w("array.json", b"[1, 2, 3]");
    w("no_db.json", b"{\"version\": \"x\"}");
    w(
        "score_type.json",
        b"{\"results\": {\"v\": [{\"label\": \"a\", \"score\": \"high\", \"segment\": [1, 2]}]}}",
    );
    w("reversed.json", b"{\"database\": {\"v\": {\"subset\": \"validation\", \"duration\": 10, \"annotations\": [{\"label\": \"a\", \"segment\": [5, 2]}]}}}");
    w(
        "nan_seg.json",
        b"{\"results\": {\"v\": [{\"label\": \"a\", \"score\": 0.5, \"segment\": [1, NaN]}]}}",
    );
    w(
        "dup_gt.json",
        b"{\"database\": {\"v\": {\"subset\": \"validation\", \"duration\": 10, \"annotations\": []},\n \"v\": {\"subset\": \"validation\", \"duration\": 10}}}",
    );
    w(
        "dup_pred.json",
        b"{\"results\": {\"v\": [], \"v\": [{\"label\": \"a\", \"score\": 1, \"segment\": [1, 2]}]}}",
    );
    w(
        "gt_outside.json",
        b"{\"database\": {\"v\": {\"subset\": \"validation\", \"duration\": 10, \"annotations\": [{\"label\": \"a\", \"segment\": [5, 12]}]}}}",
    );
    w(
        "pred_outside.json",
        b"{\"results\": {\"v\": [{\"label\": \"a\", \"score\": 1, \"segment\": [5, 10]}]}}",
    );
    w("cfg_type.json", b"{\"epochs\": \"many\"}");
    w("cfg_unknown.json", b"{\"epoch\": 3}");
    w(
        "cfg_unknown_nested.json",
        b"{\"head\": {\"embed_dims\": 64}}",
    );
    w(
        "cfg_heads.json",
        b"{\"backbone\": {\"Vit\": {\"num_heads\": 3}}}",
    );
    w(
        "cfg_droppath.json",
        b"{\"backbone\": {\"Vit\": {\"drop_path_rate\": 7.0}}}",
    );
    w("cfg_clip0.json", b"{\"clips\": {\"clip_frames\": 0}}");
    // Temporal tokens: a position count the backbone does not have; overlapping clips.
    w(
        "cfg_tokens2.json",
        b"{\"clips\": {\"positions_per_clip\": 2, \"snippet_stride\": 16}}",
    );
    w(
        "cfg_tokens_overlap.json",
        b"{\"clips\": {\"positions_per_clip\": 4, \"snippet_stride\": 4}}",
    );
    w(
        "cfg_tokens0.json",
        b"{\"clips\": {\"positions_per_clip\": 0}}",
    );
    w(
        "cfg_scale0.json",
        b"{\"precision\": \"f16\", \"loss_scale\": {\"init\": 0}}",
    );
    w("cfg_variant.json", b"{\"mode\": \"sideways\"}");
    w(
        "cfg_nested.json",
        b"{\"backbone\": {\"Vit\": {\"depth\": -3}}}",
    );
    w("cfg_bad.json", b"{\"epochs\": 3,");
    w("pt_type.json", b"{\"steps\": \"all\"}");
    w(
        "cfg_pyramid.json",
        b"{\"head\": {\"pyramid\": {\"strides\": [1, 3]}}}",
    );
    w(
        "cfg_ranges.json",
        b"{\"head\": {\"pyramid\": {\"strides\": [1, 2], \"regression_ranges\": [[0, 4], [9, 1]]}}}",
    );
    w("cfg_embed0.json", b"{\"head\": {\"embed_convs\": 0}}");
    w("cfg_iou.json", b"{\"post\": {\"iou_threshold\": 2.5}}");
    w("cfg_topk.json", b"{\"post\": {\"pre_nms_topk\": 0}}");
    w("cfg_sigma.json", b"{\"post\": {\"sigma\": -1}}");
    w("cfg_alpha.json", b"{\"loss\": {\"focal_alpha\": 3}}");
    w(
        "cfg_norm.json",
        b"{\"loss\": {\"normalizer_momentum\": 1.0}}",
    );
    w("cfg_wd.json", b"{\"weight_decay\": -0.5}");
    w(
        "pt_heads.json",
        b"{\"backbone\": {\"Vit\": {\"num_heads\": 0}}}",
    );
    w("pt_overlap.json", b"{\"min_overlap\": 1.5}");
    w("pt_clip0.json", b"{\"clips\": {\"clip_frames\": 0}}");
    // THUMOS annotation files.
    std::fs::create_dir_all(root.join("thumos")).unwrap();
    w(
        "thumos/Jump_val.txt",
        b"\xef\xbb\xbfvid_1 1.0 2.5\nvid_2 3 4\n",
    );
    w("thumos/Run_val.txt", b"vid_1 5 6\n");
    std::fs::create_dir_all(root.join("thumos_bad")).unwrap();
    w("thumos_bad/Jump_val.txt", b"vid_1 1.0 2.5\nvid_2 3\n");
    std::fs::create_dir_all(root.join("thumos_nan")).unwrap();
    w("thumos_nan/Jump_val.txt", b"vid_1 one 2.5\n");
    std::fs::create_dir_all(root.join("thumos_rev")).unwrap();
    w("thumos_rev/Jump_val.txt", b"vid_1 4 2.5\n");
    std::fs::create_dir_all(root.join("thumos_bin")).unwrap();
    w("thumos_bin/Jump_val.txt", &[0xff, 0xfe, 0x00, 0x41]);
    std::fs::create_dir_all(root.join("empty_dir")).unwrap();
    // Checkpoints.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/backbones/vit.pth"),
        root.join("vit.pth"),
    )
    .unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/backbones/vit.safetensors"),
        root.join("vit.safetensors"),
    )
    .unwrap();
    let st = std::fs::read(root.join("vit.safetensors")).unwrap();
    w("cut.safetensors", &st[..st.len() / 2]);
    // Broken datasets, each a copy of ds with one defect.
    let variant = |name: &str| {
        let d = root.join(name);
        copy_dir(&root.join("ds"), &d);
        d
    };
    // Video files: the same kind of dataset as mp4, and a copy with one file cut short.
    sh(
        root,
        "synth --out dsv --videos 3 --size 32 --classes 2 --seed 3 --video",
    );
    copy_dir(&root.join("dsv"), &root.join("dsv_cut"));
    let f = root.join("dsv_cut/videos/synth_00001.mp4");
    let b = std::fs::read(&f).unwrap();
    std::fs::write(&f, &b[..b.len() / 3]).unwrap();
    // A folder and a link loop where a video file should be.
    copy_dir(&root.join("dsv"), &root.join("ds_dirvid"));
    let f = root.join("ds_dirvid/videos/synth_00001.mp4");
    std::fs::remove_file(&f).unwrap();
    std::fs::create_dir(&f).unwrap();
    copy_dir(&root.join("dsv"), &root.join("ds_loop"));
    let f = root.join("ds_loop/videos/synth_00001.mp4");
    std::fs::remove_file(&f).unwrap();
    std::os::unix::fs::symlink("synth_00001.mp4", &f).unwrap();
    // File names FFmpeg would read as an option, another protocol or another file.
    let video = std::fs::read(root.join("dsv/videos/synth_00000.mp4")).unwrap();
    for name in ["a.mp4", "b.mp4", "x.mp4"] {
        w(name, &video);
    }
    for name in ["-report", "concat:a.mp4|b.mp4", "file:x.mp4", "-y.mp4"] {
        w(name, b"not a video");
    }
    // Timestamps that jump by 100,000 s between frames 4 and 5.
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=32x32:rate=10:duration=1")
        .args(["-vf", "setpts='if(gte(N,5),PTS+100000/TB,PTS)'"])
        .args([
            "-fps_mode",
            "passthrough",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ])
        .arg(root.join("gap.mp4"))
        .status()
        .unwrap();
    assert!(st.success());
    // An output that is a link to another file.
    std::os::unix::fs::symlink("pred.json", root.join("link.json")).unwrap();
    let d = variant("ds_gap");
    std::fs::remove_file(d.join("frames/synth_00001/img_00050.jpg")).unwrap();
    let d = variant("ds_mixed");
    std::fs::copy(
        first_video(&d).join("img_00001.jpg"),
        first_video(&d).join("img_00001.png"),
    )
    .unwrap();
    // Frames are checked when a clip reads them: the damaged ones below are frames the
    // configuration's clips use (every 2nd frame from the first).
    let d = variant("ds_trunc");
    let f = d.join("frames/synth_00002/img_00011.jpg");
    let b = std::fs::read(&f).unwrap();
    std::fs::write(&f, &b[..b.len() / 2]).unwrap();
    let d = variant("ds_notimg");
    std::fs::write(first_video(&d).join("img_00003.jpg"), b"hello").unwrap();
    let d = variant("ds_size");
    image::RgbImage::new(16, 16)
        .save(first_video(&d).join("img_00005.jpg"))
        .unwrap();
    let d = variant("ds_count");
    edit_json(&d.join("annotations.json"), |v| {
        let db = v["database"].as_object_mut().unwrap();
        let first = db.values_mut().next().unwrap();
        first["num_frames"] = (first["num_frames"].as_u64().unwrap() + 5).into();
    });
    let d = variant("ds_noann");
    edit_json(&d.join("annotations.json"), |v| {
        for video in v["database"].as_object_mut().unwrap().values_mut() {
            video["annotations"] = serde_json::json!([]);
        }
    });
    let d = variant("ds_noframes");
    std::fs::remove_dir_all(d.join("frames/synth_00001")).unwrap();
    let d = variant("ds_noval");
    edit_json(&d.join("annotations.json"), |v| {
        for video in v["database"].as_object_mut().unwrap().values_mut() {
            video["subset"] = "validation".into();
        }
    });
    // A folder of the user's own files named like run outputs, with no run in it.
    std::fs::create_dir_all(root.join("notrun/features")).unwrap();
    w("notrun/features/mine.txt", b"mine");
    w("notrun/predictions.json", b"{}");
    // Video ids that would be paths outside the media folder.
    for (name, id) in [("ds_escape", "../escape"), ("ds_abs", "/tmp/abs_id")] {
        let d = variant(name);
        edit_json(&d.join("annotations.json"), |v| {
            let db = v["database"].as_object_mut().unwrap();
            let first = db.keys().next().unwrap().clone();
            let entry = db.remove(&first).unwrap();
            db.insert(id.to_string(), entry);
        });
    }
    let d = variant("ds_fps_huge");
    edit_json(&d.join("annotations.json"), |v| {
        for video in v["database"].as_object_mut().unwrap().values_mut() {
            video["fps"] = 1e300.into();
        }
    });
    let d = variant("ds_badjson");
    std::fs::write(d.join("annotations.json"), b"{\"database\": ").unwrap();
    let d = variant("ds_fps");
    edit_json(&d.join("annotations.json"), |v| {
        for video in v["database"].as_object_mut().unwrap().values_mut() {
            video["fps"] = (-15.0).into();
        }
    });
    let d = variant("ds_short");
    let v = first_video(&d);
    for e in std::fs::read_dir(&v).unwrap() {
        let p = e.unwrap().path();
        let n: usize = p.file_stem().unwrap().to_str().unwrap()[4..]
            .parse()
            .unwrap();
        if n > 5 {
            std::fs::remove_file(p).unwrap();
        }
    }
    edit_json(&d.join("annotations.json"), |v| {
        let db = v["database"].as_object_mut().unwrap();
        db.values_mut().next().unwrap()["num_frames"] = 5.into();
    });
    // A folder of real frames without annotations: never to be filled with synthetic videos.
    let real = root.join("real/frames/v1");
    std::fs::create_dir_all(&real).unwrap();
    for i in 1..=3 {
        std::fs::copy(
            first_video(&root.join("ds")).join(format!("img_0000{i}.jpg")),
            real.join(format!("img_{i:05}.jpg")),
        )
        .unwrap();
    }
    // A three-frame video, shorter than one clip.
    let short = root.join("short_video");
    copy_dir(&real, &short);
    // Runs whose checkpoints are damaged: one with a good previous checkpoint, one without.
    copy_dir(&root.join("run"), &root.join("run_damaged"));
    let flip = |p: PathBuf| {
        let mut b = std::fs::read(&p).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0xff;
        std::fs::write(&p, b).unwrap();
    };
    flip(root.join("run_damaged/checkpoint/model.bpk"));
    let _ = std::fs::remove_dir_all(root.join("run_damaged/checkpoint.old"));
    copy_dir(&root.join("run"), &root.join("run_state"));
    std::fs::write(root.join("run_state/checkpoint/state.json"), b"{not json").unwrap();
    let _ = std::fs::remove_dir_all(root.join("run_state/checkpoint.old"));
    // No manifest to verify against; a newest checkpoint that lost its weights.
    copy_dir(&root.join("run"), &root.join("run_nosums"));
    let _ = std::fs::remove_dir_all(root.join("run_nosums/checkpoint.old"));
    std::fs::remove_file(root.join("run_nosums/checkpoint/checksums.json")).unwrap();
    copy_dir(&root.join("run"), &root.join("run_nomodel"));
    let _ = std::fs::remove_dir_all(root.join("run_nomodel/checkpoint.old"));
    copy_dir(
        &root.join("run_nomodel/checkpoint"),
        &root.join("run_nomodel/checkpoint.old"),
    );
    std::fs::remove_file(root.join("run_nomodel/checkpoint/model.bpk")).unwrap();
    feature_workspace(root);
}

/// Feature datasets (ActionFormer's layout) good and broken, ActionFormer configurations and
/// checkpoints, and a feature run imported from the checkpoint.
fn feature_workspace(root: &Path) {
    let w = |name: &str, bytes: &[u8]| std::fs::write(root.join(name), bytes).unwrap();
    let af = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/actionformer");
    copy_dir(&af, &root.join("af"));
    let yaml = std::fs::read_to_string(af.join("thumos_tiny.yaml")).unwrap();
    for (name, from, to) in [
        ("af_unknown.yaml", "epochs: 30,", "epochs: 30, epoch: 3,"),
        ("af_fpn.yaml", "fpn_type: identity", "fpn_type: fpn"),
        ("af_sgd.yaml", "epochs: 30,", "epochs: 30, type: SGD,"),
        ("af_classes.yaml", "num_classes: 4", "num_classes: 7"),
        ("af_width.yaml", "input_dim: 8", "input_dim: 9"),
        (
            "af_wide.yaml",
            "embd_dim: 8,\n  fpn_dim: 8,\n  head_dim: 8,",
            "embd_dim: 16,\n  fpn_dim: 16,\n  head_dim: 16,",
        ),
        ("af_fpndim.yaml", "fpn_dim: 8,", "fpn_dim: 16,"),
        (
            "af_voting.yaml",
            "multiclass_nms: True,",
            "multiclass_nms: False,",
        ),
        (
            "af_extscore.yaml",
            "multiclass_nms: True,",
            "multiclass_nms: True, ext_score_file: s.pkl,",
        ),
        (
            "af_abspe.yaml",
            "n_mha_win_size: 9,",
            "n_mha_win_size: 9, use_abs_pe: True,",
        ),
        (
            "af_smooth.yaml",
            "cls_prior_prob: 0.01,",
            "cls_prior_prob: 0.01, label_smoothing: 0.1,",
        ),
        ("af_batch.yaml", "batch_size: 2,", "batch_size: two,"),
        (
            "af_crop.yaml",
            "crop_ratio: [0.9, 1.0],",
            "crop_ratio: [0.9],",
        ),
        (
            "af_upsample.yaml",
            "max_seq_len: 256,",
            "max_seq_len: 256, force_upsampling: True,",
        ),
        (
            "af_dataset.yaml",
            "dataset_name: thumos",
            "dataset_name: kinetics",
        ),
        (
            "af_arch.yaml",
            "n_mha_win_size: 9,",
            "n_mha_win_size: 9, backbone_arch: [2, 2],",
        ),
        (
            "af_heads.yaml",
            "n_mha_win_size: 9,",
            "n_mha_win_size: 9, n_head: 3,",
        ),
        (
            "af_lossw.yaml",
            "cls_prior_prob: 0.01,",
            "cls_prior_prob: 0.01, loss_weight: -1,",
        ),
        (
            "af_nms.yaml",
            "multiclass_nms: True,",
            "multiclass_nms: True, nms_method: none,",
        ),
    ] {
        assert!(yaml.contains(from), "{from}");
        w(name, yaml.replace(from, to).as_bytes());
    }
    w("af_bad.yaml", b"dataset: {\n  num_classes: [4,\n");
    w("af_list.yaml", b"- 1\n- 2\n");
    // Feature folders with one defect each.
    let feats = root.join("af/features");
    let variant = |name: &str| {
        let d = root.join(name);
        copy_dir(&feats, &d);
        d
    };
    let first = "video_test_a.npy";
    let npy = |shape: &[u64], dtype: &str, bytes: usize| {
        let header = format!(
            "{{'descr': '{dtype}', 'fortran_order': False, 'shape': ({}), }}",
            shape.iter().map(|s| format!("{s},")).collect::<String>()
        );
        let mut h = header.into_bytes();
        while (h.len() + 11) % 64 != 0 {
            h.push(b' ');
        }
        h.push(b'\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h);
        out.extend(vec![0u8; bytes]);
        out
    };
    std::fs::write(
        variant("feat_width").join(first),
        npy(&[200, 5], "<f4", 200 * 5 * 4),
    )
    .unwrap();
    std::fs::write(variant("feat_1d").join(first), npy(&[200], "<f4", 800)).unwrap();
    std::fs::write(variant("feat_int").join(first), npy(&[200, 8], "<i4", 6400)).unwrap();
    std::fs::write(variant("feat_rows0").join(first), npy(&[0, 8], "<f4", 0)).unwrap();
    std::fs::write(variant("feat_text").join(first), b"hello").unwrap();
    std::fs::write(
        variant("feat_cut").join(first),
        &npy(&[200, 8], "<f4", 6400)[..500],
    )
    .unwrap();
    std::fs::create_dir_all(root.join("feat_none")).unwrap();
    // A feature file named like the video but a folder.
    let d = variant("feat_dir");
    std::fs::remove_file(d.join(first)).unwrap();
    std::fs::create_dir(d.join(first)).unwrap();
    // Annotations with broken label ids, unsafe ids, no frame rate.
    let ann: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(af.join("annotations.json")).unwrap())
            .unwrap();
    let edit = |name: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = ann.clone();
        f(&mut v);
        w(name, v.to_string().as_bytes());
    };
    edit("ann_twoids.json", &|v| {
        let a = &mut v["database"]["video_test_a"]["annotations"];
        let label = a[0]["label"].clone();
        a[1]["label"] = label;
        a[1]["label_id"] = (a[0]["label_id"].as_u64().unwrap() + 1).into();
    });
    edit("ann_gapids.json", &|v| {
        for video in v["database"].as_object_mut().unwrap().values_mut() {
            for a in video["annotations"].as_array_mut().unwrap() {
                let id = a["label_id"].as_u64().unwrap();
                a["label_id"] = (id * 2).into();
            }
        }
    });
    edit("ann_someids.json", &|v| {
        v["database"]["video_test_a"]["annotations"][0]
            .as_object_mut()
            .unwrap()
            .remove("label_id");
    });
    edit("ann_escape.json", &|v| {
        let db = v["database"].as_object_mut().unwrap();
        let e = db.remove("video_test_a").unwrap();
        db.insert("../video_test_a".into(), e);
    });
    edit("ann_nofps.json", &|v| {
        v["database"]["video_test_b"]
            .as_object_mut()
            .unwrap()
            .remove("fps");
    });
    edit("ann_long.json", &|v| {
        for video in v["database"].as_object_mut().unwrap().values_mut() {
            let d = video["duration"].as_f64().unwrap();
            video["duration"] = (3.0 * d).into();
        }
    });
    edit("ann_train.json", &|v| {
        for video in v["database"].as_object_mut().unwrap().values_mut() {
            video["subset"] = "Validation".into();
        }
    });
    // A feature run imported from the checkpoint; a folder of the user's own files named like
    // a feature run's.
    sh(
        root,
        "weights import-actionformer --checkpoint af/epoch_003.pth.tar --config af/thumos_tiny.yaml --dataset af/annotations.json --out run_feat",
    );
    std::fs::create_dir_all(root.join("notfeatrun")).unwrap();
    w("notfeatrun/head.safetensors", b"mine");
}

fn cases() -> Vec<Case> {
    let t = "--config tiny.json --from-scratch --quiet";
    let mut c = vec![
        // Top level.
        case("", 2, &["Usage"]),
        case("frobnicate", 2, &["frobnicate"]),
        case("train --no-such-flag", 2, &["--no-such-flag"]),
        // plan
        case(
            "plan --backbone vit-q --frames 96",
            2,
            &["vit-q", "--backbone"],
        ),
        case("plan --frames 0", 2, &["--frames", "0"]),
        case("plan --backbone vit-b", 2, &["--frames"]),
        case(
            "plan --frames 96 --budget 12parsecs",
            1,
            &["--budget 12parsecs", "parsecs"],
        ),
        case(
            "plan --frames 96 --budget 0",
            1,
            &["--budget 0", "positive"],
        ),
        case("plan --frames 96 --budget -3GiB", 2, &["-3"]),
        case(
            "plan --frames 96 --frame-size 150",
            1,
            &["--frame-size 150", "patch"],
        ),
        case("plan --frames 96 --frame-size 0", 2, &["--frame-size", "0"]),
        case("plan --frames 4", 1, &["--frames 4", "one clip"]),
        case("plan --frames 96 --clip-frames 0", 2, &["--clip-frames"]),
        case(
            "plan --frames 96 --videos-per-step 0",
            2,
            &["--videos-per-step"],
        ),
        case("plan --frames 96 --device tpu", 2, &["tpu", "--device"]),
        case("plan --frames 96 --precision f8", 2, &["f8", "--precision"]),
        case(
            "plan --backbone r3d-18 --frames 96 --frame-size 112 --precision bf16",
            1,
            &["bf16", "ResNet"],
        ),
        case(
            "plan --frames 96 --config cfg_bad.json",
            1,
            &["cfg_bad.json", "line 1"],
        ),
        case(
            "plan --frames 96 --config cfg_nested.json",
            1,
            &["cfg_nested.json"],
        ),
        case(
            "plan --frames 96 --config missing.json",
            1,
            &["missing.json"],
        ),
        // synth
        case("synth --out x --size 100000", 2, &["--size", "100000"]),
        case("synth --out x --size 8", 2, &["--size"]),
        case("synth --out x --size abc", 2, &["--size"]),
        case("synth --out x --videos 0", 2, &["--videos"]),
        case(
            "synth --out x --videos 10000000",
            2,
            &["--videos", "10000000"],
        ),
        case("synth --out x --videos -5", 2, &["-5"]),
        case("synth --out x --classes 9", 2, &["--classes"]),
        case("synth --out x --classes 0", 2, &["--classes"]),
        case("synth --out x --seed -1", 2, &["-1"]),
        case("synth --out ds --videos 3", 1, &["ds", "not empty"]),
        case("synth --out ds --png", 1, &["ds", "not empty"]),
        case("synth --out thumos", 1, &["thumos", "not empty"]),
        case("synth --out pred.json", 1, &["pred.json"]),
        case("synth", 2, &["--out"]),
        // eval
        case(
            "eval --gt missing.json --pred pred.json",
            1,
            &["missing.json"],
        ),
        case(
            "eval --gt ds/annotations.json --pred missing.json",
            1,
            &["missing.json"],
        ),
        case(
            "eval --gt bad.json --pred pred.json",
            1,
            &["bad.json", "line 1"],
        ),
        case(
            "eval --gt ds/annotations.json --pred bad.json",
            1,
            &["bad.json"],
        ),
        case("eval --gt empty.json --pred pred.json", 1, &["empty.json"]),
        case(
            "eval --gt garbage.bin --pred pred.json",
            1,
            &["garbage.bin"],
        ),
        case("eval --gt array.json --pred pred.json", 1, &["array.json"]),
        case(
            "eval --gt no_db.json --pred pred.json",
            1,
            &["no_db.json", "database"],
        ),
        case(
            "eval --gt reversed.json --pred pred.json",
            1,
            &["reversed.json"],
        ),
        case("eval --gt ds --pred pred.json", 1, &["ds"]),
        case(
            "eval --gt ds/annotations.json --pred score_type.json",
            1,
            &["score_type.json", "score"],
        ),
        case(
            "eval --gt ds/annotations.json --pred nan_seg.json",
            1,
            &["nan_seg.json"],
        ),
        case(
            "eval --gt ds/annotations.json --pred ds/annotations.json",
            1,
            &["results"],
        ),
        case(
            "eval --gt ds/annotations.json --pred pred.json --thresholds -0.1",
            2,
            &["-0.1", "(0, 1]"],
        ),
        case(
            "eval --gt ds/annotations.json --pred pred.json --thresholds 1.5",
            2,
            &["1.5"],
        ),
        case(
            "eval --gt ds/annotations.json --pred pred.json --thresholds abc",
            2,
            &["abc"],
        ),
        case(
            "eval --gt ds/annotations.json --pred pred.json --thresholds NaN",
            2,
            &["NaN"],
        ),
        case(
            "eval --gt ds/annotations.json --pred pred.json --thresholds 0.3,,0.5",
            2,
            &["--thresholds"],
        ),
        case(
            "eval --gt ds/annotations.json --pred pred.json --subset foo",
            2,
            &["foo", "all"],
        ),
        case(
            "eval --gt gt_bom.json --pred pred_bom.json --subset all --thresholds 0.5",
            0,
            &["100.00"],
        ),
        piped(
            "eval --gt ds/annotations.json --pred pred.json --subset all --per-class",
            Stdout::Full,
            &["standard output", "space"],
        ),
        piped(
            "eval --gt ds/annotations.json --pred pred.json --subset all --json",
            Stdout::Full,
            &["standard output"],
        ),
        piped(
            "eval --gt ds/annotations.json --pred pred.json --subset all --per-class",
            Stdout::Closed,
            &["standard output", "pipe"],
        ),
        // convert-thumos
        case("convert-thumos --dir missing --out t.json", 1, &["missing"]),
        case(
            "convert-thumos --dir empty_dir --out t.json",
            1,
            &["empty_dir", "THUMOS"],
        ),
        case(
            "convert-thumos --dir thumos --out thumos/Jump_val.txt",
            1,
            &["Jump_val.txt", "input"],
        ),
        case(
            "convert-thumos --dir thumos --out ./thumos/../thumos/Run_val.txt",
            1,
            &["Run_val.txt", "input"],
        ),
        case(
            "convert-thumos --dir thumos --out thumos",
            1,
            &["thumos", "folder"],
        ),
        case(
            "convert-thumos --dir thumos_bad --out t.json",
            1,
            &["Jump_val.txt:2", "fields"],
        ),
        case(
            "convert-thumos --dir thumos_nan --out t.json",
            1,
            &["Jump_val.txt:1", "one"],
        ),
        case(
            "convert-thumos --dir thumos_rev --out t.json",
            1,
            &["Jump_val.txt:1", "before"],
        ),
        case(
            "convert-thumos --dir thumos_bin --out t.json",
            1,
            &["Jump_val.txt"],
        ),
        case(
            "convert-thumos --dir thumos --split test --out t.json",
            1,
            &["thumos", "_test.txt"],
        ),
        case(
            "convert-thumos --dir thumos --subset foo --out t.json",
            2,
            &["foo"],
        ),
        case(
            "convert-thumos --dir thumos --subset all --out t.json",
            2,
            &["all"],
        ),
        case(
            "convert-thumos --dir ds/annotations.json --out t.json",
            1,
            &["annotations.json"],
        ),
        // weights
        case(
            "weights inspect --checkpoint missing.safetensors",
            1,
            &["missing.safetensors"],
        ),
        case(
            "weights inspect --checkpoint pred.json",
            1,
            &["pred.json", "safetensors"],
        ),
        case(
            "weights inspect --checkpoint empty.json",
            1,
            &["empty.json"],
        ),
        case(
            "weights inspect --checkpoint garbage.bin",
            1,
            &["garbage.bin"],
        ),
        case(
            "weights inspect --checkpoint cut.safetensors",
            1,
            &["cut.safetensors"],
        ),
        case("weights inspect --checkpoint vit.pth", 0, &["tensors"]),
        case(
            "weights inspect --checkpoint vit.safetensors --family bogus",
            2,
            &["bogus", "possible values"],
        ),
        case("weights inspect --checkpoint ds", 1, &["ds"]),
        piped(
            "weights inspect --checkpoint vit.pth",
            Stdout::Full,
            &["standard output"],
        ),
        piped(
            "weights inspect --checkpoint vit.safetensors",
            Stdout::Closed,
            &["standard output", "pipe"],
        ),
        case(
            "weights convert --model vit-s --checkpoint vit.pth --out vit.pth",
            1,
            &["vit.pth", "input"],
        ),
        case(
            "weights convert --model vit-s --checkpoint vit.safetensors --out ./vit.safetensors",
            1,
            &["vit.safetensors", "input"],
        ),
        case(
            "weights convert --model bogus --checkpoint vit.pth --out o.safetensors",
            2,
            &["bogus", "possible values"],
        ),
        case(
            "weights convert --model vit-s --checkpoint vit.safetensors --out o.safetensors",
            1,
            &["vit.safetensors", "tensor"],
        ),
        case(
            "weights convert --model vit-s --checkpoint missing.pth --out o.safetensors",
            1,
            &["missing.pth"],
        ),
        case(
            "weights convert --model vit-s --checkpoint garbage.bin --out o.safetensors",
            1,
            &["garbage.bin"],
        ),
        case(
            "weights convert --model vit-s --checkpoint vit.pth --family bogus --out o.safetensors",
            2,
            &["bogus", "possible values"],
        ),
        // train: runs
        case(
            &format!("train --data ds --out run {t}"),
            1,
            &["run", "--resume", "--overwrite"],
        ),
        case(
            "train --data ds --out run --resume --overwrite",
            2,
            &["--overwrite"],
        ),
        case(
            "train --data ds --out empty_dir --resume",
            1,
            &["empty_dir", "no checkpoint"],
        ),
        case(
            "train --data ds --out run --resume --mode head-only",
            1,
            &["--mode", "head-only"],
        ),
        case(
            "train --data ds --out run --resume --backbone vit-s",
            1,
            &["--backbone"],
        ),
        case(
            "train --data ds --out run --resume --lr-head 0.5",
            1,
            &["--lr-head", "0.5"],
        ),
        case(
            "train --data ds --out run --resume --seed 9",
            1,
            &["--seed"],
        ),
        case(
            "train --data ds --out run --resume --lofi s",
            1,
            &["--lofi"],
        ),
        case(
            "train --data ds --out run --resume --augment",
            1,
            &["--augment"],
        ),
        case(
            "train --data ds --out run --resume --rewired",
            1,
            &["--rewired"],
        ),
        case(
            "train --data ds --out run --resume --weights vit.pth",
            1,
            &["--weights"],
        ),
        case(
            "train --data ds --out run --resume --config tiny.json",
            1,
            &["--config"],
        ),
        case(
            "train --data ds --out run --resume --epochs 0",
            1,
            &["--epochs 0"],
        ),
        case(
            "train --data ds --out run --resume --retrain-head",
            2,
            &["--retrain-head"],
        ),
        case(
            "train --data ds --out run_state --resume",
            1,
            &["state.json"],
        ),
        case(
            "train --data ds --out run_damaged --resume",
            1,
            &["model.bpk", "checksum"],
        ),
        case(
            &format!("train --data ds --out new --retrain-head --mode head-only {t}"),
            1,
            &["stage 2"],
        ),
        // train: data
        case(
            &format!("train --data real --out new {t}"),
            1,
            &["real", "annotations.json"],
        ),
        case(
            &format!("train --data ds_noann --out new {t}"),
            1,
            &["ds_noann", "annotated action"],
        ),
        case(
            &format!("train --data ds_noann --out new --mode head-only {t}"),
            1,
            &["ds_noann", "annotated action"],
        ),
        // Every configuration field known and in range, named when not.
        case(
            "train --data ds --out new --config cfg_unknown.json --from-scratch --quiet",
            1,
            &["cfg_unknown.json", "`epoch`", "no such setting"],
        ),
        case(
            "train --data ds --out new --config cfg_unknown_nested.json --from-scratch --quiet",
            1,
            &["cfg_unknown_nested.json", "head.embed_dims"],
        ),
        case(
            "train --data ds --out new --config cfg_heads.json --from-scratch --quiet",
            1,
            &["backbone.Vit.num_heads", "does not divide"],
        ),
        case(
            "train --data ds --out new --config cfg_droppath.json --from-scratch --quiet",
            1,
            &["backbone.Vit.drop_path_rate", "[0, 1)"],
        ),
        case(
            "train --data ds --out new --config cfg_clip0.json --from-scratch --quiet",
            1,
            &["clips.clip_frames", "at least 1"],
        ),
        case(
            "train --data ds --out new --config cfg_tokens2.json --from-scratch --quiet",
            1,
            &["clips.positions_per_clip", "2", "temporal positions"],
        ),
        case(
            "train --data ds --out new --config cfg_tokens_overlap.json --from-scratch --quiet",
            1,
            &["clips.positions_per_clip", "tile"],
        ),
        case(
            "train --data ds --out new --config cfg_tokens0.json --from-scratch --quiet",
            1,
            &["clips.positions_per_clip", "at least 1"],
        ),
        case(
            &format!("train --data ds --out new {t} --mode adapter --checkpointing"),
            1,
            &["checkpointing", "mode full"],
        ),
        case(
            &format!("train --data ds --out new {t} --rewired --checkpointing"),
            1,
            &["checkpointing", "rewired"],
        ),
        case(
            &format!("train --data ds --out new {t} --backbone r3d-18 --checkpointing"),
            1,
            &["checkpointing", "ViT and Swin"],
        ),
        case(
            "train --data ds --out new --temporal-tokens --clips-per-video 8 --quiet",
            2,
            &["--temporal-tokens", "--clips-per-video"],
        ),
        case(
            "train --features feat_none --dataset af/annotations.json --out r_feat --temporal-tokens",
            1,
            &["--temporal-tokens", "--features"],
        ),
        case(
            "train --data ds --out new --config cfg_scale0.json --from-scratch --quiet",
            1,
            &["loss_scale.init"],
        ),
        case(
            "pretrain --data ds --out p/b.safetensors --config cfg_unknown.json --quiet",
            1,
            &["cfg_unknown.json", "`epoch`"],
        ),
        // Implausible numbers in annotations and flags.
        case(
            "eval --gt gt_outside.json --pred pred_outside.json --subset all",
            0,
            &[
                "gt_outside.json",
                "reach outside their video",
                "[5, 12] s in 10 s",
            ],
        ),
        case(
            &format!("train --data ds_fps_huge --out new {t}"),
            1,
            &["fps", "between 0.01 and 10000"],
        ),
        case(
            "infer --checkpoint run --video ds/frames/synth_00000 --fps 1e-300 --out o.json",
            2,
            &["--fps", "between 0.01 and 10000"],
        ),
        // A run is never made inside a dataset or another run.
        case(
            &format!("train --data ds --out ds/videos/run {t}"),
            1,
            &["ds/videos/run", "make runs outside them"],
        ),
        case(
            &format!("train --data ds --out run/inner {t}"),
            1,
            &["run/inner", "make runs outside them"],
        ),
        // Checkpoints are verified or refused; a fallback always says why.
        case(
            "infer --checkpoint run_nosums --dataset ds/annotations.json --subset all --out o.json",
            1,
            &["run_nosums", "checksums.json", "cannot be verified"],
        ),
        case(
            "infer --checkpoint run_nomodel --dataset ds/annotations.json --subset all --out o4.json",
            0,
            &["model.bpk", "using the previous checkpoint"],
        ),
        // Outputs never land inside a run, a dataset or a frame folder.
        case(
            "infer --checkpoint run --dataset ds/annotations.json --subset all --out run/predictions.json",
            1,
            &["run/predictions.json", "inside the training run"],
        ),
        case(
            "infer --checkpoint run --dataset ds/annotations.json --subset all --out ds_count/annotations.json",
            1,
            &["ds_count/annotations.json", "inside the dataset"],
        ),
        case(
            "infer --checkpoint run --video ds/frames/synth_00000 --out ds/frames/synth_00000/img_00001.json",
            1,
            &["img_00001.json", "inside the frame folder"],
        ),
        case(
            "infer --checkpoint run --video ds/frames/synth_00000 --timeline ds/frames/synth_00000 --out o2.json",
            1,
            &["synth_00000", "inside the frame folder"],
        ),
        case(
            "infer --checkpoint run --dataset ds/annotations.json --subset all --timeline run/tl --out o3.json",
            1,
            &["run/tl", "inside the training run"],
        ),
        case(
            "pretrain --data ds --out run/backbone.safetensors --steps 1",
            1,
            &["run/backbone.safetensors", "inside the training run"],
        ),
        // --overwrite removes only what a run wrote.
        case(
            &format!("train --data ds --out notrun --overwrite {t}"),
            1,
            &["notrun", "no run's config.json"],
        ),
        // Video ids that are paths.
        case(
            &format!("train --data ds_escape --out new --mode head-only {t}"),
            1,
            &["../escape", "cannot name a frame folder"],
        ),
        case(
            &format!("train --data ds_abs --out new {t}"),
            1,
            &["/tmp/abs_id", "cannot name a frame folder"],
        ),
        case(
            "infer --checkpoint run --dataset ds_escape/annotations.json --subset all --timeline tl --out o.json",
            1,
            &["../escape", "cannot name a frame folder"],
        ),
        // A video id given twice.
        case(
            "eval --gt dup_gt.json --pred pred.json",
            1,
            &["dup_gt.json", "line 2", "`v` appears twice"],
        ),
        case(
            "eval --gt ds/annotations.json --pred dup_pred.json",
            1,
            &["dup_pred.json", "`v` appears twice"],
        ),
        // Paths FFmpeg must read as plain local files, broken timelines, odd media entries.
        case(
            "infer --checkpoint run --video=-report --out o.json",
            1,
            &["-report", "not a readable video"],
        ),
        case(
            "infer --checkpoint run --video concat:a.mp4|b.mp4 --out o.json",
            1,
            &["concat:a.mp4|b.mp4", "not a readable video"],
        ),
        case(
            "infer --checkpoint run --video file:x.mp4 --out o.json",
            1,
            &["file:x.mp4", "not a readable video"],
        ),
        case(
            "infer --checkpoint run --video=-y.mp4 --out o.json",
            1,
            &["-y.mp4", "not a readable video"],
        ),
        case(
            "infer --checkpoint run --video gap.mp4 --out o.json",
            1,
            &["gap.mp4", "timestamps jump by 100000 s"],
        ),
        case(
            "infer --checkpoint run --dataset ds/annotations.json --out link.json",
            1,
            &["link.json", "symbolic link"],
        ),
        case(
            &format!("train --data ds_dirvid --out new {t}"),
            1,
            &["synth_00001.mp4", "is a folder"],
        ),
        case(
            &format!("train --data ds_loop --out new {t}"),
            1,
            &["synth_00001.mp4", "leads nowhere"],
        ),
        case(
            &format!("train --data ds/annotations.json --out new {t}"),
            1,
            &["annotations.json", "is a file"],
        ),
        // The input pipeline's flags.
        case(
            &format!("train --data ds --out new --frame-size 36 {t}"),
            1,
            &["frame size 36", "patch size 8"],
        ),
        case(
            &format!("train --data ds --out new --frame-size 0 {t}"),
            2,
            &["--frame-size", "at least 1"],
        ),
        case(
            &format!("train --data ds --out new --max-clips 0 {t}"),
            2,
            &["--max-clips", "at least 1"],
        ),
        case(
            &format!("train --data ds --out new --max-clips -3 {t}"),
            2,
            &["-3"],
        ),
        case(
            &format!("train --data ds --out new --max-clips 99999999999999999999999 {t}"),
            2,
            &["--max-clips"],
        ),
        case(
            &format!("train --data ds --out new --prefetch 0 {t}"),
            2,
            &["--prefetch"],
        ),
        case(
            &format!("train --data ds --out new --workers many {t}"),
            2,
            &["--workers", "many"],
        ),
        case(
            &format!("train --data ds --out new --videos-per-step 0 {t}"),
            2,
            &["--videos-per-step", "at least 1"],
        ),
        case(
            &format!("train --data ds --out new --videos-per-step 9 {t}"),
            1,
            &["ds", "--videos-per-step", "more than the dataset's"],
        ),
        case(
            &format!(
                "train --data ds --out new_batch --videos-per-step 2 --mode head-only \
                 --stop-after-steps 1 {t}"
            ),
            0,
            &["stopped after 1 steps"],
        ),
        case(
            &format!("train --data dsv_cut --out new {t}"),
            1,
            &["synth_00001.mp4"],
        ),
        case(
            &format!(
                "train --data dsv --out new_stream --frame-size 48 --max-clips 4 --workers 4 \
                 --prefetch 1 --stop-after-steps 2 {t}"
            ),
            0,
            &["stopped after 2 steps"],
        ),
        case(
            &format!("train --data ds_gap --out new {t}"),
            1,
            &["synth_00001", "50 is missing"],
        ),
        case(
            &format!("train --data ds_mixed --out new {t}"),
            1,
            &["synth_00000", "JPEG", "PNG"],
        ),
        case(
            &format!("train --data ds_trunc --out new {t}"),
            1,
            &["img_00011.jpg", "truncated"],
        ),
        case(
            &format!("train --data ds_notimg --out new {t}"),
            1,
            &["img_00003.jpg"],
        ),
        case(
            &format!("train --data ds_size --out new {t}"),
            1,
            &["img_00005.jpg", "16x16"],
        ),
        case(
            &format!("train --data ds_count --out new {t}"),
            1,
            &["synth_00000", "num_frames"],
        ),
        case(
            &format!("train --data ds_noframes --out new {t}"),
            1,
            &["synth_00001"],
        ),
        case(
            &format!("train --data ds_noval --out new {t}"),
            1,
            &["ds_noval", "no training videos"],
        ),
        case(
            &format!("train --data ds_badjson --out new {t}"),
            1,
            &["ds_badjson", "annotations.json"],
        ),
        case(
            &format!("train --data ds_fps --out new {t}"),
            1,
            &["fps", "synth_0000"],
        ),
        case(
            &format!("train --data ds_short --out new {t}"),
            1,
            &["synth_00000", "fewer than one clip"],
        ),
        case(
            &format!("train --data pred.json --out new {t}"),
            1,
            &["pred.json"],
        ),
        // train: flags and configurations
        case(
            &format!("train --data ds --out new --mode bogus {t}"),
            2,
            &["bogus"],
        ),
        case(
            &format!("train --data ds --out new --backbone bogus {t}"),
            2,
            &["bogus", "possible values"],
        ),
        case(
            &format!("train --data ds --out new --epochs 0 {t}"),
            1,
            &["epochs"],
        ),
        case(
            &format!("train --data ds --out new --epochs -1 {t}"),
            2,
            &["-1"],
        ),
        case(
            &format!("train --data ds --out new --lr-head NaN {t}"),
            1,
            &["lr_head", "NaN"],
        ),
        case(
            &format!("train --data ds --out new --lr-head -1 {t}"),
            1,
            &["lr_head", "-1"],
        ),
        case(
            &format!("train --data ds --out new --lr-backbone inf {t}"),
            1,
            &["lr_backbone"],
        ),
        case(
            &format!("train --data ds --out new --ema-decay 2 {t}"),
            1,
            &["ema_decay", "2"],
        ),
        case(
            &format!("train --data ds --out new --lofi bogus {t}"),
            2,
            &["bogus", "possible values"],
        ),
        case(
            &format!("train --data ds --out new --mode head-only --lofi s {t}"),
            1,
            &["LoFi"],
        ),
        case(
            &format!("train --data ds --out new --memory-budget lots {t}"),
            1,
            &["lots"],
        ),
        case(
            &format!("train --data ds --out new --backend bogus {t}"),
            2,
            &["bogus", "possible values"],
        ),
        case(
            "train --data ds --out new --config missing.json --from-scratch",
            1,
            &["missing.json"],
        ),
        case(
            "train --data ds --out new --config cfg_type.json --from-scratch",
            1,
            &["cfg_type.json", "`epochs`"],
        ),
        case(
            "train --data ds --out new --config cfg_variant.json --from-scratch",
            1,
            &["cfg_variant.json", "`mode`", "sideways"],
        ),
        case(
            "train --data ds --out new --config cfg_nested.json --from-scratch",
            1,
            &["cfg_nested.json", "depth"],
        ),
        case(
            "train --data ds --out new --config cfg_bad.json --from-scratch",
            1,
            &["cfg_bad.json", "line 1"],
        ),
        case(
            "train --data ds --out new --config array.json --from-scratch",
            1,
            &["array.json"],
        ),
        case(
            "train --data ds --out new --config tiny.json --weights missing.safetensors",
            1,
            &["missing.safetensors"],
        ),
        case(
            "train --data ds --out new --config tiny.json --weights garbage.bin",
            1,
            &["garbage.bin"],
        ),
        case(
            "train --data ds --out new --config tiny.json --weights vit.pth --from-scratch",
            2,
            &["--from-scratch"],
        ),
        // infer
        case(
            "infer --checkpoint missing --video short_video --out o.json",
            1,
            &["missing"],
        ),
        case(
            "infer --checkpoint run --video short_video --fps -1 --out o.json",
            2,
            &["--fps", "-1"],
        ),
        case(
            "infer --checkpoint run --video short_video --fps=-1 --out o.json",
            2,
            &["--fps"],
        ),
        case(
            "infer --checkpoint run --video short_video --fps NaN --out o.json",
            2,
            &["--fps", "NaN"],
        ),
        case(
            "infer --checkpoint run --video short_video --fps 0 --out o.json",
            2,
            &["--fps"],
        ),
        case(
            "infer --checkpoint run --video short_video --fps inf --out o.json",
            2,
            &["--fps"],
        ),
        case(
            "infer --checkpoint run --video short_video --out o.json",
            1,
            &["short_video", "fewer than one clip"],
        ),
        case(
            "infer --checkpoint run --video missing_dir --out o.json",
            1,
            &["missing_dir"],
        ),
        case(
            "infer --checkpoint run --video real --out o.json",
            1,
            &["real", "no JPEG or PNG"],
        ),
        case(
            "infer --checkpoint run --dataset ds/annotations.json --out ds/annotations.json",
            1,
            &["annotations.json", "input"],
        ),
        case(
            "infer --checkpoint run --dataset ds/annotations.json --out run/checkpoint/state.json",
            1,
            &["state.json", "input"],
        ),
        case(
            "infer --checkpoint run --dataset ds/annotations.json --out run",
            1,
            &["run", "folder"],
        ),
        case(
            "infer --checkpoint run --dataset bad.json --out o.json",
            1,
            &["bad.json"],
        ),
        case(
            "infer --checkpoint run --dataset ds_gap/annotations.json --subset all --out o.json",
            1,
            &["50 is missing"],
        ),
        case(
            "infer --checkpoint run --dataset ds/annotations.json --video short_video --out o.json",
            2,
            &["--video"],
        ),
        case(
            "infer --checkpoint run --out o.json",
            1,
            &["--dataset", "--video"],
        ),
        case(
            "infer --checkpoint run --dataset ds/annotations.json --subset foo --out o.json",
            2,
            &["foo", "all"],
        ),
        case(
            "infer --checkpoint run_damaged --dataset ds/annotations.json --out o.json",
            1,
            &["model.bpk", "checksum"],
        ),
        case(
            "infer --checkpoint run_state --dataset ds/annotations.json --out o.json",
            1,
            &["state.json"],
        ),
        case(
            "infer --checkpoint run --dataset ds/annotations.json --backend bogus --out o.json",
            2,
            &["bogus", "possible values"],
        ),
        case(
            "infer --checkpoint run --dataset ds/annotations.json --precision f64 --out o.json",
            2,
            &["f64", "possible values"],
        ),
        // pretrain
        case(
            "pretrain --data ds --out p/b.safetensors --steps 0 --quiet",
            1,
            &["steps"],
        ),
        case(
            "pretrain --data ds --out p/b.safetensors --batch-size 0 --quiet",
            1,
            &["batch_size"],
        ),
        case(
            "pretrain --data ds --out p/b.safetensors --lr -1 --quiet",
            1,
            &["lr", "-1"],
        ),
        case(
            "pretrain --data ds --out p/b.safetensors --lr NaN --quiet",
            1,
            &["lr", "NaN"],
        ),
        case(
            "pretrain --data ds --out p/b.safetensors --videos 0",
            2,
            &["--videos"],
        ),
        case(
            "pretrain --data ds --out vit.safetensors --weights vit.safetensors",
            1,
            &["vit.safetensors", "input"],
        ),
        case(
            "pretrain --data ds --out p/b.safetensors --config pt_type.json",
            1,
            &["pt_type.json", "`steps`"],
        ),
        case(
            "pretrain --data real --out p/b.safetensors",
            1,
            &["real", "annotations.json"],
        ),
        case(
            "pretrain --data ds --out p/b.safetensors --weights missing.safetensors --quiet",
            1,
            &["missing.safetensors"],
        ),
        case(
            "pretrain --data ds --out p/b.safetensors --config pt_heads.json",
            1,
            &["backbone.Vit.num_heads"],
        ),
        case(
            "pretrain --data ds --out p/b.safetensors --config pt_overlap.json",
            1,
            &["min_overlap", "1.5"],
        ),
        case(
            "pretrain --data ds --out p/b.safetensors --config pt_clip0.json",
            1,
            &["clips.clip_frames"],
        ),
        // baseline
        case("baseline --data real", 1, &["real", "annotations.json"]),
        case("baseline --data ds_badjson", 1, &["ds_badjson"]),
        case("baseline --data ds_gap", 1, &["ds_gap", "validation"]),
        case(
            "baseline --data ds --backend bogus",
            2,
            &["bogus", "possible values"],
        ),
    ];
    for (file, field) in [
        ("cfg_pyramid.json", "head.pyramid.strides"),
        ("cfg_ranges.json", "head.pyramid.regression_ranges"),
        ("cfg_embed0.json", "head.embed_convs"),
        ("cfg_iou.json", "post.iou_threshold"),
        ("cfg_topk.json", "post.pre_nms_topk"),
        ("cfg_sigma.json", "post.sigma"),
        ("cfg_alpha.json", "loss.focal_alpha"),
        ("cfg_norm.json", "loss.normalizer_momentum"),
        ("cfg_wd.json", "weight_decay"),
    ] {
        c.push(case(
            &format!("train --data ds --out r_cfg --config {file} --from-scratch --quiet"),
            1,
            &[field],
        ));
    }
    // A budget nothing fits: no half-made run, and an existing run stays as it was.
    c.push(case(
        "train --data ds --out r_budget --config tiny.json --from-scratch --memory-budget 1KiB --quiet",
        1,
        &["no fidelity fits"],
    ));
    c.push(case(
        "train --data ds --out run --config tiny.json --from-scratch --memory-budget 1KiB --overwrite --quiet",
        1,
        &["no fidelity fits"],
    ));
    c.extend(feature_cases());
    // Odd but valid: results with a byte-order mark, a checkpoint resumed with more epochs.
    c.push(case(
        "eval --gt gt_bom.json --pred pred.json --subset all --thresholds anet --json",
        0,
        &["average_map"],
    ));
    c
}

/// `train --features`, `infer --features` and `weights import-actionformer` on hostile input.
fn feature_cases() -> Vec<Case> {
    let train = |rest: &str| {
        format!(
            "train --features af/features --dataset af/annotations.json --out r_feat --quiet {rest}"
        )
    };
    let infer = |rest: &str| {
        format!("infer --checkpoint run_feat --dataset af/annotations.json --subset testing {rest}")
    };
    let import_ck = |ck: &str| {
        format!(
            "weights import-actionformer --checkpoint {ck} --config af/thumos_tiny.yaml --dataset af/annotations.json --out r_imp"
        )
    };
    let import = |rest: &str| {
        format!(
            "weights import-actionformer --checkpoint af/epoch_003.pth.tar --dataset af/annotations.json --out r_imp {rest}"
        )
    };
    let mut c = vec![
        // Flags.
        case(
            "train --features af/features --out r_feat",
            2,
            &["--dataset"],
        ),
        case(
            "train --dataset af/annotations.json --out r_feat",
            2,
            &["--features"],
        ),
        case(&train("--mode full"), 1, &["--mode", "--features"]),
        case(&train("--backbone vit-s"), 1, &["--backbone"]),
        case(&train("--resume"), 2, &["--resume"]),
        case(&train("--memory-budget 1GiB"), 1, &["--memory-budget"]),
        case(&train("--videos-per-step 0"), 2, &["--videos-per-step"]),
        case(&train("--ema-decay 1.5"), 1, &["ema_decay"]),
        case(&train("--lr-head -1"), 1, &["lr"]),
        // Data: only Test videos, which the default subsets do not train on.
        case(&train(""), 1, &["annotations.json", "training"]),
        case(
            &train("--config af/thumos_tiny.yaml"),
            1,
            &["fewer than one batch"],
        ),
        case(
            "train --features feat_none --dataset af/annotations.json --out r_feat --quiet",
            1,
            &["feat_none", "no video"],
        ),
        case(
            "train --features missing_dir --dataset af/annotations.json --out r_feat",
            1,
            &["missing_dir"],
        ),
        case(
            "train --features af/features --dataset missing.json --out r_feat",
            1,
            &["missing.json"],
        ),
        case(
            "train --features af/features --dataset bad.json --out r_feat",
            1,
            &["bad.json"],
        ),
        case(
            "train --features af/features --dataset ann_twoids.json --out r_feat",
            1,
            &["ann_twoids.json", "label_id"],
        ),
        case(
            "train --features af/features --dataset ann_gapids.json --out r_feat",
            1,
            &["ann_gapids.json", "label_id"],
        ),
        case(
            "train --features af/features --dataset ann_someids.json --out r_feat",
            1,
            &["ann_someids.json", "label_id"],
        ),
        case(
            "train --features af/features --dataset ann_escape.json --out r_feat",
            1,
            &["ann_escape.json", "../video_test_a"],
        ),
        case(
            "train --features af/features --dataset ann_nofps.json --out r_feat",
            1,
            &["ann_nofps.json", "video_test_b", "fps"],
        ),
        // Feature files.
        case(
            "train --features feat_width --dataset ann_train.json --out r_feat --quiet",
            1,
            &["video_test_a.npy", "channels"],
        ),
        case(
            "train --features feat_1d --dataset ann_train.json --out r_feat --quiet",
            1,
            &["video_test_a.npy", "2-D"],
        ),
        case(
            "train --features feat_int --dataset ann_train.json --out r_feat --quiet",
            1,
            &["video_test_a.npy", "dtype"],
        ),
        case(
            "train --features feat_rows0 --dataset ann_train.json --out r_feat --quiet",
            1,
            &["video_test_a.npy", "no feature rows"],
        ),
        case(
            "train --features feat_text --dataset ann_train.json --out r_feat --quiet",
            1,
            &["video_test_a.npy"],
        ),
        case(
            "train --features feat_dir --dataset ann_train.json --out r_feat --quiet",
            1,
            &["video_test_a.npy"],
        ),
        case(
            "train --features feat_cut --dataset ann_train.json --out r_feat --quiet --config af/thumos_tiny.yaml",
            1,
            &["video_test_a.npy"],
        ),
        // Configurations.
        case(&train("--config af_bad.yaml"), 1, &["af_bad.yaml", "YAML"]),
        case(
            &train("--config af_list.yaml"),
            1,
            &["af_list.yaml", "mapping"],
        ),
        case(
            "train --features af/features --dataset ann_train.json --out r_feat --config af_classes.yaml",
            1,
            &["af_classes.yaml", "dataset.num_classes"],
        ),
        case(
            "train --features af/features --dataset ann_train.json --out r_feat --config af_width.yaml",
            1,
            &["af_width.yaml", "dataset.input_dim"],
        ),
        case(
            &train("--config cfg_unknown.json"),
            1,
            &["cfg_unknown.json", "epoch"],
        ),
        case(&train("--config missing.yaml"), 1, &["missing.yaml"]),
        // Outputs.
        case(
            "train --features af/features --dataset ann_train.json --out af/features/run --quiet",
            1,
            &["feature folder"],
        ),
        case(
            "train --features af/features --dataset ann_train.json --out run_feat --quiet",
            1,
            &["run_feat", "feature run"],
        ),
        case(
            "train --features af/features --dataset ann_train.json --out notfeatrun --quiet",
            1,
            &["notfeatrun"],
        ),
        case(
            "train --features af/features --dataset ann_train.json --out notfeatrun --quiet --overwrite",
            1,
            &["notfeatrun"],
        ),
        case(
            "train --features af/features --dataset ann_train.json --out run --quiet",
            1,
            &["run"],
        ),
        case(
            "train --features af/features --dataset ann_train.json --out ds/r --quiet",
            1,
            &["ds"],
        ),
        // Inference.
        case(
            "infer --checkpoint run_feat --features af/features --out o.json",
            2,
            &["--dataset"],
        ),
        case(
            &infer("--features af/features --out run_feat/feature_run.json"),
            1,
            &["feature_run.json"],
        ),
        case(
            &infer("--features af/features --out run_feat/head.safetensors"),
            1,
            &["head.safetensors"],
        ),
        case(
            &infer("--features af/features --out af/annotations.json"),
            1,
            &["annotations.json"],
        ),
        case(
            &infer("--features af/features --out af/features/o.json"),
            1,
            &["feature folder"],
        ),
        case(
            &infer("--features af/features --out run/o.json"),
            1,
            &["run"],
        ),
        case(
            &infer("--features af/features --out /dev/full"),
            1,
            &["/dev/full"],
        ),
        case(
            &infer("--features feat_width --out o.json"),
            1,
            &["channels"],
        ),
        case(
            &infer("--features af/features --out o.json --fps 30"),
            1,
            &["--fps"],
        ),
        case(
            &infer("--features af/features --out o.json --frames af"),
            2,
            &["--frames"],
        ),
        case(
            "infer --checkpoint run --dataset af/annotations.json --features af/features --out o.json",
            1,
            &["feature run"],
        ),
        case(
            "infer --checkpoint notfeatrun --dataset af/annotations.json --features af/features --out o.json",
            1,
            &["feature_run.json"],
        ),
        case(
            "infer --checkpoint run_feat --dataset af/annotations.json --features af/features --subset training --out o.json",
            1,
            &["training"],
        ),
        // Imports.
        case(
            &import_ck("vit.pth"),
            1,
            &["vit.pth", "no ActionFormer weights"],
        ),
        case(&import_ck("garbage.bin"), 1, &["garbage.bin"]),
        case(
            &import_ck("af/features/video_test_a.npy"),
            1,
            &["video_test_a.npy"],
        ),
        case(&import_ck("vit.safetensors"), 1, &["vit.safetensors"]),
        case(&import_ck("missing.pth.tar"), 1, &["missing.pth.tar"]),
        case(
            &import("--config af_wide.yaml"),
            1,
            &["epoch_003.pth.tar", "shape"],
        ),
        case(
            &import("--config af_fpndim.yaml"),
            1,
            &["af_fpndim.yaml", "model.fpn_dim"],
        ),
        case(
            &import("--config af_classes.yaml"),
            1,
            &["af_classes.yaml", "num_classes"],
        ),
        case(&import("--config tiny.json"), 1, &["tiny.json", "YAML"]),
        case(
            "weights import-actionformer --checkpoint af/epoch_003.pth.tar --config af/thumos_tiny.yaml --dataset af/annotations.json --out run_feat",
            1,
            &["run_feat"],
        ),
        case(
            "weights import-actionformer --checkpoint af/epoch_003.pth.tar --config af/thumos_tiny.yaml --dataset af/annotations.json --out run",
            1,
            &["run"],
        ),
        case(
            "weights import-actionformer --checkpoint af/epoch_003.pth.tar --config af/thumos_tiny.yaml --dataset af/annotations.json --out ds/imp",
            1,
            &["ds"],
        ),
        case(
            "weights import-actionformer --checkpoint af/epoch_003.pth.tar --config af/thumos_tiny.yaml --dataset af/annotations.json",
            2,
            &["--out"],
        ),
    ];
    c.extend([
        case(
            "train --features af/features --dataset ann_train.json --out r_feat --weights vit.safetensors",
            1,
            &["vit.safetensors", "feature_run.json"],
        ),
        case(
            "train --features af/features --dataset ann_train.json --out r_feat --weights run_feat --config af_wide.yaml",
            1,
            &["do not fit"],
        ),
        case(
            "train --features af/features --dataset ann_train.json --out r_feat --weights run_feat --config af_heads.yaml",
            1,
            &["af_heads.yaml", "head.num_heads"],
        ),
        // Outputs inside a feature run it did not make.
        case(
            "infer --checkpoint run_feat --dataset af/annotations.json --features af/features --subset testing --out run_feat/new.json",
            1,
            &["feature run"],
        ),
        // Features ending well before the annotated duration: used, with a named warning.
        case(
            "infer --checkpoint run_feat --dataset ann_long.json --features af/features --subset testing --out long.json",
            0,
            &["fewer feature rows", "video_test_"],
        ),
    ]);
    for (file, says) in [
        ("af_unknown.yaml", "opt.epoch"),
        ("af_fpn.yaml", "model.fpn_type"),
        ("af_sgd.yaml", "opt.type"),
        ("af_voting.yaml", "test_cfg.voting_thresh"),
        ("af_extscore.yaml", "test_cfg.ext_score_file"),
        ("af_abspe.yaml", "model.use_abs_pe"),
        ("af_smooth.yaml", "train_cfg.label_smoothing"),
        ("af_batch.yaml", "loader.batch_size"),
        ("af_crop.yaml", "dataset.crop_ratio"),
        ("af_upsample.yaml", "dataset.force_upsampling"),
        ("af_dataset.yaml", "dataset_name"),
        ("af_arch.yaml", "model.backbone_arch"),
        ("af_heads.yaml", "head.num_heads"),
        ("af_lossw.yaml", "train_cfg.loss_weight"),
        ("af_nms.yaml", "test_cfg.nms_method"),
    ] {
        c.push(case(&train(&format!("--config {file}")), 1, &[file, says]));
        c.push(case(&import(&format!("--config {file}")), 1, &[file, says]));
    }
    c
}

#[test]
fn hostile_inputs_get_clear_errors_and_change_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    workspace(root);
    let cases = cases();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let before = snapshot(root);
        let (code, out, err) = run(root, &c.args, c.stdout);
        let after = snapshot(root);
        let shown = format!("`e2e-tal {}`", c.args.join(" "));
        let text = format!("{out}{err}");
        if code != c.code {
            failures.push(format!("{shown}: exit {code}, want {}: {text}", c.code));
        }
        if err.contains("panicked") || code == 101 || code == 134 {
            failures.push(format!("{shown}: panicked: {err}"));
        }
        for s in &c.says {
            if !text.contains(s.as_str()) {
                failures.push(format!("{shown}: message lacks `{s}`: {text}"));
            }
        }
        let changed: Vec<_> = before
            .iter()
            .filter(|(p, h)| after.get(*p) != Some(h))
            .map(|(p, _)| p.display().to_string())
            .collect();
        if !changed.is_empty() {
            failures.push(format!("{shown}: changed or removed {changed:?}"));
        }
        let added: Vec<_> = after.keys().filter(|p| !before.contains_key(*p)).collect();
        if code != 0 && !added.is_empty() {
            failures.push(format!("{shown}: failed but wrote {added:?}"));
        }
    }
    eprintln!("{} hostile cases run", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The small dataset `ds` and the configuration `tiny.json` = `cfg` in `root`.
fn small_dataset_and_config(root: &Path, cfg: &TrainConfig) {
    sh(
        root,
        "synth --out ds --videos 3 --size 32 --classes 2 --seed 3",
    );
    std::fs::write(root.join("tiny.json"), serde_json::to_string(cfg).unwrap()).unwrap();
}

/// A run folder that holds a run is replaced only on request, and then wholly: none of the
/// old run's outputs stays beside the new one's.
#[test]
fn overwrite_replaces_the_whole_run_and_resume_may_extend_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    small_dataset_and_config(root, &tiny_config());
    sh(
        root,
        "train --data ds --out run --config tiny.json --from-scratch --quiet --stop-after-steps 2",
    );
    std::fs::write(root.join("run/predictions.json"), "stale").unwrap();
    std::fs::write(root.join("run/notes.txt"), "mine").unwrap();
    sh(
        root,
        "train --data ds --out run --config tiny.json --from-scratch --quiet --overwrite --stop-after-steps 1",
    );
    assert!(
        !root.join("run/predictions.json").exists(),
        "stale predictions kept"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("run/notes.txt")).unwrap(),
        "mine"
    );
    let state = || -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(root.join("run/checkpoint/state.json")).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(state()["state"]["global_step"], 1);
    // --epochs may change on resume and is recorded.
    sh(
        root,
        "train --data ds --out run --resume --epochs 2 --quiet",
    );
    assert_eq!(state()["config"]["epochs"], 2);
    assert_eq!(state()["state"]["global_step"], 6);
    // A damaged newest checkpoint falls back to the previous one, with a warning.
    let model = root.join("run/checkpoint/model.bpk");
    let mut b = std::fs::read(&model).unwrap();
    b[100] ^= 1;
    std::fs::write(&model, b).unwrap();
    let (code, out, err) = run(
        root,
        &split("train --data ds --out run --resume --epochs 3 --quiet"),
        Stdout::Captured,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("checksum mismatch") && err.contains("checkpoint.old"),
        "{err}"
    );
    assert_eq!(state()["state"]["global_step"], 9);
}

/// THUMOS files with a byte-order mark give clean video ids.
#[test]
fn byte_order_marks_never_reach_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("th")).unwrap();
    std::fs::write(
        root.join("th/Jump_val.txt"),
        b"\xef\xbb\xbfvid_1 1.0 2.5\r\n",
    )
    .unwrap();
    sh(root, "convert-thumos --dir th --out gt.json");
    let gt: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("gt.json")).unwrap()).unwrap();
    let ids: Vec<&String> = gt["database"].as_object().unwrap().keys().collect();
    assert_eq!(ids, ["vid_1"]);
}

/// Two `train` commands on one run folder: the second is refused while the first holds the
/// folder's lock, and the first finishes untouched.
#[test]
fn two_trains_on_one_run_folder_do_not_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    small_dataset_and_config(root, &tiny_config().with_epochs(40));
    let first = Command::new(BIN)
        .args(split(
            "train --data ds --out run --config tiny.json --from-scratch --quiet",
        ))
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first has started its run.
    let t = std::time::Instant::now();
    while !root.join("run/config.json").exists() {
        assert!(t.elapsed().as_secs() < 120, "the first run never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, out, err) = run(
        root,
        &split("train --data ds --out run --config tiny.json --from-scratch --quiet --overwrite"),
        Stdout::Captured,
    );
    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("another `train`") && err.contains("run"),
        "{err}"
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("run/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics.as_array().unwrap().len(), 40);
}

/// Started as several processes by an MPI launcher (its variables faked here): every command
/// but `train` refuses, since each process would do the whole work and write the same outputs.
#[test]
fn commands_other_than_train_refuse_several_processes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    small_dataset_and_config(root, &tiny_config());
    let before = snapshot(root);
    let mut cases = vec![
        "synth --out more --videos 2",
        "eval --gt ds/annotations.json --pred none.json",
        "infer --checkpoint none --dataset ds --out preds.json",
        "plan --frames 96",
        "baseline --data ds",
        "pretrain --data ds --out pre",
    ];
    if !cfg!(feature = "mpi") {
        // Without the `mpi` feature `train` would run alone in every process.
        cases.push("train --data ds --out run --config tiny.json --from-scratch");
    }
    for args in cases {
        let o = Command::new(BIN)
            .args(split(args))
            .env("OMPI_COMM_WORLD_SIZE", "2")
            .env("OMPI_COMM_WORLD_RANK", "0")
            .current_dir(root)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "`{args}`: {err}");
        let want = match args.starts_with("train") {
            true => "without the `mpi` feature",
            false => "only `train` runs on several ranks",
        };
        assert!(
            err.contains(want) && err.contains("2 processes"),
            "`{args}`: {err}"
        );
    }
    assert_eq!(snapshot(root), before, "a refused command wrote");
}

/// `mpirun` jobs whose ranks cannot train one model together: each stops with an error naming
/// the rank concerned, no rank hangs, and nothing is written.
#[cfg(feature = "mpi")]
#[test]
fn ranks_that_disagree_or_fail_stop_together_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = tiny_config().with_mode(e2e_tal::train::TrainMode::Full);
    small_dataset_and_config(root, &cfg);
    sh(
        root,
        "synth --out ds4 --videos 4 --size 32 --classes 2 --seed 3",
    );
    // A trained backbone (written where the dataset has validation videos).
    sh(
        root,
        "train --data ds4 --out trained --config tiny.json --from-scratch --quiet",
    );
    let base = "train --data ds4 --out run --config tiny.json --quiet";
    let two = format!("{base} --from-scratch --videos-per-step 2");
    let other = |change: &str| format!("{base} --videos-per-step 2 {change}");
    // Rank 0's arguments, then rank 1's (MPMD: `mpirun -np 1 A : -np 1 B`); expected words.
    let cases: Vec<(String, String, Vec<&str>)> =
        vec![
        (
            two.clone(),
            other("--from-scratch").replace("ds4", "tiny.json"),
            vec!["rank 1", "tiny.json"],
        ),
        (
            two.clone(),
            other("--from-scratch --seed 4"),
            vec!["rank 1 of 2", "configuration not the same as rank 0's"],
        ),
        (
            two.clone(),
            other("--weights trained/backbone.safetensors"),
            vec!["rank 1 of 2", "parameters not the same as rank 0's"],
        ),
        (
            two.clone(),
            other("--resume").replace("run", "elsewhere"),
            vec!["rank 1", "elsewhere"],
        ),
        (
            format!("{base} --from-scratch --videos-per-step 1"),
            String::new(),
            vec!["fewer than the 2 ranks"],
        ),
        (format!("{two} --memory-budget 1G"), String::new(), vec!["--memory-budget"]),
        (
            "train --features ds --dataset ds --out run".into(),
            String::new(),
            vec!["runs in one process"],
        ),
        (
            "train --data ds4 --out trained --config tiny.json --from-scratch --videos-per-step 2"
                .into(),
            String::new(),
            vec!["trained", "holds a run"],
        ),
    ];
    let mut failures = Vec::new();
    for (rank0, rank1, says) in &cases {
        let before = snapshot(root);
        let mut cmd = common::mpirun(1);
        cmd.arg(BIN)
            .args(split(rank0))
            .arg(":")
            .args(["-np", "1", BIN]);
        cmd.args(split(if rank1.is_empty() { rank0 } else { rank1 }));
        let t0 = std::time::Instant::now();
        let o = cmd.current_dir(root).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let shown = format!("rank 0 `{rank0}`, rank 1 `{rank1}`");
        if o.status.success() {
            failures.push(format!("{shown}: succeeded: {text}"));
        }
        if text.contains("panicked") {
            failures.push(format!("{shown}: panicked: {text}"));
        }
        for s in says {
            if !text.contains(s) {
                failures.push(format!("{shown}: message lacks `{s}`: {text}"));
            }
        }
        if snapshot(root) != before {
            failures.push(format!("{shown}: wrote or removed files"));
        }
        eprintln!("{shown}: stopped in {:.1}s", t0.elapsed().as_secs_f64());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
