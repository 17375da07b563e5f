//! Streaming a model: input layer, recurrent step and head, one time step per call, with every
//! buffer allocated once. Works for unidirectional models whose head reads the current step:
//! per-step heads, and last-step heads (the output after step `t` is what `predict` gives for the
//! sequence ending at `t`).

use super::{dense, InputKind, Model, ModelInput, Pooling};
use crate::error::{check_len, Error, Result};
use crate::scalar::Scalar;
use crate::stream::Stepper;

/// The running state of `B` streams through a model.
#[derive(Debug, Clone)]
pub struct ModelStepper<T> {
    rnn: Stepper<T>,
    /// `[B, I]` the recurrent layer's input (embedded tokens or features).
    input: Vec<T>,
    /// One buffer per head layer output, `[B, width]`; the first holds the recurrent output.
    acts: Vec<Vec<T>>,
}

impl<T: Scalar> Model<T> {
    /// A stepper for `batch` streams from zero states.
    pub fn stepper(&self, batch: usize) -> Result<ModelStepper<T>> {
        match self.config.pooling {
            Pooling::PerStep | Pooling::Last => {}
            other => {
                return Err(Error::Value {
                    arg: "pooling",
                    expected: "'per_step' or 'last' to stream (the others need the whole sequence)"
                        .into(),
                    got: format!("'{}'", other.name()),
                })
            }
        }
        let rnn = Stepper::new(self.rnn_weights(), batch)?;
        let dims = self.config.head_dims();
        Ok(ModelStepper {
            rnn,
            input: vec![T::zero(); batch * self.config.rnn.input_size],
            acts: dims.iter().map(|&d| vec![T::zero(); batch * d]).collect(),
        })
    }

    /// Advances every stream one step: `x` holds `[B, F]` features or `[B]` token ids; the
    /// head's output `[B, O]` is written to `out`.
    pub fn step(&self, s: &mut ModelStepper<T>, x: ModelInput<T>, out: &mut [T]) -> Result<()> {
        let b = s.rnn.batch();
        check_len("out", out.len(), &[b, self.config.outputs])?;
        match (x, self.config.input) {
            (ModelInput::Dense(v), InputKind::Dense { features }) => {
                check_len("x", v.len(), &[b, features])?;
                s.input.copy_from_slice(v);
            }
            (ModelInput::Tokens(ids), InputKind::Embedding { vocab, dim }) => {
                check_len("x", ids.len(), &[b])?;
                let off = self.layout.embedding.expect("embedding");
                for (row, &id) in s.input.chunks_exact_mut(dim).zip(ids) {
                    if id < 0 || id as u64 >= vocab as u64 {
                        return Err(Error::Value {
                            arg: "x",
                            expected: format!("token ids in 0..{vocab}"),
                            got: id.to_string(),
                        });
                    }
                    row.copy_from_slice(self.slice(off + id as usize * dim, dim));
                }
            }
            _ => return Err(Error::Value {
                arg: "x",
                expected:
                    "the model's input kind (features for dense input, token ids for an embedding)"
                        .into(),
                got: "the other kind".into(),
            }),
        }
        let weights = self.rnn_weights();
        s.rnn.step(weights, &s.input, &mut s.acts[0])?;
        let dims = self.config.head_dims();
        let last = self.layout.dense.len() - 1;
        for (k, &(w, bias)) in self.layout.dense.iter().enumerate() {
            let (inp, o) = (dims[k], dims[k + 1]);
            let (before, after) = s.acts.split_at_mut(k + 1);
            dense::forward_into(
                &before[k],
                b,
                self.slice(w, o * inp),
                self.slice(bias, o),
                &mut after[0],
            );
            if k < last {
                self.config.activation.apply(&mut after[0]);
            }
        }
        out.copy_from_slice(&s.acts[last + 1]);
        Ok(())
    }
}

impl<T: Scalar> ModelStepper<T> {
    pub fn batch(&self) -> usize {
        self.rnn.batch()
    }
    pub fn reset(&mut self) {
        self.rnn.reset();
    }
    /// `[L, B, H]`
    pub fn h(&self) -> &[T] {
        self.rnn.h()
    }
    /// `[L, B, H]`, empty for a GRU.
    pub fn c(&self) -> &[T] {
        self.rnn.c()
    }
    pub fn set_state(&mut self, h: &[T], c: Option<&[T]>) -> Result<()> {
        self.rnn.set_state(h, c)
    }
}
