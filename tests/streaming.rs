//! Real datasets streamed: videos this crate did not make (FFmpeg's `testsrc2` and
//! `smptehdbars` sources written as H.264 at the field's sizes and odd ones, made-up
//! annotations) train and infer through the frame transforms with every backbone family,
//! frame folders too; memory does not grow with a dataset's length; a video that disappears
//! or is cut short while a run is under way is an error naming it, and the failed start
//! leaves nothing behind.
#![cfg(feature = "video")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use e2e_tal::backbone::resnet3d::ResNet3dConfig;
use e2e_tal::backbone::swin::SwinConfig;
use e2e_tal::backbone::vit::VitConfig;
use e2e_tal::data::{GroundTruth, VIDEOS_DIR};
use e2e_tal::pipeline::{FrameTransformConfig, LoaderConfig};
use e2e_tal::tal::head::HeadConfig;
use e2e_tal::train::{
    BackboneConfig, InferOptions, RunOptions, TalDataset, TrainConfig, detect_video, train,
};

const BIN: &str = env!("CARGO_BIN_EXE_e2e-tal");

/// Write `seconds` of FFmpeg's `source` pattern at `w`x`h`, 30 fps, as H.264 (4:2:0, or
/// 4:4:4 for odd sizes, which 4:2:0 cannot hold).
fn encode(path: &Path, source: &str, (w, h): (usize, usize), seconds: f64) {
    let pix = if w % 2 == 1 || h % 2 == 1 {
        "yuv444p"
    } else {
        "yuv420p"
    };
    let input = format!("{source}=size={w}x{h}:rate=30");
    let t = format!("{seconds}");
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", &input])
        .args([
            "-t",
            &t,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
        ])
        .args(["-pix_fmt", pix])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("ffmpeg runs (scripts/setup-tests.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `annotations.json` for `videos` (id, subset, seconds): two classes, one action each in
/// the middle of the video.
fn annotate(dir: &Path, videos: &[(&str, &str, f64)]) {
    let db: serde_json::Map<String, serde_json::Value> = videos
        .iter()
        .enumerate()
        .map(|(i, &(id, subset, secs))| {
            let label = ["Wave", "Jump"][i % 2];
            let v = serde_json::json!({
                "subset": subset,
                "duration": secs,
                "annotations": [{"label": label, "segment": [0.3 * secs, 0.6 * secs]}],
            });
            (id.to_string(), v)
        })
        .collect();
    std::fs::write(
        dir.join("annotations.json"),
        serde_json::json!({ "database": db }).to_string(),
    )
    .unwrap();
}

fn tiny_vit() -> BackboneConfig {
    BackboneConfig::Vit(
        VitConfig::new()
            .with_embed_dim(32)
            .with_depth(2)
            .with_num_heads(2)
            .with_mlp_dim(64)
            .with_patch_size(8)
            .with_num_frames(8)
            .with_image_size(32),
    )
}

fn tiny_config(backbone: BackboneConfig) -> TrainConfig {
    TrainConfig::new()
        .with_backbone(backbone)
        .with_head(
            HeadConfig::new(0, 0)
                .with_embed_dim(32)
                .with_num_heads(2)
                .with_window_size(9),
        )
        .with_transform(FrameTransformConfig::field().with_size(Some(32)))
        .with_max_train_clips(6)
        .with_epochs(1)
}

fn opts(out: PathBuf, stop: Option<usize>) -> RunOptions {
    RunOptions {
        out_dir: out,
        quiet: true,
        stop_after_steps: stop,
        overwrite: false,
        loader: LoaderConfig::new().with_workers(2),
        ranks: Default::default(),
    }
}

/// Videos of the field's sizes and odd ones, and a frame folder, train two steps and infer
/// with a ViT, a Video Swin and a 3-D ResNet, every frame brought to 32x32 by the transforms.
#[test]
fn every_backbone_family_trains_and_infers_on_videos_of_any_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let media = data.join(VIDEOS_DIR);
    std::fs::create_dir_all(&media).unwrap();
    let sizes = [(320, 180), (640, 360), (1280, 720), (321, 181)];
    let mut videos = Vec::new();
    let ids: Vec<String> = sizes.iter().map(|(w, h)| format!("v{w}x{h}")).collect();
    for ((w, h), id) in sizes.iter().zip(&ids) {
        let src = if *w == 640 { "smptehdbars" } else { "testsrc2" };
        encode(&media.join(format!("{id}.mp4")), src, (*w, *h), 2.0);
        videos.push((id.as_str(), "training", 2.0));
    }
    // A frame folder of odd-sized JPEGs, as extraction tools write them.
    let frames = media.join("folder");
    std::fs::create_dir_all(&frames).unwrap();
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(media.join("v321x181.mp4"))
        .arg(frames.join("img_%05d.jpg"))
        .status()
        .unwrap();
    assert!(st.success());
    videos.push(("folder", "validation", 2.0));
    annotate(&data, &videos);
    let gt = GroundTruth::from_json_file(&data.join("annotations.json")).unwrap();
    let swin = BackboneConfig::Swin(
        SwinConfig::new()
            .with_embed_dim(16)
            .with_depths(vec![1, 1])
            .with_num_heads(vec![2, 2])
            .with_window_size([2, 4, 4])
            .with_patch_size([2, 8, 8]),
    );
    let resnet = BackboneConfig::ResNet(
        ResNet3dConfig::new()
            .with_layers(vec![1, 1])
            .with_widths(vec![8, 16])
            .with_stem_mid(4),
    );
    let device = e2e_tal::backend::cpu_device();
    for (name, backbone) in [("vit", tiny_vit()), ("swin", swin), ("resnet", resnet)] {
        // Frame folders carry no rate: the annotations' durations give it.
        let ds = TalDataset::load(&gt, &media, &[], Some(30.0), 15).unwrap();
        let cfg = tiny_config(backbone);
        device.seed(1);
        let b = cfg.backbone.init(&device);
        let run = dir.path().join(name);
        let out = train(cfg, &ds, b, &opts(run.clone(), Some(2)), &device)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.state.global_step, 2, "{name}");
        for input in [media.join("v1280x720.mp4"), media.join("folder")] {
            let o = InferOptions {
                fps: Some(30.0),
                precision: None,
            };
            let r = detect_video(&run, &input, &o, &device)
                .unwrap_or_else(|e| panic!("{name} {}: {e}", input.display()));
            assert_eq!(r.frames, 60, "{name} {}", input.display());
            assert!(r.detections.iter().all(|d| d.start <= d.end), "{name}");
        }
    }
}

