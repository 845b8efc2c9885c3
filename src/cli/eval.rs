//! `e2e-tal eval`: mAP of detections against ground truth.

use std::path::PathBuf;

use e2e_tal::data::{GroundTruth, Predictions};
use e2e_tal::eval::{EvalOptions, ThresholdSet, evaluate};
use e2e_tal::{Error, Result};

use super::{SubsetFilter, print_report};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Ground truth, ActivityNet JSON.
    #[arg(long)]
    gt: PathBuf,
    /// Detections, ActivityNet results JSON.
    #[arg(long)]
    pred: PathBuf,
    /// Subset to evaluate.
    #[arg(long, value_enum, default_value_t = SubsetFilter::VALIDATION)]
    subset: SubsetFilter,
    /// tIoU thresholds: anet (0.5:0.05:0.95), thumos (0.3:0.1:0.7) or a list like 0.3,0.5
    /// (each in (0, 1]).
    #[arg(long, default_value = "anet", allow_hyphen_values = true, value_parser = thresholds)]
    thresholds: ThresholdSet,
    /// Print a JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also print AP per class.
    #[arg(long)]
    per_class: bool,
}

fn thresholds(s: &str) -> std::result::Result<ThresholdSet, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

pub fn run(a: EvalArgs) -> Result<()> {
    let opts = EvalOptions {
        subset: a.subset.0,
        thresholds: a.thresholds.values(),
    };
    let gt = GroundTruth::from_json_file(&a.gt)?;
    let pred = Predictions::from_json_file(&a.pred)?;
    let report = evaluate(&gt, &pred, &opts)?;
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        )
    } else {
        print_report(&report, a.per_class)
    }
}
