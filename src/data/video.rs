//! Video files (mp4, mkv, webm, avi, mov; H.264, H.265, VP9, AV1 and whatever else the
//! installed FFmpeg decodes), decoded by the `ffprobe` and `ffmpeg` programs run as
//! subprocesses: no build dependency and no system library at build time, the programs at run
//! time (`docs/data.md` says why this design).
//!
//! A video is probed once: the container, the codec, the size and every frame's presentation
//! timestamp (read from the packets, without decoding). Frames are then addressed on a constant
//! sampling grid of `fps` frames per second (the file's own rate unless another is asked for):
//! grid frame `j` is the frame on screen at `j / fps` seconds after the first frame, so
//! annotation times in seconds line up with the file's own clock, variable frame rates
//! included. Reading a range seeks to its first frame (keyframe seek, then the decoder drops
//! the frames before it), so a clip in the middle of a long file costs one GOP, not the file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::frames::Frames;
use super::spatial::SpatialOp;
use crate::error::{Error, Result};

/// What probing a video file found.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Container, as FFmpeg names it (`mov,mp4,m4a,3gp,3g2,mj2`, `matroska,webm`, ...).
    pub container: String,
    /// Codec of the video stream (`h264`, `hevc`, `vp9`, `av1`, ...).
    pub codec: String,
    /// Width of decoded frames (after the display rotation).
    pub width: usize,
    /// Height of decoded frames (after the display rotation).
    pub height: usize,
    /// The stream's own average frame rate.
    pub native_fps: f64,
    /// Number of frames in the stream.
    pub native_frames: usize,
    /// Seconds from the first frame to the end of the last one.
    pub duration: f64,
    /// True when frame intervals differ by more than 10% (phone recordings, screen captures):
    /// frames are then picked by timestamp onto the constant sampling grid.
    pub variable_frame_rate: bool,
}

/// A probed video file, addressed on a constant-rate sampling grid.
#[derive(Debug, Clone)]
pub struct VideoFile {
    /// Video identifier.
    pub video: String,
    /// The file.
    pub path: PathBuf,
    /// What probing found.
    pub info: VideoInfo,
    /// Rate of the sampling grid, frames per second.
    pub fps: f64,
    /// Presentation time of each stream frame, seconds after the first, ascending.
    times: Vec<f64>,
    /// Seconds from the container's start time to the first frame (what `-ss` counts from).
    first_offset: f64,
    /// Stream frame shown at each grid frame.
    grid: Vec<usize>,
    /// Index of the video stream in the container.
    stream: usize,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Video {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What a failure of the probe means.
const UNREADABLE: &str = "not a readable video";
/// What a failure while decoding frames the probe listed means.
const BROKEN: &str = "decoding failed, the file is truncated or corrupt";

/// Run one of FFmpeg's programs; errors name the file, say what the failure means (`what`) and
/// carry the program's own message.
fn run(program: &str, args: &[OsString], path: &Path, what: &str) -> Result<Vec<u8>> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(program, path, e))?;
    if !out.status.success() {
        return Err(bad(
            path,
            format!("{what}: {}", ffmpeg_message(&out.stderr, path, out.status)),
        ));
    }
    Ok(out.stdout)
}

/// The error of a program that cannot be started: not installed, or another reason.
fn spawn_error(program: &str, path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        bad(
            path,
            format!(
                "decoding video files runs the `{program}` program, which is not installed or \
                 not on PATH (install FFmpeg: `apt-get install ffmpeg`, `brew install ffmpeg`, \
                 or scripts/setup-tests.sh)"
            ),
        )
    } else {
        bad(path, format!("cannot run `{program}`: {e}"))
    }
}

/// The last lines of a program's error output, without FFmpeg's `[component @ 0x...]` prefixes
/// and the file name it repeats.
fn ffmpeg_message(stderr: &[u8], path: &Path, status: std::process::ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    let file = local(path).to_string_lossy().into_owned();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_prefix(&*file).unwrap_or(l))
        .map(|l| l.trim_start_matches(':').trim())
        .map(|l| match (l.starts_with('['), l.find("] ")) {
            (true, Some(i)) if l[..i].contains(" @ 0x") => &l[i + 2..],
            _ => l,
        })
        .collect();
    match lines.as_slice() {
        [] => format!("the program failed ({status})"),
        m => m[m.len().saturating_sub(3)..].join("; "),
    }
}

