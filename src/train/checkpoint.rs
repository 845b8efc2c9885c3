//! Training checkpoints: model weights (burnpack, which keeps parameter ids so optimizer state
//! stays attached), both optimizers' state, and the loop's state, written so that an interrupted
//! write never destroys the previous checkpoint.
//!
//! Layout of `<run>/checkpoint/`: `model.bpk`, `optim_backbone.bpk`, `optim_head.bpk`,
//! (`ema.bpk`), `state.json` (config, classes, frame size, loop position, history) and
//! `checksums.json` (SHA-256 of every other file, written last). A new checkpoint is written to
//! `checkpoint.tmp/`, the current one renamed to `checkpoint.old/` (replacing the one before),
//! and the new one renamed into place. So `checkpoint.old/` always holds the previous good
//! checkpoint: [`Checkpoint::load`] verifies the checksums and falls back to it when the newest
//! is damaged (flipped bytes, a truncated file) or a crash hit between the renames.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::Bytes;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::TrainConfig;
use super::loss_scale::LossScale;
use super::model::TalModel;
use crate::error::{Error, Result};
use crate::io::{read_to_string, write_atomic, write_json_atomic};
use crate::reversible::SegmentDrift;

/// One epoch's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 0-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub mean_loss: f64,
    /// Wall-clock seconds of the epoch's training steps.
    pub seconds: f64,
    /// Of those, seconds the steps waited for their frames (decoding the input pipeline's
    /// workers had not finished ahead of time).
    #[serde(default)]
    pub data_wait: f64,
    /// Average validation mAP (THUMOS thresholds), when evaluated after this epoch.
    pub val_average_map: Option<f64>,
    /// Reconstruction checks of the reversible backward this epoch (mode `reversible` with the
    /// drift monitor on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftLog>,
    /// f16 runs: steps skipped this epoch for non-finite gradients, and the loss scale at its
    /// end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<ScaleLog>,
    /// Data-parallel runs: the number of ranks and the seconds rank 0's steps spent summing
    /// gradients over them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<RanksLog>,
}

/// A data-parallel epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RanksLog {
    /// Number of ranks.
    pub size: usize,
    /// Seconds of the epoch's steps spent in the gradient sum over the ranks (moving the
    /// gradients to host memory and back included), on rank 0.
    pub sum_seconds: f64,
    /// Seconds rank 0's steps waited for the other ranks to finish their backward before the
    /// sum (uneven shares: longer videos, slower devices).
    pub wait_seconds: f64,
    /// SHA-256 of the parameters (f32 values in visiting order, then the EMA's) at the end of
    /// the epoch, which every rank was checked to hold.
    pub parameters_sha256: String,
}

/// The loss scaler over one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScaleLog {
    /// Steps skipped this epoch.
    pub skipped: usize,
    /// The scale at the end of the epoch.
    pub scale: f64,
}

/// Drift monitor readings over some steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftLog {
    /// Steps checked.
    pub checks: usize,
    /// Checked steps whose drift reached the tolerance (gradients from the cached recompute).
    pub fallbacks: usize,
    /// Largest relative drift seen.
    pub max_rel: f64,
    /// Relative drift of the last check.
    pub last_rel: f64,
}

impl DriftLog {
    /// Add one step's worst reading to `log`.
    pub fn record(log: Option<Self>, reading: SegmentDrift) -> Self {
        let rel = reading.drift.max_rel;
        let prev = log.unwrap_or(Self {
            checks: 0,
            fallbacks: 0,
            max_rel: 0.0,
            last_rel: 0.0,
        });
        Self {
            checks: prev.checks + 1,
            fallbacks: prev.fallbacks + usize::from(reading.fell_back),
            max_rel: prev.max_rel.max(rel),
            last_rel: rel,
        }
    }
}

/// Where the loop stands; everything besides weights and optimizer state that a resumed run
/// needs to continue identically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Steps of the current epoch already taken.
    pub step_in_epoch: usize,
    /// Steps taken in total.
    pub global_step: usize,
    /// The loss normaliser (EMA of positives).
    pub normalizer: f64,
    /// Sum of the current epoch's losses so far.
    pub epoch_loss_sum: f64,
    /// Seconds spent in the current epoch so far.
    pub epoch_seconds: f64,
    /// Seconds of those the steps waited for data.
    #[serde(default)]
    pub epoch_data_wait: f64,
    /// Of those, seconds spent summing gradients over the ranks (data-parallel runs).
    #[serde(default)]
    pub epoch_sum_seconds: f64,
    /// And seconds spent waiting for the other ranks before the sum.
    #[serde(default)]
    pub epoch_wait_seconds: f64,
    /// Drift readings of the current epoch so far.
    #[serde(default)]
    pub epoch_drift: Option<DriftLog>,
    /// The f16 loss scaler (f16 runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScale>,
    /// Finished epochs.
    pub history: Vec<EpochLog>,
}

