//! The streaming input pipeline at THUMOS-14's size, on videos this crate did not make
//! (FFmpeg's `testsrc2` and `smptehdbars` sources, 320x180 at 30 fps, H.264):
//!
//! 1. Throughput: training windows of 48 clips (203 frames decoded each, every 2nd kept; a
//!    random resized crop and flip, scaled to 224x224) delivered by the pipeline with 0, 1, 2 and 4 workers, against
//!    the `ffmpeg` program decoding the same windows with the same filters, one process at a
//!    time and 2 / 4 at once.
//! 2. `e2e-tal train --max-clips 48 --stop-after-steps 3` (release binary, synthetic ViT,
//!    `--from-scratch`) on 6 minutes and on 96 minutes of video: peak resident memory, dataset
//!    indexing time, wall time, time the steps waited for data.
//!
//! `cargo bench --bench input_pipeline [-- --quick]` (needs FFmpeg; `--quick`: throughput with
//! fewer windows, and 6 vs 24 minutes). The videos are generated once into
//! `target/bench-media/pipeline/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use e2e_tal::data::{ClipFrames, ClipSamplingConfig, VideoFile};
use e2e_tal::pipeline::{FrameTransformConfig, LoaderConfig, Prefetcher};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BIN: &str = env!("CARGO_BIN_EXE_e2e-tal");
const SECONDS: usize = 180;

fn encode(path: &Path, source: &str) {
    if path.is_file() {
        return;
    }
    let part = path.with_extension("part.mp4");
    let input = format!("{source}=size=320x180:rate=30");
    let t = SECONDS.to_string();
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", &input])
        .args([
            "-t", &t, "-c:v", "libx264", "-preset", "veryfast", "-g", "60",
        ])
        .args(["-pix_fmt", "yuv420p"])
        .arg(&part)
        .status()
        .expect("ffmpeg runs")
        .success();
    assert!(ok, "encoding {}", path.display());
    std::fs::rename(&part, path).unwrap();
}

/// A dataset folder of `videos` 3-minute videos (hard links to the two encodings), two
/// classes, two actions each.
fn dataset(media: &Path, root: &Path, videos: usize) -> PathBuf {
    let dir = root.join(format!("ds{videos}"));
    let vdir = dir.join("videos");
    std::fs::create_dir_all(&vdir).unwrap();
    let mut db = serde_json::Map::new();
    for i in 0..videos {
        let id = format!("video_{i:03}");
        let file = vdir.join(format!("{id}.mp4"));
        if !file.exists() {
            let src = media.join(["testsrc2.mp4", "smptehdbars.mp4"][i % 2]);
            std::fs::hard_link(src, &file).unwrap();
        }
        let s = SECONDS as f64;
        db.insert(
            id,
            serde_json::json!({
                "subset": "training",
                "duration": s,
                "annotations": [
                    {"label": "Wave", "segment": [0.1 * s, 0.2 * s]},
                    {"label": "Jump", "segment": [0.5 * s, 0.6 * s]},
                ],
            }),
        );
    }
    std::fs::write(
        dir.join("annotations.json"),
        serde_json::json!({ "database": db }).to_string(),
    )
    .unwrap();
    dir
}

/// The default clip sampling: 8 frames every 2nd, a clip every 4 frames.
fn clip_sampling() -> ClipSamplingConfig {
    ClipSamplingConfig::new()
        .with_clip_frames(8)
        .with_frame_stride(2)
        .with_snippet_stride(4)
}

/// Windows of 48 clips: (video, first clip, frames the window spans, crop and flip).
fn windows(n: usize, frames: usize) -> Vec<(usize, usize, usize, e2e_tal::data::SpatialOp)> {
    let clips = clip_sampling();
    let span = 47 * clips.snippet_stride + clips.span();
    let last = clips.num_clips("v", frames).unwrap() - 48;
    let t = FrameTransformConfig::field();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    (0..n)
        .map(|i| {
            let first = rng.random_range(0..last);
            let op = t.train_op((180, 320), (224, 224), &mut rng);
            (i % 2, first, span, op)
        })
        .collect()
}

fn ffmpeg_window(path: &Path, fps: f64, first: usize, count: usize, filter: &str) {
    let ss = format!("{:.6}", (first as f64 - 0.5).max(0.0) / fps);
    let n = count.to_string();
    let mut c = Command::new("ffmpeg");
    c.args(["-v", "error", "-nostdin", "-ss", &ss, "-i"])
        .arg(path)
        .args(["-frames:v", &n, "-an", "-vf", filter])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .stdout(Stdio::null());
    assert!(c.status().unwrap().success());
}

