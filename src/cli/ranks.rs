//! The processes a command runs as: one, or the ranks of an MPI job (`train` only, `mpi`
//! feature). Rank 0 alone prints; an error on any rank stops them all.

use std::sync::atomic::{AtomicBool, Ordering};

use e2e_tal::distributed::{Ranks, launched_by_mpi, launcher_size};
use e2e_tal::{Error, Result};

/// Set on ranks other than 0: their command output is dropped (rank 0 prints the run's).
static SILENT: AtomicBool = AtomicBool::new(false);

/// Whether this process's command output is dropped.
pub fn silent() -> bool {
    SILENT.load(Ordering::Relaxed)
}

/// Refuse to run `command` as several processes of an MPI job: each would do the whole work
/// and write the same outputs. Only `train` trains one model across ranks.
pub fn refuse_several(command: &str) -> Result<()> {
    match launcher_size() {
        Some(n) if n > 1 => Err(Error::Config(format!(
            "`{command}` was started as {n} processes by an MPI launcher; only `train` runs on \
             several ranks (each process here would do the whole work and write the same \
             outputs): start it without mpirun/srun"
        ))),
        _ => Ok(()),
    }
}

/// The ranks `train` runs as: those of the MPI job that started it (`mpi` feature), or one.
pub fn join() -> Result<Ranks> {
    if !launched_by_mpi() {
        return Ok(Ranks::default());
    }
    let ranks = mpi_ranks()?;
    if !ranks.is_root() {
        SILENT.store(true, Ordering::Relaxed);
        e2e_tal::io::set_progress(|_| {});
    }
    Ok(ranks)
}

#[cfg(feature = "mpi")]
fn mpi_ranks() -> Result<Ranks> {
    Ok(Ranks::new(e2e_tal::distributed::Mpi::init()?))
}

#[cfg(not(feature = "mpi"))]
fn mpi_ranks() -> Result<Ranks> {
    match launcher_size() {
        Some(n) if n > 1 => Err(Error::Config(format!(
            "started as {n} processes by an MPI launcher, but this e2e-tal was built without \
             the `mpi` feature: each process would train alone and all would write the same run \
             folder; build with `cargo build --release --features mpi` (docs/distributed.md)"
        ))),
        _ => Ok(Ranks::default()),
    }
}

/// `result` of `ranks`' command. An error the ranks agreed on (a rank that failed at a
/// collective check, or differs from rank 0) ends every rank in order; any other error on one
/// rank of several stops them all at once (none waits for it forever), after saying which rank
/// failed and why.
pub fn finish(ranks: &Ranks, result: Result<()>) -> Result<()> {
    match (&result, ranks.is_distributed()) {
        (Err(e @ Error::Rank { .. }), true) => {
            // Said by rank 0 before any rank ends: the launcher stops the job as soon as one
            // rank exits with an error.
            if ranks.is_root() {
                e2e_tal::io::warning(format_args!("error: {e}"));
            }
            SILENT.store(true, Ordering::Relaxed);
            ranks.barrier();
        }
        (Err(e), true) => {
            e2e_tal::io::warning(format_args!(
                "error on rank {} of {}: {e}\nstopping every rank",
                ranks.rank(),
                ranks.size()
            ));
            ranks.abort(1);
        }
        _ => {}
    }
    result
}
