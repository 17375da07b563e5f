//! A whole sequence model: input layer, recurrent stack, pooling, dense head and loss, with all
//! weights in one flat buffer so that a training step is one call and the optimizer one loop.
//!
//! Shape legend: `B` sequences, `T` steps, `F` input features (or `E` embedding size), `H` hidden
//! units, `D` directions, `P` pooled features (`D*H`), `O` outputs, `N` head rows (`B*T` per-step,
//! else `B`).

mod config_json;
mod dense;
mod explain;
mod loss;
mod pooling;
mod stepper;

pub use crate::device::Device;
pub use dense::Activation;
pub use explain::{InputGradient, ModelTrace};
pub use loss::{Loss, Targets};
pub use pooling::Pooling;
pub use stepper::ModelStepper;

use crate::config::RnnConfig;
use crate::device;
use crate::error::{check_len, Error, Result};
use crate::memory;
use crate::network::{self, Batch, ForwardOptions, GradOutputs, Layout, Regularization};
use crate::optim::{clip_grad_norm, clip_grad_value, grad_norm, Optimizer};
use crate::params::{
    param_count, param_specs, param_specs_with_init, InitRule, ParamSpec, RnnWeights,
};
use crate::scalar::Scalar;
use crate::threads;
use pooling::{AttentionCache, AttentionParams};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What the model reads at each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Real features `[B, T, F]`.
    Dense { features: usize },
    /// Token ids `[B, T]` looked up in an `[vocab, dim]` embedding.
    Embedding { vocab: usize, dim: usize },
}

/// Architecture of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub input: InputKind,
    /// Its `input_size` must equal the features or the embedding size.
    pub rnn: RnnConfig,
    /// Dropout between recurrent layers while training.
    pub dropout: f64,
    /// Variational dropout and zoneout of the recurrent layers.
    pub regularization: Regularization,
    pub pooling: Pooling,
    /// Sizes of the hidden dense layers of the head (may be empty).
    pub head_hidden: Vec<usize>,
    pub activation: Activation,
    pub outputs: usize,
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        let want = match self.input {
            InputKind::Dense { features } => features,
            InputKind::Embedding { vocab, dim } => {
                if vocab == 0 {
                    return Err(value("vocab_size", "at least 1", 0));
                }
                dim
            }
        };
        if self.rnn.input_size != want {
            return Err(value(
                "rnn.input_size",
                &format!("{want} (the input layer's width)"),
                self.rnn.input_size,
            ));
        }
        if self.outputs == 0 {
            return Err(value("outputs", "at least 1", 0));
        }
        if let Some(&h) = self.head_hidden.iter().find(|&&h| h == 0) {
            return Err(value("head_hidden", "sizes of at least 1", h));
        }
        if let Pooling::Attention { units: 0 } = self.pooling {
            return Err(value("attention_units", "at least 1", 0));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Value {
                arg: "dropout",
                expected: "a probability in [0, 1)".into(),
                got: self.dropout.to_string(),
            });
        }
        Ok(())
    }

    /// Checks that the parameters fit under the memory ceiling, in arithmetic that cannot
    /// overflow, before [`Model::new`] lays them out.
    pub fn check_memory<T>(&self) -> Result<()> {
        crate::params::check_param_memory::<T>(&self.rnn)?;
        let sz = std::mem::size_of::<T>();
        let embedding = match self.input {
            InputKind::Embedding { vocab, dim } => memory::bytes_of(sz, &[vocab, dim]),
            InputKind::Dense { .. } => Some(0),
        };
        memory::check("embedding", embedding)?;
        let p = (self.rnn.state_size() as u128).checked_mul(self.rnn.num_directions() as u128);
        let attention = match self.pooling {
            Pooling::Attention { units } => p
                .and_then(|p| p.checked_add(2))
                .and_then(|w| w.checked_mul(units as u128))
                .and_then(|n| n.checked_mul(sz as u128)),
            _ => Some(0),
        };
        memory::check("attention_units", attention)?;
        let mut dims: Vec<u128> = p.into_iter().collect();
        dims.extend(self.head_hidden.iter().map(|&h| h as u128));
        dims.push(self.outputs as u128);
        let head = dims.windows(2).try_fold(0u128, |acc, d| {
            acc.checked_add(d[0].checked_add(1)?.checked_mul(d[1])?)
        });
        memory::check("head_hidden", head.and_then(|n| n.checked_mul(sz as u128)))?;
        let rnn = crate::params::param_count(&self.rnn) as u128;
        let total = [embedding, attention, head.map(|n| n * sz as u128)]
            .into_iter()
            .try_fold(rnn * sz as u128, |acc, b| acc.checked_add(b?));
        memory::check("parameters", total)
    }

    fn head_dims(&self) -> Vec<usize> {
        let mut dims = vec![self.rnn.output_size()];
        dims.extend(&self.head_hidden);
        dims.push(self.outputs);
        dims
    }
}

