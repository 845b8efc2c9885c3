//! `e2e-tal convert-thumos`: THUMOS-14 annotation files to ActivityNet JSON.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use e2e_tal::Result;
use e2e_tal::data::{Subset, ThumosSource, load_thumos};

/// Which THUMOS-14 annotation files to read (their file-name suffix).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Split {
    /// `<Class>_val.txt`.
    Val,
    /// `<Class>_test.txt`.
    Test,
}

#[derive(clap::Args)]
pub struct ConvertThumosArgs {
    /// Folder holding `<Class>_<split>.txt` files.
    #[arg(long)]
    dir: PathBuf,
    /// Annotation files to read.
    #[arg(long, value_enum, default_value_t = Split::Val)]
    split: Split,
    /// Subset written for the videos.
    #[arg(long, value_enum, default_value_t = Subset::Validation)]
    subset: Subset,
    /// Output JSON.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: ConvertThumosArgs) -> Result<()> {
    let split = match a.split {
        Split::Val => "val",
        Split::Test => "test",
    };
    let gt = load_thumos(&ThumosSource {
        dir: &a.dir,
        split,
        subset: a.subset,
        durations: None,
    })?;
    let inputs = e2e_tal::data::thumos_annotation_files(&a.dir, split)?;
    let inputs: Vec<&Path> = inputs.iter().map(|(_, p)| p.as_path()).collect();
    e2e_tal::io::check_output(&a.out, &inputs)?;
    gt.write_json(&a.out)?;
    outln!("wrote {} videos to {}", gt.videos.len(), a.out.display())
}
