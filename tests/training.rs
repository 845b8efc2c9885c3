//! Training end to end on a tiny synthetic split: learning sanity (mAP well above an untrained
//! model), exact resume, frozen parts, bad input.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use e2e_tal::backbone::vit::VitConfig;
use e2e_tal::data::FRAMES_DIR;
use e2e_tal::data::LoFiMode;
use e2e_tal::data::{Subset, SynthConfig};
use e2e_tal::pipeline::{FrameTransformConfig, LoaderConfig};
use e2e_tal::precision::Precision;
use e2e_tal::reversible::DriftMonitor;
use e2e_tal::tal::head::HeadConfig;
use e2e_tal::train::end_to_end_then_head;
use e2e_tal::train::pretrain_from;
use e2e_tal::train::{
    BackboneConfig, Checkpoint, InferOptions, LossScaleConfig, PretrainConfig, RunOptions,
    TalDataset, TrainConfig, TrainMode, TrainOutcome, TrainPlan, detect_video, pretrain, resume,
    train,
};

/// Budget mode measures training steps with it (the trainer reports a step's peak through it).
#[global_allocator]
static ALLOC: e2e_tal::memory::CountingAllocator = e2e_tal::memory::CountingAllocator;

/// Burn's random number generator is process-wide: training runs in parallel test threads
/// would draw from it in turn and stop being reproducible, so the tests here run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Six 32x32 videos of two classes. Every training video is also a validation video, so the
/// final evaluation measures how well the pipeline fits what it was trained on.
fn tiny_dataset(dir: &std::path::Path) -> TalDataset {
    let synth = SynthConfig::new()
        .with_videos(6)
        .with_height(32)
        .with_width(32)
        .with_min_frames(96)
        .with_max_frames(128)
        .with_num_classes(2)
        .with_min_actions(1)
        .with_max_actions(2)
        .with_min_action_frames(16)
        .with_max_distractors(0)
        .with_validation_fraction(0.0)
        .with_seed(3)
        .generate(dir)
        .unwrap();
    let mut gt = synth.ground_truth.clone();
    let copies: Vec<_> = gt
        .videos
        .iter()
        .map(|v| {
            let mut c = v.clone();
            c.subset = Subset::Validation;
            c
        })
        .collect();
    let train = TalDataset::load(&gt, &dir.join(FRAMES_DIR), &[], None, 15).unwrap();
    gt.videos.extend(copies);
    let mut ds = train.clone();
    for v in &train.videos {
        let mut c = v.clone();
        c.subset = Subset::Validation;
        ds.videos.push(c);
    }
    ds.ground_truth = gt;
    ds
}

fn tiny_config(mode: TrainMode, epochs: usize) -> TrainConfig {
    TrainConfig::new()
        .with_mode(mode)
        .with_backbone(BackboneConfig::Vit(
            VitConfig::new()
                .with_embed_dim(32)
                .with_depth(2)
                .with_num_heads(2)
                .with_mlp_dim(64)
                .with_patch_size(8)
                .with_num_frames(8)
                .with_image_size(32)
                .with_layer_norm_eps(1e-6)
                .with_drop_path_rate(0.1),
        ))
        .with_head(
            HeadConfig::new(0, 0)
                .with_embed_dim(32)
                .with_num_heads(2)
                .with_window_size(9)
                .with_drop_path(0.0),
        )
        .with_epochs(epochs)
        .with_warmup_epochs(0.5)
        // From scratch, not fine-tuning: the default (1e-4) is for a pretrained backbone.
        .with_lr_backbone(5e-4)
}

/// Options of a test run: quiet, in `out`, stopping after `stop` steps when given.
fn quiet_run(out: std::path::PathBuf, stop: Option<usize>) -> RunOptions {
    RunOptions {
        out_dir: out,
        quiet: true,
        stop_after_steps: stop,
        overwrite: false,
        loader: Default::default(),
        ranks: Default::default(),
    }
}

/// The CPU backend, or the one `E2E_TAL_BACKEND` names (`docs/backends.md`).
fn test_device() -> burn::tensor::Device {
    e2e_tal::backend::device_from_env().expect("E2E_TAL_BACKEND names a compiled-in backend")
}

