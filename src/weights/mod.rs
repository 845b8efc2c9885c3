//! Loading PyTorch checkpoints (safetensors or `.pth`) into the backbones through burn-store,
//! with an explicit key-mapping table per checkpoint family.
//!
//! Each table maps a checkpoint's names to this crate's module paths. Keys that a family's
//! checkpoints carry but no backbone uses (classifier heads, BatchNorm's `num_batches_tracked`,
//! Swin's precomputed `relative_position_index`) are listed as *ignored*; any other unused key is
//! reported. A missing or shape-mismatched tensor is an error naming the key.

pub mod actionformer;

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    FloatCastAdapter, ModuleAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter,
    PytorchStore, SafetensorsStore,
};
use regex::Regex;

use crate::error::{Error, Result};

/// The checkpoint families with a key map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFamily {
    /// Hugging Face `transformers` `VideoMAEModel` / `VideoMAEForVideoClassification`.
    HfVideoMae,
    /// The original VideoMAE / VideoMAEv2 code (`blocks.N.attn.qkv`, `patch_embed.proj`).
    VideoMaeV2,
    /// torchvision `swin3d_t/s/b`, for a model with `stages` stages.
    TorchvisionSwin3d {
        /// Number of stages of the model.
        stages: usize,
    },
    /// torchvision `r3d_18`.
    TorchvisionR3d,
    /// torchvision `r2plus1d_18`.
    TorchvisionR2Plus1d,
    /// This crate's own layout, as written by [`save`] (`e2e-tal weights convert`).
    Native,
}

impl CheckpointFamily {
    /// The families by name (Swin with torchvision's four stages).
    const NAMED: [CheckpointFamily; 6] = [
        Self::HfVideoMae,
        Self::VideoMaeV2,
        Self::TorchvisionSwin3d { stages: 4 },
        Self::TorchvisionR3d,
        Self::TorchvisionR2Plus1d,
        Self::Native,
    ];
}

/// `hf-videomae`, `videomae-v2`, `swin3d` (4 stages), `r3d`, `r2plus1d`, `native`.
impl clap::ValueEnum for CheckpointFamily {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::NAMED
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue as V;
        Some(match self {
            Self::HfVideoMae => V::new("hf-videomae").alias("videomae"),
            Self::VideoMaeV2 => V::new("videomae-v2").alias("videomaev2"),
            Self::TorchvisionSwin3d { stages: 4 } => V::new("swin3d").alias("torchvision-swin3d"),
            // Other stage counts are not reachable by name.
            Self::TorchvisionSwin3d { .. } => return None,
            Self::TorchvisionR3d => V::new("r3d").alias("r3d-18"),
            Self::TorchvisionR2Plus1d => V::new("r2plus1d").alias("r2plus1d-18"),
            Self::Native => V::new("native").alias("e2e-tal"),
        })
    }
}

impl std::str::FromStr for CheckpointFamily {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::choice::parse("checkpoint family", s)
    }
}

/// One renaming rule: a regex on the checkpoint key and its replacement (`$1` = first group).
#[derive(Debug, Clone)]
pub struct Rule {
    /// Pattern on the checkpoint key (compiled once, when the map is built).
    pub from: Regex,
    /// Replacement, in this crate's module path space.
    pub to: String,
}

fn rule(from: impl AsRef<str>, to: impl Into<String>) -> Rule {
    Rule {
        from: Regex::new(from.as_ref()).expect("key-map regexes are valid"),
        to: to.into(),
    }
}

/// A family's key map.
#[derive(Debug, Clone)]
pub struct KeyMap {
    /// Renaming rules, applied in order.
    pub rules: Vec<Rule>,
    /// Keys (regexes, matched after renaming) that checkpoints carry and no module uses.
    pub ignored: Vec<Regex>,
}

/// Wrapper prefixes that training frameworks add (`module.` from DataParallel, `backbone.` from
/// detection code bases, `videomae.` from `transformers` classification models).
const PREFIXES: &str = r"^(?:module\.|model\.|backbone\.|videomae\.)+";