/// `train` on 8 times as much video: the same peak resident memory (within 1.3x), far below
/// the decoded size of either dataset.
#[test]
fn memory_does_not_grow_with_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.mp4");
    encode(&one, "testsrc2", (320, 180), 20.0);
    let make = |name: &str, copies: usize| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(d.join(VIDEOS_DIR)).unwrap();
        let ids: Vec<String> = (0..copies).map(|i| format!("long_{i}")).collect();
        for id in &ids {
            std::fs::hard_link(&one, d.join(VIDEOS_DIR).join(format!("{id}.mp4"))).unwrap();
        }
        let vs: Vec<(&str, &str, f64)> =
            ids.iter().map(|i| (i.as_str(), "training", 20.0)).collect();
        annotate(&d, &vs);
        d
    };
    let cfg = dir.path().join("tiny.json");
    std::fs::write(
        &cfg,
        serde_json::to_string(&tiny_config(tiny_vit())).unwrap(),
    )
    .unwrap();
    let peak = |data: &Path, out: &str| -> f64 {
        let o = Command::new(BIN)
            .arg("train")
            .arg("--data")
            .arg(data)
            .arg("--out")
            .arg(dir.path().join(out))
            .arg("--config")
            .arg(&cfg)
            .args(["--from-scratch", "--quiet", "--max-clips", "16"])
            .args(["--stop-after-steps", "3", "--workers", "2"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("peak resident memory: "))
            .unwrap_or_else(|| panic!("no peak memory line: {text}"));
        line.trim_end_matches(" MiB").parse().unwrap()
    };
    let short = peak(&make("short", 1), "run-short");
    let long = peak(&make("long", 8), "run-long");
    // 8 x 20 s of 320x180 RGB decoded: 8 * 600 * 172,800 bytes.
    let decoded_long = 8.0 * 600.0 * 172_800.0 / (1u64 << 20) as f64;
    eprintln!("peak RSS: 20 s {short} MiB, 160 s {long} MiB (decoded: {decoded_long:.0} MiB)");
    assert!(long <= 1.3 * short, "{long} MiB vs {short} MiB");
    assert!(long < decoded_long / 4.0, "{long} MiB");
}

