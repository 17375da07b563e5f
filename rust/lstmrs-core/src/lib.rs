//! lstmrs-core: LSTM and GRU networks with PyTorch's semantics, forward passes and
//! backpropagation through time on the CPU.
//!
//! The public surface is small: describe a network with [`RnnConfig`], hold its weights in
//! [`RnnParams`] (one flat buffer, PyTorch's names), run [`forward`] over a [`Batch`] and, with a
//! tape kept, [`backward`] to get every gradient. [`mod@reference`] is a plain implementation of the
//! same mathematics that the fast path is tested against.
//!
//! Compute backends: this crate is the CPU backend. A GPU backend plugs in at the same seam — it
//! takes the same `RnnParams`, `Batch` and `ForwardOptions` and returns the same outputs — and
//! lives behind a cargo feature so this build never compiles it.

pub mod activations;
pub mod cellexpr;
pub mod config;
pub mod convlstm;
pub mod dropout;
pub mod dtw;
pub mod error;
pub mod forklock;
mod gates;
#[cfg(feature = "gpu")]
pub mod gpu;
mod matmul;
pub mod memory;
pub mod model;
pub mod network;
pub mod optim;
pub mod params;
mod projection;
mod recurrent;
pub mod reference;
pub mod scalar;
pub mod seq2seq;
pub mod stream;
mod stream_kernel;
mod sweep;
pub mod threads;
pub mod trace;

pub use config::{CellKind, RnnConfig};
pub use error::{Error, Result};
pub use network::{
    backward, forward, forward_regularized, Batch, ForwardOptions, ForwardOutput, GradOutputs,
    Gradients, Layout, Regularization, Tape,
};
pub use params::{param_count, param_specs, ParamSpec, RnnParams, RnnWeights};
pub use scalar::{DType, Scalar};
