//! `ModelCore` (a whole sequence model), `LossSpec`, `OptimizerCore` and `StepperCore` as Python
//! classes. Conversion and validation only: a training step is one core call with the GIL released.

use crate::errors::{core_error, error, guarded, lift, Kind};
use crate::rnn::{check_shape, read_lengths, readonly, slice, to_array, Float};
use lstmrs_core::forklock::{ForkMutex, ForkRwLock};
use lstmrs_core::model::{
    Activation, Clip, Device, InputKind, Loss, Model, ModelBatch, ModelConfig, ModelInput,
    ModelStepper, Pooling, Targets,
};
use lstmrs_core::optim::{
    clip_grad_norm, clip_grad_value, grad_norm, AdagradConfig, AdamConfig, Optimizer,
    OptimizerConfig, OptimizerState, RmsPropConfig, SgdConfig,
};
use lstmrs_core::{threads, CellKind, DType, Regularization, RnnConfig, Scalar};
use numpy::{
    PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

mod explain;

fn bad(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    error(py, Kind::InvalidArgument, msg)
}

fn parse_dtype(py: Python<'_>, dtype: &str) -> PyResult<DType> {
    match dtype {
        "float32" => Ok(DType::F32),
        "float64" => Ok(DType::F64),
        other => Err(error(
            py,
            Kind::DType,
            format!("dtype: expected 'float32' or 'float64', got {other:?}"),
        )),
    }
}

/// Reads the model configuration JSON (see `lstmrs.models`), naming the key of any error.
fn parse_config(py: Python<'_>, json: &str) -> PyResult<ModelConfig> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| bad(py, format!("config: invalid JSON ({e})")))?;
    let field = |key: &str| {
        v.get(key)
            .ok_or_else(|| bad(py, format!("config: missing key {key:?}")))
    };
    let uint = |key: &str, val: &Value| {
        val.as_u64().map(|n| n as usize).ok_or_else(|| {
            bad(
                py,
                format!("config.{key}: expected a non-negative integer, got {val}"),
            )
        })
    };
    let num = |key: &str, default: f64| -> PyResult<f64> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x
                .as_f64()
                .ok_or_else(|| bad(py, format!("config.{key}: expected a number, got {x}"))),
        }
    };
    let boolean = |key: &str, default: bool| -> PyResult<bool> {
        match v.get(key) {
            None => Ok(default),
            Some(x) => x
                .as_bool()
                .ok_or_else(|| bad(py, format!("config.{key}: expected true or false, got {x}"))),
        }
    };
    let input = field("input")?;
    let kind = input.get("kind").and_then(Value::as_str).unwrap_or("");
    let input = match kind {
        "dense" => InputKind::Dense {
            features: uint(
                "input.features",
                input.get("features").unwrap_or(&Value::Null),
            )?,
        },
        "embedding" => InputKind::Embedding {
            vocab: uint("input.vocab", input.get("vocab").unwrap_or(&Value::Null))?,
            dim: uint("input.dim", input.get("dim").unwrap_or(&Value::Null))?,
        },
        other => {
            return Err(bad(
                py,
                format!("config.input.kind: expected 'dense' or 'embedding', got {other:?}"),
            ))
        }
    };
    let width = match input {
        InputKind::Dense { features } => features,
        InputKind::Embedding { dim, .. } => dim,
    };
    // A built-in name, or a custom cell's description (an object, or its JSON text).
    let cell = match field("cell")? {
        Value::Object(_) => CellKind::parse(&field("cell")?.to_string()),
        other => CellKind::parse(other.as_str().unwrap_or("")),
    }
    .map_err(|e| core_error(py, e))?;
    let proj_size = uint("proj_size", v.get("proj_size").unwrap_or(&Value::from(0)))?;
    let rnn = RnnConfig::new(
        cell,
        width,
        uint("hidden_size", field("hidden_size")?)?,
        uint("num_layers", v.get("num_layers").unwrap_or(&Value::from(1)))?,
        boolean("bidirectional", false)?,
        boolean("bias", true)?,
    )
    .and_then(|c| c.with_proj_size(proj_size))
    .map_err(|e| core_error(py, e))?;
    let pooling = match v.get("pooling").and_then(Value::as_str).unwrap_or("last") {
        "per_step" => Pooling::PerStep,
        "last" => Pooling::Last,
        "mean" => Pooling::Mean,
        "attention" => Pooling::Attention {
            units: uint(
                "attention_units",
                v.get("attention_units").unwrap_or(&Value::Null),
            )?,
        },
        other => {
            return Err(bad(
                py,
                format!(
                "config.pooling: expected 'per_step', 'last', 'mean' or 'attention', got {other:?}"
            ),
            ))
        }
    };
    let head_hidden = match v.get("head_hidden") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| uint("head_hidden", x))
            .collect::<PyResult<_>>()?,
        Some(x) => {
            return Err(bad(
                py,
                format!("config.head_hidden: expected a list of sizes, got {x}"),
            ))
        }
    };
    let activation = match v
        .get("activation")
        .and_then(Value::as_str)
        .unwrap_or("tanh")
    {
        "tanh" => Activation::Tanh,
        "relu" => Activation::Relu,
        other => {
            return Err(bad(
                py,
                format!("config.activation: expected 'tanh' or 'relu', got {other:?}"),
            ))
        }
    };
    let cfg = ModelConfig {
        input,
        rnn,
        dropout: num("dropout", 0.0)?,
        regularization: Regularization {
            input_dropout: num("input_dropout", 0.0)?,
            state_dropout: num("state_dropout", 0.0)?,
            zoneout: num("zoneout", 0.0)?,
        },
        pooling,
        head_hidden,
        activation,
        outputs: uint("outputs", field("outputs")?)?,
    };
    cfg.validate().map_err(|e| core_error(py, e))?;
    for (arg, p) in [
        ("input_dropout", cfg.regularization.input_dropout),
        ("state_dropout", cfg.regularization.state_dropout),
        ("zoneout", cfg.regularization.zoneout),
    ] {
        if !(0.0..1.0).contains(&p) {
            return Err(bad(
                py,
                format!("config.{arg}: expected a probability in [0, 1), got {p}"),
            ));
        }
    }
    Ok(cfg)
}