fn value(arg: &'static str, expected: &str, got: usize) -> Error {
    Error::Value {
        arg,
        expected: expected.into(),
        got: got.to_string(),
    }
}

/// Where each part of the model sits in the flat buffer.
#[derive(Debug, Clone)]
struct PartOffsets {
    embedding: Option<usize>,
    rnn: usize,
    /// `(w, b, v)` offsets.
    attention: Option<(usize, usize, usize)>,
    /// `(w, b)` offsets of each dense layer.
    dense: Vec<(usize, usize)>,
}

/// A model's input batch.
#[derive(Debug, Clone, Copy)]
pub enum ModelInput<'a, T> {
    /// `[B, T, F]`
    Dense(&'a [T]),
    /// `[B, T]`
    Tokens(&'a [i64]),
    /// `[B, T, E]`: vectors given in place of a token model's embedding lookup (e.g. points
    /// between two sequences' embeddings, for integrated gradients).
    Embedded(&'a [T]),
}

/// One batch: inputs (batch-first), optional lengths and initial recurrent states.
#[derive(Debug, Clone, Copy)]
pub struct ModelBatch<'a, T> {
    pub input: ModelInput<'a, T>,
    pub batch: usize,
    pub seq_len: usize,
    pub lengths: Option<&'a [usize]>,
    /// `[L*D, B, H]`
    pub h0: Option<&'a [T]>,
    /// `[L*D, B, H]`, LSTM only.
    pub c0: Option<&'a [T]>,
}

/// Outputs of a forward pass.
#[derive(Debug, Clone)]
pub struct ModelOutput<T> {
    /// `[B, T, O]` per-step, else `[B, O]`.
    pub output: Vec<T>,
    /// Final recurrent states `[L*D, B, H]` (for stateful training and streaming).
    pub h_n: Vec<T>,
    pub c_n: Option<Vec<T>>,
}

/// What the backward pass needs.
struct ModelTape<T> {
    tokens: Option<Vec<i64>>,
    rnn: device::RnnTape<T>,
    rnn_out: Vec<T>,
    attention: Option<AttentionCache<T>>,
    /// Input of each dense layer (`[N, in]`), then the logits.
    acts: Vec<Vec<T>>,
}

/// A sequence model with all weights in one flat buffer.
#[derive(Debug, Clone)]
pub struct Model<T> {
    config: ModelConfig,
    specs: Vec<ParamSpec>,
    layout: PartOffsets,
    params: Vec<T>,
    /// Where the recurrent layers run; not part of the architecture (a checkpoint trained on
    /// one device loads on another).
    device: Device,
}

/// Results of one loss-and-gradient evaluation.
#[derive(Debug, Clone)]
pub struct LossResult<T> {
    pub loss: f64,
    pub output: ModelOutput<T>,
}

impl<T: Scalar> Model<T> {
    /// A model initialised as PyTorch initialises its modules: embedding `N(0, 1)`, recurrent and
    /// dense weights and biases uniform in `±1/sqrt(fan)` (fan = hidden size for the recurrent
    /// layers, input width for dense layers). Reproducible from `seed`.
    pub fn new(config: ModelConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        config.check_memory::<T>()?;
        let mut specs: Vec<ParamSpec> = Vec::new();
        let mut push = |name: String, shape: Vec<usize>| {
            let offset = specs.last().map_or(0, |s| s.offset + s.len);
            let len = shape.iter().product();
            specs.push(ParamSpec {
                name,
                shape,
                offset,
                len,
            });
            offset
        };
        let embedding = match config.input {
            InputKind::Embedding { vocab, dim } => {
                Some(push("embedding.weight".into(), vec![vocab, dim]))
            }
            InputKind::Dense { .. } => None,
        };
        let mut rnn = None;
        for s in param_specs(&config.rnn) {
            let o = push(format!("rnn.{}", s.name), s.shape);
            rnn.get_or_insert(o);
        }
        let rnn = rnn.expect("a recurrent layer has parameters");
        let p = config.rnn.output_size();
        let attention = match config.pooling {
            Pooling::Attention { units } => Some((
                push("attention.weight".into(), vec![units, p]),
                push("attention.bias".into(), vec![units]),
                push("attention.vector".into(), vec![units]),
            )),
            _ => None,
        };
        let dims = config.head_dims();
        let dense = dims
            .windows(2)
            .enumerate()
            .map(|(k, d)| {
                (
                    push(format!("head.{k}.weight"), vec![d[1], d[0]]),
                    push(format!("head.{k}.bias"), vec![d[1]]),
                )
            })
            .collect();
        let layout = PartOffsets {
            embedding,
            rnn,
            attention,
            dense,
        };
        let total = specs.last().map_or(0, |s| s.offset + s.len);
        let mut model = Model {
            params: memory::try_filled("parameters", total, T::zero())?,
            config,
            specs,
            layout,
            device: Device::Cpu,
        };
        model.init(seed);
        Ok(model)
    }

    fn init(&mut self, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let uniform = |rng: &mut ChaCha8Rng| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let h = self.config.rnn.hidden_size as f64;
        // Unit parameters of custom cells carry their own rule (`param_specs_with_init`).
        let rnn_rules: std::collections::HashMap<String, InitRule> =
            param_specs_with_init(&self.config.rnn)
                .into_iter()
                .map(|(s, r)| (format!("rnn.{}", s.name), r))
                .collect();
        for spec in self.specs.clone() {
            if let Some(&InitRule::Constant(c)) = rnn_rules.get(&spec.name) {
                self.params[spec.offset..spec.offset + spec.len].fill(T::from_f64(c));
                continue;
            }
            let unit_bound = match rnn_rules.get(&spec.name) {
                Some(&InitRule::Uniform(a)) if self.config.rnn.cell.compiled().is_some() => Some(a),
                _ => None,
            };
            let fan = if spec.name.starts_with("rnn.") {
                h
            } else if spec.name.ends_with(".weight") {
                spec.shape[1] as f64
            } else {
                // A bias's fan-in is its layer's input width: the previous spec's second axis.
                let w = self
                    .specs
                    .iter()
                    .find(|s| s.offset + s.len == spec.offset)
                    .expect("weight before bias");
                w.shape.get(1).copied().unwrap_or(1) as f64
            };
            let dst = &mut self.params[spec.offset..spec.offset + spec.len];
            if spec.name == "embedding.weight" {
                // Box-Muller from the same stream: N(0, 1) like nn.Embedding.
                for v in dst.iter_mut() {
                    let (u1, u2) = (uniform(&mut rng).max(1e-300), uniform(&mut rng));
                    *v = T::from_f64((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos());
                }
            } else {
                let bound = unit_bound.unwrap_or(1.0 / fan.sqrt());
                for v in dst.iter_mut() {
                    *v = T::from_f64((2.0 * uniform(&mut rng) - 1.0) * bound);
                }
            }
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn device(&self) -> Device {
        self.device
    }
    /// Moves the recurrent layers to `device`. Refused, with the reason, when this build or this
    /// model cannot run there (no `gpu` feature, f64, a custom cell, variational dropout or
    /// zoneout, no adapter).
    pub fn set_device(&mut self, device: Device) -> Result<()> {
        device::check_runs::<T>(device, &self.config.rnn, &self.config.regularization)?;
        self.device = device;
        Ok(())
    }
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }
    pub fn params(&self) -> &[T] {
        &self.params
    }
    pub fn params_mut(&mut self) -> &mut [T] {
        &mut self.params
    }
    pub fn num_params(&self) -> usize {
        self.params.len()
    }

    /// Multiply-adds of a forward pass over `x`, to decide whether threads pay off.
    fn work(&self, x: &ModelBatch<T>) -> usize {
        let rows = x.batch * x.seq_len;
        network::forward_work(&self.config.rnn, x.seq_len, x.batch)
            + rows * self.params.len() / x.seq_len.max(1)
    }

    fn rnn_weights(&self) -> RnnWeights<'_, T> {
        let n = param_count(&self.config.rnn);
        RnnWeights::new(
            self.config.rnn,
            &self.params[self.layout.rnn..self.layout.rnn + n],
        )
        .expect("layout")
    }

    fn slice(&self, offset: usize, len: usize) -> &[T] {
        &self.params[offset..offset + len]
    }

    fn check_batch(&self, x: &ModelBatch<T>) -> Result<()> {
        let (b, t) = (x.batch, x.seq_len);
        match (x.input, self.config.input) {
            (ModelInput::Dense(v), InputKind::Dense { features }) => {
                check_len("x", v.len(), &[b, t, features])
            }
            (ModelInput::Tokens(ids), InputKind::Embedding { vocab, .. }) => {
                check_len("x", ids.len(), &[b, t])?;
                match ids.iter().find(|&&i| i < 0 || i as u64 >= vocab as u64) {
                    Some(bad) => Err(Error::Value {
                        arg: "x",
                        expected: format!("token ids in 0..{vocab}"),
                        got: bad.to_string(),
                    }),
                    None => Ok(()),
                }
            }
            (ModelInput::Embedded(v), InputKind::Embedding { dim, .. }) => {
                check_len("x", v.len(), &[b, t, dim])
            }
            (ModelInput::Embedded(_), InputKind::Dense { .. }) => Err(Error::Value {
                arg: "x",
                expected: "float features [B, T, F] (the model has no embedding)".into(),
                got: "embedded vectors".into(),
            }),
            (ModelInput::Dense(_), InputKind::Embedding { .. }) => Err(Error::Value {
                arg: "x",
                expected: "integer token ids [B, T] for a model with an embedding".into(),
                got: "float features".into(),
            }),
            (ModelInput::Tokens(_), InputKind::Dense { .. }) => Err(Error::Value {
                arg: "x",
                expected: "float features [B, T, F]".into(),
                got: "integer token ids".into(),
            }),
        }
    }

    /// The head's row mask: valid steps of per-step heads, `None` otherwise.
    fn row_mask(&self, x: &ModelBatch<T>) -> Option<Vec<bool>> {
        let (b, t) = (x.batch, x.seq_len);
        match (self.config.pooling, x.lengths) {
            (Pooling::PerStep, Some(l)) => Some((0..b * t).map(|k| k % t < l[k / t]).collect()),
            _ => None,
        }
    }

    fn run_forward(
        &self,
        x: &ModelBatch<T>,
        training: bool,
        seed: u64,
        keep: bool,
    ) -> Result<(ModelOutput<T>, Option<ModelTape<T>>)> {
        self.check_batch(x)?;
        let cfg = &self.config;
        let (b, t) = (x.batch, x.seq_len);
        let embedded;
        let rnn_input: &[T] = match x.input {
            ModelInput::Dense(v) | ModelInput::Embedded(v) => v,
            ModelInput::Tokens(ids) => {
                let (off, dim) = match cfg.input {
                    InputKind::Embedding { dim, .. } => {
                        (self.layout.embedding.expect("embedding"), dim)
                    }
                    InputKind::Dense { .. } => unreachable!("checked"),
                };
                memory::check(
                    "x",
                    memory::bytes_of(std::mem::size_of::<T>(), &[ids.len(), dim]),
                )?;
                let mut e = Vec::with_capacity(ids.len() * dim);
                for &id in ids {
                    e.extend_from_slice(self.slice(off + id as usize * dim, dim));
                }
                embedded = e;
                &embedded
            }
        };
        let rnn_out = device::forward(
            self.device,
            self.rnn_weights(),
            &Batch {
                input: rnn_input,
                layout: Layout::BatchFirst,
                seq_len: t,
                batch: b,
                h0: x.h0,
                c0: x.c0,
                lengths: x.lengths,
            },
            &ForwardOptions {
                training,
                dropout: cfg.dropout,
                seed,
                keep_tape: keep,
            },
            &cfg.regularization,
        )?;
        let p = cfg.rnn.output_size();
        let (mut rows, n, attention) = match cfg.pooling {
            Pooling::PerStep => (rnn_out.output.clone(), b * t, None),
            Pooling::Last => (self.last_rows(&rnn_out.h_n, b), b, None),
            Pooling::Mean => (
                pooling::mean_forward(&rnn_out.output, b, t, p, x.lengths),
                b,
                None,
            ),
            Pooling::Attention { .. } => {
                let (r, c) = pooling::attention_forward(
                    &self.attention_params(),
                    &rnn_out.output,
                    b,
                    t,
                    p,
                    x.lengths,
                );
                (r, b, Some(c))
            }
        };
        let dims = cfg.head_dims();
        let mut acts = Vec::new();
        for (k, &(w, bias)) in self.layout.dense.iter().enumerate() {
            let (inp, out) = (dims[k], dims[k + 1]);
            let mut y = dense::forward(
                &rows,
                n,
                self.slice(w, out * inp),
                self.slice(bias, out),
                out,
            );
            if k + 1 < self.layout.dense.len() {
                cfg.activation.apply(&mut y);
            }
            acts.push(std::mem::replace(&mut rows, y));
        }
        let output = ModelOutput {
            output: rows,
            h_n: rnn_out.h_n,
            c_n: rnn_out.c_n,
        };
        let tape = rnn_out.tape.map(|rnn| ModelTape {
            tokens: match x.input {
                ModelInput::Tokens(ids) => Some(ids.to_vec()),
                ModelInput::Dense(_) | ModelInput::Embedded(_) => None,
            },
            rnn,
            rnn_out: rnn_out.output,
            attention,
            acts,
        });
        Ok((output, tape))
    }

    /// Top layer's final states, directions side by side: `[B, D*S]` (`S`: `h`'s size).
    fn last_rows(&self, h_n: &[T], b: usize) -> Vec<T> {
        let (h, nd, top) = (
            self.config.rnn.state_size(),
            self.config.rnn.num_directions(),
            self.config.rnn.num_layers - 1,
        );
        let mut rows = vec![T::zero(); b * nd * h];
        for d in 0..nd {
            for i in 0..b {
                rows[(i * nd + d) * h..][..h]
                    .copy_from_slice(&h_n[((top * nd + d) * b + i) * h..][..h]);
            }
        }
        rows
    }

    fn attention_params(&self) -> AttentionParams<'_, T> {
        let (w, b, v) = self.layout.attention.expect("attention pooling");
        let units = self.params[b..v].len();
        AttentionParams {
            w: self.slice(w, units * self.config.rnn.output_size()),
            b: self.slice(b, units),
            v: self.slice(v, units),
        }
    }

    /// Inference: the head's output for a batch.
    pub fn predict(&self, x: &ModelBatch<T>) -> Result<ModelOutput<T>> {
        threads::install_for(self.work(x), || self.run_forward(x, false, 0, false)).map(|(o, _)| o)
    }

    /// Loss of a batch and its gradient with respect to every parameter, written into `grad`
    /// (same layout as `params`). `training` enables dropout, drawn from `seed`.
    pub fn loss_and_grad(
        &self,
        x: &ModelBatch<T>,
        targets: Targets<T>,
        loss: &Loss,
        training: bool,
        seed: u64,
        grad: &mut [T],
    ) -> Result<LossResult<T>> {
        check_len("grad", grad.len(), &[self.params.len()])?;
        threads::install_for(3 * self.work(x), || {
            let (output, tape) = self.run_forward(x, training, seed, true)?;
            let mut tape = tape.expect("tape kept");
            let outs = self.config.outputs;
            let mut d_logits = vec![T::zero(); output.output.len()];
            let mask = self.row_mask(x);
            let value = loss.value_and_grad(
                &output.output,
                outs,
                targets,
                mask.as_deref(),
                &mut d_logits,
            )?;
            grad.fill(T::zero());
            self.backward(x, &mut tape, d_logits, grad, true)?;
            Ok(LossResult {
                loss: value,
                output,
            })
        })
    }

    /// Backpropagates `d_logits` into `grad` (same layout as `params`); returns the gradient of
    /// the recurrent layers' input `[B, T, F]` (the embedded vectors for token models). Without
    /// `rnn_params` the recurrent layers' part of `grad` is left as it is (not computed). With
    /// them the recurrent tape is used up (`network::backward_consuming`: same gradients, less
    /// memory), so the tape serves one call.
    fn backward(
        &self,
        x: &ModelBatch<T>,
        tape: &mut ModelTape<T>,
        d_logits: Vec<T>,
        grad: &mut [T],
        rnn_params: bool,
    ) -> Result<Vec<T>> {
        let cfg = &self.config;
        let (b, t, p) = (x.batch, x.seq_len, cfg.rnn.output_size());
        let n = if cfg.pooling == Pooling::PerStep {
            b * t
        } else {
            b
        };
        let dims = cfg.head_dims();
        let mut d = d_logits;
        for (k, &(w, bias)) in self.layout.dense.iter().enumerate().rev() {
            let (inp, out) = (dims[k], dims[k + 1]);
            let wv = self.slice(w, out * inp);
            let (gw, gb) = two_mut(grad, (w, out * inp), (bias, out));
            let dx = dense::backward(&tape.acts[k], n, wv, &d, out, gw, gb, true).expect("dx");
            d = dx;
            if k > 0 {
                cfg.activation.backprop(&tape.acts[k], &mut d);
            }
        }
        let mut d_hn = None;
        let d_out = match cfg.pooling {
            Pooling::PerStep => Some(d),
            Pooling::Mean => Some(pooling::mean_backward(&d, b, t, p, x.lengths)),
            Pooling::Attention { units } => {
                let (wo, bo, vo) = self.layout.attention.expect("attention");
                let mut gw = vec![T::zero(); units * p];
                let mut gb = vec![T::zero(); units];
                let mut gv = vec![T::zero(); units];
                let cache = tape.attention.as_ref().expect("attention cache");
                let d_out = pooling::attention_backward(
                    &self.attention_params(),
                    cache,
                    &tape.rnn_out,
                    &d,
                    b,
                    t,
                    p,
                    x.lengths,
                    &mut gw,
                    &mut gb,
                    &mut gv,
                );
                grad[wo..wo + gw.len()].copy_from_slice(&gw);
                grad[bo..bo + units].copy_from_slice(&gb);
                grad[vo..vo + units].copy_from_slice(&gv);
                Some(d_out)
            }
            Pooling::Last => {
                let (h, nd, top) = (
                    cfg.rnn.state_size(),
                    cfg.rnn.num_directions(),
                    cfg.rnn.num_layers - 1,
                );
                let mut g = vec![T::zero(); cfg.rnn.num_layers * nd * b * h];
                for dir in 0..nd {
                    for i in 0..b {
                        g[((top * nd + dir) * b + i) * h..][..h]
                            .copy_from_slice(&d[(i * nd + dir) * h..][..h]);
                    }
                }
                d_hn = Some(g);
                None
            }
        };
        let grads = GradOutputs {
            output: d_out.as_deref(),
            h_n: d_hn.as_deref(),
            c_n: None,
        };
        let rg = if rnn_params {
            device::backward_consuming(self.rnn_weights(), &mut tape.rnn, &grads)?
        } else {
            device::backward(self.rnn_weights(), &tape.rnn, &grads, false)?
        };
        grad[self.layout.rnn..self.layout.rnn + rg.params.len()].copy_from_slice(&rg.params);
        if let (Some(ids), InputKind::Embedding { dim, .. }, Some(off)) =
            (&tape.tokens, cfg.input, self.layout.embedding)
        {
            // Scatter-add in input order: deterministic.
            for (k, &id) in ids.iter().enumerate() {
                let dst = &mut grad[off + id as usize * dim..][..dim];
                dst.iter_mut()
                    .zip(&rg.input[k * dim..(k + 1) * dim])
                    .for_each(|(g, &v)| *g += v);
            }
        }
        Ok(rg.input)
    }
}

/// Gradient clipping applied before the optimizer step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Clip {
    /// Scale gradients to at most this global 2-norm.
    pub max_norm: Option<f64>,
    /// Clamp every gradient to `[-v, v]`.
    pub max_value: Option<f64>,
}

