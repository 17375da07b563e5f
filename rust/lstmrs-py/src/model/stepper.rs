//! `StepperCore`: step-by-step inference through a model, the state kept in Rust, one step per
//! call.

use super::{bad, ModelCore, ModelOf};
use crate::convert::{check_shape, readonly, slice, to_array};
use crate::dtype::{by_dtype, Family, Float, Typed, MISMATCH};
use crate::errors::{core_error, guarded, lift};
use lstmrs_core::forklock::ForkMutex;
use lstmrs_core::model::{InputKind, ModelInput, ModelStepper};
use lstmrs_core::DType;
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::sync::atomic::{AtomicU64, Ordering};

/// A model's stepper of either element type.
struct StepperOf;
impl Family for StepperOf {
    type Of<T: Float> = ModelStepper<T>;
}

/// Streaming inference through a model: state kept in Rust, one step per call.
#[pyclass(frozen, module = "lstmrs._lstmrs")]
pub struct StepperCore {
    model: Py<ModelCore>,
    batch: usize,
    /// Multiply-adds of one step, to decide whether releasing the GIL pays off.
    work: usize,
    steps: AtomicU64,
    inner: ForkMutex<Typed<StepperOf>>,
}

/// Steps below this many multiply-adds (about 10 µs here) keep the GIL. Another Python thread
/// could run for only microseconds in that time, and re-taking the GIL from a thread that got it
/// can wait out its switch interval (5 ms by default): a latency spike a real-time loop cannot
/// afford. Larger steps release it, as every other long call of the bindings does.
const STEP_DETACH_MIN_WORK: usize = 1 << 18;

impl StepperCore {
    /// `step` for element type `T`: `x_t` already checked to be `[B, F]` (or `[F]`) of `T`, or
    /// `[B]` (or 0-d) int64 ids, C-contiguous; the output array is new.
    fn step_t<'py, T: Float>(
        &self,
        py: Python<'py>,
        x_t: &Bound<'py, PyAny>,
        single: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mc = self.model.get();
        let (b, o) = (self.batch, mc.config.outputs);
        let dims: &[usize] = if single { &[o] } else { &[b, o] };
        let out = PyArrayDyn::<T>::zeros(py, dims, false);
        let tokens = matches!(mc.config.input, InputKind::Embedding { .. });
        let run =
            |m: &Typed<ModelOf>, s: &mut Typed<StepperOf>, x: ModelInput<T>, out: &mut [T]| {
                let m = T::of(m).ok_or(MISMATCH.to_string())?;
                let s = T::of_mut(s).ok_or(MISMATCH.to_string())?;
                guarded(|| m.step(s, x, out))
            };
        if self.work < STEP_DETACH_MIN_WORK {
            if let (Some(m), Some(mut s)) = (mc.model.try_read(), self.inner.try_lock()) {
                let contiguous = |e| bad(py, format!("x_t: {e}"));
                // SAFETY: `step` checked the array type; the GIL is held until the step returns,
                // so no Python code can write `x_t` meanwhile, and `out` is a new array nothing
                // else refers to yet. This skips rust-numpy's borrow tracking (a hash-map insert
                // and removal per array), part of the binding's fixed cost per step.
                let (x, out_s) = unsafe {
                    let x = if tokens {
                        let a = x_t.cast_unchecked::<PyArrayDyn<i64>>();
                        ModelInput::Tokens(a.as_slice().map_err(contiguous)?)
                    } else {
                        let a = x_t.cast_unchecked::<PyArrayDyn<T>>();
                        ModelInput::Dense(a.as_slice().map_err(contiguous)?)
                    };
                    (x, out.as_slice_mut().map_err(contiguous)?)
                };
                let r = run(&m, &mut s, x, out_s);
                lift(py, r)?;
                self.steps.fetch_add(1, Ordering::Relaxed);
                return Ok(out.into_any());
            }
        }
        // A large step, or a lock held by another thread (a training step, a concurrent step):
        // borrow the input properly and wait with the GIL released.
        // SAFETY: `out` is new and only this call refers to it until it is returned.
        let out_s = unsafe { out.as_slice_mut() }.map_err(|e| bad(py, format!("out: {e}")))?;
        let (ids, feats);
        let x = if tokens {
            // SAFETY: `step` checked the array type.
            ids = unsafe { x_t.cast_unchecked::<PyArrayDyn<i64>>() }
                .try_readonly()
                .map_err(|e| bad(py, format!("x_t: {e}")))?;
            ModelInput::Tokens(ids.as_slice().map_err(|e| bad(py, format!("x_t: {e}")))?)
        } else {
            feats = readonly::<T>("x_t", x_t)?;
            ModelInput::Dense(slice("x_t", &feats)?)
        };
        let r = py.detach(|| {
            let m = mc.model.read();
            let mut s = self.inner.lock();
            run(&m, &mut s, x, out_s)
        });
        lift(py, r)?;
        self.steps.fetch_add(1, Ordering::Relaxed);
        Ok(out.into_any())
    }
}