enum AnyModel {
    F32(Model<f32>),
    F64(Model<f64>),
}

enum AnyOptimizer {
    F32(Box<dyn Optimizer<f32>>),
    F64(Box<dyn Optimizer<f64>>),
}

enum AnyStepper {
    F32(ModelStepper<f32>),
    F64(ModelStepper<f64>),
}

/// Ties the element types to the enum variants so each method is written once.
trait ModelFloat: Float + Scratch {
    fn model(m: &AnyModel) -> Option<&Model<Self>>;
    fn model_mut(m: &mut AnyModel) -> Option<&mut Model<Self>>;
    fn optimizer(o: &mut AnyOptimizer) -> Option<&mut dyn Optimizer<Self>>;
    fn stepper(s: &mut AnyStepper) -> Option<&mut ModelStepper<Self>>;
}

macro_rules! model_float {
    ($t:ty, $v:ident) => {
        impl ModelFloat for $t {
            fn model(m: &AnyModel) -> Option<&Model<$t>> {
                match m {
                    AnyModel::$v(m) => Some(m),
                    _ => None,
                }
            }
            fn model_mut(m: &mut AnyModel) -> Option<&mut Model<$t>> {
                match m {
                    AnyModel::$v(m) => Some(m),
                    _ => None,
                }
            }
            fn optimizer(o: &mut AnyOptimizer) -> Option<&mut dyn Optimizer<$t>> {
                match o {
                    AnyOptimizer::$v(o) => Some(o.as_mut()),
                    _ => None,
                }
            }
            fn stepper(s: &mut AnyStepper) -> Option<&mut ModelStepper<$t>> {
                match s {
                    AnyStepper::$v(s) => Some(s),
                    _ => None,
                }
            }
        }
    };
}
model_float!(f32, F32);
model_float!(f64, F64);

