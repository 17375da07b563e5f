//! `ModelCore` (a whole sequence model) and its companions `LossSpec`, `OptimizerCore` and
//! `StepperCore` as Python classes, one concept per file: `input` (the batch's arrays), `train`
//! (prediction, loss, gradient, training step), `loss`, `optimizer`, `stepper` (step-by-step
//! inference), `explain`. Conversion and validation only: the configuration is parsed and every
//! computation run by the core, one call with the GIL released.

use crate::convert::{check_shape, readonly, slice, to_array};
use crate::dtype::{by_dtype, parse_dtype, Family, Float, Typed, MISMATCH};
use crate::errors::{core_error, error, Kind};
use lstmrs_core::forklock::{ForkMutex, ForkRwLock};
use lstmrs_core::model::{Clip, Device, Model, ModelConfig};
use lstmrs_core::DType;
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use train::Mode;

mod explain;
mod input;
mod loss;
mod optimizer;
mod stepper;
mod train;

pub use loss::LossSpec;
pub use optimizer::OptimizerCore;
pub use stepper::StepperCore;

fn bad(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    error(py, Kind::InvalidArgument, msg)
}

/// A model of either element type.
struct ModelOf;
impl Family for ModelOf {
    type Of<T: Float> = Model<T>;
}

/// A gradient buffer of either element type.
struct VecOf;
impl Family for VecOf {
    type Of<T: Float> = Vec<T>;
}

/// A sequence model: configuration and weights in one flat buffer.
#[pyclass(frozen, module = "lstmrs._lstmrs")]
pub struct ModelCore {
    config_json: String,
    config: ModelConfig,
    dtype: DType,
    model: ForkRwLock<Typed<ModelOf>>,
    /// Gradient scratch of `train_step`, reused across steps.
    scratch: ForkMutex<Typed<VecOf>>,
}

pub(crate) type Prediction<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
);
type StepOut<'py> = (
    f64,
    f64,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
);

type LossOut<'py> = (
    f64,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
);

#[pymethods]
impl ModelCore {
    #[new]
    #[pyo3(signature = (config_json, dtype="float32", seed=0))]
    fn new(py: Python<'_>, config_json: &str, dtype: &str, seed: u64) -> PyResult<Self> {
        let config = ModelConfig::from_json(config_json).map_err(|e| core_error(py, e))?;
        let dt = parse_dtype(py, dtype)?;
        let model = by_dtype!(dt, T => {
            T::typed::<ModelOf>(Model::<T>::new(config.clone(), seed).map_err(|e| core_error(py, e))?)
        });
        Ok(ModelCore {
            config_json: config_json.to_string(),
            config,
            dtype: dt,
            model: ForkRwLock::new(model),
            scratch: ForkMutex::new(by_dtype!(dt, T => T::typed::<VecOf>(Vec::new()))),
        })
    }

    #[getter]
    fn config_json(&self) -> &str {
        &self.config_json
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }

