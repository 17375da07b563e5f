//! The GPU backend as the bindings see it: `gpu_info()` for Python, and the forward and backward
//! passes `RnnCore.forward(..., device="gpu")` and `RnnCore.backward` dispatch to.
//!
//! Built without the cargo feature `gpu`, the same functions exist: `gpu_info()` says
//! "feature not built" and a GPU forward call fails with that reason (`GpuUnavailableError`), so
//! Python code never needs to know how the extension was built.

use crate::errors::{guarded, lift};
use crate::rnn::{Float, TapeData};
use lstmrs_core::{Batch, Error, ForwardOptions, ForwardOutput, GradOutputs, Gradients, RnnParams};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The adapter's `[name, backend, device_type, driver, driver_info]`.
type Info = [String; 5];
const INFO_KEYS: [&str; 5] = ["name", "backend", "device_type", "driver", "driver_info"];

#[cfg(feature = "gpu")]
mod backend {
    use super::*;

    pub fn probe(n: usize, dispatches: usize, repeats: usize) -> Result<[f64; 3], Error> {
        let p = lstmrs_core::gpu::probe(n, dispatches, repeats)?;
        Ok([p.submit_roundtrip_s, p.per_dispatch_s, p.matmul_s])
    }

    pub fn status() -> Result<Info, Error> {
        lstmrs_core::gpu::gpu_available()
            .map(|i| [i.name, i.backend, i.device_type, i.driver, i.driver_info])
    }

    pub fn forward<T: Float>(
        p: &RnnParams<T>,
        batch: &Batch<T>,
        opts: &ForwardOptions,
    ) -> Result<(ForwardOutput<T>, Option<TapeData>), Error> {
        let r = lstmrs_core::gpu::forward(p, batch, opts)?;
        Ok((r.output, r.tape.map(TapeData::Gpu)))
    }

    pub fn backward<T: Float>(
        p: &RnnParams<T>,
        tape: &TapeData,
        grads: &GradOutputs<T>,
    ) -> Option<Result<Gradients<T>, Error>> {
        match tape {
            TapeData::Gpu(t) => Some(lstmrs_core::gpu::backward(p, t, grads)),
            _ => None,
        }
    }
}

#[cfg(not(feature = "gpu"))]
mod backend {
    use super::*;
    use lstmrs_core::error::GpuFailure;

    fn not_built() -> Error {
        Error::Gpu {
            failure: GpuFailure::NotBuilt,
            detail: "this lstmrs was built without the `gpu` cargo feature (rebuild with \
                     `maturin develop --release --features gpu`)"
                .into(),
        }
    }

    pub fn status() -> Result<Info, Error> {
        Err(not_built())
    }

    pub fn probe(_n: usize, _dispatches: usize, _repeats: usize) -> Result<[f64; 3], Error> {
        Err(not_built())
    }

    pub fn forward<T: Float>(
        _p: &RnnParams<T>,
        _batch: &Batch<T>,
        _opts: &ForwardOptions,
    ) -> Result<(ForwardOutput<T>, Option<TapeData>), Error> {
        Err(not_built())
    }

    /// No GPU tapes exist in this build.
    pub fn backward<T: Float>(
        _p: &RnnParams<T>,
        _tape: &TapeData,
        _grads: &GradOutputs<T>,
    ) -> Option<Result<Gradients<T>, Error>> {
        None
    }
}

pub(crate) use backend::{backward, forward};

/// `{"available": bool, "reason": str | None, "name", "backend", "device_type", "driver",
/// "driver_info"}` (the last five None when unavailable). The first call creates the device.
#[pyfunction]
pub(crate) fn gpu_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    // Creating the device can take a moment (a software driver compiles its pipeline cache).
    let r = py.detach(|| guarded(backend::status));
    let status = lift(py, r.map(Ok))?;
    let d = PyDict::new(py);
    d.set_item("available", status.is_ok())?;
    match status {
        Ok(info) => {
            d.set_item("reason", py.None())?;
            for (key, value) in INFO_KEYS.into_iter().zip(info) {
                d.set_item(key, value)?;
            }
        }
        Err(e) => {
            d.set_item("reason", e.to_string())?;
            for key in INFO_KEYS {
                d.set_item(key, py.None())?;
            }
        }
    }
    Ok(d)
}

/// Whether `device="gpu"` can run here.
#[pyfunction]
pub(crate) fn gpu_available(py: Python<'_>) -> PyResult<bool> {
    let r = py.detach(|| guarded(|| backend::status().is_ok()));
    lift(py, r.map(Ok))
}

/// The benchmark's device probe (`lstmrs_core::gpu::probe`): median seconds of a submit's round
/// trip, of one more dispatch inside a submit, and of an `n`×`n`×`n` product. Not public API.
#[pyfunction]
pub(crate) fn gpu_probe<'py>(
    py: Python<'py>,
    n: usize,
    dispatches: usize,
    repeats: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let r = py.detach(|| guarded(|| backend::probe(n, dispatches, repeats)));
    let [roundtrip, per_dispatch, matmul] = lift(py, r)?;
    let d = PyDict::new(py);
    d.set_item("submit_roundtrip_s", roundtrip)?;
    d.set_item("per_dispatch_s", per_dispatch)?;
    d.set_item("matmul_s", matmul)?;
    d.set_item("matmul_n", n)?;
    d.set_item("dispatches", dispatches)?;
    Ok(d)
}