/// The error for a file without a video stream, naming the streams it has.
fn no_video_stream(path: &Path) -> Error {
    let kinds = run(
        "ffprobe",
        &args(
            &[
                "-v",
                "error",
                "-show_entries",
                "stream=codec_type",
                "-of",
                "csv=p=0",
            ],
            path,
        ),
        path,
        UNREADABLE,
    )
    .map(|o| String::from_utf8_lossy(&o).into_owned())
    .unwrap_or_default();
    let kinds: Vec<&str> = kinds
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    bad(
        path,
        if kinds.is_empty() {
            "no video stream (the file holds no stream FFmpeg can read)".to_owned()
        } else {
            format!(
                "no video stream to decode (streams found: {}; an audio-only file?)",
                kinds.join(", ")
            )
        },
    )
}

/// Program arguments: `words`, then the file as [`local`] names it.
fn args(words: &[&str], file: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = words.iter().map(OsString::from).collect();
    a.push(local(file));
    a
}

/// `path` as FFmpeg must read it: a plain local file, never an option (`-report`), another
/// protocol (`concat:a.mp4|b.mp4`, `http:...`) or another file (`file:x.mp4` read as `x.mp4`):
/// the `file:` protocol with the absolute path.
pub(crate) fn local(path: &Path) -> OsString {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut s = OsString::from("file:");
    s.push(abs.as_os_str());
    s
}

/// `"30000/1001"` -> 29.97; `"0/0"` and malformed values -> `None`.
fn rate(v: &Value) -> Option<f64> {
    let (n, d) = v.as_str()?.split_once('/')?;
    let (n, d): (f64, f64) = (n.parse().ok()?, d.parse().ok()?);
    (n > 0.0 && d > 0.0)
        .then(|| n / d)
        .filter(|r| r.is_finite())
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
    .filter(|x: &f64| x.is_finite())
}

