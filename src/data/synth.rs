//! The built-in synthetic benchmark: deterministic untrimmed videos with temporally localized
//! actions, written in the same layout real data uses (see `docs/data.md`).
//!
//! Every action class has a *twin* drawn with the same shape from the same colour palette, that
//! differs only in how it moves (left vs right, growing vs shrinking, clockwise vs
//! counter-clockwise, blinking vs falling). A single frame therefore cannot tell twins apart:
//! all 8 classes need temporal context. Distractor shapes from the same palette drift at random
//! without being actions, the background texture scrolls, and every pixel carries noise.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use burn::config::Config;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::annotations::{Annotation, GroundTruth, Subset, VideoAnnotations};
use crate::error::{Error, Result};
use crate::io::write_json_atomic;

use super::source::{ANNOTATIONS_FILE, FRAMES_DIR, VIDEOS_DIR};

/// Name of the configuration a generated dataset records (written before its frames, so an
/// interrupted generation can be recognised and redone).
const CONFIG_FILE: &str = "synth_config.json";

/// How the videos are written: frame images, or video files.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    /// JPEG, quality 90 (`img_00001.jpg`).
    Jpeg,
    /// Lossless PNG (`img_00001.png`).
    Png,
    /// One H.264 video file per video (`videos/<id>.mp4`, yuv420p, CRF 17), encoded by the
    /// `ffmpeg` program; needs the `video` feature and even frame sides.
    Mp4,
}

impl FrameFormat {
    /// File extension.
    pub fn extension(self) -> &'static str {
        match self {
            FrameFormat::Jpeg => "jpg",
            FrameFormat::Png => "png",
            FrameFormat::Mp4 => "mp4",
        }
    }
}

/// Settings of the synthetic benchmark.
#[derive(Config, Debug)]
pub struct SynthConfig {
    /// Number of videos.
    #[config(default = 40)]
    pub videos: usize,
    /// Random seed; the same seed gives byte-identical annotations.
    #[config(default = 0)]
    pub seed: u64,
    /// Frame height in pixels.
    #[config(default = 64)]
    pub height: usize,
    /// Frame width in pixels.
    #[config(default = 64)]
    pub width: usize,
    /// Fewest frames per video.
    #[config(default = 192)]
    pub min_frames: usize,
    /// Most frames per video.
    #[config(default = 384)]
    pub max_frames: usize,
    /// Frame rate written to the annotations.
    #[config(default = 15.0)]
    pub fps: f64,
    /// Number of action classes (1 to 8).
    #[config(default = 8)]
    pub num_classes: usize,
    /// Fewest action instances per video.
    #[config(default = 2)]
    pub min_actions: usize,
    /// Most action instances per video.
    #[config(default = 6)]
    pub max_actions: usize,
    /// Shortest action, in frames; the longest is a third of the video.
    #[config(default = 4)]
    pub min_action_frames: usize,
    /// Most distractor objects per video (0 to this many).
    #[config(default = 2)]
    pub max_distractors: usize,
    /// Share of videos in the validation subset (every k-th video).
    #[config(default = 0.25)]
    pub validation_fraction: f64,
    /// Standard deviation of per-pixel noise (0-255 scale).
    #[config(default = 8.0)]
    pub noise_std: f64,
    /// Image format of the frames.
    #[config(default = "FrameFormat::Jpeg")]
    pub format: FrameFormat,
}

/// The action classes of the synthetic benchmark, in class-index order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthClass {
    /// A square translating to the right.
    MoveRight,
    /// A square translating to the left.
    MoveLeft,
    /// A disc whose radius grows (saw-tooth).
    Grow,
    /// A disc whose radius shrinks (saw-tooth).
    Shrink,
    /// A bar rotating clockwise.
    RotateClockwise,
    /// A bar rotating counter-clockwise.
    RotateCounterClockwise,
    /// A cross blinking on and off.
    Blink,
    /// A cross falling downwards.
    MoveDown,
}

