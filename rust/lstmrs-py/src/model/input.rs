//! A model's inputs and states as arrays: `x` read as the model's input kind (features or token
//! ids), `lengths`, the initial states, and the shapes of what comes back.

use super::{bad, ModelCore};
use crate::convert::{check_shape, read_lengths, readonly, slice, to_array};
use crate::dtype::Float;
use crate::errors::{error, Kind};
use lstmrs_core::model::{InputKind, ModelBatch, ModelInput, Pooling};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

/// Borrowed inputs of one batch.
pub(super) enum XArr<'py, T: Float> {
    Dense(PyReadonlyArrayDyn<'py, T>),
    Tokens(PyReadonlyArrayDyn<'py, i64>),
}

impl ModelCore {
    /// `[L*D, B, S]` for `h` (`S`: `proj_size` when set), `[L*D, B, H]` for `c` (`cell`).
    pub(super) fn state_shape(&self, b: usize, cell: bool) -> [usize; 3] {
        let r = &self.config.rnn;
        let size = if cell { r.hidden_size } else { r.state_size() };
        [r.num_layers * r.num_directions(), b, size]
    }

    /// Reads `x` as the model's input kind; returns it with `(B, T)`.
    pub(super) fn read_x<'py, T: Float>(
        &self,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<(XArr<'py, T>, usize, usize)> {
        let py = x.py();
        match self.config.input {
            InputKind::Dense { features } => {
                let a = readonly::<T>("x", x)?;
                let s = a.shape().to_vec();
                if s.len() != 3 || s[2] != features || s[0] == 0 || s[1] == 0 {
                    return Err(error(
                        py,
                        Kind::Shape,
                        format!("x: expected shape [B, T, {features}] with B, T >= 1, got {s:?}"),
                    ));
                }
                Ok((XArr::Dense(a), s[0], s[1]))
            }
            InputKind::Embedding { .. } => {
                let a = x.cast::<PyArrayDyn<i64>>().map_err(|_| {
                    error(
                        py,
                        Kind::DType,
                        "x: expected a numpy.ndarray of int64 token ids [B, T]",
                    )
                })?;
                let a = a
                    .try_readonly()
                    .map_err(|e| bad(py, format!("x: cannot be borrowed ({e})")))?;
                let s = a.shape().to_vec();
                if s.len() != 2 || s[0] == 0 || s[1] == 0 {
                    return Err(error(
                        py,
                        Kind::Shape,
                        format!("x: expected shape [B, T] with B, T >= 1, got {s:?}"),
                    ));
                }
                if !a.is_c_contiguous() {
                    return Err(bad(py, "x: expected a C-contiguous array"));
                }
                Ok((XArr::Tokens(a), s[0], s[1]))
            }
        }
    }

    pub(super) fn state_arg<'py, T: Float>(
        &self,
        arg: &str,
        v: Option<&Bound<'py, PyAny>>,
        b: usize,
    ) -> PyResult<Option<PyReadonlyArrayDyn<'py, T>>> {
        let Some(v) = v else { return Ok(None) };
        if arg == "c0" && !self.config.rnn.cell.has_cell_state() {
            return Err(bad(
                v.py(),
                format!(
                    "c0: expected None for a {} cell (it has no cell state)",
                    self.config.rnn.cell.name().to_uppercase()
                ),
            ));
        }
        let a = readonly::<T>(arg, v)?;
        check_shape(v.py(), arg, a.shape(), &self.state_shape(b, arg == "c0"))?;
        Ok(Some(a))
    }

    pub(super) fn outputs_shape(&self, b: usize, t: usize) -> Vec<usize> {
        if self.config.pooling == Pooling::PerStep {
            vec![b, t, self.config.outputs]
        } else {
            vec![b, self.config.outputs]
        }
    }

    pub(super) fn states<'py, T: Float>(
        &self,
        py: Python<'py>,
        b: usize,
        h_n: Vec<T>,
        c_n: Option<Vec<T>>,
    ) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
        Ok((
            to_array(py, h_n, &self.state_shape(b, false))?,
            c_n.map(|c| to_array(py, c, &self.state_shape(b, true)))
                .transpose()?,
        ))
    }

    /// Reads a batch's arrays: `x` as the model's input kind, `lengths`, `h0` and `c0`.
    pub(super) fn read_batch<'py, T: Float>(
        &self,
        x: &Bound<'py, PyAny>,
        lengths: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<BatchArrays<'py, T>> {
        let (x, b, t) = self.read_x::<T>(x)?;
        Ok(BatchArrays {
            lengths: lengths.map(|l| read_lengths(l, b, t)).transpose()?,
            h0: self.state_arg::<T>("h0", h0, b)?,
            c0: self.state_arg::<T>("c0", c0, b)?,
            x,
            batch: b,
            seq_len: t,
        })
    }
}

/// A batch's arrays, borrowed from Python, and its sizes.
pub(super) struct BatchArrays<'py, T: Float> {
    pub x: XArr<'py, T>,
    pub batch: usize,
    pub seq_len: usize,
    pub lengths: Option<Vec<usize>>,
    pub h0: Option<PyReadonlyArrayDyn<'py, T>>,
    pub c0: Option<PyReadonlyArrayDyn<'py, T>>,
}

impl<T: Float> BatchArrays<'_, T> {
    /// The core's view of the batch.
    pub fn view(&self, py: Python<'_>) -> PyResult<ModelBatch<'_, T>> {
        let input = match &self.x {
            XArr::Dense(a) => ModelInput::Dense(slice("x", a)?),
            XArr::Tokens(a) => {
                ModelInput::Tokens(a.as_slice().map_err(|e| bad(py, format!("x: {e}")))?)
            }
        };
        Ok(ModelBatch {
            input,
            batch: self.batch,
            seq_len: self.seq_len,
            lengths: self.lengths.as_deref(),
            h0: self.h0.as_ref().map(|a| slice("h0", a)).transpose()?,
            c0: self.c0.as_ref().map(|a| slice("c0", a)).transpose()?,
        })
    }
}
