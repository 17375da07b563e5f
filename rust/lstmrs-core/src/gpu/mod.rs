//! The GPU backend (cargo feature `gpu`): LSTM and GRU forward passes and backpropagation through
//! time as WGSL compute shaders on wgpu's Vulkan backend.
//!
//! It plugs in at the same seam as the CPU path: [`forward`] and [`backward`] take the same
//! [`RnnWeights`](crate::RnnWeights), [`Batch`](crate::Batch), [`ForwardOptions`](crate::ForwardOptions)
//! and [`GradOutputs`](crate::GradOutputs) as [`crate::forward`] / [`crate::backward`] and return
//! the same [`ForwardOutput`](crate::ForwardOutput) and [`Gradients`](crate::Gradients); only
//! the tape differs ([`GpuTape`], which keeps its tensors on the device). Stacked, bidirectional
//! and variable-length batches (packed-sequence semantics) and dropout between layers (the same
//! masks as the CPU path, drawn on the host) are supported; f32 only.
//!
//! Each call uploads its inputs, records the whole pass (every layer, direction and time step)
//! into one command encoder, submits it once and reads the results back. Per layer and direction:
//! one tiled matrix product for the input projection of all steps, one fused step kernel per time
//! step, and in the backward pass one reverse step kernel per step followed by tiled products for
//! the weight and input gradients over all steps.
//!
//! Module map: `context` (the only code that calls wgpu: device, pipelines, buffers, recorder),
//! `matmul`, `step` (forward and BPTT step kernels), `ops` (permute, mask, column sums),
//! `forward`, `backward`, `probe` (dispatch cost and matmul speed for the benchmark); the shaders are in `shaders/`.

mod backward;
mod context;
mod forward;
mod matmul;
mod ops;
mod probe;
mod step;

pub use backward::backward;
pub use context::GpuInfo;
pub use forward::{forward, GpuForward, GpuTape};
pub use probe::{probe, GpuProbe};

use crate::config::{CellKind, RnnConfig};
use crate::error::{GpuFailure, Result};
use crate::scalar::{DType, Scalar};
use context::gpu_error;

/// The adapter the GPU backend would run on, or why there is none usable: the error is
/// [`Error::Gpu`](crate::Error::Gpu) with [`GpuFailure::NoAdapter`] or
/// [`GpuFailure::LimitsTooSmall`]. The device is created on the first call and kept.
pub fn gpu_available() -> Result<GpuInfo> {
    context::gpu().map(|g| g.info().clone())
}

/// Rejects what the kernels do not implement, before any device work.
pub(crate) fn check_supported<T: Scalar>(cfg: &RnnConfig) -> Result<()> {
    let cell = cfg.cell;
    if cfg.proj_size > 0 {
        return Err(gpu_error(
            GpuFailure::Unsupported,
            format!(
                "proj_size={}: the GPU kernels implement the LSTM without projections \
                 (proj_size=0); run a projected LSTM on the CPU",
                cfg.proj_size
            ),
        ));
    }
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
