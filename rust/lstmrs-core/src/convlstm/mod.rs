//! ConvLSTM (Shi et al. 2015) in the form Keras' `ConvLSTM2D` and Flax's `ConvLSTMCell` compute:
//! input `[B, T, C, H, W]`, gates from `conv(x_t, W_ih) + conv(h_{t-1}, W_hh) + b` (no
//! peepholes), stacked layers, forward and backpropagation through time in f32 and f64.
//!
//! [`config`] holds the sizes and the parameter layout, [`network`] the fast path (im2col + GEMM,
//! one rayon task per batch row), [`reference`] the same mathematics in plain loops.

mod cell;
pub mod config;
mod im2col;
pub mod network;
pub mod params;
pub mod reference;
mod spare;

pub use config::ConvLstmConfig;
pub use network::{backward, forward, ConvBatch, ConvForward, ConvGradients, ConvTape};
pub use params::ConvLstmParams;
