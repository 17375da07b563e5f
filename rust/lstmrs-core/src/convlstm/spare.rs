//! Large buffers kept from one call to the next.
//!
//! A training loop calls `forward` and `backward` on same-sized batches again and again. Handing
//! each call the buffers of the call before (its work space, and the tape once it is dropped)
//! spares it the page faults and the kernel's zeroing of fresh memory, which took 6-13% of a
//! ConvLSTM training step at the benchmark's sizes even with the extension's mimalloc delaying its
//! purges. At most [`KEEP_BYTES`] are kept; beyond that a buffer is freed as usual.

use crate::scalar::Scalar;
use std::any::Any;
use std::sync::{Mutex, MutexGuard};

/// The most memory kept between calls.
const KEEP_BYTES: usize = 256 << 20;

/// Smaller buffers come from the allocator directly: they fit in its caches anyway.
const MIN_BYTES: usize = 64 << 10;

struct Kept {
    bytes: usize,
    /// `Vec<T>`s, empty, of either element type.
    buffers: Vec<Box<dyn Any + Send>>,
}

static KEPT: Mutex<Kept> = Mutex::new(Kept {
    bytes: 0,
    buffers: Vec::new(),
});

fn kept() -> MutexGuard<'static, Kept> {
    KEPT.lock().unwrap_or_else(|e| e.into_inner())
}

/// An empty vector with room for `n` values: the smallest kept one that fits, else a new one.
pub(crate) fn take<T: Scalar>(n: usize) -> Vec<T> {
    if n * std::mem::size_of::<T>() >= MIN_BYTES {
        let mut k = kept();
        let best = k
            .buffers
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.downcast_ref::<Vec<T>>().map(|v| (i, v.capacity())))
            .filter(|&(_, cap)| cap >= n)
            .min_by_key(|&(_, cap)| cap);
        if let Some((i, cap)) = best {
            k.bytes -= cap * std::mem::size_of::<T>();
            if let Ok(v) = k.buffers.swap_remove(i).downcast::<Vec<T>>() {
                return *v;
            }
        }
    }
    Vec::with_capacity(n)
}

/// `n` zeros, in a kept buffer when one fits.
pub(crate) fn zeros<T: Scalar>(n: usize) -> Vec<T> {
    let mut v = take(n);
    v.resize(n, T::zero());
    v
}

/// Keeps `v`'s memory for a later [`take`], unless that would pass [`KEEP_BYTES`].
pub(crate) fn give<T: Scalar>(mut v: Vec<T>) {
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes < MIN_BYTES {
        return;
    }
    v.clear();
    let mut k = kept();
    if k.bytes + bytes <= KEEP_BYTES {
        k.bytes += bytes;
        k.buffers.push(Box::new(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_and_small_ones_are_not_kept() {
        let n = MIN_BYTES; // values of 4 or 8 bytes: above the threshold
        let v: Vec<f64> = zeros(n);
        let at = v.as_ptr();
        give(v);
        let again: Vec<f64> = take(n / 2);
        assert_eq!(again.as_ptr(), at);
        assert!(again.is_empty() && again.capacity() >= n);
        // Another element type never gets it.
        give(again);
        let other: Vec<f32> = take(n);
        assert_ne!(other.as_ptr() as usize, at as usize);
        let small: Vec<f64> = zeros(4);
        assert_eq!(small, vec![0.0; 4]);
        give(small);
        assert!(kept().buffers.iter().all(|b| b
            .downcast_ref::<Vec<f64>>()
            .is_none_or(|v| v.capacity() * 8 >= MIN_BYTES)));
    }
}
