//! Numerical parity of the backbones with their PyTorch references, loading the reference
//! weights through the documented key maps. Fixtures: `scripts/backbone_fixtures.py`.
//! Criterion: max |ours - reference| / max |reference| <= 1e-4 (f32), per output.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use e2e_tal::Error;
use e2e_tal::backbone::resnet3d::{ResNet3dConfig, ResNetKind};
use e2e_tal::backbone::swin::SwinConfig;
use e2e_tal::backbone::vit::VitConfig;
use e2e_tal::backbone::{BackboneOutput, VideoBackbone};
use e2e_tal::backend::cpu_device;
use e2e_tal::weights::{CheckpointFamily, load};

const TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/backbones")
        .join(name)
}

/// A tensor of `NAME_io.safetensors`, as (values, shape).
fn io_tensor(model: &str, key: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(fixture(&format!("{model}_io.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (v, t.shape().to_vec())
}

fn input(model: &str) -> Tensor<5> {
    let (v, s) = io_tensor(model, "input");
    Tensor::from_data(
        TensorData::new(v, [s[0], s[1], s[2], s[3], s[4]]),
        &cpu_device(),
    )
}

fn assert_close<const D: usize>(what: &str, got: Tensor<D>, model: &str, key: &str) {
    let (want, shape) = io_tensor(model, key);
    assert_eq!(got.dims().to_vec(), shape, "{what}: shape");
    let got: Vec<f32> = got.into_data().convert::<f32>().try_to_vec().unwrap();
    let scale = want.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let err = got
        .iter()
        .zip(&want)
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    let rel = err / scale;
    println!("{what}: max abs err {err:.3e}, relative {rel:.3e}");
    assert!(rel <= TOL, "{what}: relative error {rel:.3e} > {TOL:e}");
}

fn check(model: &str, out: BackboneOutput, last: Option<Tensor<5>>, tokens: Option<Tensor<3>>) {
    assert_close(
        &format!("{model} features"),
        out.features,
        model,
        "features",
    );
    assert_close(
        &format!("{model} intermediate"),
        out.layers[0].clone(),
        model,
        "intermediate",
    );
    if let Some(t) = last {
        assert_close(&format!("{model} output"), t, model, "output");
    }
    if let Some(t) = tokens {
        assert_close(&format!("{model} output"), t, model, "output");
    }
}

fn tiny_vit() -> VitConfig {
    VitConfig::new()
        .with_embed_dim(16)
        .with_depth(2)
        .with_num_heads(2)
        .with_mlp_dim(32)
        .with_patch_size(8)
        .with_num_frames(4)
        .with_image_size(16)
}

#[test]
fn vit_matches_transformers_videomae() {
    for (file, family) in [
        ("vit.safetensors", CheckpointFamily::HfVideoMae),
        ("vit_v2.safetensors", CheckpointFamily::VideoMaeV2),
    ] {
        let mut m = tiny_vit().init(&cpu_device());
        let report = load(&mut m, &fixture(file), family).unwrap();
        assert!(
            report.unused.is_empty(),
            "{file}: unused {:?}",
            report.unused
        );
        let out = m.forward(input("vit"), &[0]).unwrap();
        let tokens = m.forward_unpooled(input("vit")).unwrap();
        check("vit", out, None, Some(tokens));
    }
}

#[test]
fn swin_matches_torchvision_swin3d() {
    let mut m = SwinConfig::new()
        .with_embed_dim(8)
        .with_depths(vec![2, 2])
        .with_num_heads(vec![1, 2])
        .with_window_size([2, 2, 2])
        .init(&cpu_device());
    let report = load(
        &mut m,
        &fixture("swin.safetensors"),
        CheckpointFamily::TorchvisionSwin3d { stages: 2 },
    )
    .unwrap();
    assert!(report.unused.is_empty(), "unused {:?}", report.unused);
    assert!(
        report
            .ignored
            .iter()
            .any(|k| k.contains("relative_position_index"))
    );
    let out = m.forward(input("swin"), &[0]).unwrap();
    let map = m.forward_unpooled(input("swin")).unwrap();
    check("swin", out, Some(map), None);
}

fn tiny_resnet(kind: ResNetKind) -> ResNet3dConfig {
    ResNet3dConfig::new()
        .with_kind(kind)
        .with_widths(vec![4, 8, 8, 16])
        .with_layers(vec![2, 1, 1, 1])
        .with_stem_mid(6)
}

#[test]
fn resnets_match_torchvision_video_resnets() {
    for (name, kind, family) in [
        ("r3d", ResNetKind::R3d, CheckpointFamily::TorchvisionR3d),
        (
            "r2plus1d",
            ResNetKind::R2Plus1d,
            CheckpointFamily::TorchvisionR2Plus1d,
        ),
    ] {
        let mut m = tiny_resnet(kind).init(&cpu_device());
        let report = load(&mut m, &fixture(&format!("{name}.safetensors")), family).unwrap();
        assert!(
            report.unused.is_empty(),
            "{name}: unused {:?}",
            report.unused
        );
        assert!(
            report
                .ignored
                .iter()
                .any(|k| k.ends_with("num_batches_tracked"))
        );
        let out = m.forward(input(name), &[1]).unwrap();
        let map = m.forward_unpooled(input(name)).unwrap();
        check(name, out, Some(map), None);
    }
}

#[test]
fn shape_mismatch_names_the_tensor_and_shapes() {
    // A ViT 8 wide cannot take the 16-wide checkpoint.
    let mut m = tiny_vit().with_embed_dim(8).init(&cpu_device());
    let err = load(
        &mut m,
        &fixture("vit.safetensors"),
        CheckpointFamily::HfVideoMae,
    )
    .unwrap_err();
    let msg = err.to_string();
    match &err {
        Error::Weights { key, .. } => assert_eq!(key, "patch_embed.weight", "{msg}"),
        other => panic!("expected Error::Weights, got {other:?}"),
    }
    assert!(
        msg.contains("vit.safetensors") && msg.contains("expected") && msg.contains("found"),
        "{msg}"
    );
}

#[test]
fn missing_tensors_and_unused_keys_are_reported() {
    // r3d weights into an R(2+1)D model: the stems differ first.
    let mut m = tiny_resnet(ResNetKind::R2Plus1d).init(&cpu_device());
    let err = load(
        &mut m,
        &fixture("r3d.safetensors"),
        CheckpointFamily::TorchvisionR2Plus1d,
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Weights { key, .. } if key == "stem.0.conv.weight"),
        "{err}"
    );
    // A deeper model than the checkpoint: blocks 2.. are missing.
    let mut m = tiny_vit().with_depth(3).init(&cpu_device());
    let err = load(
        &mut m,
        &fixture("vit.safetensors"),
        CheckpointFamily::HfVideoMae,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("no checkpoint entry") && msg.contains("blocks.2."),
        "{msg}"
    );
    // A shallower model leaves checkpoint keys unused, which the report lists.
    let mut m = tiny_vit().with_depth(1).init(&cpu_device());
    let report = load(
        &mut m,
        &fixture("vit.safetensors"),
        CheckpointFamily::HfVideoMae,
    )
    .unwrap();
    assert!(
        report.unused.iter().any(|k| k.starts_with("blocks.1.")),
        "{:?}",
        report.unused
    );
    // Not a checkpoint at all.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("x.safetensors");
    std::fs::write(&bogus, b"garbage").unwrap();
    let mut m = tiny_vit().init(&cpu_device());
    assert!(matches!(
        load(&mut m, &bogus, CheckpointFamily::HfVideoMae),
        Err(Error::Weights { .. })
    ));
}

#[test]
fn pytorch_pickle_and_native_round_trip_load_the_same_weights() {
    let device = cpu_device();
    let mut reference = tiny_vit().init(&device);
    load(
        &mut reference,
        &fixture("vit.safetensors"),
        CheckpointFamily::HfVideoMae,
    )
    .unwrap();
    let want: Vec<f32> = reference
        .forward_unpooled(input("vit"))
        .unwrap()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
    // torch.save(state_dict) pickle.
    let mut m = tiny_vit().init(&device);
    let report = load(&mut m, &fixture("vit.pth"), CheckpointFamily::HfVideoMae).unwrap();
    assert!(report.unused.is_empty(), "{:?}", report.unused);
    assert_close(
        "vit from .pth",
        m.forward_unpooled(input("vit")).unwrap(),
        "vit",
        "output",
    );
    // Our own layout: save, load into a fresh model, identical outputs.
    let dir = tempfile::tempdir().unwrap();
    let native = dir.path().join("vit_native.safetensors");
    e2e_tal::weights::save(&reference, &native).unwrap();
    let mut m = tiny_vit().init(&device);
    let report = load(&mut m, &native, CheckpointFamily::Native).unwrap();
    assert!(report.unused.is_empty(), "{:?}", report.unused);
    let got: Vec<f32> = m
        .forward_unpooled(input("vit"))
        .unwrap()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
    assert_eq!(got, want);
}

#[test]
fn cli_convert_reports_a_mismatched_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_e2e-tal"))
        .args(["weights", "convert", "--model", "vit-s", "--checkpoint"])
        .arg(fixture("vit.safetensors"))
        .arg("--out")
        .arg(dir.path().join("o.safetensors"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("patch_embed.weight") && msg.contains("expected"),
        "{msg}"
    );
    assert!(
        !dir.path().join("o.safetensors").exists(),
        "nothing is written on failure"
    );
}

/// A Hugging Face `VideoMAEForVideoClassification` checkpoint carries `fc_norm` (the LayerNorm
/// on the mean-pooled feature). A ViT built without one must say so in the load report (its
/// pooled features are not the checkpoint's); built with `use_fc_norm` it loads the norm and
/// pools as the checkpoint's model does.
#[test]
fn classification_checkpoints_fc_norm_is_mapped_or_reported() {
    let bytes = std::fs::read(fixture("vit.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.data().to_vec(), v.shape().to_vec()))
        .collect();
    let (w, b): (Vec<f32>, Vec<f32>) = (0..16)
        .map(|i| (0.5 + 0.1 * i as f32, 0.05 * i as f32 - 0.3))
        .unzip();
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    tensors.push(("fc_norm.weight".into(), le(&w), vec![16]));
    tensors.push(("fc_norm.bias".into(), le(&b), vec![16]));
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, d, s)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                .unwrap();
            (k.clone(), view)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("videomae_cls.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();

    let mut plain = tiny_vit().init(&cpu_device());
    let report = load(&mut plain, &path, CheckpointFamily::HfVideoMae).unwrap();
    assert_eq!(report.unused, ["fc_norm.bias", "fc_norm.weight"]);
    assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
    assert!(
        report.notes[0].contains("use_fc_norm"),
        "{}",
        report.notes[0]
    );

    let mut with_norm = tiny_vit().with_use_fc_norm(true).init(&cpu_device());
    let report = load(&mut with_norm, &path, CheckpointFamily::HfVideoMae).unwrap();
    assert!(
        report.unused.is_empty() && report.notes.is_empty(),
        "{report:?}"
    );
    assert_eq!(
        report
            .applied
            .iter()
            .filter(|k| k.starts_with("fc_norm."))
            .count(),
        2
    );
    // Its features are LayerNorm(mean of tokens) with the checkpoint's weight and bias.
    let pooled = plain.forward(input("vit"), &[]).unwrap().features;
    let got = with_norm.forward(input("vit"), &[]).unwrap().features;
    let mean = pooled.clone().mean_dim(1);
    let var = (pooled.clone() - mean.clone()).powf_scalar(2.0).mean_dim(1);
    let eps = tiny_vit().layer_norm_eps;
    let dev = cpu_device();
    let want = (pooled - mean) / (var + eps).sqrt()
        * Tensor::<1>::from_floats(w.as_slice(), &dev).unsqueeze::<2>()
        + Tensor::<1>::from_floats(b.as_slice(), &dev).unsqueeze::<2>();
    let err = (got - want).abs().max().into_scalar::<f32>();
    assert!(err < 1e-4, "fc_norm pooled feature differs by {err}");
}

/// A checkpoint whose tensors are F16, BF16 or F64 (as `model.half()` or `.double()` saves
/// them) loads into the f32 model, converted, instead of panicking inside Burn: the outputs
/// equal the f32 checkpoint's to the half type's precision.
#[test]
fn half_precision_and_f64_checkpoints_load_converted_to_f32() {
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};
    let bytes = std::fs::read(fixture("vit.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut f32_model = tiny_vit().init(&cpu_device());
    load(
        &mut f32_model,
        &fixture("vit.safetensors"),
        CheckpointFamily::HfVideoMae,
    )
    .unwrap();
    let want: Vec<f32> = f32_model
        .forward(input("vit"), &[])
        .unwrap()
        .features
        .into_data()
        .iter::<f32>()
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for (dtype, tol) in [(Dtype::F16, 2e-2), (Dtype::BF16, 8e-2), (Dtype::F64, 1e-6)] {
        let owned: Vec<(String, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(name, v)| {
                let xs = v
                    .data()
                    .chunks(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()));
                let data: Vec<u8> = match dtype {
                    Dtype::F16 => xs
                        .flat_map(|x| half::f16::from_f32(x).to_le_bytes())
                        .collect(),
                    Dtype::BF16 => xs
                        .flat_map(|x| half::bf16::from_f32(x).to_le_bytes())
                        .collect(),
                    _ => xs.flat_map(|x| (x as f64).to_le_bytes()).collect(),
                };
                (name, v.shape().to_vec(), data)
            })
            .collect();
        let views: Vec<(String, TensorView)> = owned
            .iter()
            .map(|(n, s, d)| (n.clone(), TensorView::new(dtype, s.clone(), d).unwrap()))
            .collect();
        let path = dir.path().join(format!("vit_{dtype:?}.safetensors"));
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let mut m = tiny_vit().init(&cpu_device());
        load(&mut m, &path, CheckpointFamily::HfVideoMae)
            .unwrap_or_else(|e| panic!("{dtype:?}: {e}"));
        let got: Vec<f32> = m
            .forward(input("vit"), &[])
            .unwrap()
            .features
            .into_data()
            .iter::<f32>()
            .collect();
        let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
        let diff = got
            .iter()
            .zip(&want)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            diff <= tol * scale,
            "{dtype:?}: max diff {diff} (scale {scale})"
        );
    }
}

/// PyTorch pickles of half-precision weights (`model.half().state_dict()`, bfloat16 too) load
/// converted to f32: the outputs equal the f32 pickle's to the half type's precision.
#[test]
fn half_precision_pth_checkpoints_load_converted_to_f32() {
    let run = |name: &str| -> Vec<f32> {
        let mut m = tiny_vit().init(&cpu_device());
        load(&mut m, &fixture(name), CheckpointFamily::HfVideoMae)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        m.forward(input("vit"), &[])
            .unwrap()
            .features
            .into_data()
            .iter::<f32>()
            .collect()
    };
    let want = run("vit.pth");
    let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
    for (name, tol) in [("vit_f16.pth", 2e-2), ("vit_bf16.pth", 8e-2)] {
        let got = run(name);
        let diff = got
            .iter()
            .zip(&want)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            diff > 0.0,
            "{name}: no rounding at all, so not half precision"
        );
        assert!(
            diff <= tol * scale,
            "{name}: max diff {diff} (scale {scale})"
        );
    }
}
