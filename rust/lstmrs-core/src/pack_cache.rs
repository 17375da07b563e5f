//! Packed weights kept across forward calls ([`PackCache`]).
//!
//! Each member of a sweep's team packs its share of the step weight into panels before the first
//! step (`packed_gemm`). Over a long sequence that is noise; in a short call it is a large part
//! of the call: an LSTM (B=32, T=1, I=8, H=64) inference took 33 µs, 23 with the packed weights
//! kept. Only inference sweeps of at most `sweep::KEEP_MAX_STEPS` steps keep theirs.
//! [`RnnParams`](crate::RnnParams) owns one cache and empties it in every method that can change
//! a weight (they all take `&mut self`), so a cached panel can never outlive the values it was
//! packed from: invalidation follows from the borrow rules rather than from a version count.
//!
//! A member takes its packed weight out of the cache for the length of its sweep and puts it
//! back after (a `Packed` holds per-product scratch and is not shared between threads), so two
//! calls running at once on one network each use their own: the second packs afresh.

use crate::packed_gemm::Packed;
use crate::scalar::Scalar;
use std::sync::Mutex;

/// Which product of which sweep a packed weight serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PackKey {
    pub layer: usize,
    pub dir: usize,
    pub role: PackRole,
    /// The hidden units the member owns.
    pub units: (usize, usize),
    /// The rows the panels were tiled for.
    pub rows: usize,
}

/// The weight a packed product multiplies by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PackRole {
    /// `W_hhᵀ` of the forward step.
    Recurrent,
    /// `[W_hhᵀ | W_ihᵀ | bias]` of the forward step with the input fused in (`fuses_input`).
    Fused,
    /// `W_ihᵀ` of the team's own input projection (`team_projects`).
    Input,
}

/// A network's packed weights, keyed on [`PackKey`]. Cloning gives an empty cache (a clone's
/// weights are its own) and every cache compares equal, so neither changes what the owning
/// [`RnnParams`](crate::RnnParams) derives.
pub(crate) struct PackCache<T> {
    entries: Mutex<Vec<(PackKey, Packed<T>)>>,
    /// Packed elements held at most (see [`MAX_COPIES`]).
    limit: usize,
}

/// Packed elements a cache holds at most, as a multiple of the network's parameter count: two
/// batch sizes' or team splits' worth (each member packs only its share, padding adds a little)
/// before the oldest are dropped, so a caller cycling through batch sizes does not grow it
/// without bound.
const MAX_COPIES: usize = 2;

impl<T: Scalar> PackCache<T> {
    /// An empty cache for a network of `params` parameters.
    pub fn new(params: usize) -> Self {
        PackCache {
            entries: Mutex::new(Vec::new()),
            limit: MAX_COPIES.saturating_mul(params.max(1)),
        }
    }

    /// The packed weight for `key`, taken out of the cache, else `pack()` run now. Hand it back
    /// with [`PackCache::put`] when the sweep is done.
    pub fn take(&self, key: PackKey, pack: impl FnOnce() -> Packed<T>) -> Packed<T> {
        let found = {
            let mut e = self.lock();
            e.iter().position(|(k, _)| *k == key).map(|i| e.remove(i).1)
        };
        found.unwrap_or_else(pack)
    }

    /// Keeps `packed` for the next call with `key`, dropping the oldest entries beyond the
    /// cache's limit. A concurrent call that put one back first wins.
    pub fn put(&self, key: PackKey, packed: Packed<T>) {
        let mut e = self.lock();
        if e.iter().any(|(k, _)| *k == key) {
            return;
        }
        e.push((key, packed));
        while e.len() > 1 && e.iter().map(|(_, p)| p.len()).sum::<usize>() > self.limit {
            e.remove(0);
        }
    }

    /// Drops every packed weight: the weights are about to change.
    pub fn clear(&mut self) {
        self.entries
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// How many packed weights the cache holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PackKey, Packed<T>)>> {
        // A panic while holding the lock leaves whole entries or none: the list stays valid.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> Clone for PackCache<T> {
    fn clone(&self) -> Self {
        PackCache {
            entries: Mutex::new(Vec::new()),
            limit: self.limit,
        }
    }
}

impl<T> PartialEq for PackCache<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for PackCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map_or(0, |e| e.len());
        write!(f, "PackCache({n} packed)")
    }
}

#[cfg(test)]
mod tests {
    use crate::network::{forward, Batch, ForwardOptions, Layout};
    use crate::{CellKind, RnnConfig, RnnParams, RnnWeights};

    fn cache(p: &RnnParams<f32>) -> &super::PackCache<f32> {
        p.view()
            .pack_cache()
            .expect("an owner's view carries its cache")
    }

    fn wave(n: usize, f: f32) -> Vec<f32> {
        (0..n).map(|k| (k as f32 * f).sin()).collect()
    }