/// Results of one training step.
#[derive(Debug, Clone)]
pub struct StepResult<T> {
    pub loss: f64,
    /// Global 2-norm of the gradient before clipping.
    pub grad_norm: f64,
    pub output: ModelOutput<T>,
}

impl<T: Scalar> Model<T> {
    /// One whole training step: forward with dropout from `seed`, loss, backpropagation through
    /// time, clipping and the optimizer update of the flat parameter buffer. `grad` is scratch
    /// space of `num_params` elements, kept by the caller so steps do not allocate it.
    #[allow(clippy::too_many_arguments)]
    pub fn train_step(
        &mut self,
        x: &ModelBatch<T>,
        targets: Targets<T>,
        loss: &Loss,
        seed: u64,
        optimizer: &mut dyn Optimizer<T>,
        lr: f64,
        clip: Clip,
        grad: &mut [T],
    ) -> Result<StepResult<T>> {
        if optimizer.len() != self.params.len() {
            return Err(Error::Value {
                arg: "optimizer",
                expected: format!("an optimizer built for {} parameters", self.params.len()),
                got: format!("one built for {}", optimizer.len()),
            });
        }
        let r = self.loss_and_clipped_grad(x, targets, loss, seed, clip, grad)?;
        threads::install_for(self.params.len(), || {
            optimizer.step(&mut self.params, grad, lr)
        })?;
        Ok(r)
    }

