//! Explaining a model's outputs: the gradient of a weighted sum of its outputs with respect to
//! its input (the features, or a token model's embedded vectors), the attention weights, and a
//! trace of what the recurrent layers computed at every step.
//!
//! Attribution methods (gradient × input, integrated gradients) are built on
//! [`Model::input_gradient`]: the caller chooses the output by the gradient it passes in
//! (one-hot on a class, a forecast step, a next-character position), and integrated gradients
//! run many interpolated inputs through one call, which splits the rows over the thread pool.

use super::{Device, InputKind, Model, ModelBatch, ModelInput, Pooling};
use crate::device::RnnTape;
use crate::error::{check_len, Error, Result};
use crate::scalar::Scalar;
use crate::threads;
use crate::trace::{self, DirTrace};
use rayon::prelude::*;

/// Outputs of [`Model::input_gradient`].
#[derive(Debug, Clone)]
pub struct InputGradient<T> {
    /// `[B, O]`, or `[B, T, O]` per-step.
    pub output: Vec<T>,
    /// `[B, T, F]` (`[B, T, E]` for token models): `∂(Σ d_output · output) / ∂ input`, exactly
    /// zero on steps past each length.
    pub input_grad: Vec<T>,
    /// `[B, T]` attention-pooling weights (zero past each length); `None` without attention.
    pub attention: Option<Vec<T>>,
}

/// Outputs of [`Model::trace`].
#[derive(Debug, Clone)]
pub struct ModelTrace<T> {
    /// `[B, O]`, or `[B, T, O]` per-step.
    pub output: Vec<T>,
    /// Every layer and direction, layer-major (`[L*D]`).
    pub layers: Vec<DirTrace<T>>,
    /// `[B, T]` attention-pooling weights; `None` without attention.
    pub attention: Option<Vec<T>>,
}

/// Rows `r0..r1` of a batch; `h0`/`c0` (`[L*D, B, H]`, not row-contiguous) must be absent.
fn rows_of<'a, T>(x: &ModelBatch<'a, T>, r0: usize, r1: usize, width: usize) -> ModelBatch<'a, T> {
    let t = x.seq_len;
    ModelBatch {
        input: match x.input {
            ModelInput::Dense(v) => ModelInput::Dense(&v[r0 * t * width..r1 * t * width]),
            ModelInput::Embedded(v) => ModelInput::Embedded(&v[r0 * t * width..r1 * t * width]),
            ModelInput::Tokens(ids) => ModelInput::Tokens(&ids[r0 * t..r1 * t]),
        },
        batch: r1 - r0,
        seq_len: t,
        lengths: x.lengths.map(|l| &l[r0..r1]),
        h0: None,
        c0: None,
    }
}

impl<T: Scalar> Model<T> {
    /// Width of the recurrent layers' input: the features, or the embedding size.
    fn input_width(&self) -> usize {
        match self.config.input {
            InputKind::Dense { features } => features,
            InputKind::Embedding { dim, .. } => dim,
        }
    }

    /// Rows of the head's output per sequence: `T` per-step, else 1.
    fn output_rows(&self, t: usize) -> usize {
        if self.config.pooling == Pooling::PerStep {
            t
        } else {
            1
        }
    }

    /// A token model's embedding lookup: ids `[B, T]` -> vectors `[B, T, E]`.
    pub fn embed(&self, tokens: &[i64]) -> Result<Vec<T>> {
        let (vocab, dim) = match self.config.input {
            InputKind::Embedding { vocab, dim } => (vocab, dim),
            InputKind::Dense { .. } => {
                return Err(Error::Value {
                    arg: "x",
                    expected: "a model with a token embedding".into(),
                    got: "a model reading float features".into(),
                })
            }
        };
        let off = self.layout.embedding.expect("embedding");
        let mut out = Vec::with_capacity(tokens.len() * dim);
        for &id in tokens {
            if id < 0 || id as u64 >= vocab as u64 {
                return Err(Error::Value {
                    arg: "x",
                    expected: format!("token ids in 0..{vocab}"),
                    got: id.to_string(),
                });
            }
            out.extend_from_slice(self.slice(off + id as usize * dim, dim));
        }
        Ok(out)
    }

