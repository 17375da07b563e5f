//! `RnnCore` (a network's configuration and flat weights) and `Tape` (what backward needs), as
//! Python classes. This layer only converts and validates: every computation is the core's.
//!
//! Locking: the weights sit behind a `ForkRwLock` (free again in a forked child, see
//! `lstmrs_core::forklock`) that is only ever taken with the GIL released
//! (inside `py.detach`), so a thread waiting for it never holds the GIL another thread needs to
//! finish, and other Python threads run while a forward or backward pass computes.

use crate::convert::{check_shape, check_tape_owner, optional_readonly, read_lengths};
use crate::dtype::{by_dtype, parse_dtype, Family, Typed, MISMATCH};
use crate::errors::{core_error, error, guarded, lift, Kind};
use lstmrs_core::device::{self, Device, RnnTape};
use lstmrs_core::forklock::{ForkRwLock, ReadGuard, WriteGuard};
use lstmrs_core::{
    param_specs, Batch, CellKind, DType, ForwardOptions, GradOutputs, Layout, Regularization,
    RnnConfig, RnnParams,
};
use numpy::PyUntypedArrayMethods;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::sync::atomic::{AtomicU64, Ordering};

// These lived here before `convert` and `dtype`; `seq2seq.rs` imports them from here.
pub(crate) use crate::convert::{readonly, shape_str, slice, to_array};
pub(crate) use crate::dtype::Float;

/// `RnnParams<T>` of either element type.
struct ParamsOf;
impl Family for ParamsOf {
    type Of<T: Float> = RnnParams<T>;
}

/// A tape of either element type, recorded on either device.
struct TapeOf;
impl Family for TapeOf {
    type Of<T: Float> = RnnTape<T>;
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct State {
    params: Typed<ParamsOf>,
    /// Bumped on every write, so a tape recorded with older weights is refused by `backward`.
    version: u64,
}

/// A recurrent network: its configuration and weights in one flat buffer.
#[pyclass(frozen, module = "lstmrs._lstmrs")]
pub struct RnnCore {
    /// Distinguishes networks, so a tape is only used with the network that recorded it.
    id: u64,
    config: RnnConfig,
    dtype: DType,
    state: ForkRwLock<State>,
}

/// What `RnnCore.backward` needs from a forward call; opaque to Python.
#[pyclass(frozen, module = "lstmrs._lstmrs")]
pub struct Tape {
    /// `None` once a consuming backward call has used it up. Locked only with the GIL released.
    data: ForkRwLock<Option<Typed<TapeOf>>>,
    dtype: DType,
    seq_len: usize,
    batch: usize,
    owner: u64,
    version: u64,
    batch_first: bool,
}

#[pymethods]
impl Tape {
    /// "float32" or "float64".
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }

    #[getter]
    fn seq_len(&self) -> usize {
        self.seq_len
    }

    #[getter]
    fn batch(&self) -> usize {
        self.batch
    }

    /// Whether a backward call without `retain_tape` has used the tape up.
    #[getter]
    fn consumed(&self, py: Python<'_>) -> bool {
        py.detach(|| self.data.read().is_none())
    }

    #[getter]
    fn batch_first(&self) -> bool {
        self.batch_first
    }

    fn __repr__(&self) -> String {
        format!(
            "Tape(dtype={}, seq_len={}, batch={}, batch_first={})",
            self.dtype(),
            self.seq_len(),
            self.batch(),
            if self.batch_first { "True" } else { "False" }
        )
    }
}

type ForwardResult<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
    Option<Tape>,
);

/// Why `backward` did not run: the tape is older than the weights, or already used up.
enum Refused {
    Stale,
    Consumed,
}
use Refused::{Consumed, Stale};

type BackwardResult<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
);