impl SynthClass {
    /// All classes, in index order.
    pub const ALL: [SynthClass; 8] = [
        SynthClass::MoveRight,
        SynthClass::MoveLeft,
        SynthClass::Grow,
        SynthClass::Shrink,
        SynthClass::RotateClockwise,
        SynthClass::RotateCounterClockwise,
        SynthClass::Blink,
        SynthClass::MoveDown,
    ];

    /// Class name used in the annotations.
    pub fn name(self) -> &'static str {
        match self {
            SynthClass::MoveRight => "move_right",
            SynthClass::MoveLeft => "move_left",
            SynthClass::Grow => "grow",
            SynthClass::Shrink => "shrink",
            SynthClass::RotateClockwise => "rotate_cw",
            SynthClass::RotateCounterClockwise => "rotate_ccw",
            SynthClass::Blink => "blink",
            SynthClass::MoveDown => "move_down",
        }
    }

    /// The class that looks the same in a single frame and differs only in motion.
    pub fn twin(self) -> SynthClass {
        let i = self as usize;
        Self::ALL[i ^ 1]
    }

    /// Names of the first `k` classes, in index order.
    pub fn names(k: usize) -> Vec<String> {
        Self::ALL[..k].iter().map(|c| c.name().to_owned()).collect()
    }

    fn shape(self) -> Shape {
        match self {
            SynthClass::MoveRight | SynthClass::MoveLeft => Shape::Square,
            SynthClass::Grow | SynthClass::Shrink => Shape::Disc,
            SynthClass::RotateClockwise | SynthClass::RotateCounterClockwise => Shape::Bar,
            SynthClass::Blink | SynthClass::MoveDown => Shape::Cross,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Square,
    Disc,
    Bar,
    Cross,
}

const SHAPES: [Shape; 4] = [Shape::Square, Shape::Disc, Shape::Bar, Shape::Cross];

/// Colours shared by all classes and distractors, so colour tells nothing about the class.
const PALETTE: [[f64; 3]; 4] = [
    [235.0, 70.0, 60.0],
    [70.0, 210.0, 90.0],
    [80.0, 120.0, 245.0],
    [245.0, 225.0, 70.0],
];

/// Pixels per frame for translating classes.
const SPEED: f64 = 1.5;
/// Radians per frame for rotating classes.
const ANGULAR_SPEED: f64 = 0.2;
/// Radius range of growing / shrinking discs.
const RADIUS: (f64, f64) = (3.0, 13.0);

/// What is drawn for one object: an action instance or a distractor.
#[derive(Debug, Clone)]
struct Sprite {
    /// `None` for a distractor.
    class: Option<SynthClass>,
    shape: Shape,
    colour: [f64; 3],
    /// First frame (inclusive) and end frame (exclusive).
    start: usize,
    end: usize,
    x: f64,
    y: f64,
    /// Half-size (square, cross arm, half bar length) or base radius.
    size: f64,
    angle: f64,
    /// Saw-tooth phase in [0, 1) (grow/shrink) or blink phase.
    phase: f64,
    /// Saw-tooth period in frames (grow/shrink).
    period: f64,
    /// Distractor random-walk offsets per frame, relative to `(x, y)`.
    jitter: Vec<(f64, f64)>,
}

/// The pose of a sprite at one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pose {
    x: f64,
    y: f64,
    size: f64,
    angle: f64,
    visible: bool,
}

