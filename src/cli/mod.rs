//! The subcommands, one module each: a typed argument struct (every choice a `ValueEnum`, so
//! `--help` lists its values) and a `run` that calls the library.

use std::sync::LazyLock;

use clap::builder::PossibleValue;
use clap::{Parser, Subcommand, ValueEnum};

use e2e_tal::Result;
use e2e_tal::data::Subset;
use e2e_tal::eval::EvalReport;

mod baseline;
mod convert_thumos;
mod eval;
mod features;
mod infer;
mod plan;
mod pretrain;
pub mod ranks;
mod synth;
mod train;
mod weights;

#[derive(Parser)]
#[command(
    name = "e2e-tal",
    version,
    about = "Memory-efficient end-to-end temporal action localization"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the synthetic untrimmed-video benchmark (frames + ActivityNet-format JSON).
    Synth(synth::SynthArgs),
    /// Evaluate detections against ground truth (official ActivityNet mAP).
    Eval(eval::EvalArgs),
    /// Convert THUMOS-14 per-class annotation files to ActivityNet JSON.
    ConvertThumos(convert_thumos::ConvertThumosArgs),
    /// Inspect or convert PyTorch backbone checkpoints; import ActionFormer checkpoints.
    Weights {
        #[command(subcommand)]
        action: weights::WeightsAction,
    },
    /// The main job: train a detector end to end (or in another mode) and print its validation
    /// mAP. With no arguments: generate the synthetic benchmark into data/synth if missing,
    /// pretrain the default backbone by clip classification on a separate synthetic set (once,
    /// cached in runs/pretrain) and train backbone + head end to end on the CPU.
    Train(Box<train::TrainArgs>),
    /// Clip-classification pretraining of a backbone on trimmed action clips (the analogue of
    /// Kinetics pretraining): by default on a second synthetic benchmark (seed 1, generated
    /// into data/synth-pretrain if missing), so the backbone has not seen the TAL videos.
    Pretrain(pretrain::PretrainArgs),
    /// Detect actions with a trained run's checkpoint: ActivityNet results JSON, optional PNG
    /// timelines (ground truth vs detections).
    Infer(infer::InferArgs),
    /// The memory planner: the predicted peak memory of one training step for every strategy
    /// (head-only, LoSA, full, full with checkpointing, reversible) and LoFi fidelity, broken
    /// down by what holds it, what fits a budget and the configuration to train with, from the
    /// model's shapes alone (any size; no weights, no data).
    Plan(plan::PlanArgs),
    /// Noisy-oracle baseline: generate the synthetic benchmark if missing, load every
    /// validation video through the clip pipeline, make detections from the ground truth plus
    /// noise and print their mAP (a check of the evaluation pipeline, not a model).
    Baseline(baseline::BaselineArgs),
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let name = match &cli.command {
        Command::Train(_) => None,
        Command::Synth(_) => Some("synth"),
        Command::Eval(_) => Some("eval"),
        Command::ConvertThumos(_) => Some("convert-thumos"),
        Command::Weights { .. } => Some("weights"),
        Command::Pretrain(_) => Some("pretrain"),
        Command::Infer(_) => Some("infer"),
        Command::Baseline(_) => Some("baseline"),
        Command::Plan(_) => Some("plan"),
    };
    if let Some(name) = name {
        ranks::refuse_several(name)?;
    }
    match cli.command {
        Command::Synth(a) => synth::run(a),
        Command::Eval(a) => eval::run(a),
        Command::ConvertThumos(a) => convert_thumos::run(a),
        Command::Weights { action } => weights::run(action),
        Command::Train(a) => train::run(*a),
        Command::Pretrain(a) => pretrain::run(a),
        Command::Infer(a) => infer::run(a),
        Command::Baseline(a) => baseline::run(a),
        Command::Plan(a) => plan::run(a),
    }
}

/// A subset, or every video (`all`): the subset filter of `eval` and `infer`. Its values are
/// [`Subset`]'s own (aliases included) and `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SubsetFilter(Option<Subset>);

impl SubsetFilter {
    const VALIDATION: Self = SubsetFilter(Some(Subset::Validation));
}

impl ValueEnum for SubsetFilter {
    fn value_variants<'a>() -> &'a [Self] {
        static ALL: LazyLock<Vec<SubsetFilter>> = LazyLock::new(|| {
            let one = Subset::value_variants()
                .iter()
                .map(|&s| SubsetFilter(Some(s)));
            one.chain([SubsetFilter(None)]).collect()
        });
        &ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        self.0.map_or_else(
            || Some(PossibleValue::new("all").help("Every video")),
            |s| s.to_possible_value(),
        )
    }
}

impl std::fmt::Display for SubsetFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.map_or("all", Subset::as_str))
    }
}

/// A whole number in `lo..=hi` as a flag value.
fn count_in(lo: usize, hi: usize) -> impl Fn(&str) -> std::result::Result<usize, String> + Clone {
    move |s| match s.trim().parse::<usize>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number in {lo}..={hi}")),
    }
}

/// Print an evaluation report (and AP per class), noting predictions that were ignored.
fn print_report(r: &EvalReport, per_class: bool) -> Result<()> {
    outln!("{r}")?;
    if per_class {
        outln!("\n| class | AP per threshold (%) |\n|---|---|")?;
        for (c, ap) in &r.per_class {
            let v: Vec<String> = ap.iter().map(|x| format!("{:.2}", x * 100.0)).collect();
            outln!("| {c} | {} |", v.join(" "))?;
        }
    }
    if r.ignored_predictions > 0 {
        e2e_tal::io::warning(format_args!(
            "note: {} predictions have labels absent from the ground truth and were ignored",
            r.ignored_predictions
        ));
    }
    Ok(())
}