impl CheckpointFamily {
    /// The key map of this family.
    pub fn key_map(self) -> KeyMap {
        if self == CheckpointFamily::Native {
            return KeyMap {
                rules: Vec::new(),
                ignored: Vec::new(),
            };
        }
        let mut rules = vec![rule(PREFIXES, "")];
        let ignored: Vec<&str> = match self {
            CheckpointFamily::Native => unreachable!("handled above"),
            CheckpointFamily::HfVideoMae => {
                rules.extend([
                    // embeddings.patch_embeddings.projection = Conv3d tubelet embedding
                    rule(
                        r"^embeddings\.patch_embeddings\.projection\.",
                        "patch_embed.",
                    ),
                    // layernorm_before / attention / layernorm_after + MLP
                    rule(
                        r"^encoder\.layer\.(\d+)\.layernorm_before\.",
                        "blocks.$1.attn.norm.",
                    ),
                    rule(
                        r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.",
                        "blocks.$1.attn.$2.",
                    ),
                    // transformers < 5 stored the query / value biases as separate parameters
                    rule(
                        r"^encoder\.layer\.(\d+)\.attention\.attention\.q_bias$",
                        "blocks.$1.attn.query.bias",
                    ),
                    rule(
                        r"^encoder\.layer\.(\d+)\.attention\.attention\.v_bias$",
                        "blocks.$1.attn.value.bias",
                    ),
                    rule(
                        r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.",
                        "blocks.$1.attn.proj.",
                    ),
                    rule(
                        r"^encoder\.layer\.(\d+)\.layernorm_after\.",
                        "blocks.$1.mlp.norm.",
                    ),
                    rule(
                        r"^encoder\.layer\.(\d+)\.intermediate\.dense\.",
                        "blocks.$1.mlp.fc1.",
                    ),
                    rule(
                        r"^encoder\.layer\.(\d+)\.output\.dense\.",
                        "blocks.$1.mlp.fc2.",
                    ),
                    // final `layernorm` (no mean pooling) or `fc_norm` (classification model)
                    rule(r"^layernorm\.", "norm."),
                ]);
                vec![r"^(videomae\.)?classifier\.", r"position_embeddings"]
            }
            CheckpointFamily::VideoMaeV2 => {
                rules.extend([
                    rule(r"^patch_embed\.proj\.", "patch_embed."),
                    rule(r"^blocks\.(\d+)\.norm1\.", "blocks.$1.attn.norm."),
                    rule(
                        r"^blocks\.(\d+)\.attn\.q_bias$",
                        "blocks.$1.attn.query.bias",
                    ),
                    rule(
                        r"^blocks\.(\d+)\.attn\.v_bias$",
                        "blocks.$1.attn.value.bias",
                    ),
                    // qkv.weight is split into query/key/value before loading (see split_qkv)
                    rule(r"^blocks\.(\d+)\.norm2\.", "blocks.$1.mlp.norm."),
                ]);
                vec![r"^head\.", r"pos_embed"]
            }
            CheckpointFamily::TorchvisionSwin3d { stages } => {
                rules.push(rule(r"^patch_embed\.", "patch_embed."));
                // features = [stage0, merge0, stage1, merge1, ..., stageN-1]
                // Block sub-modules: (torchvision, ours). torchvision.ops.MLP is
                // [Linear, GELU, Dropout, Linear, Dropout].
                let block = [
                    (r"norm1\.", "attn.norm."),
                    (r"attn\.", "attn."),
                    (r"norm2\.", "mlp.norm."),
                    (r"mlp\.0\.", "mlp.fc1."),
                    (r"mlp\.3\.", "mlp.fc2."),
                ];
                for s in 0..stages {
                    for (theirs, ours) in block {
                        rules.push(rule(
                            format!(r"^features\.{}\.(\d+)\.{theirs}", 2 * s),
                            format!("stages.{s}.blocks.$1.{ours}"),
                        ));
                    }
                    if s + 1 < stages {
                        rules.push(rule(
                            format!(r"^features\.{}\.", 2 * s + 1),
                            format!("stages.{s}.merge."),
                        ));
                    }
                }
                vec![r"relative_position_index$", r"^head\."]
            }
            CheckpointFamily::TorchvisionR3d | CheckpointFamily::TorchvisionR2Plus1d => {
                if self == CheckpointFamily::TorchvisionR3d {
                    // stem = [Conv3d, BN, ReLU]
                    rules.extend([
                        rule(r"^stem\.0\.", "stem.0.conv."),
                        rule(r"^stem\.1\.", "stem.0.bn."),
                    ]);
                } else {
                    // stem = [Conv3d 1x7x7, BN, ReLU, Conv3d 3x1x1, BN, ReLU]
                    rules.extend([
                        rule(r"^stem\.0\.", "stem.0.conv."),
                        rule(r"^stem\.1\.", "stem.0.bn."),
                        rule(r"^stem\.3\.", "stem.1.conv."),
                        rule(r"^stem\.4\.", "stem.1.bn."),
                    ]);
                }
                for s in 1..=4 {
                    let to = format!("stages.{}.$1", s - 1);
                    if self == CheckpointFamily::TorchvisionR3d {
                        // convK = [Conv3DSimple, BN(, ReLU)]
                        rules.push(rule(
                            format!(r"^layer{s}\.(\d+)\.conv(\d)\.0\."),
                            format!("{to}.branch.conv$2.conv."),
                        ));
                    } else {
                        // convK = [Conv2Plus1D = [Conv 1x3x3, BN, ReLU, Conv 3x1x1], BN(, ReLU)]
                        rules.push(rule(
                            format!(r"^layer{s}\.(\d+)\.conv(\d)\.0\.0\."),
                            format!("{to}.branch.conv$2.spatial.conv."),
                        ));
                        rules.push(rule(
                            format!(r"^layer{s}\.(\d+)\.conv(\d)\.0\.1\."),
                            format!("{to}.branch.conv$2.spatial.bn."),
                        ));
                        rules.push(rule(
                            format!(r"^layer{s}\.(\d+)\.conv(\d)\.0\.3\."),
                            format!("{to}.branch.conv$2.conv."),
                        ));
                    }
                    rules.push(rule(
                        format!(r"^layer{s}\.(\d+)\.conv(\d)\.1\."),
                        format!("{to}.branch.conv$2.bn."),
                    ));
                    // shortcut = [Conv3d 1x1x1, BN]
                    rules.push(rule(
                        format!(r"^layer{s}\.(\d+)\.downsample\.0\."),
                        format!("{to}.downsample.conv."),
                    ));
                    rules.push(rule(
                        format!(r"^layer{s}\.(\d+)\.downsample\.1\."),
                        format!("{to}.downsample.bn."),
                    ));
                }
                vec![r"num_batches_tracked$", r"^fc\."]
            }
        };
        KeyMap {
            rules,
            ignored: ignored
                .into_iter()
                .map(|p| Regex::new(p).expect("valid regex"))
                .collect(),
        }
    }
}

