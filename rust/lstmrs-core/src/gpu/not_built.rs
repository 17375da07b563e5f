//! The stand-in for the GPU backend in a build without the `gpu` feature: the same functions,
//! each failing with one "not built" error, and a tape type that cannot exist.

use super::{GpuForward, GpuInfo, GpuProbe};
use crate::config::RnnConfig;
use crate::error::{Error, GpuFailure, Result};
use crate::network::{Batch, ForwardOptions, GradOutputs, Gradients};
use crate::params::RnnWeights;
use crate::scalar::Scalar;

fn not_built() -> Error {
    Error::Gpu {
        failure: GpuFailure::NotBuilt,
        detail: "this lstmrs was built without the `gpu` cargo feature (rebuild with \
                 `maturin develop --release --features gpu`)"
            .into(),
    }
}

/// A GPU tape; none can be recorded without the backend.
#[derive(Debug, Clone)]
pub enum GpuTape {}

impl GpuTape {
    pub fn config(&self) -> &RnnConfig {
        match *self {}
    }
    pub fn seq_len(&self) -> usize {
        match *self {}
    }
    pub fn batch(&self) -> usize {
        match *self {}
    }
}

/// Whether this build has the backend: never, without the `gpu` feature.
pub fn ensure_built() -> Result<()> {
    Err(not_built())
}

pub fn gpu_available() -> Result<GpuInfo> {
    Err(not_built())
}

pub fn check_supported<T: Scalar>(_cfg: &RnnConfig) -> Result<()> {
    Err(not_built())
}

pub fn probe(_matmul_n: usize, _dispatches: usize, _repeats: usize) -> Result<GpuProbe> {
    Err(not_built())
}

pub fn forward<'p, T: Scalar>(
    _params: impl Into<RnnWeights<'p, T>>,
    _x: &Batch<T>,
    _opts: &ForwardOptions,
) -> Result<GpuForward<T>> {
    Err(not_built())
}

pub fn backward<'p, T: Scalar>(
    _params: impl Into<RnnWeights<'p, T>>,
    tape: &GpuTape,
    _grads: &GradOutputs<T>,
) -> Result<Gradients<T>> {
    match *tape {}
}