impl RnnCore {
    fn read(&self) -> ReadGuard<'_, State> {
        self.state.read()
    }

    fn write(&self) -> WriteGuard<'_, State> {
        self.state.write()
    }

    /// `[L*D, B, S]`: `h0`, `h_n` (`S` is `proj_size` when the LSTM projects, else `H`).
    fn state_shape(&self, batch: usize) -> [usize; 3] {
        let c = &self.config;
        [c.num_layers * c.num_directions(), batch, c.state_size()]
    }

    /// `[L*D, B, H]`: `c0`, `c_n`.
    fn cell_state_shape(&self, batch: usize) -> [usize; 3] {
        let c = &self.config;
        [c.num_layers * c.num_directions(), batch, c.hidden_size]
    }

    fn get_param_t<'py, T: Float>(
        &self,
        py: Python<'py>,
        name: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let r = py.detach(|| {
            let st = self.read();
            let p = T::of(&st.params).ok_or(MISMATCH.to_string())?;
            let spec = p.specs().iter().find(|s| s.name == name).cloned();
            Ok(p.get(name).map(|v| (v.to_vec(), spec)))
        });
        let (data, spec) = lift(py, r)?;
        let shape = spec.map_or_else(|| vec![data.len()], |s| s.shape);
        to_array(py, data, &shape)
    }

    fn set_param_t<T: Float>(&self, name: &str, values: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = values.py();
        let spec = param_specs(&self.config)
            .into_iter()
            .find(|s| s.name == name);
        let Some(spec) = spec else {
            // Let the core name the valid parameters.
            let p = RnnParams::<T>::zeros(self.config);
            return Err(match p.get(name) {
                Err(e) => core_error(py, e),
                Ok(_) => error(py, Kind::Internal, "internal error: parameter lookup"),
            });
        };
        let arr = readonly::<T>(name, values)?;
        check_shape(py, name, arr.shape(), &spec.shape)?;
        let data = slice(name, &arr)?;
        let r = py.detach(|| {
            let mut st = self.write();
            let p = T::of_mut(&mut st.params).ok_or(MISMATCH.to_string())?;
            let res = p.set(name, data);
            if res.is_ok() {
                st.version += 1;
            }
            Ok(res)
        });
        lift(py, r)
    }

    fn get_flat_t<'py, T: Float>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let r = py.detach(|| {
            let st = self.read();
            let p = T::of(&st.params).ok_or(MISMATCH.to_string())?;
            Ok(Ok(p.as_slice().to_vec()))
        });
        let data = lift(py, r)?;
        let n = data.len();
        to_array(py, data, &[n])
    }

    fn set_flat_t<T: Float>(&self, values: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = values.py();
        let arr = readonly::<T>("flat", values)?;
        let n = param_specs(&self.config)
            .last()
            .map_or(0, |s| s.offset + s.len);
        check_shape(py, "flat", arr.shape(), &[n])?;
        let data = slice("flat", &arr)?;
        let r = py.detach(|| {
            let mut st = self.write();
            let p = T::of_mut(&mut st.params).ok_or(MISMATCH.to_string())?;
            p.as_mut_slice().copy_from_slice(data);
            st.version += 1;
            Ok(Ok(()))
        });
        lift(py, r)
    }

    fn forward_t<'py, T: Float>(
        &self,
        x: &Bound<'py, PyAny>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
        lengths: Option<&Bound<'py, PyAny>>,
        batch_first: bool,
        opts: ForwardOptions,
        device: Device,
    ) -> PyResult<ForwardResult<'py>> {
        let py = x.py();
        let cfg = self.config;
        let xa = readonly::<T>("x", x)?;
        let xs = xa.shape().to_vec();
        let (want, layout) = if batch_first {
            ("[B, T, input_size]", Layout::BatchFirst)
        } else {
            ("[T, B, input_size]", Layout::TimeMajor)
        };
        if xs.len() != 3 || xs[2] != cfg.input_size || xs[0] == 0 || xs[1] == 0 {
            return Err(error(
                py,
                Kind::Shape,
                format!(
                    "x: expected shape {want} with input_size={} and B, T >= 1 \
                     (batch_first={}), got {}",
                    cfg.input_size,
                    if batch_first { "True" } else { "False" },
                    shape_str(&xs)
                ),
            ));
        }
        let (b, t) = if batch_first {
            (xs[0], xs[1])
        } else {
            (xs[1], xs[0])
        };
        let (state, cell_state) = (self.state_shape(b), self.cell_state_shape(b));

        let h0a = h0.map(|a| readonly::<T>("h0", a)).transpose()?;
        if let Some(a) = &h0a {
            check_shape(py, "h0", a.shape(), &state)?;
        }
        if c0.is_some() && !cfg.cell.has_cell_state() {
            return Err(error(
                py,
                Kind::InvalidArgument,
                format!(
                    "c0: expected None for a {} cell (it has no cell state), got an array",
                    cfg.cell.name().to_uppercase()
                ),
            ));
        }
        let c0a = c0.map(|a| readonly::<T>("c0", a)).transpose()?;
        if let Some(a) = &c0a {
            check_shape(py, "c0", a.shape(), &cell_state)?;
        }
        let lengths = lengths.map(|l| read_lengths(l, b, t)).transpose()?;

        let xd = slice("x", &xa)?;
        let h0d = h0a.as_ref().map(|a| slice("h0", a)).transpose()?;
        let c0d = c0a.as_ref().map(|a| slice("c0", a)).transpose()?;
        let batch = Batch {
            input: xd,
            layout,
            seq_len: t,
            batch: b,
            h0: h0d,
            c0: c0d,
            lengths: lengths.as_deref(),
        };
        let r = py.detach(|| {
            let st = self.read();
            let p = T::of(&st.params).ok_or(MISMATCH.to_string())?;
            let version = st.version;
            let regularization = Regularization::default();
            guarded(|| device::forward(device, p.into(), &batch, &opts, &regularization))
                .map(|res| res.map(|out| (out, version)))
        });
        let (out, version) = lift(py, r)?;

        let out_shape = if batch_first {
            [b, t, cfg.output_size()]
        } else {
            [t, b, cfg.output_size()]
        };
        let output = to_array(py, out.output, &out_shape)?;
        let h_n = to_array(py, out.h_n, &state)?;
        let c_n = out.c_n.map(|c| to_array(py, c, &cell_state)).transpose()?;
        let tape = out.tape.map(|t| Tape {
            dtype: T::DTYPE,
            seq_len: t.seq_len(),
            batch: t.batch(),
            data: ForkRwLock::new(Some(T::typed(t))),
            owner: self.id,
            version,
            batch_first,
        });
        Ok((output, h_n, c_n, tape))
    }

    fn backward_t<'py, T: Float>(
        &self,
        py: Python<'py>,
        tape: &Tape,
        d_out: Option<&Bound<'py, PyAny>>,
        d_h_n: Option<&Bound<'py, PyAny>>,
        d_c_n: Option<&Bound<'py, PyAny>>,
        retain_tape: bool,
    ) -> PyResult<BackwardResult<'py>> {
        let cfg = self.config;
        check_tape_owner(py, tape.owner, self.id)?;
        if tape.dtype() != T::NAME {
            return Err(error(
                py,
                Kind::DType,
                format!(
                    "tape: expected a {} tape, got a {} one",
                    T::NAME,
                    tape.dtype()
                ),
            ));
        }
        let (t, b) = (tape.seq_len(), tape.batch());
        let out_shape = if tape.batch_first {
            [b, t, cfg.output_size()]
        } else {
            [t, b, cfg.output_size()]
        };
        let in_shape = if tape.batch_first {
            [b, t, cfg.input_size]
        } else {
            [t, b, cfg.input_size]
        };
        let (state, cell_state) = (self.state_shape(b), self.cell_state_shape(b));

        let d_out_a = optional_readonly::<T>("d_out", d_out, &out_shape)?;
        let d_h_a = optional_readonly::<T>("d_h_n", d_h_n, &state)?;
        if d_c_n.is_some() && !cfg.cell.has_cell_state() {
            return Err(error(
                py,
                Kind::InvalidArgument,
                format!(
                    "d_c_n: expected None for a {} cell (it has no cell state), got an array",
                    cfg.cell.name().to_uppercase()
                ),
            ));
        }
        let d_c_a = optional_readonly::<T>("d_c_n", d_c_n, &cell_state)?;
        let grads = GradOutputs {
            output: d_out_a.as_ref().map(|a| slice("d_out", a)).transpose()?,
            h_n: d_h_a.as_ref().map(|a| slice("d_h_n", a)).transpose()?,
            c_n: d_c_a.as_ref().map(|a| slice("d_c_n", a)).transpose()?,
        };
        let tape_version = tape.version;
        let r = py.detach(|| {
            let st = self.read();
            if st.version != tape_version {
                return Ok(Ok(Err(Stale)));
            }
            let p = T::of(&st.params).ok_or(MISMATCH.to_string())?;
            // The device that recorded the tape runs the backward pass. Without `retain_tape`
            // the pass uses the tape up (PyTorch's `retain_graph=False`); its lock is held
            // meanwhile, so a second call on the same tape waits and then finds it consumed.
            let mut slot = tape.data.write();
            let Some(data) = slot.as_mut() else {
                return Ok(Ok(Err(Consumed)));
            };
            let t = T::of_mut(data).ok_or(MISMATCH.to_string())?;
            let res = if retain_tape {
                guarded(|| device::backward(p.into(), t, &grads, true))
            } else {
                let res = guarded(|| device::backward_consuming(p.into(), t, &grads));
                // Used up unless the core refused it before starting (then it is intact).
                if !matches!(res, Ok(Err(_))) {
                    *slot = None;
                }
                res
            };
            res.map(|r| r.map(Ok))
        });
        let g = match lift(py, r)? {
            Ok(g) => g,
            Err(Consumed) => {
                return Err(error(
                    py,
                    Kind::InvalidArgument,
                    "tape: expected a tape not yet used by backward, got one a backward call \
                     already consumed (it frees the tape as it goes, like PyTorch's \
                     retain_graph=False); pass retain_tape=True to every backward call but the \
                     last to use a tape again",
                ))
            }
            Err(Stale) => {
                return Err(error(
                    py,
                    Kind::InvalidArgument,
                    "tape: expected a tape recorded with the current parameters, got one \
                     recorded before they were changed; run the forward pass again",
                ))
            }
        };
        let n = g.params.len();
        Ok((
            to_array(py, g.params, &[n])?,
            to_array(py, g.input, &in_shape)?,
            to_array(py, g.h0, &state)?,
            g.c0.map(|c| to_array(py, c, &cell_state)).transpose()?,
        ))
    }
}