impl KeyMap {
    /// Where a checkpoint key lands in the module (after all rules).
    pub fn rename(&self, key: &str) -> String {
        let mut k = key.to_owned();
        for r in &self.rules {
            k = r.from.replace(&k, r.to.as_str()).into_owned();
        }
        k
    }

    fn is_ignored(&self, key: &str) -> bool {
        self.ignored.iter().any(|p| p.is_match(key))
    }
}

/// What loading a checkpoint did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Module paths that received a tensor.
    pub applied: Vec<String>,
    /// Checkpoint keys expected to be unused (heads, buffers), not loaded (renamed form).
    pub ignored: Vec<String>,
    /// Other checkpoint keys no module path took (renamed form).
    pub unused: Vec<String>,
    /// Unused keys that change what the model computes, explained (a ViT built without the
    /// checkpoint's final norms returns other features than the checkpoint's own model).
    pub notes: Vec<String>,
}

/// Explanations for unused ViT norms: the checkpoint has them, the module was built without.
fn unused_notes(family: CheckpointFamily, unused: &[String]) -> Vec<String> {
    if !matches!(
        family,
        CheckpointFamily::HfVideoMae | CheckpointFamily::VideoMaeV2
    ) {
        return Vec::new();
    }
    let has = |prefix: &str| unused.iter().any(|k| k.starts_with(prefix));
    let mut notes = Vec::new();
    if has("fc_norm.") {
        notes.push(
            "the checkpoint has a LayerNorm on the mean-pooled feature (`fc_norm`, as in \
             VideoMAE classification models) and this ViT was built without one: its pooled \
             features are not the checkpoint's; build it with `use_fc_norm: true` to load it"
                .to_string(),
        );
    }
    if has("norm.") {
        notes.push(
            "the checkpoint has a final LayerNorm on the tokens (`layernorm` / `norm`) and this \
             ViT was built without one (mean pooling): its features are not the checkpoint's; \
             build it with `use_mean_pooling: false` to load it"
                .to_string(),
        );
    }
    notes
}