impl Sprite {
    fn pose(&self, frame: usize) -> Option<Pose> {
        if frame < self.start || frame >= self.end {
            return None;
        }
        let k = (frame - self.start) as f64;
        let mut p = Pose {
            x: self.x,
            y: self.y,
            size: self.size,
            angle: self.angle,
            visible: true,
        };
        let saw = |dir: f64| {
            let u = (self.phase + dir * k / self.period).rem_euclid(1.0);
            RADIUS.0 + (RADIUS.1 - RADIUS.0) * u
        };
        match self.class {
            None => {
                let (dx, dy) = self.jitter[frame - self.start];
                p.x += dx;
                p.y += dy;
            }
            Some(SynthClass::MoveRight) => p.x += SPEED * k,
            Some(SynthClass::MoveLeft) => p.x -= SPEED * k,
            Some(SynthClass::MoveDown) => p.y += SPEED * k,
            Some(SynthClass::Grow) => p.size = saw(1.0),
            Some(SynthClass::Shrink) => p.size = saw(-1.0),
            Some(SynthClass::RotateClockwise) => p.angle += ANGULAR_SPEED * k,
            Some(SynthClass::RotateCounterClockwise) => p.angle -= ANGULAR_SPEED * k,
            // Two frames on, two off, starting at a random point of the cycle.
            Some(SynthClass::Blink) => {
                p.visible = ((k + self.phase * 4.0) as usize / 2).is_multiple_of(2)
            }
        }
        Some(p)
    }
}

/// Does a shape at `pose` cover the point offset `(dx, dy)` from its centre?
fn covers(shape: Shape, pose: &Pose, dx: f64, dy: f64) -> bool {
    let s = pose.size;
    match shape {
        Shape::Square => dx.abs() <= s && dy.abs() <= s,
        Shape::Disc => dx * dx + dy * dy <= s * s,
        Shape::Bar => {
            let (sin, cos) = pose.angle.sin_cos();
            let u = dx * cos + dy * sin;
            let v = -dx * sin + dy * cos;
            u.abs() <= s && v.abs() <= 1.6
        }
        Shape::Cross => (dx.abs() <= s && dy.abs() <= 1.6) || (dy.abs() <= s && dx.abs() <= 1.6),
    }
}

/// Scrolling background texture: a few random plane waves per video.
#[derive(Debug, Clone)]
struct Background {
    base: [f64; 3],
    waves: Vec<(f64, f64, f64, [f64; 3])>,
    velocity: (f64, f64),
}

impl Background {
    fn random(rng: &mut ChaCha8Rng) -> Self {
        let base = [0; 3].map(|_| rng.random_range(50.0..130.0));
        let waves = (0..3)
            .map(|_| {
                let kx = rng.random_range(-0.35..0.35);
                let ky = rng.random_range(-0.35..0.35);
                let phase = rng.random_range(0.0..2.0 * PI);
                let amp = [0; 3].map(|_| rng.random_range(5.0..18.0));
                (kx, ky, phase, amp)
            })
            .collect();
        let velocity = (rng.random_range(-0.6..0.6), rng.random_range(-0.6..0.6));
        Self {
            base,
            waves,
            velocity,
        }
    }

    fn at(&self, x: f64, y: f64, t: f64) -> [f64; 3] {
        let (x, y) = (x - self.velocity.0 * t, y - self.velocity.1 * t);
        let mut c = self.base;
        for (kx, ky, phase, amp) in &self.waves {
            let s = (kx * x + ky * y + phase).sin();
            for ch in 0..3 {
                c[ch] += amp[ch] * s;
            }
        }
        c
    }
}

/// The plan of one video: everything but the per-frame noise.
#[derive(Debug, Clone)]
struct VideoPlan {
    id: String,
    subset: Subset,
    frames: usize,
    sprites: Vec<Sprite>,
    background: Background,
    noise_seed: u64,
}

/// A generated dataset on disk.
#[derive(Debug, Clone)]
pub struct SynthDataset {
    /// Dataset folder.
    pub root: PathBuf,
    /// Its ground truth (also written to `root/annotations.json`).
    pub ground_truth: GroundTruth,
    /// Class names in class-index order.
    pub classes: Vec<String>,
}