fn run(
    cfg: TrainConfig,
    data: &TalDataset,
    out: &std::path::Path,
    stop: Option<usize>,
) -> TrainOutcome {
    let device = test_device();
    device.seed(7);
    let backbone = cfg.backbone.init(&device);
    let opts = quiet_run(out.to_path_buf(), stop);
    train(cfg, data, backbone, &opts, &device).unwrap()
}

struct Values(Vec<f32>);

impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        self.0.extend(
            p.val()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap(),
        );
    }
}

fn values<M: Module>(m: &M) -> Vec<f32> {
    let mut v = Values(Vec::new());
    m.visit(&mut v);
    v.0
}

/// Largest absolute difference of two equally long value lists.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn map_at_05(_data: &TalDataset, out: &TrainOutcome) -> f64 {
    out.evaluation.as_ref().unwrap().1.map[2]
}

#[test]
fn end_to_end_training_learns_far_above_an_untrained_model() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    // Untrained: learning rates of zero, so evaluation sees the initial model.
    let untrained = run(
        tiny_config(TrainMode::Full, 1)
            .with_lr_head(0.0)
            .with_lr_backbone(0.0),
        &data,
        &dir.path().join("untrained"),
        None,
    );
    let trained = run(
        tiny_config(TrainMode::Full, 25),
        &data,
        &dir.path().join("trained"),
        None,
    );
    let (u, t) = (map_at_05(&data, &untrained), map_at_05(&data, &trained));
    eprintln!("mAP@0.5 untrained {u:.3}, trained {t:.3}");
    assert!(t > 0.5 && t > u + 0.3, "untrained {u}, trained {t}");
}

#[test]
fn a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    // With an EMA of the weights, which the checkpoint must carry too.
    let cfg = tiny_config(TrainMode::Full, 2).with_ema_decay(0.9);
    let whole = run(cfg.clone(), &data, &dir.path().join("whole"), None);
    // 6 steps per epoch: stop in the middle of the first epoch.
    let part = run(cfg, &data, &dir.path().join("part"), Some(4));
    assert!(part.evaluation.is_none());
    assert_eq!(part.state.global_step, 4);
    let ck = Checkpoint::load(&dir.path().join("part")).unwrap();
    assert_eq!((ck.meta.state.epoch, ck.meta.state.step_in_epoch), (0, 4));
    let opts = quiet_run(dir.path().join("part"), None);
    let resumed = resume(&data, &opts, &test_device()).unwrap();
    assert_eq!(resumed.state.global_step, 12);
    let (r, w) = (values(&resumed.model), values(&whole.model));
    assert_eq!(r.len(), w.len());
    let differ = r.iter().zip(&w).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "{differ} of {} parameters differ", r.len());
    let (re, we) = (
        values(resumed.ema.as_ref().unwrap()),
        values(whole.ema.as_ref().unwrap()),
    );
    assert_eq!(re, we, "EMA weights differ");
    // The EMA lags the trained weights (it is not a copy of them).
    assert_ne!(we, w);
    // A checkpoint of an EMA run without its EMA file is refused by name; the previous
    // checkpoint is used while it is whole.
    std::fs::remove_file(dir.path().join("whole/checkpoint/ema.bpk")).unwrap();
    let ck = Checkpoint::load(&dir.path().join("whole")).unwrap();
    assert!(ck.dir.ends_with("checkpoint.old"), "{}", ck.dir.display());
    std::fs::remove_file(dir.path().join("whole/checkpoint.old/ema.bpk")).unwrap();
    let err = Checkpoint::load(&dir.path().join("whole")).err().unwrap();
    assert!(err.to_string().contains("ema.bpk"), "{err}");
    let losses =
        |o: &TrainOutcome| -> Vec<f64> { o.state.history.iter().map(|e| e.mean_loss).collect() };
    assert_eq!(losses(&resumed), losses(&whole));
    assert_eq!(
        resumed.evaluation.unwrap().1.map,
        whole.evaluation.unwrap().1.map
    );
}

