//! ActionFormer checkpoints (`torch.save` of `{'epoch', 'state_dict', 'scheduler', 'optimizer',
//! 'state_dict_ema'}`, keys prefixed `module.` by `nn.DataParallel`) into the crate's
//! [`TalHead`]: the EMA weights when present (the ones ActionFormer evaluates with), every
//! tensor renamed to the head's layout, LayerNorm weights `[1, C, 1]` and the residual scales
//! squeezed to `[C]`, the level scales (scalars) to `[1]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::store::pytorch_reader::{DType, PytorchReader};
use burn::store::{ModuleSnapshot, SafetensorsStore};

use crate::error::{Error, Result};
use crate::tal::head::TalHead;

/// Which weights of the checkpoint were taken, and what was left over.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    /// The dictionary the weights came from: `state_dict_ema`, `state_dict`, or the root (a
    /// bare state dict).
    pub source: String,
    /// Checkpoint keys (after `module.`) that the head has no place for.
    pub unused: Vec<String>,
}

/// Names (after `module.`) that only other ActionFormer architectures have: a checkpoint
/// holding one is refused rather than loaded in part.
const FOREIGN: &[(&str, &str)] = &[
    ("backbone.abs_pe", "absolute position encoding (use_abs_pe)"),
    ("rel_pe", "relative position encoding (use_rel_pe)"),
    ("neck.l_convs", "fpn_type fpn"),
    ("neck.fpn_convs", "fpn_type fpn"),
    ("backbone.branch.0.conv1", "backbone_type conv"),
    ("backbone.stem.0.conv1", "backbone_type conv"),
];

