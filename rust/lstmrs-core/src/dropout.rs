//! Dropout masks between stacked layers, reproducible from a seed.

use crate::scalar::Scalar;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The inverted-dropout mask applied to the input of layer `layer` (>= 1): each element is 0 with
/// probability `p`, else `1/(1-p)`. The stream depends only on `(seed, layer)`, so the reference
/// implementation and the fast path draw the same mask.
pub fn dropout_mask<T: Scalar>(seed: u64, layer: usize, len: usize, p: f64) -> Vec<T> {
    let keep = T::from_f64(1.0 / (1.0 - p));
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (layer as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (0..len)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            if u < p {
                T::zero()
            } else {
                keep
            }
        })
        .collect()
}