/// Streaming with the field's random crops and flips and random windows: a run interrupted
/// mid-epoch and resumed, with 4 workers then 1 and with 1 then 4, ends with the weights of
/// an uninterrupted run with 1 worker (a step's samples never depend on who decodes them).
#[test]
fn streamed_runs_resume_bit_exactly_whatever_the_workers() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    let cfg = tiny_config(TrainMode::Full, 2)
        .with_transform(FrameTransformConfig::field())
        .with_max_train_clips(12);
    let device = test_device();
    let opts = |out: &str, stop, workers| RunOptions {
        loader: LoaderConfig::new().with_workers(workers),
        ranks: Default::default(),
        ..quiet_run(dir.path().join(out), stop)
    };
    let go = |out: &str, stop, workers| {
        device.seed(7);
        let backbone = cfg.backbone.init(&device);
        train(
            cfg.clone(),
            &data,
            backbone,
            &opts(out, stop, workers),
            &device,
        )
        .unwrap()
    };
    let whole = go("whole", None, 1);
    for (first, then) in [(4, 1), (1, 4)] {
        let name = format!("part-{first}-{then}");
        let part = go(&name, Some(4), first);
        assert_eq!(part.state.global_step, 4);
        let resumed = resume(&data, &opts(&name, None, then), &device).unwrap();
        assert_eq!(resumed.state.global_step, 12);
        assert_eq!(
            values(&resumed.model),
            values(&whole.model),
            "{first} then {then} workers"
        );
    }
}

#[test]
fn reversible_training_follows_ordinary_training() {
    let _serial = serial();
    // The reversible step computes the gradients of autodiff through the same rewired network
    // (stochastic depth replayed from the same keys), so a few steps of each land on the same
    // weights up to float rounding: for a ViT and for a two-stage Video Swin.
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    let swin = BackboneConfig::Swin(
        e2e_tal::backbone::swin::SwinConfig::new()
            .with_embed_dim(16)
            .with_depths(vec![2, 2])
            .with_num_heads(vec![2, 2])
            .with_window_size([2, 4, 4])
            .with_patch_size([2, 8, 8])
            .with_drop_path_rate(0.1),
    );
    for (name, backbone) in [("vit", None), ("swin", Some(swin))] {
        let cfg = |mode| {
            let c = tiny_config(mode, 1);
            match &backbone {
                Some(b) => c.with_backbone(b.clone()),
                None => c,
            }
        };
        let full = run(
            cfg(TrainMode::Full).with_rewired(true),
            &data,
            &dir.path().join(format!("{name}-f")),
            Some(3),
        );
        let rev = run(
            cfg(TrainMode::Reversible),
            &data,
            &dir.path().join(format!("{name}-r")),
            Some(3),
        );
        let (a, b) = (values(&full.model), values(&rev.model));
        assert_eq!(a.len(), b.len());
        let max = max_abs_diff(&a, &b);
        assert!(max < 1e-4, "{name}: max parameter difference {max}");
    }
    let full = run(
        tiny_config(TrainMode::Full, 1).with_rewired(true),
        &data,
        &dir.path().join("f"),
        Some(3),
    );
    let a = values(&full.model);
    let init = run(
        tiny_config(TrainMode::Full, 1)
            .with_lr_head(0.0)
            .with_lr_backbone(0.0),
        &data,
        &dir.path().join("i"),
        Some(3),
    );
    let moved = max_abs_diff(&values(&init.model), &a);
    assert!(moved > 1e-3, "training moved parameters by only {moved}");
}

