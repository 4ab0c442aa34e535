//! Where local training runs: the CPU, or an NVIDIA GPU through candle's CUDA backend
//! (the `gpu` feature).

use serde::{Deserialize, Serialize};

use super::*;

/// Where a bank's local training computes.
///
/// Written `cpu`, `cpu-batched`, `cuda` or `cuda:N` in configs and on command lines.
/// Every device draws the same Poisson samples and the same DP noise from the same
/// generator, on the host; only the gradient sums are computed on the device, so the
/// privacy guarantee does not depend on it.
///
/// ```
/// use quiver_federation::train::Device;
///
/// assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
/// assert_eq!(Device::CpuBatched.to_string(), "cpu-batched");
/// assert!("tpu".parse::<Device>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// One example at a time on one core: the reference implementation, fastest for
    /// small models.
    #[default]
    Cpu,
    /// Each step's sample as matrix products on every core (candle).
    CpuBatched,
    /// Each step's sample as matrix products on NVIDIA GPU number `N` (candle's CUDA
    /// backend; needs a build with the `gpu` feature).
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::CpuBatched => f.write_str("cpu-batched"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cpu-batched" => Ok(Self::CpuBatched),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<u16>().ok())
                .map(|n| Self::Cuda(usize::from(n)))
                .ok_or_else(|| {
                    invalid(format!(
                        "device `{s}`: expected cpu, cpu-batched, cuda or cuda:N"
                    ))
                }),
        }
    }
}

impl TryFrom<String> for Device {
    type Error = TrainError;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Device> for String {
    fn from(d: Device) -> Self {
        d.to_string()
    }
}

impl Device {
    /// Whether this build can train on GPUs (the `gpu` feature).
    pub const GPU_BUILD: bool = cfg!(feature = "gpu");

    /// Check that this device can be used here: a GPU build, and the GPU present.
    /// Workers check at start, before they connect.
    pub fn probe(self) -> Result<()> {
        self.candle().map(|_| ())
    }

    pub(super) fn candle(self) -> Result<candle_core::Device> {
        match self {
            Self::Cpu | Self::CpuBatched => Ok(candle_core::Device::Cpu),
            Self::Cuda(n) if Self::GPU_BUILD => candle_core::Device::new_cuda(n)
                .map_err(|e| TrainError::Device(format!("cuda:{n}: {e}"))),
            Self::Cuda(n) => Err(TrainError::Device(format!(
                "cuda:{n}: this build has no GPU support; build with `--features gpu`"
            ))),
        }
    }
}