/// Calls `$body` with `$T` bound to the element type of `$dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
        }
    };
}

const MISMATCH: &str = "internal error in lstmrs (please report it): dtype mismatch";

/// A loss function and its options.
#[pyclass(frozen, module = "lstmrs._lstmrs")]
pub struct LossSpec {
    loss: Loss,
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
        let mut loss = Loss::from_name(name).map_err(|e| core_error(py, e))?;
        match &mut loss {
            Loss::CrossEntropy {
                ignore_index: i,
                class_weights: w,
            } => {
                *i = ignore_index;
                *w = class_weights;
            }
            Loss::Huber { delta: d } => {
                if !(delta > 0.0 && delta.is_finite()) {
                    return Err(bad(
                        py,
                        format!("delta: expected a positive number, got {delta}"),
                    ));
                }
                *d = delta;
            }
            _ if class_weights.is_some() => {
                return Err(bad(
                    py,
                    format!("class_weights: only for cross_entropy, not {name}"),
                ));
            }
            _ => {}
        }
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

/// A sequence model: configuration and weights in one flat buffer.
#[pyclass(frozen, module = "lstmrs._lstmrs")]
pub struct ModelCore {
    config_json: String,
    config: ModelConfig,
    dtype: DType,
    model: ForkRwLock<AnyModel>,
    /// Gradient scratch of `train_step`, reused across steps.
    scratch: ForkMutex<(Vec<f32>, Vec<f64>)>,
}

type Prediction<'py> = (
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

/// Borrowed inputs of one batch.
enum XArr<'py, T: Float> {
    Dense(PyReadonlyArrayDyn<'py, T>),
    Tokens(PyReadonlyArrayDyn<'py, i64>),
}

impl ModelCore {
    /// `[L*D, B, S]` for `h` (`S`: `proj_size` when set), `[L*D, B, H]` for `c` (`cell`).
    fn state_shape(&self, b: usize, cell: bool) -> [usize; 3] {
        let r = &self.config.rnn;
        let size = if cell { r.hidden_size } else { r.state_size() };
        [r.num_layers * r.num_directions(), b, size]
    }

    /// Reads `x` as the model's input kind; returns it with `(B, T)`.
    fn read_x<'py, T: ModelFloat>(
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

    fn state_arg<'py, T: ModelFloat>(
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

    fn outputs_shape(&self, b: usize, t: usize) -> Vec<usize> {
        if self.config.pooling == Pooling::PerStep {
            vec![b, t, self.config.outputs]
        } else {
            vec![b, self.config.outputs]
        }
    }

    fn states<'py, T: ModelFloat>(
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

    #[allow(clippy::type_complexity)]
    fn predict_t<'py, T: ModelFloat>(
        &self,
        x: &Bound<'py, PyAny>,
        lengths: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Prediction<'py>> {
        let py = x.py();
        let (xa, b, t) = self.read_x::<T>(x)?;
        let lengths = lengths.map(|l| read_lengths(l, b, t)).transpose()?;
        let (h0a, c0a) = (
            self.state_arg::<T>("h0", h0, b)?,
            self.state_arg::<T>("c0", c0, b)?,
        );
        let input = match &xa {
            XArr::Dense(a) => ModelInput::Dense(slice("x", a)?),
            XArr::Tokens(a) => {
                ModelInput::Tokens(a.as_slice().map_err(|e| bad(py, format!("x: {e}")))?)
            }
        };
        let batch = ModelBatch {
            input,
            batch: b,
            seq_len: t,
            lengths: lengths.as_deref(),
            h0: h0a.as_ref().map(|a| slice("h0", a)).transpose()?,
            c0: c0a.as_ref().map(|a| slice("c0", a)).transpose()?,
        };
        let r = py.detach(|| {
            let m = self.model.read();
            let m = T::model(&m).ok_or(MISMATCH.to_string())?;
            guarded(|| m.predict(&batch))
        });
        let out = lift(py, r)?;
        let (h_n, c_n) = self.states(py, b, out.h_n, out.c_n)?;
        Ok((
            to_array(py, out.output, &self.outputs_shape(b, t))?,
            h_n,
            c_n,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn train_t<'py, T: ModelFloat>(
        &self,
        x: &Bound<'py, PyAny>,
        y: &Bound<'py, PyAny>,
        loss: &LossSpec,
        mode: Mode<'_, T>,
        seed: u64,
        lengths: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(f64, f64, Option<Bound<'py, PyAny>>, Prediction<'py>)> {
        let py = x.py();
        let (xa, b, t) = self.read_x::<T>(x)?;
        let lengths = lengths.map(|l| read_lengths(l, b, t)).transpose()?;
        let (h0a, c0a) = (
            self.state_arg::<T>("h0", h0, b)?,
            self.state_arg::<T>("c0", c0, b)?,
        );
        let rows: Vec<usize> = if self.config.pooling == Pooling::PerStep {
            vec![b, t]
        } else {
            vec![b]
        };
        let is_ce = matches!(loss.loss, Loss::CrossEntropy { .. });
        let (ya_f, ya_i);
        let targets = if is_ce {
            let a = y.cast::<PyArrayDyn<i64>>().map_err(|_| {
                error(
                    py,
                    Kind::DType,
                    format!("y: expected a numpy.ndarray of int64 class ids of shape {rows:?}"),
                )
            })?;
            ya_i = a
                .try_readonly()
                .map_err(|e| bad(py, format!("y: cannot be borrowed ({e})")))?;
            check_shape(py, "y", ya_i.shape(), &rows)?;
            Targets::Classes(ya_i.as_slice().map_err(|e| bad(py, format!("y: {e}")))?)
        } else {
            ya_f = readonly::<T>("y", y)?;
            let mut want = rows.clone();
            want.push(self.config.outputs);
            check_shape(py, "y", ya_f.shape(), &want)?;
            Targets::Values(slice("y", &ya_f)?)
        };
        let input = match &xa {
            XArr::Dense(a) => ModelInput::Dense(slice("x", a)?),
            XArr::Tokens(a) => {
                ModelInput::Tokens(a.as_slice().map_err(|e| bad(py, format!("x: {e}")))?)
            }
        };
        let batch = ModelBatch {
            input,
            batch: b,
            seq_len: t,
            lengths: lengths.as_deref(),
            h0: h0a.as_ref().map(|a| slice("h0", a)).transpose()?,
            c0: c0a.as_ref().map(|a| slice("c0", a)).transpose()?,
        };
        let per_step = self.config.pooling == Pooling::PerStep;
        let r = py.detach(|| {
            guarded(|| -> lstmrs_core::Result<_> {
                match mode {
                    Mode::Update(opt, lr, clip) => {
                        let mut scratch = self.scratch.lock();
                        let grad = T::scratch(&mut scratch);
                        let mut m = self.model.write();
                        let m = T::model_mut(&mut m).expect("dtype checked at construction");
                        grad.resize(m.num_params(), <T as Scalar>::from_f64(0.0));
                        let mut o = opt.inner.lock();
                        let o = T::optimizer(&mut o).ok_or(lstmrs_core::Error::Value {
                            arg: "optimizer",
                            expected: format!("an optimizer of {}", T::NAME),
                            got: "one of the other dtype".into(),
                        })?;
                        let r =
                            m.train_step(&batch, targets, &loss.loss, seed, o, lr, clip, grad)?;
                        Ok((r.loss, r.grad_norm, None, r.output))
                    }
                    Mode::Grad { training } => {
                        let m = self.model.read();
                        let m = T::model(&m).expect("dtype checked at construction");
                        let mut grad = vec![<T as Scalar>::from_f64(0.0); m.num_params()];
                        let r = m.loss_and_grad(
                            &batch, targets, &loss.loss, training, seed, &mut grad,
                        )?;
                        Ok((r.loss, f64::NAN, Some(grad), r.output))
                    }
                    Mode::Into(grad, clip) => {
                        let m = self.model.read();
                        let m = T::model(&m).expect("dtype checked at construction");
                        let r = m.loss_and_grad(&batch, targets, &loss.loss, true, seed, grad)?;
                        // The fused step's clipping (`Model::train_step`), on the caller's buffer.
                        let norm = threads::install_for(grad.len(), || {
                            let norm = match clip.max_norm {
                                Some(max) => clip_grad_norm(grad, max, 2.0, false)?,
                                None => grad_norm(grad, 2.0)?,
                            };
                            if let Some(v) = clip.max_value {
                                clip_grad_value(grad, v)?;
                            }
                            Ok::<_, lstmrs_core::Error>(norm)
                        })?;
                        Ok((r.loss, norm, None, r.output))
                    }
                    Mode::Loss => {
                        let m = self.model.read();
                        let m = T::model(&m).expect("dtype checked at construction");
                        let out = m.predict(&batch)?;
                        // The per-step length mask of `Model::loss_and_grad`.
                        let mask: Option<Vec<bool>> = match (per_step, batch.lengths) {
                            (true, Some(l)) => Some((0..b * t).map(|k| k % t < l[k / t]).collect()),
                            _ => None,
                        };
                        // The loss's gradient w.r.t. the outputs is a by-product: the output's
                        // size, not the model's.
                        let mut d = vec![<T as Scalar>::from_f64(0.0); out.output.len()];
                        let value = loss.loss.value_and_grad(
                            &out.output,
                            self.config.outputs,
                            targets,
                            mask.as_deref(),
                            &mut d,
                        )?;
                        Ok((value, f64::NAN, None, out))
                    }
                }
            })
        });
        let (value, norm, grad, out) = lift(py, r)?;
        let (h_n, c_n) = self.states(py, b, out.h_n, out.c_n)?;
        let output = to_array(py, out.output, &self.outputs_shape(b, t))?;
        let grad = match grad {
            Some(g) => {
                let n = g.len();
                Some(to_array(py, g, &[n])?)
            }
            None => None,
        };
        Ok((value, norm, grad, (output, h_n, c_n)))
    }
}

/// What `ModelCore::train_t` does with a batch.
enum Mode<'a, T> {
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

/// Scratch gradient buffer of the element type.
trait Scratch: Sized {
    fn scratch(s: &mut (Vec<f32>, Vec<f64>)) -> &mut Vec<Self>;
}
impl Scratch for f32 {
    fn scratch(s: &mut (Vec<f32>, Vec<f64>)) -> &mut Vec<f32> {
        &mut s.0
    }
}
impl Scratch for f64 {
    fn scratch(s: &mut (Vec<f32>, Vec<f64>)) -> &mut Vec<f64> {
        &mut s.1
    }
}

#[pymethods]
impl ModelCore {
    #[new]
    #[pyo3(signature = (config_json, dtype="float32", seed=0))]
    fn new(py: Python<'_>, config_json: &str, dtype: &str, seed: u64) -> PyResult<Self> {
        let config = parse_config(py, config_json)?;
        let dt = parse_dtype(py, dtype)?;
        let model = by_dtype!(dt, T => {
            let m = Model::<T>::new(config.clone(), seed).map_err(|e| core_error(py, e))?;
            <T as ModelWrap>::wrap(m)
        });
        Ok(ModelCore {
            config_json: config_json.to_string(),
            config,
            dtype: dt,
            model: ForkRwLock::new(model),
            scratch: ForkMutex::new((Vec::new(), Vec::new())),
        })
    }

    #[getter]
    fn config_json(&self) -> &str {
        &self.config_json
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        match self.dtype {
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }

    /// Where the recurrent layers run: `"cpu"` or `"gpu"`.
    #[getter]
    fn device(&self) -> &'static str {
        let m = self.model.read();
        match &*m {
            AnyModel::F32(m) => m.device().name(),
            AnyModel::F64(m) => m.device().name(),
        }
    }

    /// Moves the recurrent layers to `device` (`"cpu"` or `"gpu"`); refused with the reason when
    /// this build, this machine or this model cannot run there.
    fn set_device(&self, py: Python<'_>, device: &str) -> PyResult<()> {
        let device = Device::parse(device).map_err(|e| core_error(py, e))?;
        let mut m = self.model.write();
        match &mut *m {
            AnyModel::F32(m) => m.set_device(device),
            AnyModel::F64(m) => m.set_device(device),
        }
        .map_err(|e| core_error(py, e))
    }

    #[getter]
    fn num_params(&self) -> usize {
        let m = self.model.read();
        match &*m {
            AnyModel::F32(m) => m.num_params(),
            AnyModel::F64(m) => m.num_params(),
        }
    }

    /// `[(name, shape), ...]` in the flat buffer's order.
    fn param_specs(&self) -> Vec<(String, Vec<usize>)> {
        let m = self.model.read();
        let specs = match &*m {
            AnyModel::F32(m) => m.specs().to_vec(),
            AnyModel::F64(m) => m.specs().to_vec(),
        };
        specs.into_iter().map(|s| (s.name, s.shape)).collect()
    }

    /// A copy of all weights, flat.
    fn get_flat<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        by_dtype!(self.dtype, T => {
            let data = {
                let m = self.model.read();
                T::model(&m).ok_or_else(|| bad(py, MISMATCH))?.params().to_vec()
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
            let m = T::model_mut(&mut m).ok_or_else(|| bad(py, MISMATCH))?;
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
            let m = T::model_mut(&mut m).ok_or_else(|| bad(py, MISMATCH))?;
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
        let (v, _, g, _) = by_dtype!(self.dtype, T => self.train_t::<T>(x, y, loss, Mode::Grad { training }, seed, lengths, h0, c0))?;
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
        let (v, norm, _, (out, h, c)) = by_dtype!(self.dtype, T =>
            self.train_t::<T>(x, y, loss, Mode::Update(optimizer, lr, clip), seed, lengths, h0, c0))?;
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
                let p = T::model(&m).ok_or_else(|| bad(py, MISMATCH))?.params().as_ptr_range();
                let g = gs.as_ptr_range();
                if g.start < p.end && p.start < g.end {
                    return Err(bad(py, "grad: must not share memory with the weights"));
                }
            }
            let (v, norm, _, (out, h, c)) =
                self.train_t::<T>(x, y, loss, Mode::Into(gs, clip), seed, lengths, h0, c0)?;
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
        let (v, _, _, (out, h, c)) = by_dtype!(self.dtype, T =>
            self.train_t::<T>(x, y, loss, Mode::Loss, 0, lengths, h0, c0))?;
        Ok((v, out, h, c))
    }

    fn __repr__(&self) -> String {
        format!("ModelCore({}, dtype={})", self.config_json, self.dtype())
    }
}

trait ModelWrap: Sized {
    fn wrap(m: Model<Self>) -> AnyModel;
    fn wrap_opt(o: Box<dyn Optimizer<Self>>) -> AnyOptimizer;
}
impl ModelWrap for f32 {
    fn wrap(m: Model<f32>) -> AnyModel {
        AnyModel::F32(m)
    }
    fn wrap_opt(o: Box<dyn Optimizer<f32>>) -> AnyOptimizer {
        AnyOptimizer::F32(o)
    }
}
impl ModelWrap for f64 {
    fn wrap(m: Model<f64>) -> AnyModel {
        AnyModel::F64(m)
    }
    fn wrap_opt(o: Box<dyn Optimizer<f64>>) -> AnyOptimizer {
        AnyOptimizer::F64(o)
    }
}

/// A fused optimizer over a model's flat weights.
#[pyclass(frozen, module = "lstmrs._lstmrs")]
pub struct OptimizerCore {
    name: String,
    dtype: DType,
    inner: ForkMutex<AnyOptimizer>,
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
        let inner = by_dtype!(dt, T => <T as ModelWrap>::wrap_opt(cfg.build::<T>(num_params).map_err(|e| core_error(py, e))?));
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
        by_dtype!(self.dtype, T => T::optimizer(&mut o).map_or(0, |o| o.steps()))
    }

    fn hyper_params(&self) -> Vec<(&'static str, f64)> {
        let mut o = self.inner.lock();
        by_dtype!(self.dtype, T => T::optimizer(&mut o).map(|o| o.hyper_params()).unwrap_or_default())
    }

    /// `{"kind": str, "step": int, "buffers": {name: float64 array}}`.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st: OptimizerState = {
            let mut o = self.inner.lock();
            by_dtype!(self.dtype, T => T::optimizer(&mut o).ok_or_else(|| bad(py, MISMATCH))?.state())
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
            let o = T::optimizer(&mut o).ok_or_else(|| bad(py, MISMATCH))?;
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
            let o = T::optimizer(&mut o).ok_or_else(|| bad(py, MISMATCH))?;
            o.step(ps, gs, lr).map_err(|e| core_error(py, e))
        })
    }
}

/// Streaming inference through a model: state kept in Rust, one step per call.
#[pyclass(frozen, module = "lstmrs._lstmrs")]
pub struct StepperCore {
    model: Py<ModelCore>,
    batch: usize,
    /// Multiply-adds of one step, to decide whether releasing the GIL pays off.
    work: usize,
    steps: AtomicU64,
    inner: ForkMutex<AnyStepper>,
}

/// Steps below this many multiply-adds (about 10 µs here) keep the GIL. Another Python thread
/// could run for only microseconds in that time, and re-taking the GIL from a thread that got it
/// can wait out its switch interval (5 ms by default): a latency spike a real-time loop cannot
/// afford. Larger steps release it, as every other long call of the bindings does.
const STEP_DETACH_MIN_WORK: usize = 1 << 18;

impl StepperCore {
    /// `step` for element type `T`: `x_t` already checked to be `[B, F]` (or `[F]`) of `T`, or
    /// `[B]` (or 0-d) int64 ids, C-contiguous; the output array is new.
    fn step_t<'py, T: ModelFloat>(
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
        let run = |m: &AnyModel, s: &mut AnyStepper, x: ModelInput<T>, out: &mut [T]| {
            let m = T::model(m).ok_or(MISMATCH.to_string())?;
            let s = T::stepper(s).ok_or(MISMATCH.to_string())?;
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
            match &*m {
                AnyModel::F32(m) => {
                    AnyStepper::F32(m.stepper(batch).map_err(|e| core_error(py, e))?)
                }
                AnyModel::F64(m) => {
                    AnyStepper::F64(m.stepper(batch).map_err(|e| core_error(py, e))?)
                }
            }
        };
        let work = {
            let mc = model.get();
            let rnn = lstmrs_core::network::forward_work(&mc.config.rnn, 1, batch);
            let m = mc.model.read();
            let params = match &*m {
                AnyModel::F32(m) => m.num_params(),
                AnyModel::F64(m) => m.num_params(),
            };
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
        match &mut *s {
            AnyStepper::F32(s) => s.reset(),
            AnyStepper::F64(s) => s.reset(),
        }
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
            let s = T::stepper(&mut s).ok_or_else(|| bad(py, MISMATCH))?;
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
            let s = T::stepper(&mut s).ok_or_else(|| bad(py, MISMATCH))?;
            s.set_state(slice("h", &ha)?, ca.as_ref().map(|a| slice("c", a)).transpose()?)
                .map_err(|e| core_error(py, e))
        })
    }

    #[getter]
    fn batch(&self) -> usize {
        self.batch
    }
}