impl SynthConfig {
    /// Load the synthetic dataset at `root`, generating it with this configuration first if its annotations are
    /// missing and the folder is new or empty (a folder with other content, such as a real
    /// dataset without its annotations, is an error, never filled with synthetic videos).
    pub fn load_or_generate(&self, root: &Path) -> Result<SynthDataset> {
        let ann = root.join(ANNOTATIONS_FILE);
        if !ann.exists() && !self.can_generate_into(root) {
            return Err(Error::EmptyInput {
                path: ann,
                reason: format!(
                    "not found, and {} holds other files, so no synthetic benchmark is generated \
                     there (a dataset needs annotations.json beside frames/ or videos/)",
                    root.display()
                ),
            });
        }
        if ann.exists() {
            let ground_truth = GroundTruth::from_json_file(&ann)?;
            let mut classes = ground_truth.classes(None);
            let order = |c: &String| SynthClass::ALL.iter().position(|s| s.name() == c);
            classes.sort_by_key(|c| (order(c), c.clone()));
            return Ok(SynthDataset {
                root: root.to_path_buf(),
                ground_truth,
                classes,
            });
        }
        self.generate(root)
    }

    /// Largest frame side accepted (a 2048 x 2048 RGB frame is 12 MiB to render).
    pub const MAX_SIDE: usize = 2048;