#[pymethods]
impl RnnCore {
    #[new]
    #[pyo3(signature = (
        cell, input_size, hidden_size, num_layers, bias, bidirectional, dtype, seed, proj_size=0
    ))]
    fn new(
        py: Python<'_>,
        cell: &str,
        input_size: usize,
        hidden_size: usize,
        num_layers: usize,
        bias: bool,
        bidirectional: bool,
        dtype: &str,
        seed: u64,
        proj_size: usize,
    ) -> PyResult<Self> {
        let kind = CellKind::parse(cell).map_err(|e| core_error(py, e))?;
        let dtype = parse_dtype(py, dtype)?;
        let config = RnnConfig::new(
            kind,
            input_size,
            hidden_size,
            num_layers,
            bidirectional,
            bias,
        )
        .and_then(|c| c.with_proj_size(proj_size))
        .map_err(|e| core_error(py, e))?;
        let r = py.detach(|| {
            guarded(|| by_dtype!(dtype, T => RnnParams::<T>::try_init_uniform(config, seed).map(T::typed)))
        });
        let params = lift(py, r)?;
        Ok(RnnCore {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            config,
            dtype,
            state: ForkRwLock::new(State { params, version: 0 }),
        })
    }

    /// "lstm", "gru" or a custom cell's name.
    #[getter]
    fn cell(&self) -> &'static str {
        self.config.cell.name()
    }

    /// The JSON description of a custom cell, None for the built-in ones.
    #[getter]
    fn cell_description(&self) -> Option<&'static str> {
        self.config.cell.description()
    }

    #[getter]
    fn input_size(&self) -> usize {
        self.config.input_size
    }

    #[getter]
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    #[getter]
    fn num_layers(&self) -> usize {
        self.config.num_layers
    }

    /// Features of the projected hidden state; 0 without projections.
    #[getter]
    fn proj_size(&self) -> usize {
        self.config.proj_size
    }

    #[getter]
    fn bias(&self) -> bool {
        self.config.bias
    }

    #[getter]
    fn bidirectional(&self) -> bool {
        self.config.bidirectional
    }

    /// "float32" or "float64".
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }

    #[getter]
    fn num_parameters(&self) -> usize {
        param_specs(&self.config)
            .last()
            .map_or(0, |s| s.offset + s.len)
    }

    /// `[(name, shape), ...]` in PyTorch's `state_dict` order.
    fn param_specs<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyTuple>)>> {
        param_specs(&self.config)
            .into_iter()
            .map(|s| Ok((s.name, PyTuple::new(py, s.shape)?)))
            .collect()
    }

    /// A copy of the named parameter, with its PyTorch shape.
    fn get_param<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        by_dtype!(self.dtype, T => self.get_param_t::<T>(py, name))
    }

    /// Overwrites the named parameter from a C-contiguous array of its shape and the network's
    /// dtype.
    fn set_param(&self, name: &str, values: &Bound<'_, PyAny>) -> PyResult<()> {
        by_dtype!(self.dtype, T => self.set_param_t::<T>(name, values))
    }

    /// A copy of all parameters, 1-D, in `param_specs` order.
    fn get_flat<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        by_dtype!(self.dtype, T => self.get_flat_t::<T>(py))
    }

    /// Overwrites all parameters from a 1-D array of `num_parameters` values.
    fn set_flat(&self, values: &Bound<'_, PyAny>) -> PyResult<()> {
        by_dtype!(self.dtype, T => self.set_flat_t::<T>(values))
    }

    /// Runs the network: `(output, h_n, c_n or None, tape or None)`.
    /// `device`: "cpu" or "gpu" (the GPU backend, f32; a tape it records stays on the device and
    /// `backward` runs there too).
    #[pyo3(signature = (
        x, h0=None, c0=None, lengths=None, batch_first=true, training=false, dropout=0.0,
        seed=0, keep_tape=false, device="cpu"
    ))]
    fn forward<'py>(
        &self,
        x: &Bound<'py, PyAny>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
        lengths: Option<&Bound<'py, PyAny>>,
        batch_first: bool,
        training: bool,
        dropout: f64,
        seed: u64,
        keep_tape: bool,
        device: &str,
    ) -> PyResult<ForwardResult<'py>> {
        let opts = ForwardOptions {
            training,
            dropout,
            seed,
            keep_tape,
        };
        let device = Device::parse(device).map_err(|e| core_error(x.py(), e))?;
        by_dtype!(self.dtype, T => self.forward_t::<T>(x, h0, c0, lengths, batch_first, opts, device))
    }

    /// Backpropagation through time for the forward call that recorded `tape`:
    /// `(flat parameter gradients, d_input, d_h0, d_c0 or None)`. Uses the tape up (its
    /// activations become the gate gradients) unless `retain_tape`.
    #[pyo3(signature = (tape, d_out=None, d_h_n=None, d_c_n=None, retain_tape=false))]
    fn backward<'py>(
        &self,
        py: Python<'py>,
        tape: &Bound<'py, Tape>,
        d_out: Option<&Bound<'py, PyAny>>,
        d_h_n: Option<&Bound<'py, PyAny>>,
        d_c_n: Option<&Bound<'py, PyAny>>,
        retain_tape: bool,
    ) -> PyResult<BackwardResult<'py>> {
        let tape = tape.get();
        by_dtype!(self.dtype, T => self.backward_t::<T>(py, tape, d_out, d_h_n, d_c_n, retain_tape))
    }

    fn __repr__(&self) -> String {
        let c = &self.config;
        format!(
            "RnnCore(cell={:?}, input_size={}, hidden_size={}, num_layers={}, bias={}, \
             bidirectional={}, proj_size={}, dtype={:?})",
            c.cell.name(),
            c.input_size,
            c.hidden_size,
            c.num_layers,
            c.bias,
            c.bidirectional,
            c.proj_size,
            self.dtype.name()
        )
    }
}

/// Validates and compiles a cell description (JSON), once per distinct text; returns the cell's
/// name. `RnnCore` and `ModelCore` then accept the same text where they take a cell name.
#[pyfunction]
pub(crate) fn compile_cell(py: Python<'_>, json: &str) -> PyResult<&'static str> {
    let r = py.detach(|| guarded(|| lstmrs_core::cellexpr::register_cell(json)));
    let kind = lift(py, r)?;
    Ok(kind.name())
}
