//! Splitting equally long buffers over the core's thread pool.
//!
//! Work is cut at fixed element offsets (multiples of `LEAF`, chosen from the length alone), so a
//! reduction sums the same pieces in the same order at any thread count and element-wise updates
//! are trivially the same.

/// Buffers shorter than this are processed on the calling thread.
pub const PAR_MIN_LEN: usize = 1 << 16;

/// Elements per leaf task: large enough to amortise a task, small enough to balance.
pub(crate) const LEAF: usize = 1 << 13;

/// A set of equally long slices that can be cut at the same offset. An empty slice stands for an
/// unused optional buffer and splits into two empty ones.
pub(crate) trait Split: Sized + Send {
    fn split(self, mid: usize) -> (Self, Self);
}

impl<T: Sync> Split for &[T] {
    fn split(self, mid: usize) -> (Self, Self) {
        self.split_at(if self.is_empty() { 0 } else { mid })
    }
}

impl<T: Send> Split for &mut [T] {
    fn split(self, mid: usize) -> (Self, Self) {
        let at = if self.is_empty() { 0 } else { mid };
        self.split_at_mut(at)
    }
}

macro_rules! split_tuple {
    ($($name:ident),+) => {
        impl<$($name: Split),+> Split for ($($name,)+) {
            #[allow(non_snake_case)]
            fn split(self, mid: usize) -> (Self, Self) {
                let ($($name,)+) = self;
                $(let $name = $name.split(mid);)+
                (($($name.0,)+), ($($name.1,)+))
            }
        }
    };
}
split_tuple!(A, B);
split_tuple!(A, B, C);
split_tuple!(A, B, C, D);
split_tuple!(A, B, C, D, E);
split_tuple!(A, B, C, D, E, F);

/// The split point of `len > LEAF` elements: the middle, rounded up to a multiple of `LEAF`.
fn mid_point(len: usize) -> usize {
    ((len / 2).div_ceil(LEAF) * LEAF).min(len - 1).max(1)
}

/// Runs `f` over `s` (whose slices hold `len` elements, or none), split into leaves run in
/// parallel when `len >= PAR_MIN_LEN`.
pub(crate) fn for_each<S: Split, F: Fn(S) + Sync>(len: usize, s: S, f: &F) {
    if len < PAR_MIN_LEN {
        f(s)
    } else {
        crate::threads::install(|| for_each_rec(len, s, f))
    }
}

fn for_each_rec<S: Split, F: Fn(S) + Sync>(len: usize, s: S, f: &F) {
    if len <= LEAF {
        return f(s);
    }
    let mid = mid_point(len);
    let (a, b) = s.split(mid);
    rayon::join(|| for_each_rec(mid, a, f), || for_each_rec(len - mid, b, f));
}

/// Reduces `x` with `leaf` on each leaf and `combine` up a tree fixed by the length alone; the
/// tree is walked in parallel for long inputs, giving the same bits as walking it serially.
pub(crate) fn reduce<T, L, C>(x: &[T], leaf: &L, combine: &C) -> f64
where
    T: Sync,
    L: Fn(&[T]) -> f64 + Sync,
    C: Fn(f64, f64) -> f64 + Sync,
{
    if x.len() < PAR_MIN_LEN {
        reduce_rec(x, leaf, combine, false)
    } else {
        crate::threads::install(|| reduce_rec(x, leaf, combine, true))
    }
}

fn reduce_rec<T, L, C>(x: &[T], leaf: &L, combine: &C, parallel: bool) -> f64
where
    T: Sync,
    L: Fn(&[T]) -> f64 + Sync,
    C: Fn(f64, f64) -> f64 + Sync,
{
    if x.len() <= LEAF {
        return leaf(x);
    }
    let (a, b) = x.split_at(mid_point(x.len()));
    let (ra, rb) = if parallel {
        rayon::join(
            || reduce_rec(a, leaf, combine, true),
            || reduce_rec(b, leaf, combine, true),
        )
    } else {
        (
            reduce_rec(a, leaf, combine, false),
            reduce_rec(b, leaf, combine, false),
        )
    };
    combine(ra, rb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_points_are_inside_and_leaf_aligned() {
        for len in [
            LEAF + 1,
            2 * LEAF,
            2 * LEAF + 1,
            5 * LEAF + 17,
            PAR_MIN_LEN * 3 + 1,
        ] {
            let m = mid_point(len);
            assert!(m > 0 && m < len, "len {len} mid {m}");
            assert_eq!(m % LEAF, 0, "len {len} mid {m}");
        }
    }

    #[test]
    fn for_each_visits_every_element_once_with_optional_empty_buffers() {
        let n = PAR_MIN_LEN * 2 + 123;
        let mut a = vec![0u32; n];
        let b: Vec<u32> = (0..n as u32).collect();
        let mut unused: Vec<u32> = Vec::new();
        for_each(n, (&mut a[..], &b[..], &mut unused[..]), &|(a, b, u): (
            &mut [u32],
            &[u32],
            &mut [u32],
        )| {
            assert!(u.is_empty());
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter_mut().zip(b) {
                *x += y + 1;
            }
        });
        assert!(a.iter().enumerate().all(|(i, &v)| v == i as u32 + 1));
    }

    #[test]
    fn reduce_matches_a_serial_walk_of_the_same_tree() {
        let n = PAR_MIN_LEN * 3 + 7;
        let x: Vec<f64> = (0..n).map(|i| ((i as f64) * 0.37).sin()).collect();
        let leaf = |s: &[f64]| s.iter().sum::<f64>();
        let add = |a: f64, b: f64| a + b;
        let par = reduce(&x, &leaf, &add);
        let ser = reduce_rec(&x, &leaf, &add, false);
        assert_eq!(par.to_bits(), ser.to_bits());
        let naive: f64 = x.iter().sum();
        assert!((par - naive).abs() < 1e-9 * n as f64);
    }
}