    /// Most videos accepted (planned in memory before any is written).
    pub const MAX_VIDEOS: usize = 100_000;

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.num_classes == 0 || self.num_classes > SynthClass::ALL.len() {
            return bad(format!(
                "num_classes must be 1..=8, got {}",
                self.num_classes
            ));
        }
        if self.videos == 0 || self.videos > Self::MAX_VIDEOS {
            return Err(Error::InvalidValue {
                name: "videos".into(),
                reason: format!("must be 1..={}, got {}", Self::MAX_VIDEOS, self.videos),
            });
        }
        for (name, side) in [("height", self.height), ("width", self.width)] {
            if !(16..=Self::MAX_SIDE).contains(&side) {
                return Err(Error::InvalidValue {
                    name: name.into(),
                    reason: format!("frames must be 16..={} pixels, got {side}", Self::MAX_SIDE),
                });
            }
        }
        if self.min_frames == 0 || self.min_frames > self.max_frames {
            return bad(format!(
                "need 0 < min_frames <= max_frames, got {}..{}",
                self.min_frames, self.max_frames
            ));
        }
        if self.min_action_frames == 0 || self.min_action_frames * 3 > self.min_frames {
            return bad(format!(
                "min_action_frames ({}) must be positive and at most a third of min_frames ({})",
                self.min_action_frames, self.min_frames
            ));
        }
        if self.min_actions == 0 || self.min_actions > self.max_actions {
            return bad(format!(
                "need 0 < min_actions <= max_actions, got {}..{}",
                self.min_actions, self.max_actions
            ));
        }
        if self.format == FrameFormat::Mp4 && (self.height % 2 == 1 || self.width % 2 == 1) {
            return Err(Error::InvalidValue {
                name: "size".into(),
                reason: format!(
                    "H.264 video (4:2:0) needs even frame sides, got {}x{}",
                    self.width, self.height
                ),
            });
        }
        if !(self.fps > 0.0 && self.fps.is_finite()) {
            return bad(format!("fps must be positive, got {}", self.fps));
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return bad(format!(
                "validation_fraction must be in [0, 1), got {}",
                self.validation_fraction
            ));
        }
        Ok(())
    }

    /// The ground truth this configuration generates, without rendering any frame.
    pub fn ground_truth(&self) -> Result<GroundTruth> {
        self.validate()?;
        Ok(self.ground_truth_of(&self.plan()))
    }

    fn plan(&self) -> Vec<VideoPlan> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let every = if self.validation_fraction > 0.0 {
            (1.0 / self.validation_fraction).round().max(1.0) as usize
        } else {
            usize::MAX
        };
        (0..self.videos)
            .map(|i| {
                let subset = if every != usize::MAX && i % every == every - 1 {
                    Subset::Validation
                } else {
                    Subset::Training
                };
                self.plan_video(&mut rng, format!("synth_{i:05}"), subset)
            })
            .collect()
    }

    fn plan_video(&self, rng: &mut ChaCha8Rng, id: String, subset: Subset) -> VideoPlan {
        let frames = rng.random_range(self.min_frames..=self.max_frames);
        let (w, h) = (self.width as f64, self.height as f64);
        let margin = 10.0f64.min(w / 4.0).min(h / 4.0);
        let mut sprites = Vec::new();
        let n_actions = rng.random_range(self.min_actions..=self.max_actions);
        let max_len = (frames / 3).max(self.min_action_frames);
        for _ in 0..n_actions {
            let class = SynthClass::ALL[rng.random_range(0..self.num_classes)];
            // Log-uniform duration: as many short actions as long ones.
            let ln = rng.random_range((self.min_action_frames as f64).ln()..=(max_len as f64).ln());
            let len = (ln.exp().round() as usize).clamp(self.min_action_frames, max_len);
            let start = rng.random_range(0..=frames - len);
            sprites.push(Sprite {
                class: Some(class),
                shape: class.shape(),
                colour: PALETTE[rng.random_range(0..PALETTE.len())],
                start,
                end: start + len,
                x: rng.random_range(margin..w - margin),
                y: rng.random_range(margin..h - margin),
                size: rng.random_range(4.0..8.0),
                angle: rng.random_range(0.0..PI),
                phase: rng.random_range(0.0..1.0),
                period: (len as f64).clamp(6.0, 20.0),
                jitter: Vec::new(),
            });
        }
        for _ in 0..rng.random_range(0..=self.max_distractors) {
            let len = rng.random_range(frames / 5..=frames * 4 / 5).max(1);
            let start = rng.random_range(0..=frames - len);
            let shape = SHAPES[rng.random_range(0..SHAPES.len())];
            let size = match shape {
                Shape::Disc => rng.random_range(RADIUS.0..RADIUS.1),
                _ => rng.random_range(4.0..8.0),
            };
            // A bounded random walk: motion without a direction, which is not an action.
            let (mut dx, mut dy) = (0.0f64, 0.0f64);
            let jitter = (0..len)
                .map(|_| {
                    dx = (dx + rng.random_range(-1.0..1.0)).clamp(-3.0, 3.0);
                    dy = (dy + rng.random_range(-1.0..1.0)).clamp(-3.0, 3.0);
                    (dx, dy)
                })
                .collect();
            sprites.push(Sprite {
                class: None,
                shape,
                colour: PALETTE[rng.random_range(0..PALETTE.len())],
                start,
                end: start + len,
                x: rng.random_range(margin..w - margin),
                y: rng.random_range(margin..h - margin),
                size,
                angle: rng.random_range(0.0..PI),
                phase: 0.0,
                period: 1.0,
                jitter,
            });
        }
        VideoPlan {
            id,
            subset,
            frames,
            sprites,
            background: Background::random(rng),
            noise_seed: rng.random(),
        }
    }

    fn ground_truth_of(&self, plans: &[VideoPlan]) -> GroundTruth {
        let videos = plans
            .iter()
            .map(|p| {
                let mut annotations: Vec<Annotation> = p
                    .sprites
                    .iter()
                    .filter_map(|s| {
                        s.class.map(|c| Annotation {
                            segment: [s.start as f64 / self.fps, s.end as f64 / self.fps],
                            label: c.name().to_owned(),
                        })
                    })
                    .collect();
                annotations.sort_by(|a, b| a.segment[0].total_cmp(&b.segment[0]));
                VideoAnnotations {
                    id: p.id.clone(),
                    subset: p.subset,
                    duration: p.frames as f64 / self.fps,
                    fps: Some(self.fps),
                    num_frames: Some(p.frames),
                    annotations,
                }
            })
            .collect();
        GroundTruth { videos }
    }

    /// Render frame `t` of a video as RGB8, `height x width x 3`.
    fn render(&self, plan: &VideoPlan, t: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let (w, h) = (self.width, self.height);
        let poses: Vec<(&Sprite, Pose)> = plan
            .sprites
            .iter()
            .filter_map(|s| s.pose(t).filter(|p| p.visible).map(|p| (s, p)))
            .collect();
        let mut out = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let mut c = plan.background.at(px, py, t as f64);
                for (s, pose) in &poses {
                    // Distances on a torus: objects leaving one side re-enter on the other.
                    let dx = (px - pose.x + w as f64 / 2.0).rem_euclid(w as f64) - w as f64 / 2.0;
                    let dy = (py - pose.y + h as f64 / 2.0).rem_euclid(h as f64) - h as f64 / 2.0;
                    if covers(s.shape, pose, dx, dy) {
                        c = s.colour;
                    }
                }
                for v in c {
                    let noise = gaussian(rng) * self.noise_std;
                    out.push((v + noise).round().clamp(0.0, 255.0) as u8);
                }
            }
        }
        out
    }

    /// Generate the dataset into `root`: `root/frames/<video>/img_00001.<ext>` (or
    /// `root/videos/<video>.mp4` for [`FrameFormat::Mp4`]), then
    /// `root/annotations.json` last (written atomically, so its presence means the dataset is
    /// complete).
    ///
    /// `root` must be new, empty, or hold an interrupted generation of this same
    /// configuration: any other content (another dataset, frames of another format) is
    /// refused, never written over or mixed into.
    pub fn generate(&self, root: &Path) -> Result<SynthDataset> {
        self.validate()?;
        self.check_target(root)?;
        write_json_atomic(&root.join(CONFIG_FILE), self)?;
        let plans = self.plan();
        let frames_root = root.join(match self.format {
            FrameFormat::Mp4 => VIDEOS_DIR,
            _ => FRAMES_DIR,
        });
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(plan) = plans.get(i) else {
                                return Ok(());
                            };
                            self.write_video(plan, &frames_root)?;
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().expect("frame writer panicked"))
        })?;
        let ground_truth = self.ground_truth_of(&plans);
        ground_truth.write_json(&root.join(ANNOTATIONS_FILE))?;
        Ok(SynthDataset {
            root: root.to_path_buf(),
            ground_truth,
            classes: SynthClass::names(self.num_classes),
        })
    }

    /// Whether [`SynthConfig::generate`] would write into `root` (new, empty, or an interrupted
    /// generation of this configuration).
    pub fn can_generate_into(&self, root: &Path) -> bool {
        self.check_target(root).is_ok()
    }

    /// Refuse a `root` that is neither new, empty, nor an interrupted run of this config.
    fn check_target(&self, root: &Path) -> Result<()> {
        let entries: Vec<String> = match std::fs::read_dir(root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(root, e)),
            Ok(d) => d
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
        };
        if entries.is_empty() {
            return Ok(());
        }
        let interrupted = !root.join(ANNOTATIONS_FILE).exists()
            && entries
                .iter()
                .all(|e| e == CONFIG_FILE || e == FRAMES_DIR || e == VIDEOS_DIR)
            && crate::io::read_json::<SynthConfig>(&root.join(CONFIG_FILE))
                .is_ok_and(|c| serde_json::to_value(&c).ok() == serde_json::to_value(self).ok());
        if interrupted {
            return Ok(());
        }
        let mut shown: Vec<&str> = entries.iter().map(String::as_str).take(3).collect();
        if entries.len() > 3 {
            shown.push("...");
        }
        Err(Error::WouldOverwrite {
            path: root.to_path_buf(),
            reason: format!(
                "the folder is not empty ({}); the synthetic benchmark is generated only into a \
                 new or empty folder",
                shown.join(", ")
            ),
        })
    }

    /// Write one video into `media` (the frames or videos folder).
    fn write_video(&self, plan: &VideoPlan, media: &Path) -> Result<()> {
        if self.format == FrameFormat::Mp4 {
            std::fs::create_dir_all(media).map_err(|e| Error::io(media, e))?;
            let mut rng = ChaCha8Rng::seed_from_u64(plan.noise_seed);
            let mut rgb = Vec::with_capacity(plan.frames * self.height * self.width * 3);
            for t in 0..plan.frames {
                rgb.extend(self.render(plan, t, &mut rng));
            }
            let frames = super::frames::Frames {
                video: plan.id.clone(),
                len: plan.frames,
                height: self.height,
                width: self.width,
                rgb,
            };
            return encode_mp4(&media.join(format!("{}.mp4", plan.id)), &frames, self.fps);
        }
        let dir = &media.join(&plan.id);
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut rng = ChaCha8Rng::seed_from_u64(plan.noise_seed);
        for t in 0..plan.frames {
            let rgb = self.render(plan, t, &mut rng);
            let path = dir.join(format!("img_{:05}.{}", t + 1, self.format.extension()));
            let img = image::RgbImage::from_raw(self.width as u32, self.height as u32, rgb)
                .expect("buffer has width * height * 3 bytes");
            let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
            let mut w = std::io::BufWriter::new(file);
            let res = match self.format {
                FrameFormat::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, 90)
                    .encode_image(&img),
                FrameFormat::Png => img.write_to(&mut w, image::ImageFormat::Png),
                FrameFormat::Mp4 => unreachable!("video files are written above"),
            };
            res.map_err(|e| Error::BadFrame {
                path: path.clone(),
                reason: format!("cannot encode frame: {e}"),
            })?;
        }
        Ok(())
    }
}