/// Split VideoMAEv2's fused `blocks.N.attn.qkv.weight` (`[3D, D]`) into the `query`, `key` and
/// `value` weights this crate's ViT has, re-encoding the safetensors file in memory.
fn split_qkv(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::Weights {
        path: path.to_path_buf(),
        key: String::new(),
        reason,
    };
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let re = Regex::new(r"^(.*blocks\.\d+\.attn\.)qkv\.weight$").expect("valid");
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if let Some(c) = re.captures(&name) {
            let shape = view.shape().to_vec();
            if shape.len() != 2 || shape[0] % 3 != 0 {
                return Err(Error::Weights {
                    path: path.to_path_buf(),
                    key: name.clone(),
                    reason: format!("expected a [3D, D] qkv weight, found {shape:?}"),
                });
            }
            let part = view.data().len() / 3;
            for (i, which) in ["query", "key", "value"].iter().enumerate() {
                owned.push((
                    format!("{}{which}.weight", &c[1]),
                    view.dtype(),
                    vec![shape[0] / 3, shape[1]],
                    view.data()[i * part..(i + 1) * part].to_vec(),
                ));
            }
        } else {
            owned.push((
                name.clone(),
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            ));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, dt, shape, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, shape.clone(), data).expect("consistent"),
            )
        })
        .collect();
    safetensors::serialize(views, None).map_err(|e| bad(format!("cannot re-encode: {e}")))
}

/// Checkpoint tensors in half precision (F16, BF16) or F64 become the f32 this crate's modules
/// hold, as PyTorch users expect of a half-precision checkpoint loaded into an f32 model.
fn to_f32() -> FloatCastAdapter {
    FloatCastAdapter::to(burn::tensor::DType::F32)
}

/// Load `path` (`.safetensors`, or `.pth` / `.pt` PyTorch pickles) into `module` with the key
/// map of `family`; half-precision and F64 tensors are converted to f32. Fails on a missing tensor or a shape mismatch, naming the key; unused keys
/// are returned in the report.
pub fn load<M: Module + ModuleSnapshot>(
    module: &mut M,
    path: &Path,
    family: CheckpointFamily,
) -> Result<LoadReport> {
    let map = family.key_map();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let result = if ext == "pth" || ext == "pt" || ext == "bin" {
        let mut store = PytorchStore::from_file(path)
            .allow_partial(true)
            .validate(false);
        for r in &map.rules {
            store = store.with_key_remapping(r.from.as_str(), &r.to);
        }
        // PytorchStore's own apply keeps half-precision tensors as they are (which this crate's
        // f32 modules cannot hold): apply its tensors with the same adapter plus the cast.
        let tensors = store
            .get_all_tensors()
            .map_err(|e| Error::Weights {
                path: path.to_path_buf(),
                key: String::new(),
                reason: e.to_string(),
            })?
            .values()
            .cloned()
            .collect();
        let adapter = PyTorchToBurnAdapter.chain(to_f32());
        module.apply(tensors, None, Some(Box::new(adapter)), true)
    } else {
        let mut store = if family == CheckpointFamily::VideoMaeV2 {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            SafetensorsStore::from_bytes(Some(split_qkv(&bytes, path)?))
        } else {
            SafetensorsStore::from_file(path)
        }
        // Missing tensors and mismatches come back in the result and are reported below, by key.
        .allow_partial(true)
        .validate(false)
        .with_from_adapter(to_f32());
        if family != CheckpointFamily::Native {
            store = store.with_from_adapter(PyTorchToBurnAdapter.chain(to_f32()));
        }
        for r in &map.rules {
            store = store.with_key_remapping(r.from.as_str(), &r.to);
        }
        module.load_from(&mut store).map_err(|e| Error::Weights {
            path: path.to_path_buf(),
            key: String::new(),
            reason: e.to_string(),
        })?
    };
    if let Some(e) = result.errors.first() {
        let mut reason = e.to_string();
        if result.errors.len() > 1 {
            reason.push_str(&format!(
                " (and {} more mismatched tensors)",
                result.errors.len() - 1
            ));
        }
        let key = match e {
            burn::store::ApplyError::ShapeMismatch { path, .. }
            | burn::store::ApplyError::DTypeMismatch { path, .. }
            | burn::store::ApplyError::AdapterError { path, .. }
            | burn::store::ApplyError::LoadError { path, .. } => path.clone(),
        };
        return Err(Error::Weights {
            path: path.to_path_buf(),
            key,
            reason,
        });
    }
    if !result.missing.is_empty() {
        let keys: Vec<String> = result.missing.iter().map(|(k, _)| k.clone()).collect();
        return Err(Error::Weights {
            path: path.to_path_buf(),
            key: keys[0].clone(),
            reason: format!(
                "{} module tensors have no checkpoint entry: {}",
                keys.len(),
                keys.join(", ")
            ),
        });
    }
    let (ignored, unused): (Vec<String>, Vec<String>) =
        result.unused.into_iter().partition(|k| map.is_ignored(k));
    Ok(LoadReport {
        applied: result.applied,
        ignored,
        notes: unused_notes(family, &unused),
        unused,
    })
}