#[pymethods]
impl StepperCore {
    #[new]
    #[pyo3(signature = (model, batch=1))]
    fn new(py: Python<'_>, model: Py<ModelCore>, batch: usize) -> PyResult<Self> {
        let inner = {
            let mc = model.get();
            let m = mc.model.read();
            by_dtype!(mc.dtype, T => {
                let m = T::of(&m).ok_or_else(|| bad(py, MISMATCH))?;
                T::typed::<StepperOf>(m.stepper(batch).map_err(|e| core_error(py, e))?)
            })
        };
        let work = {
            let mc = model.get();
            let rnn = lstmrs_core::network::forward_work(&mc.config.rnn, 1, batch);
            let m = mc.model.read();
            let params = by_dtype!(mc.dtype, T => T::of(&m).map_or(0, |m| m.num_params()));
            // The recurrent products, and at most one multiply-add per weight per stream for the
            // rest (embedding rows are copies, so this overestimates a token model's head).
            rnn.max(params * batch)
        };
        Ok(StepperCore {
            model,
            batch,
            work,
            steps: AtomicU64::new(0),
            inner: ForkMutex::new(inner),
        })
    }

    /// Advances every stream by one step and returns the head's output as a new array.
    ///
    /// `x_t` must be a C-contiguous ``numpy.ndarray``: of the model's dtype, `[B, F]` (or `[F]`
    /// for a one-stream stepper, giving `[O]` instead of `[B, O]`), or of int64 token ids `[B]`
    /// (or 0-d for one stream). Anything else that is not that array type gives `None`
    /// without stepping, so the Python wrapper can convert it and call again; a wrong shape is
    /// a `ShapeError`.
    fn step<'py>(&self, x_t: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = x_t.py();
        let mc = self.model.get();
        let b = self.batch;
        // Cheap checks only: exact array type and dtype, layout, shape.
        let untyped = match x_t.cast::<PyUntypedArray>() {
            Ok(a) if a.is_c_contiguous() => a,
            _ => return Ok(None),
        };
        let (ok, single, want): (bool, bool, Vec<usize>) = match mc.config.input {
            InputKind::Dense { features } => {
                let ok = match mc.dtype {
                    DType::F32 => x_t.is_instance_of::<PyArrayDyn<f32>>(),
                    DType::F64 => x_t.is_instance_of::<PyArrayDyn<f64>>(),
                };
                let single = b == 1 && untyped.ndim() == 1;
                (
                    ok,
                    single,
                    if single {
                        vec![features]
                    } else {
                        vec![b, features]
                    },
                )
            }
            InputKind::Embedding { .. } => {
                let single = b == 1 && untyped.ndim() == 0;
                let ok = x_t.is_instance_of::<PyArrayDyn<i64>>();
                (ok, single, if single { vec![] } else { vec![b] })
            }
        };
        if !ok {
            return Ok(None);
        }
        check_shape(py, "x_t", untyped.shape(), &want)?;
        by_dtype!(mc.dtype, T => self.step_t::<T>(py, x_t, single).map(Some))
    }

    /// Steps taken since construction or the last `reset`.
    #[getter]
    fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }

    fn reset(&self) {
        self.steps.store(0, Ordering::Relaxed);
        let mut s = self.inner.lock();
        by_dtype!(s.dtype(), T => {
            if let Some(s) = T::of_mut(&mut s) {
                s.reset();
            }
        })
    }

    /// `(h [L, B, S], c [L, B, H] | None)`; `S` is `proj_size` when the LSTM projects.
    fn get_state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let mc = self.model.get();
        let r = &mc.config.rnn;
        let shape = [r.num_layers, self.batch, r.state_size()];
        let c_shape = [r.num_layers, self.batch, r.hidden_size];
        let lstm = mc.config.rnn.cell.has_cell_state();
        let mut s = self.inner.lock();
        by_dtype!(mc.dtype, T => {
            let s = T::of_mut(&mut s).ok_or_else(|| bad(py, MISMATCH))?;
            let h = to_array(py, s.h().to_vec(), &shape)?;
            let c = if lstm { Some(to_array(py, s.c().to_vec(), &c_shape)?) } else { None };
            PyTuple::new(py, [Some(h), c])
        })
    }

    #[pyo3(signature = (h, c=None))]
    fn set_state(&self, h: &Bound<'_, PyAny>, c: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = h.py();
        let mc = self.model.get();
        let r = &mc.config.rnn;
        let shape = [r.num_layers, self.batch, r.state_size()];
        let c_shape = [r.num_layers, self.batch, r.hidden_size];
        by_dtype!(mc.dtype, T => {
            let ha = readonly::<T>("h", h)?;
            check_shape(py, "h", ha.shape(), &shape)?;
            let ca = c.map(|c| readonly::<T>("c", c)).transpose()?;
            if let Some(a) = &ca {
                check_shape(py, "c", a.shape(), &c_shape)?;
            }
            let mut s = self.inner.lock();
            let s = T::of_mut(&mut s).ok_or_else(|| bad(py, MISMATCH))?;
            s.set_state(slice("h", &ha)?, ca.as_ref().map(|a| slice("c", a)).transpose()?)
                .map_err(|e| core_error(py, e))
        })
    }

    #[getter]
    fn batch(&self) -> usize {
        self.batch
    }
}