#[test]
fn the_drift_monitor_reports_in_metrics_and_a_forced_fallback_trains_like_autodiff() {
    let _serial = serial();
    // Every step checked: the readings land in metrics.json. Tolerance 0 forces every step's
    // gradients through the cached recompute, which is ordinary autodiff through the rewired
    // network, so that run ends where `full --rewired` does.
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    let steps = data.indices(Subset::Training).len();
    let every_step = DriftMonitor::new().with_every(1);
    let read_drift = |run: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(dir.path().join(run).join("metrics.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v[0]["drift"].clone()
    };
    let checked = run(
        tiny_config(TrainMode::Reversible, 1).with_drift(every_step.clone()),
        &data,
        &dir.path().join("checked"),
        None,
    );
    let d = read_drift("checked");
    assert_eq!(d["checks"], steps, "{d}");
    assert_eq!(d["fallbacks"], 0, "{d}");
    let max_rel = d["max_rel"].as_f64().unwrap();
    assert!(max_rel > 0.0 && max_rel < 1e-5, "{d}");
    let forced = run(
        tiny_config(TrainMode::Reversible, 1).with_drift(every_step.with_tolerance(0.0)),
        &data,
        &dir.path().join("forced"),
        None,
    );
    let d = read_drift("forced");
    assert_eq!(
        (d["checks"].clone(), d["fallbacks"].clone()),
        (steps.into(), steps.into())
    );
    let full = run(
        tiny_config(TrainMode::Full, 1).with_rewired(true),
        &data,
        &dir.path().join("full"),
        None,
    );
    let reference = values(&full.model);
    for (name, out) in [("checked", &checked), ("forced", &forced)] {
        let max = max_abs_diff(&values(&out.model), &reference);
        assert!(max < 1e-4, "{name}: max parameter difference {max}");
    }
    // Unchecked runs write no drift field.
    assert!(
        std::fs::read_to_string(dir.path().join("full/metrics.json"))
            .unwrap()
            .find("drift")
            .is_none()
    );
}

#[test]
fn frozen_modes_leave_the_backbone_alone() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    for mode in [TrainMode::HeadOnly, TrainMode::Adapter] {
        let out = dir.path().join(mode.to_string());
        let cfg = tiny_config(mode, 1);
        let device = test_device();
        device.seed(7);
        let before = values(&cfg.backbone.init(&device));
        let o = run(cfg, &data, &out, Some(3));
        assert!(
            values(&o.model.backbone) == before,
            "{mode}: backbone changed"
        );
        let ck = Checkpoint::load(&out).unwrap();
        assert!(
            ck.optim_backbone.is_empty(),
            "{mode}: backbone optimizer state"
        );
        assert!(!ck.optim_head.is_empty(), "{mode}: head optimizer state");
        assert_eq!(o.model.adapter.is_some(), mode == TrainMode::Adapter);
        if mode == TrainMode::HeadOnly {
            let f = e2e_tal::data::FeatureSequence::read(
                &out.join("features")
                    .join(format!("{}.npy", data.videos[0].id)),
            )
            .unwrap();
            assert_eq!(f.channels, 32);
        }
    }
}

/// LoSA trains on the tapped layers extracted once (the default) as on the frozen backbone run
/// at every step (up to float reordering), and its adapters learn; augmentation needs the
/// per-step backbone.
#[test]
fn adapter_training_on_extracted_layers_equals_the_per_step_backbone() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    let cfg = tiny_config(TrainMode::Adapter, 1);
    assert!(TrainPlan::from_config(&cfg).unwrap().caches_features());
    let cached = run(cfg.clone(), &data, &dir.path().join("cached"), Some(4));
    let live = run(
        cfg.clone().with_cache_features(false),
        &data,
        &dir.path().join("live"),
        Some(4),
    );
    let (a, b) = (values(&cached.model), values(&live.model));
    assert_eq!(a.len(), b.len());
    let max = max_abs_diff(&a, &b);
    assert!(
        max < 1e-4,
        "cached vs per-step adapter training differ by {max}"
    );
    // Augmentation and LoFi need the per-step backbone.
    let aug = e2e_tal::data::AugmentConfig::synthetic();
    let err = cfg
        .clone()
        .with_augment(aug.clone())
        .validate()
        .err()
        .unwrap();
    assert!(err.to_string().contains("adapter"), "{err}");
    cfg.clone()
        .with_cache_features(false)
        .with_augment(aug)
        .validate()
        .unwrap();
    let init = run(
        cfg.with_lr_head(0.0),
        &data,
        &dir.path().join("init"),
        Some(1),
    );
    let (before, after) = (
        values(init.model.adapter.as_ref().unwrap()),
        values(cached.model.adapter.as_ref().unwrap()),
    );
    let moved = max_abs_diff(&before, &after);
    assert!(moved > 1e-4, "the adapters moved by only {moved}");
}