impl VideoFile {
    /// Probe `path` (video `video`). `fps` sets the sampling grid's rate (the stream's own
    /// average rate when `None`). Errors name the file: a missing file, something that is not a
    /// video, an audio-only file, a stream without frames, FFmpeg not installed.
    pub fn open(path: &Path, video: &str, fps: Option<f64>) -> Result<Self> {
        if let Some(f) = fps
            && !(f > 0.0 && f.is_finite())
        {
            return Err(bad(
                path,
                format!("sampling rate must be positive, got {f}"),
            ));
        }
        std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        // One probe: the first video stream that is not cover art (`V`), the container, and
        // every packet's timestamp, read from the container without decoding.
        let probe = run(
            "ffprobe",
            &args(
                &[
                    "-v",
                    "error",
                    "-select_streams",
                    "V:0",
                    "-show_entries",
                    "stream=index,codec_name,width,height,avg_frame_rate,r_frame_rate,time_base:\
                     stream_side_data=rotation:format=format_name,start_time:packet=pts,dts,flags",
                    "-of",
                    "json",
                ],
                path,
            ),
            path,
            UNREADABLE,
        )?;
        let probe: Value = serde_json::from_slice(&probe)
            .map_err(|e| bad(path, format!("unreadable ffprobe output: {e}")))?;
        let Some(stream) = probe["streams"].as_array().and_then(|s| s.first()) else {
            return Err(no_video_stream(path));
        };
        let index = stream["index"].as_u64().unwrap_or(0) as usize;
        let (w, h) = (
            stream["width"].as_u64().unwrap_or(0) as usize,
            stream["height"].as_u64().unwrap_or(0) as usize,
        );
        if w == 0 || h == 0 {
            return Err(bad(path, "the video stream has no frame size"));
        }
        let rotation = stream["side_data_list"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|s| num(&s["rotation"]))
            .unwrap_or(0.0);
        let (width, height) = if (rotation.abs() as i64) % 180 == 90 {
            (h, w)
        } else {
            (w, h)
        };
        let time_base = rate(&stream["time_base"])
            .ok_or_else(|| bad(path, "the video stream has no time base"))?;
        let container = probe["format"]["format_name"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        let start = num(&probe["format"]["start_time"]).unwrap_or(0.0);
        let ticks: Vec<Option<i64>> = probe["packets"]
            .as_array()
            .into_iter()
            .flatten()
            // Packets an edit list drops are never shown.
            .filter(|p| !p["flags"].as_str().unwrap_or("").contains('D'))
            .map(|p| p["pts"].as_i64().or_else(|| p["dts"].as_i64()))
            .collect();
        if ticks.is_empty() {
            return Err(bad(path, "the video stream holds no frames"));
        }
        let stated_fps = rate(&stream["avg_frame_rate"]).or_else(|| rate(&stream["r_frame_rate"]));
        let mut times: Vec<f64> = if ticks.iter().all(Option::is_some) {
            let mut t: Vec<f64> = ticks
                .iter()
                .map(|t| t.unwrap() as f64 * time_base)
                .collect();
            t.sort_by(f64::total_cmp);
            t
        } else {
            // Streams without timestamps (raw elementary streams): the stated rate is the clock.
            let f = stated_fps.ok_or_else(|| bad(path, "frames have no timestamps and no rate"))?;
            (0..ticks.len()).map(|i| i as f64 / f).collect()
        };
        let first = times[0];
        times.iter_mut().for_each(|t| *t -= first);
        let intervals: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        if let Some((i, gap)) = intervals
            .iter()
            .copied()
            .enumerate()
            .find(|&(_, d)| d > MAX_GAP_SECONDS)
        {
            return Err(bad(
                path,
                format!(
                    "timestamps jump by {gap:.0} s between frames {i} and {} (more than {:.0} \
                     s: a broken or badly concatenated file); refusing to fill the gap with \
                     one frame repeated",
                    i + 1,
                    MAX_GAP_SECONDS
                ),
            ));
        }
        let median = {
            let mut s = intervals.clone();
            s.sort_by(f64::total_cmp);
            s.get(s.len() / 2).copied()
        };
        let native_fps = match (stated_fps, median) {
            (Some(f), _) => f,
            (None, Some(m)) if m > 0.0 => 1.0 / m,
            _ => return Err(bad(path, "cannot tell the frame rate")),
        };
        let interval = median.filter(|&m| m > 0.0).unwrap_or(1.0 / native_fps);
        let variable_frame_rate = intervals
            .iter()
            .any(|&d| (d - interval).abs() > 0.1 * interval);
        // The last frame lasts one frame time: the stated rate's (exact, where timestamps may
        // be rounded to the container's time base, such as Matroska's milliseconds), or the
        // typical interval of a variable-rate stream.
        let frame_time = if variable_frame_rate {
            interval
        } else {
            1.0 / native_fps
        };
        let duration = times[times.len() - 1] + frame_time;
        let grid: Vec<usize> = match fps {
            // The stream's own constant rate: the grid is the stream.
            None if !variable_frame_rate => (0..times.len()).collect(),
            _ => {
                let fps = fps.unwrap_or(native_fps);
                // Grid frame j is the stream frame on screen at j / fps; a quarter frame of
                // slack absorbs timestamps rounded to the container's time base.
                let slack = 0.25 * interval;
                let n = (duration * fps).round().max(1.0) as usize;
                let mut i = 0;
                (0..n)
                    .map(|j| {
                        let t = j as f64 / fps + slack;
                        while i + 1 < times.len() && times[i + 1] <= t {
                            i += 1;
                        }
                        i
                    })
                    .collect()
            }
        };
        let fps = fps.unwrap_or(native_fps);
        Ok(Self {
            video: video.to_owned(),
            path: path.to_path_buf(),
            info: VideoInfo {
                container,
                codec: stream["codec_name"].as_str().unwrap_or("?").to_owned(),
                width,
                height,
                native_fps,
                native_frames: times.len(),
                duration,
                variable_frame_rate,
            },
            fps,
            first_offset: first - start,
            times,
            grid,
            stream: index,
        })
    }

    /// Number of frames on the sampling grid.
    pub fn len(&self) -> usize {
        self.grid.len()
    }

    /// True when the grid holds no frame (never, for an opened file).
    pub fn is_empty(&self) -> bool {
        self.grid.is_empty()
    }

    /// Stream frame index of each grid frame.
    pub fn grid(&self) -> &[usize] {
        &self.grid
    }

    /// Presentation time of each stream frame, seconds after the first.
    pub fn frame_times(&self) -> &[f64] {
        &self.times
    }

    /// Decode stream frames `first..first + count` as RGB8 through `op` (crop, scale by
    /// FFmpeg's antialiased bilinear filter, the triangle filter frame folders are resized
    /// with, mirror; all in the decoder's filter graph), seeking to `first`, and hand each one
    /// to `each(stream index, pixels)` as it arrives, so only the frames kept are held in
    /// memory. Errors name the file; fewer frames than the index promised (a truncated or
    /// corrupt file) is an error, never a shorter video.
    pub fn decode_stream_frames(
        &self,
        first: usize,
        count: usize,
        op: &SpatialOp,
        mut each: impl FnMut(usize, &[u8]),
    ) -> Result<()> {
        use std::io::Read;
        if op.source != (self.info.height, self.info.width) || !op.is_valid() {
            return Err(bad(
                &self.path,
                format!(
                    "a crop of {:?} to {}x{} asked for; the video's frames are {}x{}",
                    op.crop, op.out.1, op.out.0, self.info.width, self.info.height
                ),
            ));
        }
        let (h, w) = op.out;
        if count == 0 {
            return Ok(());
        }
        // Seek to half a frame before `first`: the demuxer lands on the keyframe before it and
        // the decoder drops every frame shown earlier than this time.
        let ss = (first > 0)
            .then(|| 0.5 * (self.times[first - 1] + self.times[first]) + self.first_offset);
        let ss = ss.map(|s| format!("{s:.6}"));
        let (n_arg, map) = (count.to_string(), format!("0:{}", self.stream));
        let filter = op.ffmpeg_filter();
        let mut words = vec!["-nostdin", "-nostats", "-v", "error", "-xerror"];
        if let Some(s) = &ss {
            words.extend(["-ss", s]);
        }
        words.push("-i");
        let mut a = args(&words, &self.path);
        let mut out = vec![
            "-map",
            &map,
            "-frames:v",
            &n_arg,
            "-fps_mode",
            "passthrough",
            "-an",
            "-sn",
        ];
        if !filter.is_empty() {
            out.extend(["-vf", &filter]);
        }
        out.extend(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]);
        a.extend(out.into_iter().map(OsString::from));
        let mut child = Command::new("ffmpeg")
            .args(&a)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error("ffmpeg", &self.path, e))?;
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let errors = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text);
            text
        });
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut frame = vec![0u8; w * h * 3];
        let mut got = 0;
        while got < count {
            match stdout.read_exact(&mut frame) {
                Ok(()) => {
                    each(first + got, &frame);
                    got += 1;
                }
                Err(_) => break,
            }
        }
        drop(stdout);
        let status = child
            .wait()
            .map_err(|e| spawn_error("ffmpeg", &self.path, e))?;
        let stderr = errors.join().unwrap_or_default();
        if !status.success() {
            return Err(bad(
                &self.path,
                format!("{BROKEN}: {}", ffmpeg_message(&stderr, &self.path, status)),
            ));
        }
        if got < count {
            return Err(bad(
                &self.path,
                format!(
                    "decoded {got} of frames {first}..{} ({} in the stream's index): the file \
                     is truncated or corrupt",
                    first + count,
                    self.times.len()
                ),
            ));
        }
        Ok(())
    }

    /// Decode grid frames `range`, optionally resized to `(height, width)` (FFmpeg's
    /// antialiased bilinear scaler, the same triangle filter [`Frames::resized`] applies to
    /// frame folders).
    pub fn read(
        &self,
        range: std::ops::Range<usize>,
        resize: Option<(usize, usize)>,
    ) -> Result<Frames> {
        let source = (self.info.height, self.info.width);
        self.read_with(range, &SpatialOp::resize(source, resize.unwrap_or(source)))
    }

    /// Decode grid frames `range` through `op` (crop, scale, mirror), applied by FFmpeg's
    /// filters while decoding.
    pub fn read_with(&self, range: std::ops::Range<usize>, op: &SpatialOp) -> Result<Frames> {
        if range.start >= range.end || range.end > self.len() {
            return Err(bad(
                &self.path,
                format!("frames {range:?} asked for; the video has {}", self.len()),
            ));
        }
        self.decode_picks(&self.grid[range], op)
    }

    /// Decode grid frames `indices` (ascending, each once) through `op`, in that order. Frames
    /// far apart are read by separate seeks ([`SEEK_GAP`]), so clips spread over a long video
    /// cost their own frames, not the whole file's.
    pub fn read_indices(&self, indices: &[usize], op: &SpatialOp) -> Result<Frames> {
        if indices.is_empty() || indices.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad(
                &self.path,
                "frames must be asked for in ascending order, each once",
            ));
        }
        if let Some(&last) = indices.last().filter(|&&l| l >= self.len()) {
            return Err(bad(
                &self.path,
                format!("frame {last} asked for; the video has {}", self.len()),
            ));
        }
        let picks: Vec<usize> = indices.iter().map(|&i| self.grid[i]).collect();
        let mut out: Option<Frames> = None;
        let mut at = 0;
        for run in super::source::runs(&dedup(&picks), SEEK_GAP) {
            let n = picks[at..].iter().take_while(|&&p| p < run.end).count();
            let part = self.decode_picks(&picks[at..at + n], op)?;
            at += n;
            match &mut out {
                None => out = Some(part),
                Some(o) => {
                    o.rgb.extend_from_slice(&part.rgb);
                    o.len += part.len;
                }
            }
        }
        Ok(out.expect("at least one frame"))
    }

    /// Decode the stream frames `picks` (ascending, repeats allowed) in one pass from the
    /// first to the last.
    fn decode_picks(&self, picks: &[usize], op: &SpatialOp) -> Result<Frames> {
        let (lo, hi) = (picks[0], picks[picks.len() - 1]);
        let (height, width) = op.out;
        let mut rgb = Vec::with_capacity(picks.len() * height * width * 3);
        // Picks ascend and may repeat (a grid faster than the stream, a pause in a
        // variable-rate file): copy each decoded frame once per grid frame showing it.
        let mut next = 0;
        self.decode_stream_frames(lo, hi - lo + 1, op, |i, px| {
            while next < picks.len() && picks[next] == i {
                rgb.extend_from_slice(px);
                next += 1;
            }
        })?;
        Ok(Frames {
            video: self.video.clone(),
            len: picks.len(),
            height,
            width,
            rgb,
        })
    }
}

