//! Helpers shared by integration tests.

/// `mpirun` for `n` ranks on this machine (Open MPI): shared memory between ranks, root allowed
/// (CI runs as root), more ranks than cores allowed.
#[cfg(feature = "mpi")]
pub fn mpirun(n: usize) -> std::process::Command {
    let mut c = std::process::Command::new("mpirun");
    c.args([
        "-np",
        &n.to_string(),
        "--oversubscribe",
        "--mca",
        "btl",
        "self,vader",
    ])
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .stdin(std::process::Stdio::null());
    c
}