    /// The output for a batch (inference mode), and the gradient of `Σ d_output · output` with
    /// respect to the recurrent layers' input: the features `[B, T, F]`, or for token models the
    /// embedded vectors `[B, T, E]` (give `ModelInput::Embedded` to start from vectors). Rows of
    /// `d_output` on the padded steps of a per-step model are ignored. The rows are split over
    /// the thread pool, each part running one forward and one backward pass.
    pub fn input_gradient(&self, x: &ModelBatch<T>, d_output: &[T]) -> Result<InputGradient<T>> {
        self.check_batch(x)?;
        let (b, t, o) = (x.batch, x.seq_len, self.config.outputs);
        let per = self.output_rows(t);
        if self.config.pooling == Pooling::PerStep {
            check_len("d_output", d_output.len(), &[b, t, o])?;
        } else {
            check_len("d_output", d_output.len(), &[b, o])?;
        }
        let parts = if x.h0.is_some() || x.c0.is_some() || self.device != Device::Cpu {
            1
        } else {
            // Enough rows per part that each keeps its thread busy for a while.
            let by_work = (3 * self.work(x) / threads::SERIAL_MAX_WORK).max(1);
            threads::num_threads().min(b).min(by_work)
        };
        if parts <= 1 {
            return threads::install_for(3 * self.work(x), || self.input_gradient_one(x, d_output));
        }
        let w = self.input_width();
        let bounds: Vec<(usize, usize)> = (0..parts)
            .map(|k| (k * b / parts, (k + 1) * b / parts))
            .collect();
        let results: Vec<Result<InputGradient<T>>> = threads::install(|| {
            bounds
                .par_iter()
                .map(|&(r0, r1)| {
                    let part = rows_of(x, r0, r1, w);
                    let d = &d_output[r0 * per * o..r1 * per * o];
                    // Serial inside a part: the parts already occupy the pool.
                    threads::install_for(0, || self.input_gradient_one(&part, d))
                })
                .collect()
        });
        let mut all = InputGradient {
            output: Vec::with_capacity(b * per * o),
            input_grad: Vec::with_capacity(b * t * w),
            attention: None,
        };
        for r in results {
            let r = r?;
            all.output.extend(r.output);
            all.input_grad.extend(r.input_grad);
            if let Some(a) = r.attention {
                all.attention
                    .get_or_insert_with(|| Vec::with_capacity(b * t))
                    .extend(a);
            }
        }
        Ok(all)
    }

    fn input_gradient_one(&self, x: &ModelBatch<T>, d_output: &[T]) -> Result<InputGradient<T>> {
        let (output, tape) = self.run_forward(x, false, 0, true)?;
        let mut tape = tape.expect("tape kept");
        let o = self.config.outputs;
        let mut d = d_output.to_vec();
        if let Some(mask) = self.row_mask(x) {
            for (row, keep) in d.chunks_exact_mut(o).zip(mask) {
                if !keep {
                    row.fill(T::zero());
                }
            }
        }
        // The head's and attention's parameter gradients come on the way (small) and are
        // dropped; the recurrent layers' are skipped.
        let mut scratch = crate::memory::try_filled("parameters", self.params.len(), T::zero())?;
        let input_grad = self.backward(x, &mut tape, d, &mut scratch, false)?;
        Ok(InputGradient {
            output: output.output,
            input_grad,
            attention: tape.attention.as_ref().map(|c| c.weights().to_vec()),
        })
    }

    /// The output for a batch (inference mode) with every layer's and direction's gate
    /// activations and states over time (see [`crate::trace`]), and the attention weights. A
    /// model on the GPU is traced on the CPU (the trace reads the CPU tape).
    pub fn trace(&self, x: &ModelBatch<T>) -> Result<ModelTrace<T>> {
        let cpu;
        let m = if self.device == Device::Cpu {
            self
        } else {
            let mut c = self.clone();
            c.device = Device::Cpu;
            cpu = c;
            &cpu
        };
        threads::install_for(m.work(x), || {
            let (output, tape) = m.run_forward(x, false, 0, true)?;
            let tape = tape.expect("tape kept");
            let layers = match &tape.rnn {
                RnnTape::Cpu(t) => trace::trace(m.rnn_weights(), t)?,
                RnnTape::Gpu(_) => unreachable!("traced on the CPU"),
            };
            Ok(ModelTrace {
                output: output.output,
                layers,
                attention: tape.attention.as_ref().map(|c| c.weights().to_vec()),
            })
        })
    }
}
