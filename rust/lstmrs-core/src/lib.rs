//! lstmrs-core: LSTM and GRU networks with PyTorch's semantics, forward passes and
//! backpropagation through time on the CPU and, with the `gpu` feature, on a GPU.
//!
//! The public surface is small: describe a network with [`RnnConfig`], hold its weights in
//! [`RnnParams`] (one flat buffer, PyTorch's names), run [`forward`] over a [`Batch`] and, with a
//! tape kept, [`backward`] to get every gradient. [`mod@reference`] is a plain implementation of the
//! same mathematics that the fast path is tested against.
//!
//! Compute backends: the CPU kernels, and [`gpu`] (wgpu compute shaders, behind the cargo feature
//! `gpu`; without it a stand-in whose calls fail with one "not built" error). [`device`] is the
//! one seam that picks between them: both take the same `RnnWeights`, `Batch` and
//! `ForwardOptions` and return the same outputs, with one tape type ([`device::RnnTape`]).

pub mod activations;
#[doc(hidden)]
pub mod bench;
#[cfg(feature = "blas")]
pub mod blas;
pub mod cellexpr;
pub mod config;
pub mod convlstm;
pub mod cpu;
pub mod device;
pub mod dropout;
pub mod dtw;
pub mod error;
pub mod first_fit;
pub mod forklock;
mod gates;
pub mod gpu;
mod handoff;
pub mod lowp;
mod matmul;
mod matvec;
pub mod memory;
pub mod model;
pub mod network;
pub mod optim;
mod pack_cache;
mod packed_gemm;
pub mod params;
mod projection;
pub mod reference;
pub mod scalar;
pub mod seq2seq;
pub mod stepper;
mod sweep;
mod team_choice;
pub mod threads;
pub mod trace;

pub use config::{CellKind, RnnConfig};
pub use error::{Error, Result};
pub use network::{
    backward, backward_consuming, forward, forward_regularized, Batch, ForwardOptions,
    ForwardOutput, GradOutputs, Gradients, Layout, Regularization, Tape,
};
pub use params::{param_count, param_specs, ParamSpec, RnnParams, RnnWeights};
pub use scalar::{DType, Scalar};
