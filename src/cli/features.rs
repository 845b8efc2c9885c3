//! The feature workflow of `train --features`, `infer --features` and
//! `weights import-actionformer`: ActionFormer on pre-extracted features.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use e2e_tal::data::{GroundTruth, Subset};
use e2e_tal::eval::{EvalOptions, evaluate};
use e2e_tal::features::{
    FeatureDataset, FeatureRun, FeatureTrainConfig, check_classes, check_feature_run, class_names,
    is_yaml, predict, prepare_feature_run, read_actionformer_config, train_features,
};
use e2e_tal::{Error, Result};

/// What `train --features` takes from the command line.
pub struct FeatureTrainFlags {
    pub features: PathBuf,
    pub dataset: PathBuf,
    pub config: Option<PathBuf>,
    pub out: PathBuf,
    pub epochs: Option<usize>,
    pub seed: Option<u64>,
    pub ema_decay: Option<f64>,
    pub eval_every: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub overwrite: bool,
    pub quiet: bool,
    /// A feature run to start from (fine-tuning).
    pub init: Option<PathBuf>,
}

/// A configuration file as read, before the data is: the settings, and what an ActionFormer
/// YAML says the data should be (classes, width).
struct ConfigFile {
    path: PathBuf,
    cfg: FeatureTrainConfig,
    num_classes: Option<usize>,
    input_dim: Option<usize>,
}

impl ConfigFile {
    /// `--config`: ActionFormer's YAML or this crate's JSON.
    fn read(path: &Path) -> Result<Self> {
        let (cfg, num_classes, input_dim) = if is_yaml(path) {
            let af = read_actionformer_config(path)?;
            (af.train, af.num_classes, af.input_dim)
        } else {
            let c = e2e_tal::train::read_config(path, &FeatureTrainConfig::new())?;
            (c, None, None)
        };
        Ok(Self {
            path: path.to_path_buf(),
            cfg,
            num_classes,
            input_dim,
        })
    }

    /// The settings, checked against the data's classes and width and validated, errors
    /// naming the file.
    fn checked(self, data: &FeatureDataset) -> Result<FeatureTrainConfig> {
        let mismatch = |field: &str, want: usize, got: usize, what: &str| Error::InvalidValue {
            name: format!("{}: {field}", self.path.display()),
            reason: format!("{want}, but {what} {got}"),
        };
        if let Some(n) = self.num_classes.filter(|&n| n != data.classes.len()) {
            return Err(mismatch(
                "dataset.num_classes",
                n,
                data.classes.len(),
                &format!("the annotations {} have", data.annotations.display()),
            ));
        }
        if let Some(d) = self.input_dim.filter(|&d| d != data.channels) {
            return Err(mismatch(
                "dataset.input_dim",
                d,
                data.channels,
                "the features have",
            ));
        }
        self.cfg
            .validate()
            .map_err(|e| Error::Config(format!("{}: {e}", self.path.display())))?;
        Ok(self.cfg)
    }
}

/// The feature dataset `dataset` + `features` read with `cfg`'s layout.
fn load(dataset: &Path, features: &Path, cfg: &FeatureTrainConfig) -> Result<FeatureDataset> {
    FeatureDataset::load(dataset, features, &cfg.data)
}

/// An output (file or run folder) must not land inside the feature folder.
fn outside_features(out: &Path, features: &Path) -> Result<()> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let feats = features.canonicalize().unwrap_or_else(|_| abs(features));
    let inside = abs(out)
        .ancestors()
        .any(|a| a.canonicalize().is_ok_and(|c| c == feats));
    if inside {
        return Err(Error::WouldOverwrite {
            path: out.to_path_buf(),
            reason: format!(
                "it lies inside the feature folder {}; write outputs elsewhere",
                features.display()
            ),
        });
    }
    Ok(())
}

pub fn train(f: FeatureTrainFlags, device: &Device) -> Result<()> {
    let start = Instant::now();
    outside_features(&f.out, &f.features)?;
    // Refuse an existing run before any work; --overwrite removes its files once the data
    // has loaded.
    check_feature_run(&f.out, f.overwrite)?;
    let file = f.config.as_deref().map(ConfigFile::read).transpose()?;
    let start_from = match &f.init {
        Some(dir) => Some(FeatureRun::load(dir, device)?),
        None => None,
    };
    // The settings: the file's, else (fine-tuning) the run's head and recipe, else
    // ActionFormer's THUMOS recipe; the layout (prefix, extension) read the data with them.
    let base = match (&file, &start_from) {
        (Some(c), _) => c.cfg.clone(),
        (None, Some((run, _))) => run.config.clone(),
        (None, None) => FeatureTrainConfig::new(),
    };
    let data = load(&f.dataset, &f.features, &base)?;
    let mut cfg = match file {
        Some(c) => c.checked(&data)?,
        None => base,
    };
    if let (Some((run, _)), Some(dir)) = (&start_from, &f.init)
        && run.classes != data.classes
    {
        return Err(Error::Config(format!(
            "--weights {}: its classes {:?} are not the classes of {} ({:?}), in label_id order",
            dir.display(),
            run.classes,
            f.dataset.display(),
            data.classes
        )));
    }
    macro_rules! set {
        ($($flag:ident => $field:ident),*) => { $(if let Some(v) = f.$flag { cfg.$field = v; })* };
    }
    set!(epochs => epochs, seed => seed, ema_decay => ema_decay, eval_every => eval_every,
         batch_size => batch_size, lr => lr);
    cfg.validate()?;
    outln!(
        "features: {} ({} videos, {} classes, width {}); training {:?}, evaluating {:?}",
        f.features.display(),
        data.videos.len(),
        data.classes.len(),
        data.channels,
        cfg.data.train_subsets,
        cfg.data.val_subsets
    )?;
    if !f.quiet {
        e2e_tal::io::progress_to_stdout();
    }
    let opts = e2e_tal::features::FeatureRunOptions {
        out: &f.out,
        overwrite: f.overwrite,
        quiet: f.quiet,
        init: start_from.as_ref().map(|(_, h)| h),
    };
    let o = train_features(&cfg, &data, &opts, device)?;
    let secs: f64 = o.epochs.iter().map(|e| e.seconds).sum();
    outln!(
        "{} epochs in {:.1}s ({:.2}s per epoch), final loss {:.4}",
        o.epochs.len(),
        start.elapsed().as_secs_f64(),
        secs / o.epochs.len().max(1) as f64,
        o.epochs.last().map_or(0.0, |e| e.loss)
    )?;
    if let Some(r) = &o.evaluation {
        super::print_report(r, false)?;
    }
    outln!("run -> {}", f.out.display())
}