/// A video removed or cut short after the dataset was indexed: the run fails naming the
/// file, and since it failed before its first checkpoint it leaves no run folder.
#[test]
fn a_video_that_disappears_or_is_cut_short_mid_run_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let media = data.join(VIDEOS_DIR);
    std::fs::create_dir_all(&media).unwrap();
    let ids = ["a", "b", "c"];
    for id in ids {
        encode(&media.join(format!("{id}.mp4")), "testsrc2", (64, 64), 3.0);
    }
    let vs: Vec<(&str, &str, f64)> = ids.iter().map(|i| (*i, "training", 3.0)).collect();
    annotate(&data, &vs);
    let gt = GroundTruth::from_json_file(&data.join("annotations.json")).unwrap();
    let device = e2e_tal::backend::cpu_device();
    for (what, damage) in [
        (
            "removed",
            (|p: &Path| std::fs::remove_file(p).unwrap()) as fn(&Path),
        ),
        ("cut", |p: &Path| {
            let b = std::fs::read(p).unwrap();
            std::fs::write(p, &b[..b.len() / 3]).unwrap();
        }),
    ] {
        let ds = TalDataset::load(&gt, &media, &[], None, 15).unwrap();
        // Whole videos per step: every frame of every video is read in the epoch.
        let cfg = tiny_config(tiny_vit()).with_max_train_clips(0);
        for id in ids {
            let p = media.join(format!("{id}.mp4"));
            std::fs::copy(&p, dir.path().join(format!("{id}.keep"))).unwrap();
        }
        damage(&media.join("b.mp4"));
        let run = dir.path().join(format!("run-{what}"));
        let b = cfg.backbone.init(&device);
        let err = train(cfg, &ds, b, &opts(run.clone(), None), &device)
            .err()
            .unwrap_or_else(|| panic!("{what}: trained on a damaged video"))
            .to_string();
        assert!(err.contains("b.mp4"), "{what}: {err}");
        assert!(
            !run.exists(),
            "{what}: a failed start left {}",
            run.display()
        );
        for id in ids {
            std::fs::copy(
                dir.path().join(format!("{id}.keep")),
                media.join(format!("{id}.mp4")),
            )
            .unwrap();
        }
    }
}

/// ActivityNet practice: every video as 12 clips spread over its whole length, whatever its
/// duration, two videos per step; the frames such clips read, far apart in the file (several
/// seeks), equal those of one pass over it.
#[test]
fn fixed_clips_per_video_and_two_videos_per_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let media = data.join(VIDEOS_DIR);
    std::fs::create_dir_all(&media).unwrap();
    let videos = [("long", "training", 20.0), ("short", "training", 6.0)];
    for (id, _, secs) in videos {
        encode(&media.join(format!("{id}.mp4")), "testsrc2", (64, 48), secs);
    }
    std::fs::copy(media.join("short.mp4"), media.join("val.mp4")).unwrap();
    let mut all = videos.to_vec();
    all.push(("val", "validation", 6.0));
    annotate(&data, &all);
    let gt = GroundTruth::from_json_file(&data.join("annotations.json")).unwrap();
    let ds = TalDataset::load(&gt, &media, &[], None, 15).unwrap();
    let mut cfg = tiny_config(tiny_vit())
        .with_max_train_clips(0)
        .with_videos_per_step(2)
        .with_epochs(2);
    cfg.clips.fixed_clips = 12;
    let device = e2e_tal::backend::cpu_device();
    device.seed(3);
    let b = cfg.backbone.init(&device);
    let out = train(
        cfg.clone(),
        &ds,
        b,
        &opts(dir.path().join("run"), None),
        &device,
    )
    .unwrap();
    // Two training videos, two per step: one step per epoch.
    assert_eq!(out.state.global_step, 2);
    let (preds, _) = out.evaluation.expect("a validation video");
    assert!(
        preds.videos[0]
            .detections
            .iter()
            .all(|d| d.segment[0] >= -1e-9 && d.segment[1] <= 6.0 + 1e-9),
        "{:?}",
        preds.videos[0]
    );
    let v = e2e_tal::data::VideoFile::open(&media.join("long.mp4"), "long", None).unwrap();
    let indices = cfg.clips.frames_of(0, 12, v.len());
    assert!(
        indices.len() == 96 && v.len() == 600,
        "{} {}",
        indices.len(),
        v.len()
    );
    let op = e2e_tal::data::SpatialOp::resize((48, 64), (24, 32));
    let sparse = v.read_indices(&indices, &op).unwrap();
    let whole = v.read_with(0..v.len(), &op).unwrap();
    let picked: Vec<u8> = indices
        .iter()
        .flat_map(|&i| whole.frame(i).to_vec())
        .collect();
    assert_eq!(sparse.rgb, picked);
}
