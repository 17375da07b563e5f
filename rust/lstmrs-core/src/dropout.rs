//! Random masks for regularisation, reproducible from a seed: dropout between stacked layers,
//! variational (per-sequence) dropout of inputs and recurrent states, and zoneout.
//!
//! Every mask is drawn from its own ChaCha8 stream keyed by `(seed, purpose, layer, direction)`,
//! so the reference implementation and the fast path draw the same masks and adding one kind of
//! regularisation never changes the masks of another.

use crate::scalar::Scalar;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a mask is for; part of its stream key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskKind {
    /// Between stacked layers, `[T, B, I]`, fresh at every step.
    Dropout,
    /// Variational dropout of a layer's input, `[B, I]`, the same at every step.
    VariationalInput,
    /// Variational dropout of the recurrent state before `W_hh`, `[B, H]`.
    VariationalState,
    /// Zoneout of the hidden state, `[T, B, H]`: 1 keeps the previous value.
    ZoneoutHidden,
    /// Zoneout of the LSTM cell state.
    ZoneoutCell,
}

fn stream(seed: u64, kind: MaskKind, layer: usize, dir: usize) -> ChaCha8Rng {
    let key = (kind as u64) << 56 | (dir as u64) << 48 | layer as u64;
    ChaCha8Rng::seed_from_u64(seed ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// `len` draws: `hit` with probability `p`, else `miss`.
pub fn bernoulli_mask<T: Scalar>(
    seed: u64,
    kind: MaskKind,
    layer: usize,
    dir: usize,
    len: usize,
    p: f64,
    hit: T,
    miss: T,
) -> Vec<T> {
    let mut rng = stream(seed, kind, layer, dir);
    (0..len)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            if u < p {
                hit
            } else {
                miss
            }
        })
        .collect()
}

/// The inverted-dropout mask applied to the input of layer `layer` (>= 1): each element is 0 with
/// probability `p`, else `1/(1-p)`.
pub fn dropout_mask<T: Scalar>(seed: u64, layer: usize, len: usize, p: f64) -> Vec<T> {
    let keep = T::from_f64(1.0 / (1.0 - p));
    bernoulli_mask(seed, MaskKind::Dropout, layer, 0, len, p, T::zero(), keep)
}