#[test]
fn bad_input_gets_errors_naming_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    // A clip longer than every video.
    let e = TalDataset::load(
        &data.ground_truth,
        &dir.path().join("data").join(FRAMES_DIR),
        &[Subset::Training],
        None,
        1000,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("synth_00000"), "{e}");
    // Resuming where there is no checkpoint.
    let opts = quiet_run(dir.path().join("nothing"), None);
    let e = resume(&data, &opts, &e2e_tal::backend::cpu_device())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nothing") && e.contains("checkpoint"), "{e}");
    // A corrupt checkpoint.
    let out = dir.path().join("run");
    run(tiny_config(TrainMode::HeadOnly, 1), &data, &out, Some(1));
    std::fs::write(out.join("checkpoint").join("model.bpk"), b"not a model").unwrap();
    let opts = quiet_run(out, None);
    let e = resume(&data, &opts, &e2e_tal::backend::cpu_device())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model.bpk"), "{e}");
}

/// Clip-classification pretraining learns the tiny split's clips (2 twin classes that differ
/// only in motion, plus background): the loss falls and clip accuracy without augmentation
/// (the tiny split's validation videos are its training videos) is far above the 1/3 of
/// guessing (measured 0.97 after 300 steps, 0.69 after 120).
#[test]
fn clip_classification_pretraining_learns() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    let cfg = tiny_pretraining(PRETRAIN_STEPS, 8, 10);
    let device = e2e_tal::backend::cpu_device();
    device.seed(7);
    let out = pretrain(&cfg, &data, true, &device).unwrap();
    let (first, last) = (out.losses[0], *out.losses.last().unwrap());
    eprintln!(
        "pretraining: loss {first} -> {last}, train acc {}, val acc {:?}, clips {:?}",
        out.train_accuracy, out.val_accuracy, out.clips
    );
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    assert!(out.val_accuracy.unwrap() > 0.8, "{:?}", out.val_accuracy);

    // Re2TAL's recipe: rewire the pretrained ViT and fine-tune it in reversible form; it
    // starts from the pretrained weights (accuracy far above guessing again after few steps)
    // and a ResNet cannot be rewired this way.
    let rewired = cfg.clone().with_rewired(true).with_steps(60);
    let tuned = pretrain_from(&rewired, &data, out.backbone.valid(), true, &device).unwrap();
    eprintln!("rewired fine-tuning: val acc {:?}", tuned.val_accuracy);
    assert!(
        tuned.val_accuracy.unwrap() > 0.8,
        "{:?}",
        tuned.val_accuracy
    );
    let resnet = rewired.with_backbone(BackboneConfig::ResNet(
        e2e_tal::backbone::resnet3d::ResNet3dConfig::new(),
    ));
    let err = pretrain(&resnet, &data, true, &device).err().unwrap();
    assert!(err.to_string().contains("ViT"), "{err}");
}

const PRETRAIN_STEPS: usize = 300;

/// Pretraining of the tiny configuration's backbone on its clips.
fn tiny_pretraining(steps: usize, batch_size: usize, warmup_steps: usize) -> PretrainConfig {
    let tiny = tiny_config(TrainMode::Full, 1);
    PretrainConfig::new()
        .with_backbone(tiny.backbone)
        .with_clips(tiny.clips)
        .with_steps(steps)
        .with_batch_size(batch_size)
        .with_warmup_steps(warmup_steps)
}

/// Pretraining's batches are drawn, decoded and augmented on a thread of their own ahead of
/// the step: the same seed still gives the same weights bit for bit, and frames that cannot
/// be read stop it with an error naming them (no hang waiting for a batch that never comes).
#[test]
fn pretraining_reads_ahead_deterministically_and_reports_unreadable_frames() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    let cfg = tiny_pretraining(6, 4, 2);
    let device = e2e_tal::backend::cpu_device();
    let run = || {
        device.seed(11);
        let out = pretrain(&cfg, &data, true, &device).unwrap();
        (values(&out.backbone), out.losses, out.val_accuracy)
    };
    let (a, b) = (run(), run());
    assert_eq!(a.0, b.0, "weights differ between two runs of one seed");
    assert_eq!(a.1, b.1);
    assert_eq!(a.2, b.2);

    std::fs::remove_dir_all(dir.path().join("data").join(FRAMES_DIR)).unwrap();
    device.seed(11);
    let err = pretrain(&cfg, &data, true, &device)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(FRAMES_DIR), "{err}");
}

