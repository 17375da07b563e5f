//! The GPU backend (cargo feature `gpu`): LSTM and GRU forward passes and backpropagation through
//! time as WGSL compute shaders on wgpu's Vulkan backend.
//!
//! It plugs in at the same seam as the CPU path: [`forward`] and [`backward`] take the same
//! [`RnnWeights`](crate::RnnWeights), [`Batch`](crate::Batch), [`ForwardOptions`](crate::ForwardOptions)
//! and [`GradOutputs`](crate::GradOutputs) as [`crate::forward`] / [`crate::backward`] and return
//! the same [`ForwardOutput`](crate::ForwardOutput) and [`Gradients`](crate::Gradients); only
//! the tape differs ([`GpuTape`], which keeps its tensors on the device). Stacked, bidirectional
//! and variable-length batches (packed-sequence semantics), dropout between layers (the same
//! masks as the CPU path, drawn on the host) and the projected LSTM (`proj_size`: a second step
//! kernel per step each way, see `step`) are supported; f32 only.
//!
//! Each call uploads its inputs, records the whole pass (every layer, direction and time step)
//! into one command encoder, submits it once and reads the results back. Per layer and direction:
//! one tiled matrix product for the input projection of all steps, one fused step kernel per time
//! step, and in the backward pass one reverse step kernel per step followed by tiled products for
//! the weight and input gradients over all steps.
//!
//! Built without the feature, this module is a stand-in with the same public items (`not_built`):
//! every call returns one [`Error::Gpu`](crate::Error::Gpu) with [`GpuFailure::NotBuilt`], so the
//! device seam (`crate::device`) and the bindings are written once, with no `cfg`.
//!
//! Module map: `context` (the only code that calls wgpu: device, pipelines, buffers, recorder),
//! `matmul`, `step` (forward and BPTT step kernels), `ops` (permute, mask, column sums),
//! `forward`, `backward`, `probe` (dispatch cost and matmul speed for the benchmark); the shaders are in `shaders/`.

#[cfg(feature = "gpu")]
mod backward;
#[cfg(feature = "gpu")]
mod context;
#[cfg(feature = "gpu")]
mod forward;
#[cfg(feature = "gpu")]
mod matmul;
#[cfg(not(feature = "gpu"))]
mod not_built;
#[cfg(feature = "gpu")]
mod ops;
#[cfg(feature = "gpu")]
mod probe;
#[cfg(feature = "gpu")]
mod step;

#[cfg(feature = "gpu")]
pub use backward::backward;
#[cfg(feature = "gpu")]
pub use forward::{forward, GpuTape};
#[cfg(not(feature = "gpu"))]
pub use not_built::{
    backward, check_supported, ensure_built, forward, gpu_available, probe, GpuTape,
};
#[cfg(feature = "gpu")]
pub use probe::probe;

#[cfg(feature = "gpu")]
use crate::config::{CellKind, RnnConfig};
#[cfg(feature = "gpu")]
use crate::error::{GpuFailure, Result};
use crate::network::ForwardOutput;
#[cfg(feature = "gpu")]
use crate::scalar::{DType, Scalar};
#[cfg(feature = "gpu")]
use context::gpu_error;

/// The adapter the GPU backend runs on, as [`gpu_available`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// The adapter's name, e.g. "NVIDIA H100 80GB HBM3" or "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// The graphics API: "vulkan" (the only backend compiled in).
    pub backend: String,
    /// "discrete", "integrated", "virtual", "cpu" (a software driver such as lavapipe) or "other".
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
}

/// Median seconds of each measurement (see [`probe`]).
#[derive(Clone, Debug)]
pub struct GpuProbe {
    /// One submit holding one tiny product (4×4×4), waited on and one element read back.
    pub submit_roundtrip_s: f64,
    /// The extra time of each further dependent tiny product in the same submit: what a time
    /// step's dispatch costs at a size where the work itself is nothing.
    pub per_dispatch_s: f64,
    /// One `n`×`n`×`n` f32 product in its own submit (round trip included).
    pub matmul_s: f64,
    pub matmul_n: usize,
    pub dispatches: usize,
}

impl GpuProbe {
    pub fn matmul_tflops(&self) -> f64 {
        2.0 * (self.matmul_n as f64).powi(3) / self.matmul_s / 1e12
    }
}

/// Results of a GPU forward call: the CPU path's outputs (`output.tape` is always `None`) and,
/// when `keep_tape` was set, the device-side tape for [`backward`].
#[derive(Debug)]
pub struct GpuForward<T> {
    pub output: ForwardOutput<T>,
    pub tape: Option<GpuTape>,
}

/// Whether this build has the backend: always, with the `gpu` feature.
#[cfg(feature = "gpu")]
pub fn ensure_built() -> Result<()> {
    Ok(())
}

/// The adapter the GPU backend would run on, or why there is none usable: the error is
/// [`Error::Gpu`](crate::Error::Gpu) with [`GpuFailure::NoAdapter`] or
/// [`GpuFailure::LimitsTooSmall`]. The device is created on the first call and kept.
#[cfg(feature = "gpu")]
pub fn gpu_available() -> Result<GpuInfo> {
    context::gpu().map(|g| g.info().clone())
}

/// Rejects what the kernels do not implement, before any device work.
#[cfg(feature = "gpu")]
pub fn check_supported<T: Scalar>(cfg: &RnnConfig) -> Result<()> {
    let cell = cfg.cell;
    if T::DTYPE != DType::F32 {
        return Err(gpu_error(
            GpuFailure::Unsupported,
            "the GPU kernels compute in f32; got f64 (use the CPU path for f64)",
        ));
    }
    if let Some(compiled) = cell.compiled() {
        // No WGSL generation for cell-language programs: say what the cell needs, naming the
        // row reductions, which couple the units of a row (a per-unit shader could not run them).
        let reductions = compiled.reductions();
        let needs = if reductions.is_empty() {
            String::new()
        } else {
            format!(" and the row reductions {}", reductions.join(", "))
        };
        return Err(gpu_error(
            GpuFailure::Unsupported,
            format!(
                "the GPU kernels implement the LSTM and GRU cells; the custom cell {} (element-wise \
                 program{needs}) runs on the CPU path only",
                cell.name()
            ),
        ));
    }
    if !matches!(cell, CellKind::Lstm | CellKind::Gru) {
        return Err(gpu_error(
            GpuFailure::Unsupported,
            format!(
                "the GPU kernels implement the LSTM and GRU cells; got {} (use the CPU path)",
                cell.name()
            ),
        ));
    }
    Ok(())
}
