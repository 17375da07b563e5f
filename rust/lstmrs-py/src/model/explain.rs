//! Bindings of the core's explanation calls (`Model::input_gradient`, `Model::embed`,
//! `Model::trace`): conversion and validation only, the GIL released while the core computes.

use super::input::XArr;
use super::{bad, ModelCore};
use crate::convert::{check_shape, read_lengths, readonly, slice, to_array};
use crate::dtype::{Float, MISMATCH};
use crate::errors::{error, guarded, lift, Kind};
use lstmrs_core::model::{InputKind, ModelBatch, ModelInput};
use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

/// `x` as the recurrent layers' input: the model's own input kind, or with `embedded` a token
/// model's vectors `[B, T, E]`. Returns the borrowed array with `(B, T)`.
enum Input<'py, T: Float> {
    Model(XArr<'py, T>),
    Embedded(PyReadonlyArrayDyn<'py, T>),
}

impl ModelCore {
    fn read_input<'py, T: Float>(
        &self,
        x: &Bound<'py, PyAny>,
        embedded: bool,
    ) -> PyResult<(Input<'py, T>, usize, usize)> {
        if !embedded {
            let (a, b, t) = self.read_x::<T>(x)?;
            return Ok((Input::Model(a), b, t));
        }
        let dim = match self.config.input {
            InputKind::Embedding { dim, .. } => dim,
            InputKind::Dense { .. } => {
                return Err(bad(
                    x.py(),
                    "embedded: expected False for a model without a token embedding",
                ))
            }
        };
        let a = readonly::<T>("x", x)?;
        let s = a.shape().to_vec();
        if s.len() != 3 || s[2] != dim || s[0] == 0 || s[1] == 0 {
            return Err(error(
                x.py(),
                Kind::Shape,
                format!("x: expected embedded vectors [B, T, {dim}] with B, T >= 1, got {s:?}"),
            ));
        }
        Ok((Input::Embedded(a), s[0], s[1]))
    }

    fn model_input<'a, T: Float>(
        py: Python<'_>,
        input: &'a Input<'_, T>,
    ) -> PyResult<ModelInput<'a, T>> {
        Ok(match input {
            Input::Model(XArr::Dense(a)) => ModelInput::Dense(slice("x", a)?),
            Input::Model(XArr::Tokens(a)) => {
                ModelInput::Tokens(a.as_slice().map_err(|e| bad(py, format!("x: {e}")))?)
            }
            Input::Embedded(a) => ModelInput::Embedded(slice("x", a)?),
        })
    }

    /// `(output, input_grad, attention or None)`.
    pub(super) fn input_gradient_t<'py, T: Float>(
        &self,
        x: &Bound<'py, PyAny>,
        d_output: &Bound<'py, PyAny>,
        lengths: Option<&Bound<'py, PyAny>>,
        embedded: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = x.py();
        let (xa, b, t) = self.read_input::<T>(x, embedded)?;
        let lengths = lengths.map(|l| read_lengths(l, b, t)).transpose()?;
        let d = readonly::<T>("d_output", d_output)?;
        check_shape(py, "d_output", d.shape(), &self.outputs_shape(b, t))?;
        let batch = ModelBatch {
            input: Self::model_input(py, &xa)?,
            batch: b,
            seq_len: t,
            lengths: lengths.as_deref(),
            h0: None,
            c0: None,
        };
        let d = slice("d_output", &d)?;
        let r = py.detach(|| {
            let m = self.model.read();
            let m = T::of(&m).ok_or(MISMATCH.to_string())?;
            guarded(|| m.input_gradient(&batch, d))
        });
        let g = lift(py, r)?;
        let width = g.input_grad.len() / (b * t);
        let attention = g.attention.map(|a| to_array(py, a, &[b, t])).transpose()?;
        PyTuple::new(
            py,
            [
                to_array(py, g.output, &self.outputs_shape(b, t))?,
                to_array(py, g.input_grad, &[b, t, width])?,
                attention.unwrap_or_else(|| py.None().into_bound(py)),
            ],
        )
    }

    /// Token ids `[B, T]` -> embedded vectors `[B, T, E]`.
    pub(super) fn embed_t<'py, T: Float>(
        &self,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = x.py();
        let (xa, b, t) = self.read_x::<T>(x)?;
        let XArr::Tokens(ids) = &xa else {
            return Err(bad(
                py,
                "x: embed needs a model with a token embedding (this one reads float features)",
            ));
        };
        let ids = ids.as_slice().map_err(|e| bad(py, format!("x: {e}")))?;
        let r = py.detach(|| {
            let m = self.model.read();
            let m = T::of(&m).ok_or(MISMATCH.to_string())?;
            guarded(|| m.embed(ids))
        });
        let e = lift(py, r)?;
        let dim = e.len() / (b * t);
        to_array(py, e, &[b, t, dim])
    }

    /// `(output, [(layer, direction, [(gate, [B, T, H])], [(state, [B, T, H])])], attention)`.
    pub(super) fn trace_t<'py, T: Float>(
        &self,
        x: &Bound<'py, PyAny>,
        lengths: Option<&Bound<'py, PyAny>>,
        embedded: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = x.py();
        let (xa, b, t) = self.read_input::<T>(x, embedded)?;
        let lengths = lengths.map(|l| read_lengths(l, b, t)).transpose()?;
        let batch = ModelBatch {
            input: Self::model_input(py, &xa)?,
            batch: b,
            seq_len: t,
            lengths: lengths.as_deref(),
            h0: None,
            c0: None,
        };
        let r = py.detach(|| {
            let m = self.model.read();
            let m = T::of(&m).ok_or(MISMATCH.to_string())?;
            guarded(|| m.trace(&batch))
        });
        let tr = lift(py, r)?;
        let h = self.config.rnn.hidden_size;
        let named = |items: Vec<(String, Vec<T>)>| -> PyResult<Bound<'py, PyList>> {
            let pairs = items
                .into_iter()
                .map(|(n, v)| Ok((n, to_array(py, v, &[b, t, h])?)))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, pairs)
        };
        let layers = tr
            .layers
            .into_iter()
            .map(|d| Ok((d.layer, d.direction, named(d.gates)?, named(d.states)?)))
            .collect::<PyResult<Vec<_>>>()?;
        let attention = tr.attention.map(|a| to_array(py, a, &[b, t])).transpose()?;
        PyTuple::new(
            py,
            [
                to_array(py, tr.output, &self.outputs_shape(b, t))?,
                PyList::new(py, layers)?.into_any(),
                attention.unwrap_or_else(|| py.None().into_bound(py)),
            ],
        )
    }
}