    /// `x` as a time-major `[T, B, I]` batch without initial states or lengths.
    fn time_major(x: &[f32], t: usize, b: usize) -> Batch<'_, f32> {
        Batch {
            input: x,
            layout: Layout::TimeMajor,
            seq_len: t,
            batch: b,
            h0: None,
            c0: None,
            lengths: None,
        }
    }

    /// Inference output of `w` over `x` (`[T, B, I]` time-major).
    fn infer(w: RnnWeights<f32>, x: &[f32], t: usize, b: usize) -> Vec<f32> {
        let out = forward(w, &time_major(x, t, b), &ForwardOptions::default()).unwrap();
        let mut all = out.output;
        all.extend(out.h_n);
        all.extend(out.c_n.unwrap_or_default());
        all
    }

    /// The output of `p` computed afresh: from a copy of its values behind a bare view, which
    /// has no cache.
    fn uncached(p: &RnnParams<f32>, x: &[f32], t: usize, b: usize) -> Vec<f32> {
        let data = p.as_slice().to_vec();
        infer(RnnWeights::new(*p.config(), &data).unwrap(), x, t, b)
    }

    /// Every cell, an input narrow enough to be fused into the step product and one wide
    /// enough for the team's own projection, one and two layers.
    fn networks() -> Vec<RnnConfig> {
        let mut v = Vec::new();
        for cell in [CellKind::Lstm, CellKind::Gru] {
            for (i, h, layers) in [(8, 64, 1), (40, 48, 2), (3, 130, 1)] {
                v.push(RnnConfig::new(cell, i, h, layers, false, true).unwrap());
            }
        }
        v.push(RnnConfig::new(CellKind::Lstm, 5, 32, 2, true, false).unwrap());
        v
    }

    #[test]
    fn cached_calls_give_the_bits_of_fresh_ones() {
        for cfg in networks() {
            let p = RnnParams::<f32>::init_uniform(cfg, 3);
            for (t, b) in [(1, 32), (10, 32), (3, 1), (1, 32)] {
                let x = wave(t * b * cfg.input_size, 0.31);
                let first = infer(p.view(), &x, t, b);
                assert!(
                    cache(&p).len() > 0,
                    "{cfg:?}: the call kept its packed weights"
                );
                assert_eq!(infer(p.view(), &x, t, b), first, "{cfg:?} t={t} b={b}");
                assert_eq!(uncached(&p, &x, t, b), first, "{cfg:?} t={t} b={b}");
            }
        }
    }

    /// Each way of changing a weight empties the cache, and the next call sees the new values.
    #[test]
    fn a_changed_weight_is_never_served_stale() {
        for cfg in networks() {
            let (t, b) = (2, 32);
            let x = wave(t * b * cfg.input_size, 0.17);
            let mut p = RnnParams::<f32>::init_uniform(cfg, 5);
            let before = infer(p.view(), &x, t, b);
            // A named tensor replaced: the first layer's recurrent weight, scaled.
            let w: Vec<f32> = p
                .get("weight_hh_l0")
                .unwrap()
                .iter()
                .map(|v| v * 1.5)
                .collect();
            p.set("weight_hh_l0", &w).unwrap();
            assert_eq!(cache(&p).len(), 0);
            let after_set = infer(p.view(), &x, t, b);
            assert_ne!(after_set, before, "{cfg:?}");
            assert_eq!(after_set, uncached(&p, &x, t, b), "{cfg:?} after set");
            // One value written through the flat buffer (the input weight and the biases too).
            for name in ["weight_ih_l0", "weight_hh_l0"] {
                let off = p.specs().iter().find(|s| s.name == name).unwrap().offset;
                p.as_mut_slice()[off] += 0.25;
                assert_eq!(cache(&p).len(), 0);
                let got = infer(p.view(), &x, t, b);
                assert_eq!(got, uncached(&p, &x, t, b), "{cfg:?} after writing {name}");
            }
            // A clone starts empty and follows its own values.
            let q = p.clone();
            assert_eq!(cache(&q).len(), 0);
            assert_eq!(infer(q.view(), &x, t, b), infer(p.view(), &x, t, b));
        }
    }

    #[test]
    fn training_calls_long_calls_and_bare_views_keep_nothing() {
        let cfg = RnnConfig::new(CellKind::Lstm, 8, 64, 1, false, true).unwrap();
        let p = RnnParams::<f32>::init_uniform(cfg, 1);
        let (t, b) = (4, 8);
        let x = wave(t * b * 8, 0.5);
        let batch = time_major(&x, t, b);
        let taped = ForwardOptions {
            keep_tape: true,
            ..ForwardOptions::default()
        };
        forward(p.view(), &batch, &taped).unwrap();
        assert_eq!(cache(&p).len(), 0, "a taped call");
        let data = p.as_slice().to_vec();
        infer(RnnWeights::new(cfg, &data).unwrap(), &x, t, b);
        assert_eq!(cache(&p).len(), 0, "a bare view");
        let t = crate::sweep::KEEP_MAX_STEPS + 1;
        let x = wave(t * b * 8, 0.5);
        infer(p.view(), &x, t, b);
        assert_eq!(cache(&p).len(), 0, "a long call");
        infer(p.view(), &x[..b * 8], 1, b);
        assert!(cache(&p).len() > 0, "a short call");
    }

    /// Calls at many batch sizes hold at most `MAX_COPIES` times the parameters.
    #[test]
    fn the_cache_stays_bounded() {
        let cfg = RnnConfig::new(CellKind::Gru, 4, 96, 2, false, true).unwrap();
        let p = RnnParams::<f32>::init_uniform(cfg, 2);
        for b in 1..40 {
            let x = wave(b * 4, 0.2);
            infer(p.view(), &x, 1, b);
            let held: usize = cache(&p).lock().iter().map(|(_, k)| k.len()).sum();
            assert!(
                cache(&p).len() == 1 || held <= super::MAX_COPIES * p.len(),
                "b={b}: {held} elements held"
            );
        }
    }
}
