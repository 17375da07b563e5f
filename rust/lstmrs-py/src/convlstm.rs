//! `ConvLstmCore` (a ConvLSTM's configuration and flat weights) and `ConvLstmTape`, as Python
//! classes. Only conversion and validation here; the computation is `lstmrs_core::convlstm`'s.
//!
//! The weights sit behind a `ForkRwLock` taken only with the GIL released, as in `rnn.rs`.

use crate::convert::{
    check_shape, check_tape_owner, optional_readonly, readonly, shape_str, slice, to_array,
};
use crate::dtype::{parse_dtype, Float};
use crate::errors::{core_error, error, guarded, lift, Kind};
use lstmrs_core::convlstm::{self as conv, ConvBatch, ConvLstmConfig, ConvLstmParams};
use lstmrs_core::forklock::ForkRwLock;
use lstmrs_core::DType;
use numpy::PyUntypedArrayMethods;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::sync::atomic::{AtomicU64, Ordering};

enum Params {
    F32(ConvLstmParams<f32>),
    F64(ConvLstmParams<f64>),
}

enum TapeData {
    F32(conv::ConvTape<f32>),
    F64(conv::ConvTape<f64>),
}

/// The two element types tied to their variants, so the methods below are written once.
trait ConvFloat: Float {
    fn conv_params(p: &Params) -> Option<&ConvLstmParams<Self>>;
    fn conv_params_mut(p: &mut Params) -> Option<&mut ConvLstmParams<Self>>;
    fn conv_tape(t: &TapeData) -> Option<&conv::ConvTape<Self>>;
    fn wrap_conv_tape(t: conv::ConvTape<Self>) -> TapeData;
}

macro_rules! conv_float_impl {
    ($t:ty, $v:ident) => {
        impl ConvFloat for $t {
            fn conv_params(p: &Params) -> Option<&ConvLstmParams<$t>> {
                match p {
                    Params::$v(p) => Some(p),
                    _ => None,
                }
            }
            fn conv_params_mut(p: &mut Params) -> Option<&mut ConvLstmParams<$t>> {
                match p {
                    Params::$v(p) => Some(p),
                    _ => None,
                }
            }
            fn conv_tape(t: &TapeData) -> Option<&conv::ConvTape<$t>> {
                match t {
                    TapeData::$v(t) => Some(t),
                    _ => None,
                }
            }
            fn wrap_conv_tape(t: conv::ConvTape<$t>) -> TapeData {
                TapeData::$v(t)
            }
        }
    };
}
conv_float_impl!(f32, F32);
conv_float_impl!(f64, F64);

const DTYPE_MISMATCH: &str = "internal error in lstmrs (please report it): dtype mismatch";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct State {
    params: Params,
    /// Bumped on every write, so a tape recorded with older weights is refused.
    version: u64,
}

/// A stacked ConvLSTM: its configuration and weights in one flat buffer.
#[pyclass(frozen, module = "lstmrs._lstmrs")]
pub struct ConvLstmCore {
    id: u64,
    config: ConvLstmConfig,
    dtype: DType,
    state: ForkRwLock<State>,
}

/// What `ConvLstmCore.backward` needs from a forward call; opaque to Python.
#[pyclass(frozen, module = "lstmrs._lstmrs")]
pub struct ConvLstmTape {
    data: TapeData,
    owner: u64,
    version: u64,
}

#[pymethods]
impl ConvLstmTape {
    /// "float32" or "float64".
    #[getter]
    fn dtype(&self) -> &'static str {
        match self.data {
            TapeData::F32(_) => f32::NAME,
            TapeData::F64(_) => f64::NAME,
        }
    }

    #[getter]
    fn batch(&self) -> usize {
        match &self.data {
            TapeData::F32(t) => t.batch(),
            TapeData::F64(t) => t.batch(),
        }
    }

    #[getter]
    fn seq_len(&self) -> usize {
        match &self.data {
            TapeData::F32(t) => t.seq_len(),
            TapeData::F64(t) => t.seq_len(),
        }
    }

    /// `(H, W)` of the input frames.
    #[getter]
    fn frame_size(&self) -> (usize, usize) {
        match &self.data {
            TapeData::F32(t) => t.frame_size(),
            TapeData::F64(t) => t.frame_size(),
        }
    }

    fn __repr__(&self) -> String {
        let (h, w) = self.frame_size();
        format!(
            "ConvLstmTape(dtype={}, batch={}, seq_len={}, frame_size=({h}, {w}))",
            self.dtype(),
            self.batch(),
            self.seq_len()
        )
    }
}