fn throughput(media: &Path, quick: bool) {
    let files: Vec<Arc<VideoFile>> = ["testsrc2.mp4", "smptehdbars.mp4"]
        .iter()
        .map(|f| Arc::new(VideoFile::open(&media.join(f), f, None).unwrap()))
        .collect();
    let n = if quick { 12 } else { 32 };
    let ws = Arc::new(windows(n, files[0].len()));
    let total: usize = ws.iter().map(|w| w.2).sum();
    println!(
        "\n{n} windows of 48 clips ({} frames each, the clips use every 2nd) from 320x180 \
         H.264 at 30 fps, random resized crop + flip to 224x224; frames/s counts the frames \
         decoded (each window's span):\n",
        ws[0].2
    );
    println!(
        "| reader | processes / workers | seconds | frames/s | vs ffmpeg program, same parallelism |"
    );
    println!("|---|---:|---:|---:|---:|");
    let program = |par: usize| {
        let t = Instant::now();
        std::thread::scope(|s| {
            for k in 0..par {
                let (ws, files) = (&ws, &files);
                s.spawn(move || {
                    for w in ws.iter().skip(k).step_by(par) {
                        let f = &files[w.0];
                        let first = w.1 * clip_sampling().snippet_stride;
                        ffmpeg_window(&f.path, f.fps, first, w.2, &w.3.ffmpeg_filter());
                    }
                });
            }
        });
        t.elapsed().as_secs_f64()
    };
    let mut base = std::collections::HashMap::new();
    for par in [1, 2, 4] {
        let secs = program(par);
        base.insert(par, secs);
        println!(
            "| `ffmpeg` program | {par} | {secs:.2} | {:.0} | 1.00x |",
            total as f64 / secs
        );
    }
    for workers in [0, 1, 2, 4] {
        let (ws, files) = (ws.clone(), files.clone());
        let job = Arc::new(move |i: usize| {
            let (v, first, _, op) = ws[i];
            ClipFrames::read(files[v].as_ref(), &clip_sampling(), first, 48, &op)
        });
        let t = Instant::now();
        let cfg = LoaderConfig::new().with_workers(workers).with_prefetch(4);
        let mut p = Prefetcher::spawn(&cfg, 0..n, job);
        let mut got = 0;
        while let Some(f) = p.next_result() {
            let f = f.unwrap();
            got += f.indices.last().unwrap() + 1 - f.indices[0];
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(got, total);
        let same = base[&workers.max(1)];
        println!(
            "| e2e-tal pipeline | {workers} | {secs:.2} | {:.0} | {:.2}x |",
            total as f64 / secs,
            same / secs
        );
    }
}

/// One `train` command; returns its stdout and wall time.
fn train(data: &Path, out: &Path, stop: usize) -> (String, f64) {
    let _ = std::fs::remove_dir_all(out);
    let t = Instant::now();
    let o = Command::new(BIN)
        .arg("train")
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--from-scratch", "--quiet", "--max-clips", "48"])
        .args(["--stop-after-steps", &stop.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    (text, t.elapsed().as_secs_f64())
}

fn field<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or("?")
}

fn main() {
    if Command::new("ffmpeg").arg("-version").output().is_err() {
        println!("input_pipeline: skipped: FFmpeg is not installed (scripts/setup-tests.sh)");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-media/pipeline");
    std::fs::create_dir_all(&root).unwrap();
    let t = Instant::now();
    encode(&root.join("testsrc2.mp4"), "testsrc2");
    encode(&root.join("smptehdbars.mp4"), "smptehdbars");
    let cpu = e2e_tal::memory::cpu_model();
    let flags = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("flags"))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let cpu = format!(
        "{cpu} (AVX-512: {}, AMX: {})",
        if has("avx512f") { "yes" } else { "no" },
        if has("amx_tile") { "yes" } else { "no" }
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "input pipeline bench on {cpu}, {cores} cores (videos ready in {:.0}s)",
        t.elapsed().as_secs_f64()
    );
    throughput(&root, quick);
    let long = if quick { 8 } else { 32 };
    println!(
        "\n`train --from-scratch --max-clips 48` (synthetic ViT, frames centre-cropped to 64x64):\n"
    );
    println!(
        "| dataset | decoded size | indexed in | 1 step: wall time | 3 steps: wall time | steps waited for data | peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for videos in [2, long] {
        let data = dataset(&root, &root, videos);
        let (_, one) = train(&data, &root.join("run1"), 1);
        let (text, three) = train(&data, &root.join("run3"), 3);
        let decoded = videos as f64 * (SECONDS * 30) as f64 * 172_800.0 / (1u64 << 30) as f64;
        let waited = field(&text, "input pipeline: ")
            .rsplit_once("waited ")
            .map_or("?", |(_, w)| w.trim_end_matches(" for data in all"));
        println!(
            "| {} min ({videos} videos) | {decoded:.1} GiB | {} | {one:.1}s | {three:.1}s | {waited} | {} |",
            videos * SECONDS / 60,
            field(&text, "dataset: ")
                .rsplit_once("loaded in ")
                .map_or("?", |(_, t)| t),
            field(&text, "peak resident memory: ")
        );
    }
}
