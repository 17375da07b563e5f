//! `gpu_info()`, `gpu_available()` and the benchmark's `gpu_probe()` for Python. The forward and
//! backward passes reach the GPU through the core's device seam (`lstmrs_core::device`); built
//! without the cargo feature `gpu`, the core's stand-in answers every call with one "feature not
//! built" reason (`GpuUnavailableError`), so Python code never needs to know how the extension
//! was built.

use crate::errors::{guarded, lift};
use lstmrs_core::gpu;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// `{"available": bool, "reason": str | None, "name", "backend", "device_type", "driver",
/// "driver_info"}` (the last five None when unavailable). The first call creates the device.
#[pyfunction]
pub(crate) fn gpu_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    // Creating the device can take a moment (a software driver compiles its pipeline cache).
    let r = py.detach(|| guarded(gpu::gpu_available));
    let status = lift(py, r.map(Ok))?;
    let d = PyDict::new(py);
    d.set_item("available", status.is_ok())?;
    let keys = ["name", "backend", "device_type", "driver", "driver_info"];
    match status {
        Ok(i) => {
            d.set_item("reason", py.None())?;
            let values = [i.name, i.backend, i.device_type, i.driver, i.driver_info];
            for (key, value) in keys.into_iter().zip(values) {
                d.set_item(key, value)?;
            }
        }
        Err(e) => {
            d.set_item("reason", e.to_string())?;
            for key in keys {
                d.set_item(key, py.None())?;
            }
        }
    }
    Ok(d)
}

/// Whether `device="gpu"` can run here.
#[pyfunction]
pub(crate) fn gpu_available(py: Python<'_>) -> PyResult<bool> {
    let r = py.detach(|| guarded(|| gpu::gpu_available().is_ok()));
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
    let r = py.detach(|| guarded(|| gpu::probe(n, dispatches, repeats)));
    let p = lift(py, r)?;
    let d = PyDict::new(py);
    d.set_item("submit_roundtrip_s", p.submit_roundtrip_s)?;
    d.set_item("per_dispatch_s", p.per_dispatch_s)?;
    d.set_item("matmul_s", p.matmul_s)?;
    d.set_item("matmul_n", n)?;
    d.set_item("dispatches", dispatches)?;
    Ok(d)
}
