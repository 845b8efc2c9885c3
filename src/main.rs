//! `e2e-tal`: command-line front end of the e2e-tal library (`cli/`: one module per
//! subcommand).

use std::process::ExitCode;

use clap::Parser;

/// Print a line of the command's output. A closed or full standard output (`| head -1`,
/// `> /dev/full`) is an error naming it, never a panic. Ranks other than 0 of a data-parallel
/// `train` print nothing.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if crate::cli::ranks::silent() {
            Ok(())
        } else {
            writeln!(std::io::stdout().lock(), $($t)*)
                .map_err(|e| e2e_tal::Error::io("standard output", e))
        }
    }};
}

mod cli;

#[global_allocator]
static ALLOC: e2e_tal::memory::CountingAllocator = e2e_tal::memory::CountingAllocator;

fn main() -> ExitCode {
    e2e_tal::memory::retain_freed_memory();
    e2e_tal::io::progress_to_stdout();
    let cli = cli::Cli::parse();
    // The command runs on a worker of the thread pool the CPU kernels use: a parallel kernel
    // then splits its work with the calling thread instead of waking the pool and waiting.
    match rayon::scope(|_| cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // An error all ranks of a data-parallel run share is printed once, by rank 0.
            if !cli::ranks::silent() {
                e2e_tal::io::warning(format_args!("error: {e}"));
            }
            ExitCode::FAILURE
        }
    }
}