/// Write `module`'s tensors as safetensors in this crate's layout, atomically.
pub fn save<M: Module + ModuleSnapshot>(module: &M, path: &Path) -> Result<()> {
    let mut store = SafetensorsStore::from_bytes(None);
    let fail = |e: String| Error::Weights {
        path: path.to_path_buf(),
        key: String::new(),
        reason: format!("cannot serialise: {e}"),
    };
    module
        .save_into(&mut store)
        .map_err(|e| fail(e.to_string()))?;
    let bytes = store.get_bytes().map_err(|e| fail(e.to_string()))?;
    crate::io::write_atomic(path, &bytes)
}

/// The tensors of a checkpoint, `(key, dtype, shape)` sorted by key: safetensors, or a
/// PyTorch `.pth` / `.pt` / `.bin` (zip or legacy pickle), told apart by the file's first bytes
/// rather than its name.
pub fn inspect(path: &Path) -> Result<Vec<(String, String, Vec<usize>)>> {
    let bad = |reason: String| Error::Weights {
        path: PathBuf::from(path),
        key: String::new(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    // safetensors: an 8-byte header length, then the JSON header. PyTorch: a zip archive
    // (torch.save since 1.6) or a bare pickle (PROTO opcode).
    let safetensors = bytes.get(8) == Some(&b'{');
    let pytorch =
        !safetensors && (bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80));
    let mut out: Vec<_> = if pytorch {
        let reader = burn::store::pytorch_reader::PytorchReader::new(path)
            .map_err(|e| bad(format!("not a readable PyTorch checkpoint: {e}")))?;
        reader
            .tensors()
            .iter()
            .map(|(k, t)| (k.clone(), format!("{:?}", t.dtype()), t.shape().to_vec()))
            .collect()
    } else {
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            bad(format!(
                "neither a safetensors file ({e}) nor a PyTorch checkpoint (zip or pickle)"
            ))
        })?;
        st.tensors()
            .into_iter()
            .map(|(k, v)| (k, format!("{:?}", v.dtype()), v.shape().to_vec()))
            .collect()
    };
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_maps_rename_reference_names() {
        let hf = CheckpointFamily::HfVideoMae.key_map();
        assert_eq!(
            hf.rename("videomae.encoder.layer.3.attention.attention.q_bias"),
            "blocks.3.attn.query.bias"
        );
        assert_eq!(
            hf.rename("encoder.layer.11.output.dense.weight"),
            "blocks.11.mlp.fc2.weight"
        );
        let swin = CheckpointFamily::TorchvisionSwin3d { stages: 4 }.key_map();
        assert_eq!(
            swin.rename("features.4.5.mlp.3.bias"),
            "stages.2.blocks.5.mlp.fc2.bias"
        );
        assert_eq!(
            swin.rename("features.3.reduction.weight"),
            "stages.1.merge.reduction.weight"
        );
        assert_eq!(
            swin.rename("features.0.1.attn.relative_position_bias_table"),
            "stages.0.blocks.1.attn.relative_position_bias_table"
        );
        let r21 = CheckpointFamily::TorchvisionR2Plus1d.key_map();
        assert_eq!(
            r21.rename("layer2.0.conv1.0.3.weight"),
            "stages.1.0.branch.conv1.conv.weight"
        );
        assert_eq!(
            r21.rename("layer4.1.conv2.1.running_var"),
            "stages.3.1.branch.conv2.bn.running_var"
        );
        assert_eq!(r21.rename("stem.4.weight"), "stem.1.bn.weight");
        let r3d = CheckpointFamily::TorchvisionR3d.key_map();
        assert_eq!(
            r3d.rename("module.layer3.0.downsample.0.weight"),
            "stages.2.0.downsample.conv.weight"
        );
        assert!(r3d.is_ignored("layer1.0.conv1.1.num_batches_tracked"));
    }
}
