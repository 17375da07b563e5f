//! `OptimizerCore`: a fused optimizer over a model's flat weights, built from its name and
//! hyper-parameters (Python keyword arguments, each checked by name and type here).

use super::bad;
use crate::convert::{readonly, slice, to_array};
use crate::dtype::{by_dtype, parse_dtype, Family, Float, Typed, MISMATCH};
use crate::errors::{core_error, error, Kind};
use lstmrs_core::forklock::ForkMutex;
use lstmrs_core::optim::{
    AdagradConfig, AdamConfig, Optimizer, OptimizerConfig, OptimizerState, RmsPropConfig, SgdConfig,
};
use lstmrs_core::DType;
use numpy::{PyArrayDyn, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// A boxed optimizer of either element type.
pub(super) struct OptimizerOf;
impl Family for OptimizerOf {
    type Of<T: Float> = Box<dyn Optimizer<T>>;
}

/// The optimizer of element type `T` in `o`, if that is its type.
pub(super) fn optimizer<T: Float>(
    o: &mut Typed<OptimizerOf>,
) -> Option<&mut (dyn Optimizer<T> + 'static)> {
    T::of_mut(o).map(|b| b.as_mut())
}

/// A fused optimizer over a model's flat weights.
#[pyclass(frozen, module = "lstmrs._lstmrs")]
pub struct OptimizerCore {
    name: String,
    pub(super) dtype: DType,
    pub(super) inner: ForkMutex<Typed<OptimizerOf>>,
}

fn optimizer_config(
    py: Python<'_>,
    name: &str,
    hyper: Option<&Bound<'_, PyDict>>,
) -> PyResult<OptimizerConfig> {
    let mut known: Vec<&str> = Vec::new();
    let get = |key: &str, default: f64| -> PyResult<f64> {
        match hyper.and_then(|h| h.get_item(key).ok().flatten()) {
            None => Ok(default),
            Some(v) => v
                .extract::<f64>()
                .map_err(|_| bad(py, format!("{key}: expected a number, got {v}"))),
        }
    };
    let flag = |key: &str, default: bool| -> PyResult<bool> {
        match hyper.and_then(|h| h.get_item(key).ok().flatten()) {
            None => Ok(default),
            Some(v) => v
                .extract::<bool>()
                .map_err(|_| bad(py, format!("{key}: expected True or False, got {v}"))),
        }
    };
    let cfg = match name {
        "sgd" => {
            known.extend([
                "momentum",
                "dampening",
                "weight_decay",
                "nesterov",
                "maximize",
            ]);
            OptimizerConfig::Sgd(SgdConfig {
                momentum: get("momentum", 0.0)?,
                dampening: get("dampening", 0.0)?,
                weight_decay: get("weight_decay", 0.0)?,
                nesterov: flag("nesterov", false)?,
                maximize: flag("maximize", false)?,
            })
        }
        "adam" | "adamw" => {
            known.extend(["betas", "eps", "weight_decay", "amsgrad", "maximize"]);
            let (b1, b2) = match hyper.and_then(|h| h.get_item("betas").ok().flatten()) {
                None => (0.9, 0.999),
                Some(v) => v
                    .extract::<(f64, f64)>()
                    .map_err(|_| bad(py, format!("betas: expected a pair of numbers, got {v}")))?,
            };
            let base = if name == "adamw" {
                AdamConfig::adamw_default()
            } else {
                AdamConfig::default()
            };
            let c = AdamConfig {
                beta1: b1,
                beta2: b2,
                eps: get("eps", base.eps)?,
                weight_decay: get("weight_decay", base.weight_decay)?,
                amsgrad: flag("amsgrad", false)?,
                maximize: flag("maximize", false)?,
            };
            if name == "adamw" {
                OptimizerConfig::AdamW(c)
            } else {
                OptimizerConfig::Adam(c)
            }
        }
        "rmsprop" => {
            known.extend([
                "alpha",
                "eps",
                "weight_decay",
                "momentum",
                "centered",
                "maximize",
            ]);
            OptimizerConfig::RmsProp(RmsPropConfig {
                alpha: get("alpha", 0.99)?,
                eps: get("eps", 1e-8)?,
                weight_decay: get("weight_decay", 0.0)?,
                momentum: get("momentum", 0.0)?,
                centered: flag("centered", false)?,
                maximize: flag("maximize", false)?,
            })
        }
        "adagrad" => {
            known.extend([
                "lr_decay",
                "weight_decay",
                "initial_accumulator_value",
                "eps",
                "maximize",
            ]);
            OptimizerConfig::Adagrad(AdagradConfig {
                lr_decay: get("lr_decay", 0.0)?,
                weight_decay: get("weight_decay", 0.0)?,
                initial_accumulator_value: get("initial_accumulator_value", 0.0)?,
                eps: get("eps", 1e-10)?,
                maximize: flag("maximize", false)?,
            })
        }
        other => {
            return Err(bad(
                py,
                format!(
                "optimizer: expected 'sgd', 'adam', 'adamw', 'rmsprop' or 'adagrad', got {other:?}"
            ),
            ))
        }
    };
    if let Some(h) = hyper {
        for key in h.keys() {
            let k: String = key.extract()?;
            if !known.contains(&k.as_str()) {
                return Err(bad(
                    py,
                    format!("{k}: not a hyper-parameter of {name}; expected one of {known:?}"),
                ));
            }
        }
    }
    Ok(cfg)
}

#[pymethods]
impl OptimizerCore {
    #[new]
    #[pyo3(signature = (name, num_params, dtype="float32", **hyper))]
    fn new(
        py: Python<'_>,
        name: &str,
        num_params: usize,
        dtype: &str,
        hyper: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let cfg = optimizer_config(py, name, hyper)?;
        let dt = parse_dtype(py, dtype)?;
        let inner = by_dtype!(dt, T => T::typed::<OptimizerOf>(cfg.build::<T>(num_params).map_err(|e| core_error(py, e))?));
        Ok(OptimizerCore {
            name: name.to_string(),
            dtype: dt,
            inner: ForkMutex::new(inner),
        })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    #[getter]
    fn steps(&self) -> u64 {
        let mut o = self.inner.lock();
        by_dtype!(self.dtype, T => optimizer::<T>(&mut o).map_or(0, |o| o.steps()))
    }

    fn hyper_params(&self) -> Vec<(&'static str, f64)> {
        let mut o = self.inner.lock();
        by_dtype!(self.dtype, T => optimizer::<T>(&mut o).map(|o| o.hyper_params()).unwrap_or_default())
    }

    /// `{"kind": str, "step": int, "buffers": {name: float64 array}}`.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st: OptimizerState = {
            let mut o = self.inner.lock();
            by_dtype!(self.dtype, T => optimizer::<T>(&mut o).ok_or_else(|| bad(py, MISMATCH))?.state())
        };
        let d = PyDict::new(py);
        d.set_item("kind", st.kind)?;
        d.set_item("step", st.step)?;
        let bufs = PyDict::new(py);
        for (name, v) in st.buffers {
            let n = v.len();
            bufs.set_item(name, to_array(py, v, &[n])?)?;
        }
        d.set_item("buffers", bufs)?;
        Ok(d)
    }

    /// Restores a `state_dict`; checks kind, buffer names and sizes first.
    fn load_state_dict(&self, state: &Bound<'_, PyDict>) -> PyResult<()> {
        let py = state.py();
        let item = |k: &str| {
            state
                .get_item(k)?
                .ok_or_else(|| bad(py, format!("state: missing key {k:?}")))
        };
        let kind: String = item("kind")?
            .extract()
            .map_err(|_| bad(py, "state.kind: expected a string"))?;
        let step: u64 = item("step")?
            .extract()
            .map_err(|_| bad(py, "state.step: expected an integer >= 0"))?;
        let bufs = item("buffers")?;
        let bufs = bufs
            .cast::<PyDict>()
            .map_err(|_| bad(py, "state.buffers: expected a dict"))?;
        let mut buffers = Vec::new();
        for (k, v) in bufs.iter() {
            let name: String = k.extract()?;
            let a = readonly::<f64>(&format!("state.buffers[{name:?}]"), &v)?;
            buffers.push((
                name,
                a.as_slice().map_err(|e| bad(py, format!("{e}")))?.to_vec(),
            ));
        }
        let st = OptimizerState {
            kind,
            step,
            buffers,
        };
        let mut o = self.inner.lock();
        by_dtype!(self.dtype, T => {
            let o = optimizer::<T>(&mut o).ok_or_else(|| bad(py, MISMATCH))?;
            o.load_state(&st).map_err(|e| core_error(py, e))
        })
    }

    /// One update of `params` (a writable contiguous array, in place) from `grads`.
    fn step(&self, params: &Bound<'_, PyAny>, grads: &Bound<'_, PyAny>, lr: f64) -> PyResult<()> {
        let py = params.py();
        by_dtype!(self.dtype, T => {
            let p = params.cast::<PyArrayDyn<T>>().map_err(|_| error(py, Kind::DType, format!("params: expected a numpy.ndarray of {}", T::NAME)))?;
            let mut pw = p.try_readwrite().map_err(|e| bad(py, format!("params: not writable ({e})")))?;
            let g = readonly::<T>("grads", grads)?;
            let gs = slice("grads", &g)?;
            let ps = pw.as_slice_mut().map_err(|e| bad(py, format!("params: expected a C-contiguous array ({e})")))?;
            let mut o = self.inner.lock();
            let o = optimizer::<T>(&mut o).ok_or_else(|| bad(py, MISMATCH))?;
            o.step(ps, gs, lr).map_err(|e| core_error(py, e))
        })
    }
}