#[cfg(feature = "video")]
use super::video::encode_mp4;

#[cfg(not(feature = "video"))]
fn encode_mp4(path: &Path, _frames: &super::frames::Frames, _fps: f64) -> Result<()> {
    Err(Error::Video {
        path: path.to_path_buf(),
        reason: "writing video files needs the `video` cargo feature (build with \
                 `--features video`)"
            .into(),
    })
}

/// Standard normal sample (Box-Muller), so the noise needs no extra crate.
pub(crate) fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generation refuses a folder with other content, and finishes its own interrupted run.
    #[test]
    fn generates_only_into_new_empty_or_interrupted_folders() {
        let d = tempfile::tempdir().unwrap();
        let cfg = small();
        let root = d.path().join("ds");
        cfg.generate(&root).unwrap();
        assert!(cfg.generate(&root).is_err(), "complete dataset overwritten");
        std::fs::remove_file(root.join(ANNOTATIONS_FILE)).unwrap();
        cfg.generate(&root).unwrap();
        std::fs::remove_file(root.join(ANNOTATIONS_FILE)).unwrap();
        assert!(
            cfg.clone().with_seed(9).generate(&root).is_err(),
            "another config mixed in"
        );
        let other = d.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("notes.txt"), "x").unwrap();
        let e = cfg.load_or_generate(&other).unwrap_err().to_string();
        assert!(e.contains("annotations.json") && e.contains("other"), "{e}");
        assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
        assert!(
            cfg.clone()
                .with_height(100_000)
                .generate(&d.path().join("big"))
                .is_err()
        );
        assert!(
            cfg.with_videos(SynthConfig::MAX_VIDEOS + 1)
                .generate(&d.path().join("many"))
                .is_err()
        );
    }

    fn small() -> SynthConfig {
        SynthConfig::new()
            .with_videos(3)
            .with_min_frames(24)
            .with_max_frames(40)
            .with_height(32)
            .with_width(32)
    }

    #[test]
    fn same_seed_gives_identical_annotations() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let cfg = small().with_seed(7);
        cfg.generate(a.path()).unwrap();
        cfg.generate(b.path()).unwrap();
        let fa = std::fs::read(a.path().join(ANNOTATIONS_FILE)).unwrap();
        let fb = std::fs::read(b.path().join(ANNOTATIONS_FILE)).unwrap();
        assert_eq!(fa, fb);
        let frame = "frames/synth_00001/img_00010.jpg";
        assert_eq!(
            std::fs::read(a.path().join(frame)).unwrap(),
            std::fs::read(b.path().join(frame)).unwrap()
        );
        let other = small().with_seed(8).ground_truth().unwrap();
        assert_ne!(
            other,
            GroundTruth::from_json_file(&a.path().join(ANNOTATIONS_FILE)).unwrap()
        );
    }

    #[test]
    fn layout_and_annotations_are_consistent() {
        let d = tempfile::tempdir().unwrap();
        let ds = small()
            .with_format(FrameFormat::Png)
            .generate(d.path())
            .unwrap();
        for v in &ds.ground_truth.videos {
            let n = v.num_frames.unwrap();
            let dir = d.path().join(FRAMES_DIR).join(&v.id);
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), n);
            assert!(dir.join(format!("img_{n:05}.png")).exists());
            assert_eq!(v.duration, n as f64 / 15.0);
            for a in &v.annotations {
                assert!(a.segment[0] >= 0.0 && a.segment[1] <= v.duration);
                assert!(a.segment[1] - a.segment[0] >= 4.0 / 15.0 - 1e-12);
            }
        }
        let img = image::open(d.path().join("frames/synth_00000/img_00001.png")).unwrap();
        assert_eq!((img.width(), img.height()), (32, 32));
    }

    #[test]
    fn default_benchmark_has_varied_overlapping_actions_and_both_subsets() {
        let gt = SynthConfig::new().ground_truth().unwrap();
        assert_eq!(gt.videos.len(), 40);
        assert_eq!(gt.classes(None).len(), 8);
        assert!(gt.subset(Some(Subset::Validation)).count() == 10);
        let lens: Vec<f64> = gt
            .videos
            .iter()
            .flat_map(|v| {
                v.annotations
                    .iter()
                    .map(|a| (a.segment[1] - a.segment[0]) * 15.0)
            })
            .collect();
        let (min, max) = lens
            .iter()
            .fold((f64::MAX, 0.0f64), |(a, b), &l| (a.min(l), b.max(l)));
        assert!(min <= 8.0 && max >= 60.0, "durations {min}..{max} frames");
        let overlapping = gt
            .videos
            .iter()
            .filter(|v| {
                v.annotations
                    .windows(2)
                    .any(|w| w[1].segment[0] < w[0].segment[1])
            })
            .count();
        assert!(
            overlapping >= 5,
            "only {overlapping} videos with overlapping actions"
        );
        for v in &gt.videos {
            assert!((192..=384).contains(&v.num_frames.unwrap()));
        }
    }

    fn sprite(class: SynthClass) -> Sprite {
        Sprite {
            class: Some(class),
            shape: class.shape(),
            colour: PALETTE[0],
            start: 0,
            end: 20,
            x: 16.0,
            y: 16.0,
            size: 6.0,
            angle: 0.3,
            phase: 0.2,
            period: 10.0,
            jitter: Vec::new(),
        }
    }

    /// A single frame cannot tell a class from its twin; two frames can.
    #[test]
    fn twins_differ_only_in_motion() {
        let cfg = small().with_noise_std(0.0);
        let bg = Background {
            base: [90.0; 3],
            waves: Vec::new(),
            velocity: (0.0, 0.0),
        };
        for class in SynthClass::ALL {
            let render = |c: SynthClass, t: usize| {
                let plan = VideoPlan {
                    id: "x".into(),
                    subset: Subset::Training,
                    frames: 20,
                    sprites: vec![sprite(c)],
                    background: bg.clone(),
                    noise_seed: 0,
                };
                cfg.render(&plan, t, &mut ChaCha8Rng::seed_from_u64(0))
            };
            assert_eq!(
                render(class, 0),
                render(class.twin(), 0),
                "{class:?} frame 0"
            );
            assert_ne!(
                (render(class, 2), render(class, 3)),
                (render(class.twin(), 2), render(class.twin(), 3)),
                "{class:?} frames 2-3"
            );
        }
    }

    #[test]
    fn bad_config_is_rejected() {
        assert!(
            SynthConfig::new()
                .with_num_classes(9)
                .ground_truth()
                .is_err()
        );
        assert!(
            SynthConfig::new()
                .with_min_frames(10)
                .ground_truth()
                .is_err()
        );
        assert!(SynthConfig::new().with_fps(0.0).ground_truth().is_err());
    }
}
