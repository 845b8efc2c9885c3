//! Backend selection. Modules are written once against Burn's `Tensor`; the device picks the
//! backend at run time: Flex (CPU, default), wgpu or CUDA when compiled in.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::error::{Error, Result};

/// A compute backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendKind {
    /// The CPU backend compiled in (Flex by default, NdArray with `--features ndarray` alone).
    #[default]
    #[value(alias = "flex", alias = "ndarray")]
    Cpu,
    /// WebGPU / Vulkan / Metal through wgpu (feature `wgpu`).
    #[value(alias = "webgpu", alias = "vulkan")]
    Wgpu,
    /// NVIDIA CUDA (feature `cuda`).
    Cuda,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::choice::write_name(self, f)
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        <Self as clap::ValueEnum>::from_str(s.trim(), true).map_err(|_| Error::Backend {
            backend: s.into(),
            reason: format!(
                "unknown backend (expected {})",
                crate::choice::names::<Self>()
            ),
        })
    }
}

/// The default CPU device (Flex, or NdArray when only that feature is enabled).
pub fn cpu_device() -> Device {
    #[cfg(feature = "flex")]
    {
        Device::flex()
    }
    #[cfg(all(not(feature = "flex"), feature = "ndarray"))]
    #[allow(deprecated)]
    {
        Device::ndarray()
    }
    #[cfg(not(any(feature = "flex", feature = "ndarray")))]
    {
        Device::default()
    }
}

/// Whether `device` (with or without autodiff) is a CPU backend's (Flex or NdArray).
pub fn is_cpu(device: &Device) -> bool {
    use burn::backend::DispatchDevice as D;
    match device.clone().without_autodiff().as_dispatch() {
        #[cfg(feature = "flex")]
        D::Flex(_) => true,
        #[cfg(feature = "ndarray")]
        D::NdArray(_) => true,
        _ => false,
    }
}

fn not_compiled(kind: BackendKind) -> Error {
    Error::Backend {
        backend: kind.to_string(),
        reason: format!("not compiled in; rebuild with `--features {kind}`"),
    }
}

/// The device of `kind` (without autodiff; call `.autodiff()` for training).
pub fn device(kind: BackendKind) -> Result<Device> {
    match kind {
        BackendKind::Cpu => Ok(cpu_device()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Ok(Device::cuda(0)),
        #[allow(unreachable_patterns)]
        other => Err(not_compiled(other)),
    }
}

/// Device number `index` of `kind` (GPU `index` of the machine; the CPU has one): a
/// data-parallel run's ranks on one machine take one GPU each, by their local rank.
pub fn device_numbered(kind: BackendKind, index: usize) -> Result<Device> {
    match kind {
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(index))),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Ok(Device::cuda(index)),
        _ => {
            let _ = index;
            device(kind)
        }
    }
}

/// The backend named by `--backend <name>` (or `--backend=<name>`) among the process's
/// arguments, else by the `E2E_TAL_BACKEND` environment variable, else the CPU. For benches and
/// examples whose other arguments are parsed elsewhere.
pub fn kind_from_args() -> Result<BackendKind> {
    let args: Vec<String> = std::env::args().collect();
    let named = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--backend=")
            .map(str::to_owned)
            .or_else(|| (a == "--backend").then(|| args.get(i + 1).cloned().unwrap_or_default()))
    });
    match named {
        Some(name) => name.parse(),
        None => kind_from_env(),
    }
}

/// The device of [`kind_from_args`]: how benches and examples pick their backend.
pub fn device_from_args() -> Result<Device> {
    kind_from_args().and_then(device)
}

/// The backend named by the `E2E_TAL_BACKEND` environment variable (`cpu` when unset).
pub fn kind_from_env() -> Result<BackendKind> {
    match std::env::var("E2E_TAL_BACKEND") {
        Ok(name) if !name.is_empty() => name.parse(),
        _ => Ok(BackendKind::Cpu),
    }
}

/// The device of [`kind_from_env`]: how the test suite runs on wgpu or cuda
/// (`E2E_TAL_BACKEND=wgpu cargo test --features wgpu ...`, see `docs/backends.md`).
pub fn device_from_env() -> Result<Device> {
    kind_from_env().and_then(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_report_missing_backends() {
        assert_eq!("CPU".parse::<BackendKind>().unwrap(), BackendKind::Cpu);
        assert!("tpu".parse::<BackendKind>().is_err());
        assert!(device(BackendKind::Cpu).is_ok());
        #[cfg(not(feature = "cuda"))]
        assert!(
            device(BackendKind::Cuda)
                .unwrap_err()
                .to_string()
                .contains("--features cuda")
        );
    }
}
