//! File helpers: atomic writes, so that an interrupted run never leaves a half-written file in
//! place of a good one.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Write `bytes` to `path` atomically: the data goes to a temporary file in the same folder,
/// is flushed to disk, then renamed over `path`. Parent folders are created.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Like [`write_atomic`], streaming the content through `fill`.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    refuse_special(path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Serialise `value` as pretty JSON and write it atomically.
pub fn write_json_atomic<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    write_atomic_with(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    })
}

/// Refuse to write `out` when it is one of `inputs` (the same file under another name
/// included), an existing folder or anything but a regular file, or inside a run, a dataset or
/// a frame folder: a command must never replace what it reads, nor put its files among
/// another run's or a dataset's.
pub fn check_output(out: &Path, inputs: &[&Path]) -> Result<()> {
    if out.is_dir() {
        return Err(Error::WouldOverwrite {
            path: out.to_path_buf(),
            reason: "it is a folder; give a file name".into(),
        });
    }
    refuse_special(out)?;
    if let Ok(target) = out.canonicalize() {
        for input in inputs {
            if input.canonicalize().is_ok_and(|i| i == target) {
                return Err(Error::WouldOverwrite {
                    path: out.to_path_buf(),
                    reason: format!("it is this command's input {}", input.display()),
                });
            }
        }
    }
    refuse_protected(out)
}

/// Error unless `dir` may receive a command's outputs (a `--timeline` folder): it must not be,
/// or lie inside, a run, a dataset or a frame folder (see [`check_output`]).
pub fn check_output_dir(dir: &Path) -> Result<()> {
    refuse_protected(&dir.join("output"))
}

/// What a folder holds that outputs must stay out of: a training run (its checkpoints, or the
/// configuration a run writes first), a dataset (annotations beside its frames or videos), or
/// a video's frame folder (numbered images).
fn protected(dir: &Path) -> Option<&'static str> {
    let is_dir = |n: &str| dir.join(n).is_dir();
    if is_dir("checkpoint") || is_dir("checkpoint.old") || run_config(&dir.join("config.json")) {
        return Some("the training run");
    }
    if dir.join("feature_run.json").is_file() {
        return Some("the feature run");
    }
    if dir.join("annotations.json").is_file() && (is_dir("frames") || is_dir("videos")) {
        return Some("the dataset");
    }
    let frame = |p: &Path| {
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let digits = p
            .file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|s| s.ends_with(|c: char| c.is_ascii_digit()));
        matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png")) && digits && p.is_file()
    };
    let has_frames = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .take(64)
        .any(|e| frame(&e.path()));
    has_frames.then_some("the frame folder")
}

/// Whether `path` is a training run's `config.json` (the fields every run records).
fn run_config(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| {
            ["mode", "backbone", "clips", "head"]
                .iter()
                .all(|k| v.get(k).is_some())
        })
}

