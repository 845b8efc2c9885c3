//! The ranks of an MPI job (`mpi` feature): Open MPI, MPICH or any MPI library rsmpi builds
//! against, started by `mpirun`, `mpiexec` or `srun`.

use mpi::Threading;
use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};

use super::Collective;
use crate::error::{Error, Result};

/// Floats per collective call: large enough that a step's gradients take a few calls (16 MiB
/// each), small enough that the scratch buffers stay small beside the gradients themselves.
const BUCKET: usize = 1 << 22;

/// The MPI job this process is a rank of. MPI is finalised when it is dropped; only the thread
/// that created it may use it (worker threads never call MPI).
pub struct Mpi {
    world: SimpleCommunicator,
    _universe: Universe,
}

impl Mpi {
    /// Initialise MPI (once per process) and join the job's world communicator.
    pub fn init() -> Result<Mpi> {
        let (universe, _) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| Error::Config("MPI was already initialised in this process".into()))?;
        Ok(Mpi {
            world: universe.world(),
            _universe: universe,
        })
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    /// Reduce-scatter then all-gather per bucket: each element is summed once, on one rank,
    /// and the same bits go to all (an all-reduce may round differently on different ranks).
    fn sum_f32(&self, buf: &mut [f32]) {
        let n = self.size();
        if n < 2 {
            return;
        }
        let mut send: Vec<f32> = Vec::new();
        let mut mine: Vec<f32> = Vec::new();
        let sum = SystemOperation::sum();
        for chunk in buf.chunks_mut(BUCKET) {
            let part = chunk.len().div_ceil(n);
            mine.clear();
            mine.resize(part, 0.0);
            if chunk.len() == part * n {
                // In place: no copy of the bucket on either side.
                self.world
                    .reduce_scatter_block_into(&chunk[..], &mut mine[..], sum);
                self.world.all_gather_into(&mine[..], chunk);
            } else {
                // The last bucket, padded to a multiple of the ranks.
                send.clear();
                send.extend_from_slice(chunk);
                send.resize(part * n, 0.0);
                self.world
                    .reduce_scatter_block_into(&send[..], &mut mine[..], sum);
                self.world.all_gather_into(&mine[..], &mut send[..]);
                chunk.copy_from_slice(&send[..chunk.len()]);
            }
        }
    }

    fn all_gather(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        // One leading byte: MPI refuses the empty buffers of a gather of nothing.
        let mut sent = Vec::with_capacity(bytes.len() + 1);
        sent.push(0u8);
        sent.extend_from_slice(bytes);
        let n = self.size();
        let len = i32::try_from(sent.len()).expect("a gathered message under 2 GiB");
        let mut counts = vec![0i32; n];
        self.world.all_gather_into(&len, &mut counts[..]);
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i32, |at, &c| {
                let d = *at;
                *at += c;
                Some(d)
            })
            .collect();
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut all = vec![0u8; total];
        {
            let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(&sent[..], &mut part);
        }
        counts
            .iter()
            .zip(&displs)
            .map(|(&c, &d)| all[d as usize + 1..(d + c) as usize].to_vec())
            .collect()
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
