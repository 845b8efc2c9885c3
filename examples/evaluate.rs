//! Evaluate a detection results file against ground truth with the official ActivityNet mAP.
//!
//! ```text
//! cargo run --release --example evaluate -- GT.json PRED.json [anet|thumos|0.3,0.5] [subset]
//! ```
//! With no arguments it evaluates the noisy-oracle baseline written by `e2e-tal baseline`
//! (`data/synth/annotations.json` vs `data/synth/baseline_predictions.json`).

use std::path::PathBuf;

use e2e_tal::data::{GroundTruth, Predictions};
use e2e_tal::eval::{EvalOptions, ThresholdSet, evaluate};

fn main() -> Result<(), e2e_tal::Report> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_owned());
    let gt = PathBuf::from(arg(0, "data/synth/annotations.json"));
    let pred = PathBuf::from(arg(1, "data/synth/baseline_predictions.json"));
    let thresholds: ThresholdSet = arg(2, "thumos").parse()?;
    let subset = arg(3, "validation")
        .parse()
        .map_err(e2e_tal::Error::Config)?;
    let report = evaluate(
        &GroundTruth::from_json_file(&gt)?,
        &Predictions::from_json_file(&pred)?,
        &EvalOptions {
            subset: Some(subset),
            thresholds: thresholds.values(),
        },
    )?;
    println!("{report}");
    for (class, ap) in &report.per_class {
        let mean = ap.iter().sum::<f64>() / ap.len() as f64;
        println!("{class:>24}: {:.2}", mean * 100.0);
    }
    Ok(())
}
