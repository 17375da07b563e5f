//! Row-major matrix products on top of the `gemm` crate.
//!
//! Every product in the core is one of three shapes, named after what they compute:
//! `C (+)= A · Bᵀ` (projections through a `[out, in]` weight), `C (+)= A · B` (gradients back
//! through a weight) and `C (+)= Aᵀ · B` (weight gradients summed over all rows).

use crate::scalar::Scalar;
use gemm::Parallelism;

/// Products below this many multiply-adds run on one thread: splitting them costs more than it saves.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && m * n * k >= PARALLEL_MIN_FLOPS && crate::threads::parallel_allowed() {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// A row-major matrix view: `rows × cols` with row stride `ld` (elements).
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl<'a, T> Mat<'a, T> {
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            ld: cols,
        }
    }
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            assert!((self.rows - 1) * self.ld + self.cols <= self.data.len());
        }
    }
}

/// `dst[m, n] (+)= lhs · rhs` where `lhs` is `m × k` with strides `(lhs_rs, lhs_cs)` and `rhs` is
/// `k × n` with strides `(rhs_rs, rhs_cs)`; `dst` is row-major with row stride `ld_dst`.
/// Bounds are asserted by the callers' `Mat::check`; the raw strides let one function cover the
/// transposed cases without copies.
#[allow(clippy::too_many_arguments)]
fn raw<T: Scalar>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    ld_dst: usize,
    accumulate: bool,
    lhs: *const T,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const T,
    rhs_rs: usize,
    rhs_cs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ld_dst + n <= dst.len());
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * ld_dst..r * ld_dst + n].fill(T::zero());
            }
        }
        return;
    }
    // SAFETY: the callers checked that every view lies inside its slice, `dst` is borrowed mutably
    // and cannot alias the shared inputs, and `T` is f32 or f64, which `gemm` supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld_dst as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism(m, n, k),
        );
    }
}

/// `dst[m, n] (+)= a[m, k] · w[n, k]ᵀ`.
pub(crate) fn a_bt<T: Scalar>(
    dst: &mut [T],
    ld_dst: usize,
    accumulate: bool,
    a: Mat<T>,
    w: Mat<T>,
) {
    assert_eq!(a.cols, w.cols);
    a.check();
    w.check();
    raw(
        a.rows,
        w.rows,
        a.cols,
        dst,
        ld_dst,
        accumulate,
        a.data.as_ptr(),
        a.ld,
        1,
        w.data.as_ptr(),
        1,
        w.ld,
    );
}

/// `dst[m, n] (+)= a[m, k] · b[k, n]`.
pub(crate) fn a_b<T: Scalar>(dst: &mut [T], ld_dst: usize, accumulate: bool, a: Mat<T>, b: Mat<T>) {
    assert_eq!(a.cols, b.rows);
    a.check();
    b.check();
    raw(
        a.rows,
        b.cols,
        a.cols,
        dst,
        ld_dst,
        accumulate,
        a.data.as_ptr(),
        a.ld,
        1,
        b.data.as_ptr(),
        b.ld,
        1,
    );
}

/// `dst[m, n] (+)= a[k, m]ᵀ · b[k, n]`.
pub(crate) fn at_b<T: Scalar>(
    dst: &mut [T],
    ld_dst: usize,
    accumulate: bool,
    a: Mat<T>,
    b: Mat<T>,
) {
    assert_eq!(a.rows, b.rows);
    a.check();
    b.check();
    raw(
        a.cols,
        b.cols,
        a.rows,
        dst,
        ld_dst,
        accumulate,
        a.data.as_ptr(),
        1,
        a.ld,
        b.data.as_ptr(),
        b.ld,
        1,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        m: usize,
        n: usize,
        k: usize,
        a: impl Fn(usize, usize) -> f64,
        b: impl Fn(usize, usize) -> f64,
    ) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a(i, p) * b(p, j)).sum();
            }
        }
        c
    }

    #[test]
    fn products_match_naive_loops() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f64> = (0..m * k).map(|v| (v as f64 * 0.37).sin()).collect();
        let w: Vec<f64> = (0..n * k).map(|v| (v as f64 * 0.11).cos()).collect();
        let b: Vec<f64> = (0..k * n).map(|v| (v as f64 * 0.23).cos()).collect();
        let at: Vec<f64> = (0..k * m).map(|v| (v as f64 * 0.41).sin()).collect();

        let mut c = vec![1.0; m * n];
        a_bt(&mut c, n, false, Mat::new(&a, m, k), Mat::new(&w, n, k));
        let want = naive(m, n, k, |i, p| a[i * k + p], |p, j| w[j * k + p]);
        c.iter()
            .zip(&want)
            .for_each(|(x, y)| assert!((x - y).abs() < 1e-12));

        let mut c = vec![1.0; m * n];
        a_b(&mut c, n, true, Mat::new(&a, m, k), Mat::new(&b, k, n));
        let want = naive(m, n, k, |i, p| a[i * k + p], |p, j| b[p * n + j]);
        c.iter()
            .zip(&want)
            .for_each(|(x, y)| assert!((x - (y + 1.0)).abs() < 1e-12));

        let mut c = vec![0.0; m * n];
        at_b(&mut c, n, false, Mat::new(&at, k, m), Mat::new(&b, k, n));
        let want = naive(m, n, k, |i, p| at[p * m + i], |p, j| b[p * n + j]);
        c.iter()
            .zip(&want)
            .for_each(|(x, y)| assert!((x - y).abs() < 1e-12));
    }
}