    /// The first half of [`Model::train_step`], for optimizers that update the weights
    /// themselves: loss and gradient in training mode (dropout from `seed`), then `clip` on
    /// `grad`. `grad_norm` is the norm before clipping.
    pub fn loss_and_clipped_grad(
        &self,
        x: &ModelBatch<T>,
        targets: Targets<T>,
        loss: &Loss,
        seed: u64,
        clip: Clip,
        grad: &mut [T],
    ) -> Result<StepResult<T>> {
        let r = self.loss_and_grad(x, targets, loss, true, seed, grad)?;
        let grad_norm = threads::install_for(grad.len(), || clip.apply(grad))?;
        Ok(StepResult {
            loss: r.loss,
            grad_norm,
            output: r.output,
        })
    }

    /// The loss of a batch in inference mode (no dropout, no tape, no gradient of the weights),
    /// as the mean over the rows that count, as in [`Model::loss_and_grad`].
    pub fn loss(
        &self,
        x: &ModelBatch<T>,
        targets: Targets<T>,
        loss: &Loss,
    ) -> Result<LossResult<T>> {
        let output = self.predict(x)?;
        let mask = self.row_mask(x);
        // The loss's gradient w.r.t. the outputs is a by-product: the output's size, not the
        // model's.
        let mut d = vec![T::zero(); output.output.len()];
        let value = loss.value_and_grad(
            &output.output,
            self.config.outputs,
            targets,
            mask.as_deref(),
            &mut d,
        )?;
        Ok(LossResult {
            loss: value,
            output,
        })
    }
}

impl Clip {
    /// Clips `grad` in place (the norm first, then the values) and returns its global 2-norm
    /// before clipping.
    pub fn apply<T: Scalar>(&self, grad: &mut [T]) -> Result<f64> {
        let norm = match self.max_norm {
            Some(max) => clip_grad_norm(grad, max, 2.0, false)?,
            None => grad_norm(grad, 2.0)?,
        };
        if let Some(v) = self.max_value {
            clip_grad_value(grad, v)?;
        }
        Ok(norm)
    }
}

/// Two disjoint mutable ranges `(offset, len)` of `v`; the first must come before the second.
fn two_mut<T>(v: &mut [T], a: (usize, usize), b: (usize, usize)) -> (&mut [T], &mut [T]) {
    assert!(a.0 + a.1 <= b.0);
    let (x, y) = v.split_at_mut(b.0);
    (&mut x[a.0..a.0 + a.1], &mut y[..b.1])
}