/// `infer --checkpoint RUN --dataset JSON --features DIR`.
pub fn infer(
    run_dir: &Path,
    dataset: &Path,
    features: &Path,
    subset: Option<Subset>,
    out: &Path,
    device: &Device,
) -> Result<()> {
    let (run, head) = FeatureRun::load(run_dir, device)?;
    let inputs = [
        run_dir.join(e2e_tal::features::FEATURE_RUN),
        run_dir.join(e2e_tal::features::HEAD_WEIGHTS),
        dataset.to_path_buf(),
    ];
    e2e_tal::io::check_output(
        out,
        &inputs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    )?;
    outside_features(out, features)?;
    let data = load(dataset, features, &run.config)?;
    check_classes(&run, &data, run_dir)?;
    if data.channels != run.config.head.input_dim {
        return Err(Error::Config(format!(
            "{}: the features have {} channels; run {} reads {}",
            features.display(),
            data.channels,
            run_dir.display(),
            run.config.head.input_dim
        )));
    }
    let videos: Vec<_> = data
        .videos
        .iter()
        .filter(|v| subset.is_none_or(|s| v.subset == s))
        .collect();
    if videos.is_empty() {
        return Err(Error::EmptyInput {
            path: dataset.to_path_buf(),
            reason: format!(
                "no video with features in subset `{}`",
                subset.map_or("all", Subset::as_str)
            ),
        });
    }
    let t = Instant::now();
    let preds = predict(&head, &run.config, &run.classes, &videos, device)?;
    preds.write_json(out)?;
    let n: usize = preds.videos.iter().map(|v| v.detections.len()).sum();
    outln!(
        "{} videos, {n} detections in {:.1}s -> {}",
        videos.len(),
        t.elapsed().as_secs_f64(),
        out.display()
    )?;
    let gt = data.ground_truth_of(&videos);
    if !gt.classes(None).is_empty() {
        let opts = EvalOptions {
            subset: None,
            thresholds: run.config.thresholds()?.values(),
        };
        super::print_report(&evaluate(&gt, &preds, &opts)?, false)?;
    }
    Ok(())
}

/// `weights import-actionformer`: an ActionFormer checkpoint as a feature run.
pub fn import(checkpoint: &Path, config_path: &Path, dataset: &Path, out: &Path) -> Result<()> {
    outside_features(out, checkpoint)?;
    if !is_yaml(config_path) {
        return Err(Error::Config(format!(
            "{}: --config must be the ActionFormer YAML the checkpoint was trained with",
            config_path.display()
        )));
    }
    let af = read_actionformer_config(config_path)?;
    let gt = GroundTruth::from_json_file(dataset)?;
    let classes = class_names(dataset, &gt)?;
    let mut cfg = af.train;
    cfg.head.num_classes = af.num_classes.unwrap_or(classes.len());
    if cfg.head.num_classes != classes.len() {
        return Err(Error::InvalidValue {
            name: format!("{}: dataset.num_classes", config_path.display()),
            reason: format!(
                "{}, but the annotations {} name {} classes",
                cfg.head.num_classes,
                dataset.display(),
                classes.len()
            ),
        });
    }
    cfg.head.input_dim = af.input_dim.ok_or_else(|| Error::InvalidValue {
        name: format!("{}: dataset.input_dim", config_path.display()),
        reason: "missing: the feature width the checkpoint reads".into(),
    })?;
    cfg.validate()
        .map_err(|e| Error::Config(format!("{}: {e}", config_path.display())))?;
    prepare_feature_run(out, false)?;
    let device = e2e_tal::backend::cpu_device();
    let mut head = cfg.head.init(&device)?;
    let report = e2e_tal::weights::actionformer::load_actionformer(&mut head, checkpoint)?;
    let run = FeatureRun {
        config: cfg,
        classes,
        origin: format!(
            "imported from {} ({})",
            checkpoint.display(),
            if report.source.is_empty() {
                "state dict"
            } else {
                &report.source
            }
        ),
    };
    run.save(out, &head)?;
    outln!(
        "{}: weights from `{}`{} -> {}",
        checkpoint.display(),
        report.source,
        if report.unused.is_empty() {
            String::new()
        } else {
            format!(
                "; {} unused keys ({})",
                report.unused.len(),
                report
                    .unused
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        out.display()
    )
}