/// Longest pause between two frames a video may have: a recording paused for longer is a
/// broken or concatenated file, whose constant-rate grid would repeat one frame for the whole
/// gap (hours of identical frames to decode and run).
pub const MAX_GAP_SECONDS: f64 = 600.0;

/// Stream frames two wanted frames may lie apart and still be decoded in one pass: past it,
/// a new seek (about one group of pictures to decode, and an FFmpeg start) is cheaper than
/// decoding every frame between them.
pub const SEEK_GAP: usize = 48;

fn dedup(picks: &[usize]) -> Vec<usize> {
    let mut v = picks.to_vec();
    v.dedup();
    v
}

/// Encode `frames` as an H.264 mp4 at `fps` (yuv420p, CRF 17, the `ffmpeg` program's libx264),
/// written to a temporary file and renamed, so `path` is either complete or absent.
pub fn encode_mp4(path: &Path, frames: &Frames, fps: f64) -> Result<()> {
    use std::io::Write;
    let part = path.with_extension("mp4.part");
    let size = format!("{}x{}", frames.width, frames.height);
    let rate = format!("{fps}");
    let mut a: Vec<OsString> = [
        "-nostdin",
        "-nostats",
        "-v",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        &size,
        "-framerate",
        &rate,
        "-i",
        "-",
        "-c:v",
        "libx264",
        "-preset",
        "medium",
        "-crf",
        "17",
        "-pix_fmt",
        "yuv420p",
        "-movflags",
        "+faststart",
        "-f",
        "mp4",
    ]
    .map(OsString::from)
    .into();
    a.push(local(&part));
    let mut child = Command::new("ffmpeg")
        .args(&a)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error("ffmpeg", path, e))?;
    let wrote = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(&frames.rgb);
    let out = child
        .wait_with_output()
        .map_err(|e| bad(path, format!("ffmpeg: {e}")))?;
    if !out.status.success() || wrote.is_err() {
        let _ = std::fs::remove_file(&part);
        return Err(bad(
            path,
            format!(
                "encoding failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    std::fs::rename(&part, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_rates_parse() {
        assert_eq!(rate(&Value::from("25/1")), Some(25.0));
        assert!((rate(&Value::from("30000/1001")).unwrap() - 29.97).abs() < 1e-3);
        assert_eq!(rate(&Value::from("0/0")), None);
        assert_eq!(rate(&Value::from("x")), None);
    }

    #[test]
    fn missing_file_and_bad_rate_name_the_file() {
        let e = VideoFile::open(Path::new("/nonexistent/clip.mp4"), "clip", None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/clip.mp4"), "{e}");
        let e = VideoFile::open(Path::new("clip.mp4"), "clip", Some(-1.0)).unwrap_err();
        assert!(
            e.to_string().contains("clip.mp4") && e.to_string().contains("-1"),
            "{e}"
        );
    }
}