/// An output must not land inside a run, a dataset or a frame folder: the command did not
/// make them, and a file there is taken for theirs (a run's predictions, a dataset's
/// annotations, a frame).
fn refuse_protected(out: &Path) -> Result<()> {
    let abs = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    for dir in abs.ancestors().skip(1) {
        if let Some(kind) = protected(dir) {
            return Err(Error::WouldOverwrite {
                path: out.to_path_buf(),
                reason: format!(
                    "it is inside {kind} {}, which this command did not make; write outputs \
                     outside runs, datasets and frame folders",
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

/// The file name stem of everything derived from video id `id` (cached features, timelines):
/// letters, digits, `_`, `-` and inner dots kept, every other byte written `%XX` (a leading dot
/// too), so an id can neither leave the folder (`../x`, `/etc/x`, `a/b`) nor hide a file, and
/// distinct ids never share a name. Ordinary ids (`video_validation_0000051`, `v_QOlSCBRmfWY`)
/// are unchanged.
pub fn file_stem_for(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for (i, b) in id.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    out
}

/// Whether a video id cannot name a file inside a folder as it is: empty, `.` or `..`,
/// absolute, or holding a path separator (or a NUL).
pub fn path_like_id(id: &str) -> bool {
    id.is_empty()
        || id == "."
        || id == ".."
        || id.contains(['/', '\\', '\0'])
        || Path::new(id).is_absolute()
}

/// An output that exists must be a regular file: renaming a new file over a device node, a
/// pipe, a socket or a symbolic link would replace it (as root, `/dev/full` with a file).
fn refuse_special(path: &Path) -> Result<()> {
    match path.symlink_metadata() {
        Ok(m) if !m.file_type().is_file() => {
            let kind = if m.file_type().is_symlink() {
                "a symbolic link"
            } else if m.is_dir() {
                "a folder"
            } else {
                "not a regular file (a device, a pipe or a socket)"
            };
            Err(Error::WouldOverwrite {
                path: path.to_path_buf(),
                reason: format!("it is {kind}; give the name of a new or regular file"),
            })
        }
        _ => Ok(()),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Read a whole text file, naming it in the error. A UTF-8 byte-order mark (as some Windows
/// editors write) is dropped, so it never ends up in a video id or breaks a JSON parser.
pub fn read_to_string(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
}

/// Where progress lines go.
type ProgressSink = Box<dyn Fn(&str) + Send + Sync>;

static PROGRESS: std::sync::RwLock<Option<ProgressSink>> = std::sync::RwLock::new(None);

/// Send the library's progress lines (pretraining steps, feature extraction, weights reused,
/// ...) to `sink`. Without a sink they are dropped: the library writes nothing to standard
/// output on its own.
pub fn set_progress(sink: impl Fn(&str) + Send + Sync + 'static) {
    if let Ok(mut s) = PROGRESS.write() {
        *s = Some(Box::new(sink));
    }
}

/// Progress lines to standard output (what the CLI and the examples install). A closed or full
/// standard output loses the line but never stops the work whose results go to files
/// (`train | head -1` still trains).
pub fn progress_to_stdout() {
    set_progress(|line| {
        let mut out = std::io::stdout().lock();
        let _ = out
            .write_all(line.as_bytes())
            .and_then(|()| out.write_all(b"\n"));
    });
}

/// Report a progress line to the installed sink ([`set_progress`]), if any.
pub fn progress(args: std::fmt::Arguments) {
    if let Ok(s) = PROGRESS.read()
        && let Some(sink) = s.as_ref()
    {
        sink(&args.to_string());
    }
}

/// Write a warning line to standard error; like [`progress`], a closed stream loses the line
/// without stopping the work.
pub fn warning(args: std::fmt::Arguments) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// Read and parse a JSON file (a configuration, a report); errors name the file, line and column.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| json_error(path, e))
}

/// A JSON error in `path` as [`Error::Json`] (file, line, column, message).
pub fn json_error(path: &Path, e: serde_json::Error) -> Error {
    Error::Json {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_goes_to_the_installed_sink() {
        use std::sync::{Arc, Mutex};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        set_progress(move |line| s.lock().unwrap().push(line.to_string()));
        progress(format_args!("step {} of {}", 3, 7));
        assert!(seen.lock().unwrap().iter().any(|l| l == "step 3 of 7"));
    }

    #[test]
    #[cfg(unix)]
    fn outputs_that_are_not_regular_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target.json");
        std::fs::write(&target, b"keep").unwrap();
        let link = d.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for p in [link.as_path(), Path::new("/dev/null"), d.path()] {
            let e = write_atomic(p, b"x").unwrap_err().to_string();
            assert!(e.contains("refusing to write"), "{e}");
            assert!(check_output(p, &[]).is_err());
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn outputs_stay_out_of_runs_datasets_and_frame_folders() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        std::fs::create_dir_all(run.join("checkpoint")).unwrap();
        let ds = d.path().join("ds");
        std::fs::create_dir_all(ds.join("videos")).unwrap();
        std::fs::write(ds.join("annotations.json"), b"{}").unwrap();
        let frames = d.path().join("frames");
        std::fs::create_dir_all(&frames).unwrap();
        std::fs::write(frames.join("img_00001.jpg"), b"x").unwrap();
        for bad in [
            run.join("predictions.json"),
            ds.join("annotations.json"),
            ds.join("videos/new.json"),
            frames.join("img_00001.json"),
        ] {
            let e = check_output(&bad, &[]).unwrap_err().to_string();
            assert!(e.contains("which this command did not make"), "{e}");
        }
        assert!(check_output_dir(&frames).is_err());
        assert!(check_output(&d.path().join("results.json"), &[]).is_ok());
        assert!(check_output_dir(&d.path().join("timelines")).is_ok());
    }

    #[test]
    fn ids_become_file_names_that_stay_in_their_folder() {
        assert_eq!(
            file_stem_for("video_validation_0000051"),
            "video_validation_0000051"
        );
        assert_eq!(file_stem_for("v_QOl-SC.b"), "v_QOl-SC.b");
        assert_eq!(file_stem_for("../x"), "%2E.%2Fx");
        assert_eq!(file_stem_for("/etc/passwd"), "%2Fetc%2Fpasswd");
        assert_eq!(file_stem_for(".."), "%2E.");
        assert_eq!(file_stem_for("a%2Fb"), "a%252Fb");
        assert_eq!(file_stem_for(""), "%");
        assert_ne!(file_stem_for("a/b"), file_stem_for("a%2Fb"));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/out.json");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp file left behind: {names:?}");
    }

    #[test]
    fn byte_order_mark_is_dropped_and_outputs_never_replace_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        std::fs::write(&p, "\u{feff}{\"x\": 1}").unwrap();
        assert_eq!(read_to_string(&p).unwrap(), "{\"x\": 1}");
        let other = dir.path().join("b.json");
        assert!(check_output(&other, &[&p]).is_ok());
        // The same file under another spelling is still the input.
        let alias = dir.path().join(".").join("a.json");
        let e = check_output(&alias, &[&other, &p]).unwrap_err().to_string();
        assert!(e.contains("input") && e.contains("a.json"), "{e}");
        assert!(check_output(dir.path(), &[]).is_err());
    }

    #[test]
    fn failed_fill_keeps_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.txt");
        write_atomic(&p, b"good").unwrap();
        let err = write_atomic_with(&p, |_| Err(std::io::Error::other("boom"))).unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert_eq!(std::fs::read(&p).unwrap(), b"good");
    }
}