/// LoFi sampling: every fidelity of the short cycle (S, T, ST; 2 steps each) trains, the
/// backbone moves, and evaluation runs at full fidelity; head-only with LoFi is refused.
#[test]
fn lofi_cycle_trains_at_every_fidelity() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    let mut cfg = tiny_config(TrainMode::Full, 1);
    cfg.lofi.mode = LoFiMode::ShortCycle { batches: 2 };
    let device = e2e_tal::backend::cpu_device();
    device.seed(7);
    let backbone = cfg.backbone.init(&device);
    let before = values(&backbone);
    let opts = quiet_run(dir.path().join("lofi"), None);
    let out = train(cfg.clone(), &data, backbone, &opts, &device).unwrap();
    assert_eq!(out.state.global_step, 6);
    assert!(out.state.history[0].mean_loss.is_finite());
    assert_ne!(values(&out.model.backbone), before);
    let (_, report) = out.evaluation.unwrap();
    assert_eq!(report.map.len(), 5);
    let err = cfg
        .with_mode(TrainMode::HeadOnly)
        .validate()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("LoFi"), "{err}");
}

/// LoFi-E2E stages 2 and 3 in one call: stage 3 keeps the stage-2 backbone exactly (frozen)
/// and trains a new head at full fidelity; a stage 2 that does not train the backbone is
/// refused.
#[test]
fn stages_two_and_three_freeze_the_adapted_backbone() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    let mut cfg = tiny_config(TrainMode::Full, 1);
    cfg.lofi.mode = LoFiMode::SpatioTemporal;
    let device = e2e_tal::backend::cpu_device();
    device.seed(7);
    let backbone = cfg.backbone.init(&device);
    let out = dir.path().join("stages");
    let st = end_to_end_then_head(
        cfg.clone(),
        2,
        &data,
        backbone,
        &quiet_run(out.clone(), None),
        &device,
    )
    .unwrap();
    assert_eq!(
        values(&st.head.model.backbone),
        values(&st.end_to_end.model.backbone)
    );
    assert_eq!(st.head.state.history.len(), 2);
    assert!(st.head.evaluation.is_some() && st.end_to_end.evaluation.is_some());
    assert!(out.join("stage2/checkpoint").is_dir() && out.join("stage3/features").is_dir());
    let head_only = cfg.with_mode(TrainMode::HeadOnly);
    let b = head_only.backbone.init(&device);
    assert!(end_to_end_then_head(head_only, 1, &data, b, &quiet_run(out, None), &device).is_err());
}

/// LoFi-E2E budget mode measures one real step per candidate fidelity, cheapest first, and
/// chooses full fidelity under an ample budget; a budget below every measurement is an error
/// naming the cheapest candidate; head-only is refused. Probe folders are removed.
#[test]
fn budget_mode_measures_each_fidelity_and_chooses_what_fits() {
    use e2e_tal::data::Fidelity;
    use e2e_tal::train::{candidate_fidelities, choose_fidelity};
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    let cfg = tiny_config(TrainMode::Full, 1);
    let device = e2e_tal::backend::cpu_device();
    device.seed(7);
    let backbone = cfg.backbone.init(&device);
    let scratch = dir.path().join("probes");
    let cands = candidate_fidelities();
    let choose = |cfg: &TrainConfig, budget| {
        choose_fidelity(cfg, &data, &backbone, budget, &cands, &scratch, &device)
    };
    let ample = choose(&cfg, 1 << 40).unwrap();
    assert!(!scratch.exists());
    assert_eq!(ample.probes.len(), 9);
    assert!(ample.probes.windows(2).all(|w| w[0].pixels <= w[1].pixels));
    assert_eq!(ample.chosen, Fidelity::full());
    let peak = |t, s: f64| {
        ample
            .probes
            .iter()
            .find(|p| p.fidelity.temporal == t && p.fidelity.spatial == s)
            .unwrap()
            .peak_bytes
    };
    assert!(peak(1, 1.0) > peak(4, 2.0), "{ample}");
    assert!(ample.to_string().contains("| chosen |"), "{ample}");
    let err = choose(&cfg, 1024).err().unwrap().to_string();
    assert!(
        err.contains("no fidelity fits") && err.contains("r_t 4 r_s 2.000"),
        "{err}"
    );
    let err = choose(&cfg.clone().with_mode(TrainMode::HeadOnly), 1 << 40)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("budget mode"), "{err}");
}