    /// Where the recurrent layers run: `"cpu"` or `"gpu"`.
    #[getter]
    fn device(&self) -> &'static str {
        let m = self.model.read();
        by_dtype!(self.dtype, T => T::of(&m).map_or("cpu", |m| m.device().name()))
    }

    /// Moves the recurrent layers to `device` (`"cpu"` or `"gpu"`); refused with the reason when
    /// this build, this machine or this model cannot run there.
    fn set_device(&self, py: Python<'_>, device: &str) -> PyResult<()> {
        let device = Device::parse(device).map_err(|e| core_error(py, e))?;
        let mut m = self.model.write();
        by_dtype!(self.dtype, T => {
            let m = T::of_mut(&mut m).ok_or_else(|| bad(py, MISMATCH))?;
            m.set_device(device).map_err(|e| core_error(py, e))
        })
    }

    #[getter]
    fn num_params(&self) -> usize {
        let m = self.model.read();
        by_dtype!(self.dtype, T => T::of(&m).map_or(0, |m| m.num_params()))
    }

    /// `[(name, shape), ...]` in the flat buffer's order.
    fn param_specs(&self) -> Vec<(String, Vec<usize>)> {
        let m = self.model.read();
        let specs =
            by_dtype!(self.dtype, T => T::of(&m).map(|m| m.specs().to_vec()).unwrap_or_default());
        specs.into_iter().map(|s| (s.name, s.shape)).collect()
    }

    /// A copy of all weights, flat.
    fn get_flat<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        by_dtype!(self.dtype, T => {
            let data = {
                let m = self.model.read();
                T::of(&m).ok_or_else(|| bad(py, MISMATCH))?.params().to_vec()
            };
            let n = data.len();
            to_array(py, data, &[n])
        })
    }

    /// Replaces all weights.
    fn set_flat(&self, values: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = values.py();
        by_dtype!(self.dtype, T => {
            let arr = readonly::<T>("flat", values)?;
            let data = slice("flat", &arr)?;
            let mut m = self.model.write();
            let m = T::of_mut(&mut m).ok_or_else(|| bad(py, MISMATCH))?;
            check_shape(py, "flat", arr.shape(), &[m.num_params()])?;
            m.params_mut().copy_from_slice(data);
            Ok(())
        })
    }

    /// The weights as a writable 1-D NumPy array that views the Rust buffer itself (no copy):
    /// writes through it change the model, and the model's own updates show in it. Plugin
    /// optimizers update the weights in place through it.
    ///
    /// The view keeps this object alive. Do not write it while another thread runs a call on
    /// this model (calls release the GIL), as with any array handed to such a call.
    fn params_view<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        by_dtype!(this.dtype, T => {
            let mut m = this.model.write();
            let m = T::of_mut(&mut m).ok_or_else(|| bad(py, MISMATCH))?;
            let view = numpy::ndarray::ArrayViewMut1::from(m.params_mut());
            // SAFETY: the buffer is the `Vec` inside this `ModelCore`'s model, which is never
            // replaced or resized after construction (`set_flat` and the optimizers write in
            // place), so it lives, unmoved, as long as this object; the array holds a reference
            // to this object (its base) and so cannot outlive it.
            let arr = unsafe { numpy::PyArray1::<T>::borrow_from_array(&view, slf.clone().into_any()) };
            Ok(arr.into_any())
        })
    }

    /// The head's output for a batch: `(out, h_n, c_n)`.
    #[pyo3(signature = (x, lengths=None, h0=None, c0=None))]
    fn predict<'py>(
        &self,
        x: &Bound<'py, PyAny>,
        lengths: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Prediction<'py>> {
        by_dtype!(self.dtype, T => self.predict_t::<T>(x, lengths, h0, c0))
    }

    /// `(output, input_grad, attention)`: the gradient of `sum(d_output * output)` with
    /// respect to the input features `[B, T, F]` or, for token models, the embedded vectors
    /// `[B, T, E]` (`embedded=True`: `x` holds those vectors instead of ids).
    #[pyo3(signature = (x, d_output, lengths=None, embedded=false))]
    fn input_gradient<'py>(
        &self,
        x: &Bound<'py, PyAny>,
        d_output: &Bound<'py, PyAny>,
        lengths: Option<&Bound<'py, PyAny>>,
        embedded: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        by_dtype!(self.dtype, T => self.input_gradient_t::<T>(x, d_output, lengths, embedded))
    }

    /// A token model's embedding lookup: ids `[B, T]` -> vectors `[B, T, E]`.
    fn embed<'py>(&self, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        by_dtype!(self.dtype, T => self.embed_t::<T>(x))
    }

    /// `(output, layers, attention)`: every layer's and direction's gate activations and states
    /// over time, `[(layer, direction, [(gate, [B, T, H])], [(state, [B, T, H])])]`.
    #[pyo3(signature = (x, lengths=None, embedded=false))]
    fn trace<'py>(
        &self,
        x: &Bound<'py, PyAny>,
        lengths: Option<&Bound<'py, PyAny>>,
        embedded: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        by_dtype!(self.dtype, T => self.trace_t::<T>(x, lengths, embedded))
    }

    /// Loss and its gradient with respect to the flat weights, without updating them.
    #[pyo3(signature = (x, y, loss, lengths=None, h0=None, c0=None, training=false, seed=0))]
    #[allow(clippy::too_many_arguments)]
    fn loss_and_grad<'py>(
        &self,
        x: &Bound<'py, PyAny>,
        y: &Bound<'py, PyAny>,
        loss: &LossSpec,
        lengths: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
        training: bool,
        seed: u64,
    ) -> PyResult<(f64, Bound<'py, PyAny>)> {
        let (v, _, g, _) = by_dtype!(self.dtype, T => {
            let arrays = self.read_batch::<T>(x, lengths, h0, c0)?;
            self.train_t::<T>(arrays, y, loss, Mode::Grad { training }, seed)
        })?;
        Ok((v, g.expect("gradient requested")))
    }

    /// One training step (forward, loss, BPTT, clipping, optimizer update), one call with the
    /// GIL released: `(loss, grad_norm, out, h_n, c_n)`.
    #[pyo3(signature = (x, y, loss, optimizer, lr, seed, lengths=None, h0=None, c0=None, clip_norm=None, clip_value=None))]
    #[allow(clippy::too_many_arguments)]
    fn train_step<'py>(
        &self,
        x: &Bound<'py, PyAny>,
        y: &Bound<'py, PyAny>,
        loss: &LossSpec,
        optimizer: &OptimizerCore,
        lr: f64,
        seed: u64,
        lengths: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
        clip_norm: Option<f64>,
        clip_value: Option<f64>,
    ) -> PyResult<StepOut<'py>> {
        let clip = Clip {
            max_norm: clip_norm,
            max_value: clip_value,
        };
        let (v, norm, _, (out, h, c)) = by_dtype!(self.dtype, T => {
            let arrays = self.read_batch::<T>(x, lengths, h0, c0)?;
            self.train_t::<T>(arrays, y, loss, Mode::Update(optimizer, lr, clip), seed)
        })?;
        Ok((v, norm, out, h, c))
    }

    /// The first half of a training step, for optimizers that update the weights themselves
    /// (plugin optimizers): forward with dropout from `seed`, loss, BPTT and clipping, with the
    /// GIL released. The gradient goes into `grad` (a writable C-contiguous array of
    /// `num_params` values of the model's dtype, reused across steps): nothing the size of the
    /// model is allocated. Returns `(loss, grad_norm, out, h_n, c_n)`, `grad_norm` before
    /// clipping, as `train_step` does.
    #[pyo3(signature = (x, y, loss, grad, seed=0, lengths=None, h0=None, c0=None, clip_norm=None, clip_value=None))]
    #[allow(clippy::too_many_arguments)]
    fn loss_and_grad_into<'py>(
        &self,
        x: &Bound<'py, PyAny>,
        y: &Bound<'py, PyAny>,
        loss: &LossSpec,
        grad: &Bound<'py, PyAny>,
        seed: u64,
        lengths: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
        clip_norm: Option<f64>,
        clip_value: Option<f64>,
    ) -> PyResult<StepOut<'py>> {
        let py = x.py();
        let clip = Clip {
            max_norm: clip_norm,
            max_value: clip_value,
        };
        let n = self.num_params();
        by_dtype!(self.dtype, T => {
            let g = grad.cast::<PyArrayDyn<T>>().map_err(|_| {
                error(py, Kind::DType, format!("grad: expected a numpy.ndarray of {} [{n}]", T::NAME))
            })?;
            let mut gw = g
                .try_readwrite()
                .map_err(|e| bad(py, format!("grad: not writable ({e})")))?;
            check_shape(py, "grad", gw.shape(), &[n])?;
            let gs = gw
                .as_slice_mut()
                .map_err(|e| bad(py, format!("grad: expected a C-contiguous array ({e})")))?;
            {
                // The weights are read while `grad` is written: they must not overlap (a
                // `params_view()` passed as `grad`).
                let m = self.model.read();
                let p = T::of(&m).ok_or_else(|| bad(py, MISMATCH))?.params().as_ptr_range();
                let g = gs.as_ptr_range();
                if g.start < p.end && p.start < g.end {
                    return Err(bad(py, "grad: must not share memory with the weights"));
                }
            }
            let arrays = self.read_batch::<T>(x, lengths, h0, c0)?;
            let (v, norm, _, (out, h, c)) =
                self.train_t::<T>(arrays, y, loss, Mode::Into(gs, clip), seed)?;
            Ok((v, norm, out, h, c))
        })
    }

    /// The loss of a batch in inference mode (no dropout, no gradient) with the outputs:
    /// `(loss, out, h_n, c_n)`. The loss is the mean over the rows that count, as in
    /// `train_step`.
    #[pyo3(signature = (x, y, loss, lengths=None, h0=None, c0=None))]
    fn loss<'py>(
        &self,
        x: &Bound<'py, PyAny>,
        y: &Bound<'py, PyAny>,
        loss: &LossSpec,
        lengths: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<LossOut<'py>> {
        let (v, _, _, (out, h, c)) = by_dtype!(self.dtype, T => {
            let arrays = self.read_batch::<T>(x, lengths, h0, c0)?;
            self.train_t::<T>(arrays, y, loss, Mode::Loss, 0)
        })?;
        Ok((v, out, h, c))
    }

    fn __repr__(&self) -> String {
        format!("ModelCore({}, dtype={})", self.config_json, self.dtype())
    }
}