type ForwardResult<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Option<ConvLstmTape>,
);

type BackwardResult<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
);

impl ConvLstmCore {
    /// `[L, B, K, Ho, Wo]`.
    fn state_shape(&self, batch: usize, (ho, wo): (usize, usize)) -> [usize; 5] {
        let c = &self.config;
        [c.num_layers, batch, c.hidden_channels, ho, wo]
    }

    fn n_params(&self) -> usize {
        self.config
            .param_specs()
            .last()
            .map_or(0, |s| s.offset + s.len)
    }

    fn get_param_t<'py, T: ConvFloat>(
        &self,
        py: Python<'py>,
        name: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let r = py.detach(|| {
            let st = self.state.read();
            let p = T::conv_params(&st.params).ok_or(DTYPE_MISMATCH.to_string())?;
            let spec = p.specs().iter().find(|s| s.name == name).cloned();
            Ok(p.get(name).map(|v| (v.to_vec(), spec)))
        });
        let (data, spec) = lift(py, r)?;
        let shape = spec.map_or_else(|| vec![data.len()], |s| s.shape);
        to_array(py, data, &shape)
    }

    fn set_param_t<T: ConvFloat>(&self, name: &str, values: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = values.py();
        let specs = self.config.param_specs();
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(error(
                py,
                Kind::InvalidArgument,
                format!(
                    "name: unknown parameter {name:?}; expected one of {}",
                    names.join(", ")
                ),
            ));
        };
        let arr = readonly::<T>(name, values)?;
        check_shape(py, name, arr.shape(), &spec.shape)?;
        let data = slice(name, &arr)?;
        let r = py.detach(|| {
            let mut st = self.state.write();
            let p = T::conv_params_mut(&mut st.params).ok_or(DTYPE_MISMATCH.to_string())?;
            let res = p.set(name, data);
            if res.is_ok() {
                st.version += 1;
            }
            Ok(res)
        });
        lift(py, r)
    }

    fn get_flat_t<'py, T: ConvFloat>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let r = py.detach(|| {
            let st = self.state.read();
            let p = T::conv_params(&st.params).ok_or(DTYPE_MISMATCH.to_string())?;
            Ok(Ok(p.as_slice().to_vec()))
        });
        let data = lift(py, r)?;
        let n = data.len();
        to_array(py, data, &[n])
    }

    fn set_flat_t<T: ConvFloat>(&self, values: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = values.py();
        let arr = readonly::<T>("flat", values)?;
        check_shape(py, "flat", arr.shape(), &[self.n_params()])?;
        let data = slice("flat", &arr)?;
        let r = py.detach(|| {
            let mut st = self.state.write();
            let p = T::conv_params_mut(&mut st.params).ok_or(DTYPE_MISMATCH.to_string())?;
            p.as_mut_slice().copy_from_slice(data);
            st.version += 1;
            Ok(Ok(()))
        });
        lift(py, r)
    }

    fn forward_t<'py, T: ConvFloat>(
        &self,
        x: &Bound<'py, PyAny>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
        keep_tape: bool,
    ) -> PyResult<ForwardResult<'py>> {
        let py = x.py();
        let cfg = self.config;
        let xa = readonly::<T>("x", x)?;
        let xs = xa.shape().to_vec();
        if xs.len() != 5 || xs[2] != cfg.in_channels || xs.contains(&0) {
            return Err(error(
                py,
                Kind::Shape,
                format!(
                    "x: expected shape [B, T, C, H, W] with C=in_channels={} and every size >= 1, \
                     got {}",
                    cfg.in_channels,
                    shape_str(&xs)
                ),
            ));
        }
        let (b, t, h, w) = (xs[0], xs[1], xs[3], xs[4]);
        let frame = cfg.state_size(h, w).map_err(|e| core_error(py, e))?;
        let state = self.state_shape(b, frame);
        let h0a = h0.map(|a| readonly::<T>("h0", a)).transpose()?;
        if let Some(a) = &h0a {
            check_shape(py, "h0", a.shape(), &state)?;
        }
        let c0a = c0.map(|a| readonly::<T>("c0", a)).transpose()?;
        if let Some(a) = &c0a {
            check_shape(py, "c0", a.shape(), &state)?;
        }
        let batch = ConvBatch {
            input: slice("x", &xa)?,
            batch: b,
            seq_len: t,
            height: h,
            width: w,
            h0: h0a.as_ref().map(|a| slice("h0", a)).transpose()?,
            c0: c0a.as_ref().map(|a| slice("c0", a)).transpose()?,
        };
        let r = py.detach(|| {
            let st = self.state.read();
            let p = T::conv_params(&st.params).ok_or(DTYPE_MISMATCH.to_string())?;
            let version = st.version;
            guarded(|| conv::forward(p, &batch, keep_tape)).map(|res| res.map(|o| (o, version)))
        });
        let (mut out, version) = lift(py, r)?;
        let tape = out.tape.take().map(|t| ConvLstmTape {
            data: T::wrap_conv_tape(t),
            owner: self.id,
            version,
        });
        Ok((
            to_array(
                py,
                out.output,
                &[b, t, cfg.hidden_channels, frame.0, frame.1],
            )?,
            to_array(py, out.h_n, &state)?,
            to_array(py, out.c_n, &state)?,
            tape,
        ))
    }

    fn backward_t<'py, T: ConvFloat>(
        &self,
        py: Python<'py>,
        tape: &ConvLstmTape,
        d_out: Option<&Bound<'py, PyAny>>,
        d_h_n: Option<&Bound<'py, PyAny>>,
        d_c_n: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<BackwardResult<'py>> {
        let cfg = self.config;
        check_tape_owner(py, tape.owner, self.id)?;
        let Some(core_tape) = T::conv_tape(&tape.data) else {
            return Err(error(
                py,
                Kind::DType,
                format!(
                    "tape: expected a {} tape, got a {} one",
                    T::NAME,
                    tape.dtype()
                ),
            ));
        };
        let (b, t) = (tape.batch(), tape.seq_len());
        let (h, w) = tape.frame_size();
        let frame = cfg.state_size(h, w).map_err(|e| core_error(py, e))?;
        let state = self.state_shape(b, frame);
        let out_shape = [b, t, cfg.hidden_channels, frame.0, frame.1];
        let d_out_a = optional_readonly::<T>("d_out", d_out, &out_shape)?;
        let d_h_a = optional_readonly::<T>("d_h_n", d_h_n, &state)?;
        let d_c_a = optional_readonly::<T>("d_c_n", d_c_n, &state)?;
        let d_out_s = d_out_a.as_ref().map(|a| slice("d_out", a)).transpose()?;
        let d_h_s = d_h_a.as_ref().map(|a| slice("d_h_n", a)).transpose()?;
        let d_c_s = d_c_a.as_ref().map(|a| slice("d_c_n", a)).transpose()?;
        let tape_version = tape.version;
        let r = py.detach(|| {
            let st = self.state.read();
            if st.version != tape_version {
                return Ok(Ok(None));
            }
            let p = T::conv_params(&st.params).ok_or(DTYPE_MISMATCH.to_string())?;
            guarded(|| conv::backward(p, core_tape, d_out_s, d_h_s, d_c_s).map(Some))
        });
        let Some(g) = lift(py, r)? else {
            return Err(error(
                py,
                Kind::InvalidArgument,
                "tape: expected a tape recorded with the current parameters, got one recorded \
                 before they were changed; run the forward pass again",
            ));
        };
        let n = g.params.len();
        Ok((
            to_array(py, g.params, &[n])?,
            to_array(py, g.input, &[b, t, cfg.in_channels, h, w])?,
            to_array(py, g.h0, &state)?,
            to_array(py, g.c0, &state)?,
        ))
    }
}