/// Head-only without a feature cache runs the frozen backbone every step: the same training
/// as on cached features (same values up to float reordering), no feature files, more memory
/// per step; augmentation is refused with the cache and accepted without it.
#[test]
fn head_only_without_a_feature_cache_trains_like_with_one() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    let cfg = tiny_config(TrainMode::HeadOnly, 1);
    let cached = run(cfg.clone(), &data, &dir.path().join("cached"), Some(3));
    let live_cfg = cfg.clone().with_cache_features(false);
    let live = run(live_cfg.clone(), &data, &dir.path().join("live"), Some(3));
    assert!(dir.path().join("cached/features").is_dir());
    assert!(!dir.path().join("live/features").exists());
    let (a, b) = (values(&cached.model.head), values(&live.model.head));
    let worst = max_abs_diff(&a, &b);
    assert!(worst < 1e-4, "head weights differ by {worst}");
    assert_eq!(values(&cached.model.backbone), values(&live.model.backbone));
    // Exact peaks come from the counting allocator (CPU); device pools only keep a lifetime
    // high-water mark, which the cached run's feature extraction already set.
    if e2e_tal::backend::kind_from_env().unwrap() == e2e_tal::backend::BackendKind::Cpu {
        assert!(live.peak_step_bytes.unwrap() > cached.peak_step_bytes.unwrap());
    }
    let aug = e2e_tal::data::AugmentConfig::synthetic();
    let err = cfg.with_augment(aug.clone()).validate().err().unwrap();
    assert!(err.to_string().contains("augmentation"), "{err}");
    live_cfg.with_augment(aug).validate().unwrap();
}

/// A seed gives the same initial head with or without LoSA adapters, so head-only and adapter
/// runs of a seed differ only by what the adapters add (a paired comparison).
#[test]
fn adapters_do_not_change_the_initial_head() {
    let _serial = serial();
    let device = e2e_tal::backend::cpu_device();
    let heads: Vec<Vec<f32>> = [TrainMode::HeadOnly, TrainMode::Adapter]
        .into_iter()
        .map(|mode| {
            let cfg = tiny_config(mode, 1);
            device.seed(3);
            let backbone = cfg.backbone.init(&device);
            let m = e2e_tal::train::TalModel::new(&cfg, backbone, 2, (32, 32), &device).unwrap();
            assert_eq!(m.adapter.is_some(), mode == TrainMode::Adapter);
            // Materialise every parameter in field order (backbone, adapter, head), as the
            // trainer does, before reading the head.
            let _ = values(&m);
            values(&m.head)
        })
        .collect();
    assert_eq!(heads[0], heads[1]);
}

#[test]
fn f16_loss_scaling_skips_overflowing_steps_and_resumes_exactly() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    // A first scale of 2^28 overflows the f16 branches' gradients: those steps are skipped,
    // each halving the scale, until they fit; the scale doubles after 3 clean steps and may
    // overflow again.
    let scaling = LossScaleConfig::new()
        .with_init(2f64.powi(28))
        .with_growth_interval(3);
    let cfg = tiny_config(TrainMode::Reversible, 2)
        .with_precision(Precision::F16)
        .with_loss_scale(scaling);
    let whole = run(cfg.clone(), &data, &dir.path().join("whole"), None);
    let s = whole.state.loss_scale.expect("f16 runs keep a scaler");
    let logged = whole.state.history.last().unwrap().loss_scale.unwrap();
    eprintln!("loss scale: {s:?}");
    assert_eq!((logged.skipped, logged.scale), (s.skipped, s.scale));
    assert!(
        s.skipped >= 1 && s.skipped < 12,
        "skipped {} of 12",
        s.skipped
    );
    assert!(s.scale < 2f64.powi(28), "scale {}", s.scale);
    // Interrupted after 4 steps and resumed: the same scaler, weights and losses.
    run(cfg, &data, &dir.path().join("part"), Some(4));
    let opts = quiet_run(dir.path().join("part"), None);
    let resumed = resume(&data, &opts, &test_device()).unwrap();
    assert_eq!(resumed.state.loss_scale, whole.state.loss_scale);
    assert_eq!(values(&resumed.model), values(&whole.model));
    let losses =
        |o: &TrainOutcome| -> Vec<f64> { o.state.history.iter().map(|e| e.mean_loss).collect() };
    assert_eq!(losses(&resumed), losses(&whole));
    // bf16 keeps f32's exponent range: no scaler.
    let bf16 = tiny_config(TrainMode::Full, 1).with_precision(Precision::Bf16);
    let out = run(bf16, &data, &dir.path().join("bf16"), None);
    assert!(out.state.loss_scale.is_none());
    assert!(out.state.history[0].mean_loss.is_finite());
    // Inference runs in the run's precision unless told otherwise; both find the same
    // detections up to the low precision's rounding.
    let video = dir
        .path()
        .join("data")
        .join(FRAMES_DIR)
        .join(&data.videos[0].id);
    let infer = |precision| {
        let opts = InferOptions {
            fps: None,
            precision,
        };
        detect_video(&dir.path().join("bf16"), &video, &opts, &test_device()).unwrap()
    };
    let (own, f32) = (infer(None), infer(Some(Precision::F32)));
    assert!(!own.detections.is_empty());
    let top = |r: &e2e_tal::train::VideoInference| r.detections[0].score;
    assert!(
        (top(&own) - top(&f32)).abs() < 0.05,
        "bf16 {} vs f32 {}",
        top(&own),
        top(&f32)
    );
}

