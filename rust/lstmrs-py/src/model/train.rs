//! Prediction, loss, gradient and the training step of `ModelCore`: the arrays are read and
//! checked here, then one core call runs with the GIL released.

use super::input::BatchArrays;
use super::optimizer::optimizer;
use super::{bad, LossSpec, ModelCore, OptimizerCore, Prediction};
use crate::convert::{check_shape, readonly, slice, to_array};
use crate::dtype::{Float, MISMATCH};
use crate::errors::{error, guarded, lift, Kind};
use lstmrs_core::model::{Clip, Loss, LossResult, Pooling, StepResult, Targets};
use lstmrs_core::{Error, Scalar};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

/// What `ModelCore::train_t` does with a batch.
pub(super) enum Mode<'a, T> {
    /// Loss, gradient, clipping and the fused optimizer update of the weights.
    Update(&'a OptimizerCore, f64, Clip),
    /// Loss and the gradient as a new array (`training`: dropout on).
    Grad { training: bool },
    /// Loss and the gradient, clipped, written into the caller's buffer (training mode): the
    /// step of a plugin optimizer, which then updates the weights itself.
    Into(&'a mut [T], Clip),
    /// Loss only (inference mode: no dropout, no tape, no gradient).
    Loss,
}

/// Borrowed targets: class ids for cross-entropy, values otherwise.
enum YArr<'py, T: Float> {
    Classes(PyReadonlyArrayDyn<'py, i64>),
    Values(PyReadonlyArrayDyn<'py, T>),
}

impl<T: Float> YArr<'_, T> {
    fn targets(&self, py: Python<'_>) -> PyResult<Targets<'_, T>> {
        Ok(match self {
            YArr::Classes(a) => {
                Targets::Classes(a.as_slice().map_err(|e| bad(py, format!("y: {e}")))?)
            }
            YArr::Values(a) => Targets::Values(slice("y", a)?),
        })
    }
}

/// The loss, the gradient norm (NaN when not computed), the gradient as a new array (`Grad`)
/// and the prediction.
type TrainOut<'py> = (f64, f64, Option<Bound<'py, PyAny>>, Prediction<'py>);

impl ModelCore {
    /// `y` for `loss` over a batch of `b` sequences of `t` steps: int64 class ids `[N]` for
    /// cross-entropy, values `[N, O]` of the model's dtype otherwise (`N`: `B*T` rows per-step).
    fn read_y<'py, T: Float>(
        &self,
        y: &Bound<'py, PyAny>,
        loss: &Loss,
        b: usize,
        t: usize,
    ) -> PyResult<YArr<'py, T>> {
        let py = y.py();
        let rows: Vec<usize> = if self.config.pooling == Pooling::PerStep {
            vec![b, t]
        } else {
            vec![b]
        };
        if matches!(loss, Loss::CrossEntropy { .. }) {
            let a = y.cast::<PyArrayDyn<i64>>().map_err(|_| {
                error(
                    py,
                    Kind::DType,
                    format!("y: expected a numpy.ndarray of int64 class ids of shape {rows:?}"),
                )
            })?;
            let a = a
                .try_readonly()
                .map_err(|e| bad(py, format!("y: cannot be borrowed ({e})")))?;
            check_shape(py, "y", a.shape(), &rows)?;
            Ok(YArr::Classes(a))
        } else {
            let a = readonly::<T>("y", y)?;
            let mut want = rows;
            want.push(self.config.outputs);
            check_shape(py, "y", a.shape(), &want)?;
            Ok(YArr::Values(a))
        }
    }

    /// The prediction's arrays: `(out, h_n, c_n)`.
    fn prediction<'py, T: Float>(
        &self,
        py: Python<'py>,
        (b, t): (usize, usize),
        output: Vec<T>,
        h_n: Vec<T>,
        c_n: Option<Vec<T>>,
    ) -> PyResult<Prediction<'py>> {
        let (h_n, c_n) = self.states(py, b, h_n, c_n)?;
        Ok((to_array(py, output, &self.outputs_shape(b, t))?, h_n, c_n))
    }

    pub(super) fn predict_t<'py, T: Float>(
        &self,
        x: &Bound<'py, PyAny>,
        lengths: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Prediction<'py>> {
        let py = x.py();
        let arrays = self.read_batch::<T>(x, lengths, h0, c0)?;
        let batch = arrays.view(py)?;
        let r = py.detach(|| {
            let m = self.model.read();
            let m = T::of(&m).ok_or(MISMATCH.to_string())?;
            guarded(|| m.predict(&batch))
        });
        let out = lift(py, r)?;
        self.prediction(
            py,
            (arrays.batch, arrays.seq_len),
            out.output,
            out.h_n,
            out.c_n,
        )
    }

    pub(super) fn train_t<'py, T: Float>(
        &self,
        arrays: BatchArrays<'py, T>,
        y: &Bound<'py, PyAny>,
        loss: &LossSpec,
        mode: Mode<'_, T>,
        seed: u64,
    ) -> PyResult<TrainOut<'py>> {
        let py = y.py();
        let ya = self.read_y::<T>(y, &loss.loss, arrays.batch, arrays.seq_len)?;
        let targets = ya.targets(py)?;
        let batch = arrays.view(py)?;
        let loss = &loss.loss;
        let r = py.detach(|| {
            guarded(|| -> lstmrs_core::Result<_> {
                match mode {
                    Mode::Update(opt, lr, clip) => {
                        let mut scratch = self.scratch.lock();
                        let grad = T::of_mut(&mut *scratch).expect("dtype checked at construction");
                        let mut m = self.model.write();
                        let m = T::of_mut(&mut *m).expect("dtype checked at construction");
                        grad.resize(m.num_params(), <T as Scalar>::from_f64(0.0));
                        let mut o = opt.inner.lock();
                        let o = optimizer::<T>(&mut o).ok_or(Error::Value {
                            arg: "optimizer",
                            expected: format!("an optimizer of {}", T::NAME),
                            got: "one of the other dtype".into(),
                        })?;
                        let r = m.train_step(&batch, targets, loss, seed, o, lr, clip, grad)?;
                        Ok((r, None))
                    }
                    Mode::Grad { training } => {
                        let m = self.model.read();
                        let m = T::of(&m).expect("dtype checked at construction");
                        let mut grad = vec![<T as Scalar>::from_f64(0.0); m.num_params()];
                        let r =
                            m.loss_and_grad(&batch, targets, loss, training, seed, &mut grad)?;
                        Ok((no_norm(r), Some(grad)))
                    }
                    Mode::Into(grad, clip) => {
                        let m = self.model.read();
                        let m = T::of(&m).expect("dtype checked at construction");
                        let r = m.loss_and_clipped_grad(&batch, targets, loss, seed, clip, grad)?;
                        Ok((r, None))
                    }
                    Mode::Loss => {
                        let m = self.model.read();
                        let m = T::of(&m).expect("dtype checked at construction");
                        Ok((no_norm(m.loss(&batch, targets, loss)?), None))
                    }
                }
            })
        });
        let (r, grad) = lift(py, r)?;
        let out = r.output;
        let bt = (arrays.batch, arrays.seq_len);
        let prediction = self.prediction(py, bt, out.output, out.h_n, out.c_n)?;
        let grad = match grad {
            Some(g) => {
                let n = g.len();
                Some(to_array(py, g, &[n])?)
            }
            None => None,
        };
        Ok((r.loss, r.grad_norm, grad, prediction))
    }
}

/// A loss without a gradient norm (NaN: not computed).
fn no_norm<T>(r: LossResult<T>) -> StepResult<T> {
    StepResult {
        loss: r.loss,
        grad_norm: f64::NAN,
        output: r.output,
    }
}