/// What a checkpoint's `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The run's configuration.
    pub config: TrainConfig,
    /// Class names in class-index order.
    pub classes: Vec<String>,
    /// Frame height and width the model was built for.
    pub frame_size: (usize, usize),
    /// Frame rate of the training videos when they all share one (inference samples new
    /// videos at it); absent in checkpoints of mixed-rate data and of older versions.
    #[serde(default)]
    pub fps: Option<f64>,
    /// Loop state.
    pub state: TrainState,
}

/// A loaded checkpoint.
pub struct Checkpoint {
    /// Folder it was read from.
    pub dir: PathBuf,
    /// Configuration, classes, loop state.
    pub meta: CheckpointMeta,
    model: Bytes,
    ema: Option<Bytes>,
    /// Backbone optimizer state.
    pub optim_backbone: OptimizerRecord,
    /// Head (and adapter) optimizer state.
    pub optim_head: OptimizerRecord,
}

fn fail(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Serialise a module to burnpack bytes (parameter ids included).
pub(crate) fn module_bytes<M: Module + ModuleSnapshot>(m: &M, path: &Path) -> Result<Bytes> {
    let mut store = BurnpackStore::from_bytes(None);
    m.save_into(&mut store).map_err(|e| fail(path, e))?;
    store.get_bytes().map_err(|e| fail(path, e))
}

/// Load burnpack bytes into `m`; every tensor must be present with the right shape.
pub(crate) fn load_module_bytes<M: Module + ModuleSnapshot>(
    m: &mut M,
    bytes: Bytes,
    path: &Path,
) -> Result<()> {
    let mut store = BurnpackStore::from_bytes(Some(bytes));
    let r = m.load_from(&mut store).map_err(|e| fail(path, e))?;
    if !r.errors.is_empty() || !r.missing.is_empty() {
        return Err(fail(
            path,
            format!(
                "does not fit the model: missing {:?}, errors {:?}",
                r.missing, r.errors
            ),
        ));
    }
    Ok(())
}

/// Name of the manifest of a checkpoint folder: file name -> SHA-256 (hex).
pub(crate) const CHECKSUMS: &str = "checksums.json";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Verify the files of checkpoint folder `dir` against its manifest. A folder without one
/// cannot be verified and is refused: damaged weights would otherwise load silently.
pub(crate) fn verify(dir: &Path) -> Result<()> {
    let manifest = dir.join(CHECKSUMS);
    if !manifest.is_file() {
        return Err(fail(
            dir,
            format!(
                "has no {CHECKSUMS}, so its files cannot be verified (a checkpoint is written \
                 with it; this one was cut short, copied partly or made by a version before \
                 checksums)"
            ),
        ));
    }
    let sums: std::collections::BTreeMap<String, String> = crate::io::read_json(&manifest)?;
    for required in [
        "model.bpk",
        "state.json",
        "optim_backbone.bpk",
        "optim_head.bpk",
    ] {
        if !sums.contains_key(required) {
            return Err(fail(&manifest, format!("lists no checksum for {required}")));
        }
    }
    // The files side by side (the step's cores are otherwise idle here); the first failing
    // file in the manifest's order is the one reported.
    let checked: Vec<Result<()>> = sums
        .par_iter()
        .map(|(name, want)| {
            let p = dir.join(name);
            let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            if sha256_hex(&bytes) != *want {
                return Err(fail(
                    &p,
                    "checksum mismatch: the file changed after it was written (damaged disk, \
                     partial copy or an edit)",
                ));
            }
            Ok(())
        })
        .collect();
    checked.into_iter().collect()
}

/// Write a checkpoint into `run/checkpoint/` (see the module docs for the crash safety).
pub(crate) fn save(
    run: &Path,
    meta: &CheckpointMeta,
    model: &TalModel,
    ema: Option<&TalModel>,
    optim_backbone: &ModuleOptimizer,
    optim_head: &ModuleOptimizer,
) -> Result<()> {
    let dir = run.join("checkpoint");
    let tmp = run.join("checkpoint.tmp");
    let old = run.join("checkpoint.old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let mut files: Vec<(&str, Vec<u8>)> = vec![("model.bpk", module_bytes(model, &tmp)?.to_vec())];
    if let Some(e) = ema {
        files.push(("ema.bpk", module_bytes(e, &tmp)?.to_vec()));
    }
    for (name, opt) in [
        ("optim_backbone.bpk", optim_backbone),
        ("optim_head.bpk", optim_head),
    ] {
        let bytes = opt.to_record().into_bytes().map_err(|e| fail(&tmp, e))?;
        files.push((name, bytes.to_vec()));
    }
    let mut state = serde_json::to_vec_pretty(meta).map_err(|e| fail(&tmp, e))?;
    state.push(b'\n');
    files.push(("state.json", state));
    // Each file written and hashed on a thread of the pool (the largest takes as long as the
    // others together).
    let sums = files
        .par_iter()
        .map(|(name, bytes)| {
            write_atomic(&tmp.join(name), bytes)?;
            Ok((name.to_string(), sha256_hex(bytes)))
        })
        .collect::<Result<std::collections::BTreeMap<_, _>>>()?;
    write_json_atomic(&tmp.join(CHECKSUMS), &sums)?;
    if dir.exists() {
        // Keep the current checkpoint as the previous good one, unless it is damaged: then
        // the one in checkpoint.old/ stays the fallback.
        if verify(&dir).is_ok() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            }
            std::fs::rename(&dir, &old).map_err(|e| Error::io(&dir, e))?;
        } else {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&tmp, e))?;
    Ok(())
}