/// Temporal tokens (AdaTAD's layout) end to end on the synthetic benchmark: the backbone's
/// temporal positions feed the head (4 per 8-frame clip), the run learns the actions in mode
/// full, and head-only (cached features), LoSA (per-position layers) and the reversible pass
/// train and evaluate on the same grid; a wrong position count is refused by name.
#[test]
fn temporal_tokens_train_and_infer_end_to_end() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    let tokens = |mode| {
        let cfg = tiny_config(mode, 25);
        let clips = cfg.backbone.temporal_tokens(&cfg.clips).unwrap();
        cfg.with_clips(clips)
    };
    let cfg = tokens(TrainMode::Full);
    assert_eq!(
        (cfg.clips.positions_per_clip, cfg.clips.snippet_stride),
        (4, 16)
    );
    let trained = run(cfg.clone(), &data, &dir.path().join("full"), None);
    let t = map_at_05(&data, &trained);
    eprintln!("temporal tokens, full: mAP@0.5 {t:.3}");
    assert!(t > 0.5, "mAP@0.5 {t}");
    // Inference with the trained model: one feature per temporal position.
    let device = test_device();
    let det = e2e_tal::train::Detector::new(&trained.model, &cfg, &device).unwrap();
    let v = &data.videos[0];
    let f = det.features(v).unwrap();
    let clips = cfg.clips.num_clips(&v.id, v.len()).unwrap();
    assert_eq!((f.positions, f.features.dims()[0]), (4, 4 * clips));
    assert!(!det.detect(v).unwrap().is_empty());
    for mode in [
        TrainMode::HeadOnly,
        TrainMode::Adapter,
        TrainMode::Reversible,
    ] {
        let cfg = tokens(mode).with_epochs(2);
        let o = run(cfg, &data, &dir.path().join(mode.to_string()), None);
        let (preds, _) = o.evaluation.as_ref().unwrap();
        assert!(!preds.videos.is_empty(), "{mode}");
    }
    let mut bad = tiny_config(TrainMode::Full, 1);
    bad.clips = bad
        .clips
        .clone()
        .with_snippet_stride(16)
        .with_positions_per_clip(2);
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("clips.positions_per_clip"), "{err}");
}

/// Activation checkpointing trains exactly like plain autodiff (without stochastic depth,
/// whose draws the two key differently): the same weights after several steps.
#[test]
fn checkpointed_full_training_equals_plain_autodiff() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("data"));
    let mut cfg = tiny_config(TrainMode::Full, 1);
    if let BackboneConfig::Vit(v) = &mut cfg.backbone {
        v.drop_path_rate = 0.0;
    }
    let plain = run(cfg.clone(), &data, &dir.path().join("plain"), Some(3));
    let ck = run(
        cfg.with_checkpointing(true),
        &data,
        &dir.path().join("ck"),
        Some(3),
    );
    let (a, b) = (values(&plain.model), values(&ck.model));
    let max = max_abs_diff(&a, &b);
    assert!(max < 1e-5, "checkpointed vs plain differ by {max}");
}
