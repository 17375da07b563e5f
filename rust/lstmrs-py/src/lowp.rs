//! `LowpCore`: a built-in LSTM/GRU network with bf16 or int8 weights for inference
//! (`lstmrs_core::lowp`), as a Python class. Converts and validates only.

use crate::convert::{check_shape, read_lengths, readonly, slice, to_array};
use crate::errors::{core_error, error, guarded, lift, Kind};
use lstmrs_core::lowp::{Kernel, LowpRnn, Precision};
use lstmrs_core::{Batch, CellKind, Layout, RnnConfig, RnnParams};
use numpy::PyUntypedArrayMethods;
use pyo3::prelude::*;

type Output<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
);

/// The packed weights are immutable: a new `LowpCore` is made from new f32 weights.
#[pyclass(frozen, module = "lstmrs._lstmrs")]
pub(crate) struct LowpCore {
    net: LowpRnn,
}

fn parse_kernel(py: Python<'_>, kernel: Option<&str>) -> PyResult<Option<Kernel>> {
    match kernel {
        None | Some("auto") => Ok(None),
        Some(name) => Kernel::from_name(name)
            .map(Some)
            .map_err(|e| core_error(py, e)),
    }
}

#[pymethods]
impl LowpCore {
    /// Converts the f32 parameters `flat` (the f32 layer's `parameters_flat()` order) of a
    /// built-in cell to `dtype` ("bfloat16" or "qint8"); `kernel` "auto"/None picks the fastest.
    #[new]
    #[pyo3(signature = (
        cell, input_size, hidden_size, num_layers, bias, bidirectional, flat, dtype, kernel=None
    ))]
    fn new(
        py: Python<'_>,
        cell: &str,
        input_size: usize,
        hidden_size: usize,
        num_layers: usize,
        bias: bool,
        bidirectional: bool,
        flat: &Bound<'_, PyAny>,
        dtype: &str,
        kernel: Option<&str>,
    ) -> PyResult<Self> {
        let kind = CellKind::parse(cell).map_err(|e| core_error(py, e))?;
        let precision = Precision::from_name(dtype).map_err(|e| core_error(py, e))?;
        let kernel = parse_kernel(py, kernel)?;
        let config = RnnConfig::new(
            kind,
            input_size,
            hidden_size,
            num_layers,
            bidirectional,
            bias,
        )
        .map_err(|e| core_error(py, e))?;
        let arr = readonly::<f32>("flat", flat)?;
        let data = slice("flat", &arr)?.to_vec();
        let r = py.detach(|| {
            guarded(|| {
                RnnParams::from_flat(config, data).and_then(|p| LowpRnn::new(&p, precision, kernel))
            })
        });
        Ok(LowpCore { net: lift(py, r)? })
    }

    /// "bfloat16" or "qint8".
    #[getter]
    fn dtype(&self) -> &'static str {
        self.net.precision().name()
    }

    /// The tile kernel the products run on ("avx512_bf16", "avx512_vnni", "portable", ...).
    #[getter]
    fn kernel(&self) -> &'static str {
        self.net.kernel().name()
    }

    /// Bytes of the packed weights, scales and biases.
    #[getter]
    fn weight_bytes(&self) -> usize {
        self.net.weight_bytes()
    }

    /// `(output, h_n, c_n or None)` for float32 `x` (`[B, T, I]` or `[T, B, I]`), optional
    /// `h0`/`c0` `[L*D, B, H]` and int64 `lengths` `[B]`.
    #[pyo3(signature = (x, h0, c0, lengths, batch_first))]
    fn forward<'py>(
        &self,
        x: &Bound<'py, PyAny>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
        lengths: Option<&Bound<'py, PyAny>>,
        batch_first: bool,
    ) -> PyResult<Output<'py>> {
        let py = x.py();
        let cfg = *self.net.config();
        let xa = readonly::<f32>("x", x)?;
        let xs = xa.shape().to_vec();
        if xs.len() != 3 || xs[2] != cfg.input_size || xs[0] == 0 || xs[1] == 0 {
            return Err(error(
                py,
                Kind::Shape,
                format!(
                    "x: expected shape {} with input_size={} and B, T >= 1, got {}",
                    if batch_first {
                        "[B, T, I]"
                    } else {
                        "[T, B, I]"
                    },
                    cfg.input_size,
                    crate::rnn::shape_str(&xs)
                ),
            ));
        }
        let (b, t) = if batch_first {
            (xs[0], xs[1])
        } else {
            (xs[1], xs[0])
        };
        let state = [cfg.num_layers * cfg.num_directions(), b, cfg.hidden_size];
        let h0a = h0.map(|a| readonly::<f32>("h0", a)).transpose()?;
        if let Some(a) = &h0a {
            check_shape(py, "h0", a.shape(), &state)?;
        }
        let c0a = c0.map(|a| readonly::<f32>("c0", a)).transpose()?;
        if let Some(a) = &c0a {
            check_shape(py, "c0", a.shape(), &state)?;
        }
        let lengths = lengths.map(|l| read_lengths(l, b, t)).transpose()?;
        let batch = Batch {
            input: slice("x", &xa)?,
            layout: if batch_first {
                Layout::BatchFirst
            } else {
                Layout::TimeMajor
            },
            seq_len: t,
            batch: b,
            h0: h0a.as_ref().map(|a| slice("h0", a)).transpose()?,
            c0: c0a.as_ref().map(|a| slice("c0", a)).transpose()?,
            lengths: lengths.as_deref(),
        };
        let r = py.detach(|| guarded(|| self.net.forward(&batch)));
        let out = lift(py, r)?;
        let out_shape = if batch_first {
            [b, t, cfg.output_size()]
        } else {
            [t, b, cfg.output_size()]
        };
        Ok((
            to_array(py, out.output, &out_shape)?,
            to_array(py, out.h_n, &state)?,
            out.c_n.map(|c| to_array(py, c, &state)).transpose()?,
        ))
    }
}

/// The kernels this CPU can run for `dtype`, fastest (runtime dispatch's pick) first.
#[pyfunction]
pub(crate) fn lowp_kernels(py: Python<'_>, dtype: &str) -> PyResult<Vec<&'static str>> {
    let precision = Precision::from_name(dtype).map_err(|e| core_error(py, e))?;
    Ok(Kernel::available(precision)
        .into_iter()
        .map(Kernel::name)
        .collect())
}