#[pymethods]
impl ConvLstmCore {
    #[new]
    #[pyo3(signature = (
        in_channels, hidden_channels, kernel_size, padding, num_layers, bias, dtype, seed
    ))]
    fn new(
        py: Python<'_>,
        in_channels: usize,
        hidden_channels: usize,
        kernel_size: (usize, usize),
        padding: (usize, usize),
        num_layers: usize,
        bias: bool,
        dtype: &str,
        seed: u64,
    ) -> PyResult<Self> {
        let dtype = parse_dtype(py, dtype)?;
        let config = ConvLstmConfig::new(
            in_channels,
            hidden_channels,
            [kernel_size.0, kernel_size.1],
            [padding.0, padding.1],
            num_layers,
            bias,
        )
        .map_err(|e| core_error(py, e))?;
        let r = py.detach(|| {
            guarded(|| match dtype {
                DType::F32 => ConvLstmParams::try_init(config, seed).map(Params::F32),
                DType::F64 => ConvLstmParams::try_init(config, seed).map(Params::F64),
            })
        });
        let params = lift(py, r)?;
        Ok(ConvLstmCore {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            config,
            dtype,
            state: ForkRwLock::new(State { params, version: 0 }),
        })
    }

    #[getter]
    fn num_parameters(&self) -> usize {
        self.n_params()
    }

    /// "float32" or "float64".
    #[getter]
    fn dtype(&self) -> &'static str {
        match self.dtype {
            DType::F32 => f32::NAME,
            DType::F64 => f64::NAME,
        }
    }

    /// `[(name, shape), ...]` in the flat buffer's order.
    fn param_specs<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyTuple>)>> {
        self.config
            .param_specs()
            .into_iter()
            .map(|s| Ok((s.name, PyTuple::new(py, s.shape)?)))
            .collect()
    }

    /// The state's `(Ho, Wo)` for input frames of `height × width`.
    fn state_size(&self, py: Python<'_>, height: usize, width: usize) -> PyResult<(usize, usize)> {
        self.config
            .state_size(height, width)
            .map_err(|e| core_error(py, e))
    }

    /// A copy of the named parameter.
    fn get_param<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        match self.dtype {
            DType::F32 => self.get_param_t::<f32>(py, name),
            DType::F64 => self.get_param_t::<f64>(py, name),
        }
    }

    /// Overwrites the named parameter from a C-contiguous array of its shape and dtype.
    fn set_param(&self, name: &str, values: &Bound<'_, PyAny>) -> PyResult<()> {
        match self.dtype {
            DType::F32 => self.set_param_t::<f32>(name, values),
            DType::F64 => self.set_param_t::<f64>(name, values),
        }
    }

    /// A copy of all parameters, 1-D, in `param_specs` order.
    fn get_flat<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.dtype {
            DType::F32 => self.get_flat_t::<f32>(py),
            DType::F64 => self.get_flat_t::<f64>(py),
        }
    }

    /// Overwrites all parameters from a 1-D array of `num_parameters` values.
    fn set_flat(&self, values: &Bound<'_, PyAny>) -> PyResult<()> {
        match self.dtype {
            DType::F32 => self.set_flat_t::<f32>(values),
            DType::F64 => self.set_flat_t::<f64>(values),
        }
    }

    /// Runs the network on `x` `[B, T, C, H, W]`: `(output [B, T, K, Ho, Wo], h_n, c_n
    /// [L, B, K, Ho, Wo], tape or None)`.
    #[pyo3(signature = (x, h0=None, c0=None, keep_tape=false))]
    fn forward<'py>(
        &self,
        x: &Bound<'py, PyAny>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
        keep_tape: bool,
    ) -> PyResult<ForwardResult<'py>> {
        match self.dtype {
            DType::F32 => self.forward_t::<f32>(x, h0, c0, keep_tape),
            DType::F64 => self.forward_t::<f64>(x, h0, c0, keep_tape),
        }
    }

    /// Backpropagation through time for the call that recorded `tape`:
    /// `(flat parameter gradients, d_x, d_h0, d_c0)`.
    #[pyo3(signature = (tape, d_out=None, d_h_n=None, d_c_n=None))]
    fn backward<'py>(
        &self,
        py: Python<'py>,
        tape: &Bound<'py, ConvLstmTape>,
        d_out: Option<&Bound<'py, PyAny>>,
        d_h_n: Option<&Bound<'py, PyAny>>,
        d_c_n: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<BackwardResult<'py>> {
        let tape = tape.get();
        match self.dtype {
            DType::F32 => self.backward_t::<f32>(py, tape, d_out, d_h_n, d_c_n),
            DType::F64 => self.backward_t::<f64>(py, tape, d_out, d_h_n, d_c_n),
        }
    }

    fn __repr__(&self) -> String {
        let c = &self.config;
        format!(
            "ConvLstmCore(in_channels={}, hidden_channels={}, kernel_size={:?}, padding={:?}, \
             num_layers={}, bias={}, dtype={:?})",
            c.in_channels,
            c.hidden_channels,
            c.kernel,
            c.padding,
            c.num_layers,
            c.bias,
            self.dtype()
        )
    }
}

/// Adds this module's classes to the extension module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ConvLstmCore>()?;
    m.add_class::<ConvLstmTape>()
}