/// The head's name for ActionFormer key `key` (without `module.`), or `None` when the head
/// has no such tensor.
pub fn head_key(key: &str) -> Option<String> {
    let (prefix, rest) = key.split_once('.')?;
    let norm = |r: &str| -> Option<String> {
        let (path, leaf) = r.rsplit_once('.')?;
        let leaf = match leaf {
            "weight" => "gamma",
            "bias" => "beta",
            _ => return None,
        };
        Some(format!("{path}.{leaf}"))
    };
    match prefix {
        "backbone" => {
            let (part, r) = rest.split_once('.')?;
            match part {
                "embd" => Some(format!("embed.{r}")),
                "embd_norm" => norm(&format!("embed_norms.{r}")),
                "stem" | "branch" => block_key(r).map(|b| format!("{part}.{b}")),
                _ => None,
            }
        }
        "neck" => rest
            .strip_prefix("fpn_norms.")
            .and_then(|r| norm(&format!("neck.{r}"))),
        "cls_head" | "reg_head" => {
            let out = if prefix == "cls_head" { "cls" } else { "reg" };
            let (part, r) = rest.split_once('.')?;
            match part {
                "head" => Some(format!("{out}.convs.{r}")),
                "norm" => norm(&format!("{out}.norms.{r}")),
                "cls_head" | "offset_head" => Some(format!("{out}.out.{r}")),
                "scale" => r
                    .strip_suffix(".scale")
                    .filter(|l| out == "reg" && l.parse::<usize>().is_ok())
                    .map(|l| format!("scales.{l}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A transformer block's key: `"<i>.<ActionFormer name>"` -> `"<i>.<head name>"`.
fn block_key(r: &str) -> Option<String> {
    let (i, rest) = r.split_once('.')?;
    i.parse::<usize>().ok()?;
    let gamma_beta = |s: &str| s.replace(".weight", ".gamma").replace(".bias", ".beta");
    let gb = |leaf: &str| match leaf {
        "weight" => Some("gamma"),
        "bias" => Some("beta"),
        _ => None,
    };
    let mapped = match rest {
        "drop_path_attn.scale" => "attn_scale".to_string(),
        "drop_path_mlp.scale" => "mlp_scale".to_string(),
        r if r.starts_with("ln1.") || r.starts_with("ln2.") => gamma_beta(r),
        r if r.starts_with("mlp.0.") => r.replacen("mlp.0.", "fc1.", 1),
        r if r.starts_with("mlp.3.") => r.replacen("mlp.3.", "fc2.", 1),
        r => {
            let a = r.strip_prefix("attn.")?;
            let (layer, leaf) = a.split_once('.')?;
            match layer {
                "query_conv" => format!("attn.q_conv.{leaf}"),
                "key_conv" => format!("attn.k_conv.{leaf}"),
                "value_conv" => format!("attn.v_conv.{leaf}"),
                "query_norm" => format!("attn.q_norm.{}", gb(leaf)?),
                "key_norm" => format!("attn.k_norm.{}", gb(leaf)?),
                "value_norm" => format!("attn.v_norm.{}", gb(leaf)?),
                "query" | "key" | "value" | "proj" => format!("attn.{layer}.{leaf}"),
                _ => return None,
            }
        }
    };
    Some(format!("{i}.{mapped}"))
}

/// A checkpoint tensor as f32 values.
fn f32_values(t: &burn::store::pytorch_reader::Tensor, key: &str, path: &Path) -> Result<Vec<f32>> {
    let bad = |reason: String| Error::Weights {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    let bytes = t
        .read()
        .map_err(|e| bad(format!("cannot read the tensor: {e}")))?;
    Ok(match t.dtype() {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => return Err(bad(format!("dtype {other:?} where a float tensor belongs"))),
    })
}

/// Load the weights of ActionFormer checkpoint `path` into `head` (built for the checkpoint's
/// configuration). Errors name the file and, for a missing or misshapen tensor, its key; a
/// checkpoint of another ActionFormer architecture is refused by what it has.
pub fn load_actionformer(head: &mut TalHead, path: &Path) -> Result<ImportReport> {
    let fail = |key: &str, reason: String| Error::Weights {
        path: PathBuf::from(path),
        key: key.to_string(),
        reason,
    };
    let reader = PytorchReader::new(path)
        .map_err(|e| fail("", format!("not a readable PyTorch checkpoint: {e}")))?;
    let tensors = reader.tensors();
    let source = ["state_dict_ema", "state_dict"]
        .into_iter()
        .find(|s| tensors.keys().any(|k| k.starts_with(&format!("{s}."))))
        .unwrap_or("")
        .to_string();
    let prefix = if source.is_empty() {
        String::new()
    } else {
        format!("{source}.")
    };
    let mut named = BTreeMap::new();
    let mut unused = Vec::new();
    for (k, t) in tensors {
        let Some(key) = k.strip_prefix(&prefix) else {
            continue;
        };
        let key = key.strip_prefix("module.").unwrap_or(key);
        if let Some((_, what)) = FOREIGN.iter().find(|(f, _)| key.contains(f)) {
            return Err(fail(
                key,
                format!("an ActionFormer model with {what}, which this crate does not implement"),
            ));
        }
        match head_key(key) {
            Some(name) => {
                named.insert(name, (key.to_string(), t));
            }
            None => unused.push(key.to_string()),
        }
    }
    if named.is_empty() {
        return Err(fail(
            "",
            "no ActionFormer weights found (looked for `state_dict_ema`, `state_dict` or a bare \
             state dict with `backbone.`, `neck.`, `cls_head.`, `reg_head.` keys)"
                .to_string(),
        ));
    }
    let expected: BTreeMap<String, Vec<usize>> = head
        .collect(None, None, false)
        .into_iter()
        .map(|s| (s.name.clone(), s.shape.to_vec()))
        .collect();
    let mut data = Vec::with_capacity(named.len());
    for (name, (key, t)) in &named {
        let Some(shape) = expected.get(name) else {
            unused.push(key.clone());
            continue;
        };
        let values = f32_values(t, key, path)?;
        if values.len() != shape.iter().product::<usize>() {
            return Err(fail(
                key,
                format!(
                    "shape {:?} does not fit the configured head's {shape:?}: is the \
                     configuration the one the checkpoint was trained with?",
                    t.shape()
                ),
            ));
        }
        data.push((name.clone(), shape.clone(), values));
    }
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !named.contains_key(*k))
        .collect();
    if let Some(first) = missing.first() {
        return Err(fail(
            first,
            format!(
                "the checkpoint lacks {} of the head's tensors ({}{}): another configuration?",
                missing.len(),
                missing
                    .iter()
                    .take(4)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.len() > 4 { ", ..." } else { "" }
            ),
        ));
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = data
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| fail(n, e.to_string()))
        })
        .collect::<Result<_>>()?;
    let st = safetensors::serialize(views, None).map_err(|e| fail("", e.to_string()))?;
    let mut store = SafetensorsStore::from_bytes(Some(st)).validate(false);
    let result = head
        .load_from(&mut store)
        .map_err(|e| fail("", e.to_string()))?;
    if let Some(e) = result.errors.first() {
        return Err(fail("", e.to_string()));
    }
    unused.sort();
    Ok(ImportReport { source, unused })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tal::head::HeadConfig;

    /// Every tensor of the head has an ActionFormer name that maps to it (the names below are
    /// those of the official model's `state_dict`).
    #[test]
    fn actionformer_names_map_to_the_head() {
        for (af, ours) in [
            ("backbone.embd.1.conv.weight", "embed.1.conv.weight"),
            ("backbone.embd_norm.0.weight", "embed_norms.0.gamma"),
            ("backbone.stem.1.ln2.bias", "stem.1.ln2.beta"),
            (
                "backbone.branch.4.attn.query_conv.conv.weight",
                "branch.4.attn.q_conv.conv.weight",
            ),
            (
                "backbone.branch.0.attn.value_norm.weight",
                "branch.0.attn.v_norm.gamma",
            ),
            ("backbone.stem.0.attn.proj.bias", "stem.0.attn.proj.bias"),
            ("backbone.stem.0.mlp.3.weight", "stem.0.fc2.weight"),
            (
                "backbone.branch.2.drop_path_mlp.scale",
                "branch.2.mlp_scale",
            ),
            ("neck.fpn_norms.5.bias", "neck.5.beta"),
            ("cls_head.head.1.conv.weight", "cls.convs.1.conv.weight"),
            ("cls_head.norm.0.weight", "cls.norms.0.gamma"),
            ("cls_head.cls_head.conv.bias", "cls.out.conv.bias"),
            ("reg_head.offset_head.conv.weight", "reg.out.conv.weight"),
            ("reg_head.scale.3.scale", "scales.3"),
        ] {
            assert_eq!(head_key(af).as_deref(), Some(ours), "{af}");
        }
        assert_eq!(head_key("point_generator.buffer_points.0"), None);
        let device = crate::backend::cpu_device();
        let head = HeadConfig::new(8, 3)
            .with_embed_dim(8)
            .with_num_heads(2)
            .init(&device)
            .unwrap();
        let paths: Vec<String> = head
            .collect(None, None, false)
            .into_iter()
            .map(|s| s.name)
            .collect();
        for p in [
            "branch.4.attn_scale",
            "scales.5",
            "stem.0.attn.k_norm.beta",
            "neck.0.gamma",
        ] {
            assert!(paths.iter().any(|x| x == p), "{p} not among {paths:?}");
        }
    }
}
