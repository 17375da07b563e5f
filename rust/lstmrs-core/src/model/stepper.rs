//! Step-by-step inference through a model ([`ModelStepper`]): input layer, recurrent step and
//! head, one time step per call, with every buffer allocated once. Works for unidirectional
//! models whose head reads the current step: per-step heads, and last-step heads (the output after step `t` is what `predict` gives for the
//! sequence ending at `t`).

use super::{dense, InputKind, Model, ModelInput, Pooling};
use crate::error::{check_len, Error, Result};
use crate::matvec::{self, Out, Product};
use crate::scalar::Scalar;
use crate::stepper::Stepper;

/// The running state of `B` streams through a model.
#[derive(Debug, Clone)]
pub struct ModelStepper<T> {
    rnn: Stepper<T>,
    /// `[B, I]` the recurrent layer's input for token models (embedded tokens); dense features
    /// are read from the caller's slice.
    input: Vec<T>,
    /// The recurrent output and each hidden head layer's output, `[B, width]`; the last head
    /// layer writes straight into the caller's `out`.
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
        let tokens = matches!(self.config.input, InputKind::Embedding { .. });
        Ok(ModelStepper {
            rnn,
            input: vec![
                T::zero();
                if tokens {
                    batch * self.config.rnn.input_size
                } else {
                    0
                }
            ],
            acts: dims[..dims.len() - 1]
                .iter()
                .map(|&d| vec![T::zero(); batch * d])
                .collect(),
        })
    }

    /// Advances every stream one step: `x` holds `[B, F]` features or `[B]` token ids; the
    /// head's output `[B, O]` is written to `out`.
    pub fn step(&self, s: &mut ModelStepper<T>, x: ModelInput<T>, out: &mut [T]) -> Result<()> {
        let b = s.rnn.batch();
        check_len("out", out.len(), &[b, self.config.outputs])?;
        let ModelStepper { rnn, input, acts } = s;
        let input: &[T] = match (x, self.config.input) {
            (ModelInput::Dense(v), InputKind::Dense { features }) => {
                check_len("x", v.len(), &[b, features])?;
                v
            }
            (ModelInput::Tokens(ids), InputKind::Embedding { vocab, dim }) => {
                check_len("x", ids.len(), &[b])?;
                let off = self.layout.embedding.expect("embedding");
                for (row, &id) in input.chunks_exact_mut(dim).zip(ids) {
                    if id < 0 || id as u64 >= vocab as u64 {
                        return Err(Error::Value {
                            arg: "x",
                            expected: format!("token ids in 0..{vocab}"),
                            got: id.to_string(),
                        });
                    }
                    row.copy_from_slice(self.slice(off + id as usize * dim, dim));
                }
                input
            }
            _ => return Err(Error::Value {
                arg: "x",
                expected:
                    "the model's input kind (features for dense input, token ids for an embedding)"
                        .into(),
                got: "the other kind".into(),
            }),
        };
        rnn.step(self.rnn_weights(), input, &mut acts[0])?;
        let small = rnn.uses_small_kernel();
        let last = self.layout.dense.len() - 1;
        for (k, &(w, bias)) in self.layout.dense.iter().enumerate() {
            let (before, after) = acts.split_at_mut(k + 1);
            let x = &before[k];
            let (dst, o): (&mut [T], usize) = if k == last {
                (&mut *out, self.config.outputs)
            } else {
                let o = after[0].len() / b;
                (&mut after[0], o)
            };
            let inp = x.len() / b;
            let (w, bias) = (self.slice(w, o * inp), self.slice(bias, o));
            if small {
                // A head of a few outputs is a handful of dot products: GEMM's call overhead
                // would exceed them.
                let p = Product { w, x, k: inp };
                let y = Out {
                    dst: &mut *dst,
                    ld: o,
                    bias: [Some(bias), None],
                };
                matvec::rows(o, b, p, None, y, None);
            } else {
                dense::forward_into(x, b, w, bias, dst);
            }
            if k < last {
                self.config.activation.apply(dst);
            }
        }
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
