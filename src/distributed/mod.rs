//! Data-parallel training across processes: one model trained by N ranks (one process per
//! device, started by `mpirun` or `srun`). Every rank reads its own share of each step's videos
//! ([`share`]), computes their gradients in whatever mode the run uses, and the gradients are
//! summed over the ranks before clipping and the optimizer step ([`GradSum`]), so every rank
//! holds the same parameters after every step. See `docs/distributed.md`.
//!
//! The transport is a [`Collective`]: [`Single`] (one process, no communication) always, and
//! [`Mpi`] with the `mpi` feature. [`Ranks`] is the handle the trainer holds.

mod agree;
mod grads;
#[cfg(feature = "mpi")]
mod mpi;
mod share;

use std::fmt;
use std::rc::Rc;

pub use grads::GradSum;
#[cfg(feature = "mpi")]
pub use mpi::Mpi;
pub use share::share;

/// The communication a data-parallel run needs. Every call is collective: every rank makes the
/// same calls in the same order.
pub trait Collective {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Sum `buf` element-wise over the ranks, in place. Every rank ends with the same bits
    /// (each element is reduced once, then distributed).
    fn sum_f32(&self, buf: &mut [f32]);
    /// Every rank's `bytes`, in rank order.
    fn all_gather(&self, bytes: &[u8]) -> Vec<Vec<u8>>;
    /// Stop every rank now, with `code` as the exit status (after an error on this rank, so
    /// that no other rank waits for it forever).
    fn abort(&self, code: i32) -> !;
}

/// One process: nothing to communicate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn all_gather(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        vec![bytes.to_vec()]
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The ranks of a run, as the trainer holds them ([`Single`] by default). Cheap to clone; not
/// `Send`: MPI is driven from the thread that started it.
#[derive(Clone)]
pub struct Ranks(Rc<dyn Collective>);

impl Default for Ranks {
    fn default() -> Self {
        Ranks(Rc::new(Single))
    }
}

impl fmt::Debug for Ranks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {} of {}", self.rank(), self.size())
    }
}

impl Ranks {
    /// The ranks `c` connects.
    pub fn new(c: impl Collective + 'static) -> Ranks {
        Ranks(Rc::new(c))
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.0.rank()
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.0.size()
    }

    /// Rank 0: the one that writes the run's files and prints its progress.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// More than one rank.
    pub fn is_distributed(&self) -> bool {
        self.size() > 1
    }

    /// The transport.
    pub fn collective(&self) -> &dyn Collective {
        &*self.0
    }

    /// Stop every rank now (see [`Collective::abort`]).
    pub fn abort(&self, code: i32) -> ! {
        self.0.abort(code)
    }

    /// Wait until every rank gets here.
    pub fn barrier(&self) {
        if self.is_distributed() {
            self.0.all_gather(&[]);
        }
    }

    /// Every rank's `values`, in rank order.
    pub fn gather_f64(&self, values: &[f64]) -> Vec<Vec<f64>> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.0
            .all_gather(&bytes)
            .into_iter()
            .map(|b| {
                b.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect()
            })
            .collect()
    }
}

/// The number of processes an MPI launcher started, as its variables for each rank say
/// (`None`: not started by one, or one that does not say).
pub fn launcher_size() -> Option<usize> {
    launcher_number(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"])
}

/// This process's rank among the job's processes on the same machine, as the launcher says
/// (Open MPI, MPICH, SLURM): which of the machine's GPUs it takes.
pub fn local_rank() -> Option<usize> {
    launcher_number(&[
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "PMI_LOCAL_RANK",
        "SLURM_LOCALID",
    ])
}

/// The first of `vars` that holds a number, when started by an MPI launcher.
fn launcher_number(vars: &[&str]) -> Option<usize> {
    if !launched_by_mpi() {
        return None;
    }
    vars.iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Whether this process was started by an MPI launcher (`mpirun`/`mpiexec` of Open MPI or
/// MPICH, `srun` with PMI or PMIx): the variables they set for each rank.
pub fn launched_by_mpi() -> bool {
    const VARS: [&str; 5] = [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMI_RANK",
        "PMIX_RANK",
        "MPI_LOCALNRANKS",
    ];
    VARS.iter().any(|v| std::env::var_os(v).is_some())
}

#[cfg(test)]
pub(crate) mod test_ranks {
    //! A stand-in for `size` ranks that all hold this process's values (what a run whose
    //! ranks computed the same thing would exchange).
    use super::Collective;

    pub struct Mirror {
        pub rank: usize,
        pub size: usize,
        /// Other ranks' bytes in `all_gather`, `None`: the same as this rank's.
        pub others: Option<Vec<u8>>,
    }

    impl Collective for Mirror {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn sum_f32(&self, buf: &mut [f32]) {
            buf.iter_mut().for_each(|x| *x *= self.size as f32);
        }
        fn all_gather(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
            (0..self.size)
                .map(|r| match &self.others {
                    Some(o) if r != self.rank => o.clone(),
                    _ => bytes.to_vec(),
                })
                .collect()
        }
        fn abort(&self, _: i32) -> ! {
            panic!("abort")
        }
    }
}
