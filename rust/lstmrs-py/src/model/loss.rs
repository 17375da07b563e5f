//! `LossSpec`: a loss function and its options, checked by the core (`Loss::with_options`).

use crate::errors::core_error;
use lstmrs_core::model::Loss;
use pyo3::prelude::*;

/// A loss function and its options.
#[pyclass(frozen, module = "lstmrs._lstmrs")]
pub struct LossSpec {
    pub(super) loss: Loss,
}

#[pymethods]
impl LossSpec {
    #[new]
    #[pyo3(signature = (name, ignore_index=-100, class_weights=None, delta=1.0))]
    fn new(
        py: Python<'_>,
        name: &str,
        ignore_index: i64,
        class_weights: Option<Vec<f64>>,
        delta: f64,
    ) -> PyResult<Self> {
        let loss = Loss::with_options(name, ignore_index, class_weights, delta)
            .map_err(|e| core_error(py, e))?;
        Ok(LossSpec { loss })
    }

    #[getter]
    fn name(&self) -> &'static str {
        self.loss.name()
    }

    fn __repr__(&self) -> String {
        format!("LossSpec({:?})", self.loss)
    }
}