/// The checkpoint folders of a run, newest first (`run` itself when it is one): every folder
/// with any of a checkpoint's files, so one that lost a file is reported (and passed over with
/// a warning) rather than skipped in silence.
pub(crate) fn candidates(run: &Path) -> Vec<PathBuf> {
    [
        run.to_path_buf(),
        run.join("checkpoint"),
        run.join("checkpoint.old"),
    ]
    .into_iter()
    .filter(|d| {
        ["state.json", "model.bpk", CHECKSUMS]
            .iter()
            .any(|f| d.join(f).is_file())
    })
    .collect()
}

/// The newest complete checkpoint folder of a run (or `run` itself when it is one).
pub fn find_checkpoint(run: &Path) -> Option<PathBuf> {
    candidates(run).into_iter().next()
}

impl Checkpoint {
    /// Read the checkpoint of run folder (or checkpoint folder) `path`: the newest one that
    /// passes its checksums and parses, falling back to the previous one (with a warning on
    /// standard error) when the newest is damaged.
    pub fn load(path: &Path) -> Result<Self> {
        let dirs = candidates(path);
        if dirs.is_empty() {
            return Err(fail(path, "no checkpoint (state.json + model.bpk)"));
        }
        let mut failures = Vec::new();
        for dir in dirs {
            match Self::load_dir(&dir) {
                Ok(ck) => {
                    if !failures.is_empty() {
                        crate::io::warning(format_args!(
                            "warning: {}; using the previous checkpoint {}",
                            failures.join("; "),
                            dir.display()
                        ));
                    }
                    return Ok(ck);
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(fail(
            path,
            format!("no usable checkpoint: {}", failures.join("; ")),
        ))
    }

    /// Read the checkpoint in folder `dir` after verifying its checksums.
    fn load_dir(dir: &Path) -> Result<Self> {
        verify(dir)?;
        let dir = dir.to_path_buf();
        let state_path = dir.join("state.json");
        let malformed = |e: serde_json::Error| fail(&state_path, format!("malformed: {e}"));
        let mut value: serde_json::Value =
            serde_json::from_str(&read_to_string(&state_path)?).map_err(malformed)?;
        // Checkpoints of older versions lack newer configuration fields: take their defaults.
        if let Some(cfg) = value.get_mut("config") {
            *cfg = super::config::with_defaults(&super::TrainConfig::new(), cfg.take());
        }
        let meta: CheckpointMeta = serde_json::from_value(value).map_err(malformed)?;
        let read = |name: &str| -> Result<Bytes> {
            let p = dir.join(name);
            Ok(Bytes::from_bytes_vec(
                std::fs::read(&p).map_err(|e| Error::io(&p, e))?,
            ))
        };
        let record = |name: &str| -> Result<OptimizerRecord> {
            OptimizerRecord::from_bytes(read(name)?).map_err(|e| fail(&dir.join(name), e))
        };
        let ema = if dir.join("ema.bpk").is_file() {
            Some(read("ema.bpk")?)
        } else {
            None
        };
        if meta.config.ema_decay > 0.0 && ema.is_none() {
            return Err(fail(
                &dir,
                "the run keeps an EMA of its weights but ema.bpk is missing",
            ));
        }
        Ok(Self {
            model: read("model.bpk")?,
            ema,
            optim_backbone: record("optim_backbone.bpk")?,
            optim_head: record("optim_head.bpk")?,
            meta,
            dir,
        })
    }

    /// Load the saved weights (and parameter ids) into `model`.
    pub fn load_model(&self, model: &mut TalModel) -> Result<()> {
        load_module_bytes(model, self.model.clone(), &self.dir.join("model.bpk"))
    }

    /// Load the EMA weights into `model`; `false` (and `model` untouched) when the run keeps
    /// no EMA.
    pub fn load_ema(&self, model: &mut TalModel) -> Result<bool> {
        match &self.ema {
            None => Ok(false),
            Some(b) => {
                load_module_bytes(model, b.clone(), &self.dir.join("ema.bpk"))?;
                Ok(true)
            }
        }
    }

    /// Load the weights inference should use: the EMA when the run keeps one, else the
    /// trained weights.
    pub fn load_inference_weights(&self, model: &mut TalModel) -> Result<()> {
        if !self.load_ema(model)? {
            self.load_model(model)?;
        }
        Ok(())
    }
}
