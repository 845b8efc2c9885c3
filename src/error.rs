//! The crate's error type: every fallible user path returns [`Result`].
//!
//! Errors about an input name the file, the video and the field involved, so that a user can fix
//! the input without reading a backtrace.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong on a user-facing path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file or folder failed.
    #[error("{path}: {source}")]
    Io {
        /// File or folder involved.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file is not valid JSON.
    #[error("{path}: malformed JSON at line {line}, column {column}: {message}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// 1-based line of the syntax error.
        line: usize,
        /// 1-based column of the syntax error.
        column: usize,
        /// What the parser said.
        message: String,
    },

    /// A required field is absent.
    #[error("{path}: {}missing field `{field}`", video_prefix(video))]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The video the field belongs to, if any.
        video: Option<String>,
        /// Dotted path of the field, e.g. `annotations[2].segment`.
        field: String,
    },

    /// A field is present but its value is unusable.
    #[error("{path}: {}field `{field}`: {reason}", video_prefix(video))]
    InvalidField {
        /// The file.
        path: PathBuf,
        /// The video the field belongs to, if any.
        video: Option<String>,
        /// Dotted path of the field.
        field: String,
        /// What is wrong with the value.
        reason: String,
    },

    /// A line of a THUMOS-14 annotation text file cannot be parsed.
    #[error("{path}:{line}: {reason}")]
    AnnotationLine {
        /// The text file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },

    /// A video's frame folder holds no frames, or fewer than its annotation says.
    #[error("video `{video}`: {reason} (frame folder {path})")]
    MissingFrames {
        /// The frame folder.
        path: PathBuf,
        /// The video.
        video: String,
        /// What is missing.
        reason: String,
    },

    /// A video file cannot be probed or decoded (not a video, no video stream, truncated,
    /// FFmpeg missing, or a build without the `video` feature).
    #[error("video file {path}: {reason}")]
    Video {
        /// The video file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A frame image cannot be decoded or differs in size from the video's first frame.
    #[error("{path}: {reason}")]
    BadFrame {
        /// The image file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A video has fewer frames than one clip spans.
    #[error(
        "video `{video}` has {frames} frames, fewer than one clip spans ({clip_span} frames = clip length x frame stride)"
    )]
    VideoTooShort {
        /// The video.
        video: String,
        /// Frames available.
        frames: usize,
        /// Frames one clip needs.
        clip_span: usize,
    },

    /// A `.npy` array file has the wrong format, dtype or shape.
    #[error("{path}: {reason}")]
    Npy {
        /// The `.npy` file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A folder or file that should hold input holds none.
    #[error("{path}: {reason}")]
    EmptyInput {
        /// The folder or file.
        path: PathBuf,
        /// What was expected there.
        reason: String,
    },

    /// A checkpoint cannot be loaded: a tensor is missing, has the wrong shape, or the file is
    /// not a checkpoint.
    #[error("{path}: {}{reason}", if key.is_empty() { String::new() } else { format!("tensor `{key}`: ") })]
    Weights {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor involved (module path), empty when the whole file is at fault.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A tensor given to a model has the wrong shape.
    #[error("{what}: expected a tensor of shape {expected}, got {got:?}")]
    Shape {
        /// Which input (`vit clips`, `head features`, ...).
        what: String,
        /// The shape wanted, in words (`[N, 3, F, H, W] with N > 0`).
        expected: String,
        /// The shape given.
        got: Vec<usize>,
    },

    /// Training produced a loss that is NaN or infinite.
    #[error(
        "non-finite loss {value} at step {step} (video `{video}`); lower the learning rate or check the input"
    )]
    NonFiniteLoss {
        /// The video of the step.
        video: String,
        /// Global step (0-based).
        step: usize,
        /// The loss value.
        value: f64,
    },

    /// A training checkpoint cannot be read or written.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A command-line or configuration value is out of its range (a negative frame rate, a
    /// threshold outside (0, 1], a size that would not fit in memory).
    #[error("`{name}`: {reason}")]
    InvalidValue {
        /// The flag or field, e.g. `--fps`.
        name: String,
        /// What is wrong and what is accepted.
        reason: String,
    },

    /// A command would write over one of its inputs, an existing dataset or an existing run.
    #[error("{path}: refusing to write: {reason}")]
    WouldOverwrite {
        /// The output that already exists.
        path: PathBuf,
        /// Why it is protected and how to proceed.
        reason: String,
    },

    /// A resumed run was given settings that contradict its checkpoint.
    #[error("run {path}: --resume keeps the checkpoint's settings, but {conflicts}")]
    ResumeConflict {
        /// The run folder.
        path: PathBuf,
        /// The conflicting settings, each with both values.
        conflicts: String,
    },

    /// The requested backend was not compiled in, or has no device.
    #[error("backend `{backend}` is not available: {reason}")]
    Backend {
        /// The backend asked for.
        backend: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// A data-parallel run's rank failed, or disagrees with rank 0 (its configuration, data
    /// or parameters).
    #[error("rank {rank} of {size}: {reason}")]
    Rank {
        /// The rank concerned.
        rank: usize,
        /// Number of ranks.
        size: usize,
        /// What failed or differs.
        reason: String,
    },
}

fn video_prefix(video: &Option<String>) -> String {
    match video {
        Some(v) => format!("video `{v}`: "),
        None => String::new(),
    }
}

/// An [`Error`] that prints its message, not its fields, when `main` returns it:
/// `fn main() -> Result<(), e2e_tal::Report>` in the examples (`?` converts).
pub struct Report(pub Error);

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<Error> for Report {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl Error {
    /// Wrap an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
