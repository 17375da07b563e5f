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
    raw_strided(
        m,
        n,
        k,
        dst,
        (ld_dst, 1),
        accumulate,
        lhs,
        lhs_rs,
        lhs_cs,
        rhs,
        rhs_rs,
        rhs_cs,
    );
}

/// [`raw`] into a destination with strides `(dst_rs, dst_cs)`.
#[allow(clippy::too_many_arguments)]
fn raw_strided<T: Scalar>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    (dst_rs, dst_cs): (usize, usize),
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
    assert!((m - 1) * dst_rs + (n - 1) * dst_cs < dst.len());
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in 0..n {
                    dst[r * dst_rs + c * dst_cs] = T::zero();
                }
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
            dst_cs as isize,
            dst_rs as isize,
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
    if b.cols <= NARROW_MAX_COLS && a.rows >= NARROW_MIN_ROWS && b.rows > 0 {
        assert!(b.cols == 0 || (a.rows - 1) * ld_dst + b.cols <= dst.len());
        narrow::a_b(dst, ld_dst, accumulate, a, b);
        return;
    }
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

/// Widest destination [`a_b`] computes with [`narrow::a_b`] rather than the `gemm` crate, which
/// runs a row-major `[m, n]` destination as the transposed product with `n` as its kernel's row
/// extent (a one-vector kernel on part-empty vectors below 16 f32), and is slower still with the
/// destination column-major (it then packs the row-major `a` column by column). The input
/// gradient `dx = dG·W_ih` (`[T*B, I]`, `k = 4H`) at I = 8, H = 64, T*B = 3200 ran at 34-37
/// GFLOP/s through the crate (`examples/weight_grad_shapes.rs`, loaded 2-core AVX-512 VM).
const NARROW_MAX_COLS: usize = 16;

/// Fewest rows [`narrow::a_b`] takes: below a few row blocks the `gemm` crate's call is as quick.
const NARROW_MIN_ROWS: usize = 64;

/// Widest destination [`at_b`] computes column-major and then transposes into place. The `gemm`
/// crate runs a row-major destination as the transposed product, which makes the destination's
/// width its micro-kernel's row extent: with `n` below a vector (16 f32) that is a one-vector
/// kernel on part-empty vectors. The weight gradient `dW_ih = dGᵀ·X` (`[4H, I]`, `k = T*B`)
/// through a column-major scratch, measured with `examples/weight_grad_shapes.rs` on the 2-core
/// AVX-512 VM (loaded, medians of 7): I = 8, H = 64, T*B = 3200: 0.41 → 0.14 ms (2 threads),
/// 0.36 → 0.15 ms (1); I = 16, H = 128, T*B = 16000: 7.2 → 3.8 ms, 8.8 → 5.6 ms. At I = 128
/// the two are within noise (22.1 vs 24.7 ms, 19.8 vs 16.7 ms).
const AT_B_TRANSPOSED_MAX_COLS: usize = 16;

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
    let (m, n) = (a.cols, b.cols);
    if n <= AT_B_TRANSPOSED_MAX_COLS && m > n && a.rows > 0 {
        assert!((m - 1) * ld_dst + n <= dst.len());
        // Column-major `[m, n]`: the `gemm` crate keeps `m` as its kernel's row extent.
        let mut scratch = vec![T::zero(); m * n];
        raw_strided(
            m,
            n,
            a.rows,
            &mut scratch,
            (1, m),
            false,
            a.data.as_ptr(),
            1,
            a.ld,
            b.data.as_ptr(),
            b.ld,
            1,
        );
        for (r, row) in dst.chunks_mut(ld_dst).take(m).enumerate() {
            for (c, d) in row[..n].iter_mut().enumerate() {
                let v = scratch[c * m + r];
                *d = if accumulate { *d + v } else { v };
            }
        }
        return;
    }
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

/// `dst[m, n] (+)= a[m, k] · b[k, n]` for a narrow `b` (`n <= NARROW_MAX_COLS`): `b` copied
/// once into rows padded to `W` lanes (8 or 16), then each block of `ROWS` rows of `a` summed
/// into `ROWS` accumulator vectors, one broadcast of `a[r, k]` times `b`'s row `k` per step:
/// the loop the compiler vectorises over the `W` lanes. Row blocks are split between the pool's
/// threads; each row's sum runs in the same order on any thread count.
mod narrow {
    use super::{Mat, Scalar};
    use rayon::prelude::*;

    /// Rows summed together: independent accumulators enough to hide the FMA latency.
    const ROWS: usize = 8;
    /// Multiply-adds below which one thread does the whole product.
    const PARALLEL_MIN_WORK: usize = 1 << 18;

    pub(super) fn a_b<T: Scalar>(
        dst: &mut [T],
        ld_dst: usize,
        accumulate: bool,
        a: Mat<T>,
        b: Mat<T>,
    ) {
        if b.cols <= 8 {
            run::<T, 8>(dst, ld_dst, accumulate, a, b);
        } else {
            run::<T, 16>(dst, ld_dst, accumulate, a, b);
        }
    }

    fn run<T: Scalar, const W: usize>(
        dst: &mut [T],
        ld_dst: usize,
        accumulate: bool,
        a: Mat<T>,
        b: Mat<T>,
    ) {
        let (m, n, k) = (a.rows, b.cols, a.cols);
        if n == 0 {
            return;
        }
        let mut padded = vec![[T::zero(); W]; k];
        for (p, row) in padded.iter_mut().enumerate() {
            row[..n].copy_from_slice(&b.data[p * b.ld..p * b.ld + n]);
        }
        let block = |(i, out): (usize, &mut [T])| {
            let r0 = i * ROWS;
            let rows = ROWS.min(m - r0);
            block_dispatch::<T, W>(
                out,
                ld_dst,
                accumulate,
                &a.data[r0 * a.ld..],
                a.ld,
                rows,
                k,
                n,
                &padded,
            );
        };
        // Each chunk of `dst` holds one block's rows (the last one may end short of `ld_dst`).
        let dst = &mut dst[..(m - 1) * ld_dst + n];
        let parallel = rayon::current_num_threads() > 1
            && m * n * k >= PARALLEL_MIN_WORK
            && crate::threads::parallel_allowed();
        if parallel {
            dst.par_chunks_mut(ROWS * ld_dst)
                .enumerate()
                .for_each(block);
        } else {
            dst.chunks_mut(ROWS * ld_dst).enumerate().for_each(block);
        }
    }

    /// [`block`] compiled for the widest vectors this CPU has.
    #[allow(clippy::too_many_arguments)]
    fn block_dispatch<T: Scalar, const W: usize>(
        out: &mut [T],
        ld_dst: usize,
        accumulate: bool,
        a: &[T],
        lda: usize,
        rows: usize,
        k: usize,
        n: usize,
        b: &[[T; W]],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx512<T: Scalar, const W: usize>(
                out: &mut [T],
                ld_dst: usize,
                accumulate: bool,
                a: &[T],
                lda: usize,
                rows: usize,
                k: usize,
                n: usize,
                b: &[[T; W]],
            ) {
                block(out, ld_dst, accumulate, a, lda, rows, k, n, b)
            }
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx2<T: Scalar, const W: usize>(
                out: &mut [T],
                ld_dst: usize,
                accumulate: bool,
                a: &[T],
                lda: usize,
                rows: usize,
                k: usize,
                n: usize,
                b: &[[T; W]],
            ) {
                block(out, ld_dst, accumulate, a, lda, rows, k, n, b)
            }
            if crate::gates::isa() == crate::packed_gemm::Isa::Avx512 {
                // SAFETY: the CPU has the features the variant was compiled for.
                return unsafe { avx512(out, ld_dst, accumulate, a, lda, rows, k, n, b) };
            }
            if crate::packed_gemm::Isa::Avx2.supported() {
                // SAFETY: as above.
                return unsafe { avx2(out, ld_dst, accumulate, a, lda, rows, k, n, b) };
            }
        }
        block(out, ld_dst, accumulate, a, lda, rows, k, n, b)
    }

    /// `out[r, ..n] (+)= Σ_p a[r, p] · b[p, ..n]` for `rows <= ROWS` rows.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn block<T: Scalar, const W: usize>(
        out: &mut [T],
        ld_dst: usize,
        accumulate: bool,
        a: &[T],
        lda: usize,
        rows: usize,
        k: usize,
        n: usize,
        b: &[[T; W]],
    ) {
        let mut acc = [[T::zero(); W]; ROWS];
        if rows == ROWS {
            let a_rows: [&[T]; ROWS] = std::array::from_fn(|r| &a[r * lda..r * lda + k]);
            for (p, w) in b.iter().enumerate() {
                for r in 0..ROWS {
                    let s = a_rows[r][p];
                    for j in 0..W {
                        acc[r][j] += s * w[j];
                    }
                }
            }
        } else {
            for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                let a_row = &a[r * lda..r * lda + k];
                for (&s, w) in a_row.iter().zip(b) {
                    for j in 0..W {
                        acc[j] += s * w[j];
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let o = &mut out[r * ld_dst..r * ld_dst + n];
            for (d, &v) in o.iter_mut().zip(acc) {
                *d = if accumulate { *d + v } else { v };
            }
        }
    }
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

    /// `c` (rows of `ld`, filled with 2.0 before the product) holds `want` (rows of `n`) in its
    /// first `n` columns, added onto the 2.0 when `accumulate`, and 2.0 untouched beyond them.
    fn assert_written(c: &[f64], ld: usize, want: &[f64], n: usize, accumulate: bool, what: &str) {
        for (i, row) in c.chunks(ld).enumerate() {
            for (j, &got) in row.iter().enumerate() {
                let expect = if j >= n {
                    2.0
                } else if accumulate {
                    want[i * n + j] + 2.0
                } else {
                    want[i * n + j]
                };
                assert!((got - expect).abs() < 1e-12, "{what} ({i}, {j})");
            }
        }
    }

    /// `a_b` on both sides of `NARROW_MAX_COLS` and `NARROW_MIN_ROWS` (the narrow kernel, both
    /// lane widths and a last short row block, and the `gemm` crate), into a destination wider
    /// than the product, overwriting and accumulating.
    #[test]
    fn a_b_narrow_destinations_match_naive_loops() {
        for (m, n, k) in [
            (64, 1, 13),
            (70, 8, 50),
            (133, 9, 7),
            (64, 16, 3),
            (64, 17, 9),
            (63, 8, 5),
        ] {
            let a: Vec<f64> = (0..m * k).map(|v| (v as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|v| (v as f64 * 0.23).cos()).collect();
            let want = naive(m, n, k, |i, p| a[i * k + p], |p, j| b[p * n + j]);
            let ld = n + 2;
            for accumulate in [false, true] {
                let mut c = vec![2.0; m * ld];
                a_b(
                    &mut c,
                    ld,
                    accumulate,
                    Mat::new(&a, m, k),
                    Mat::new(&b, k, n),
                );
                assert_written(&c, ld, &want, n, accumulate, &format!("m={m} n={n} k={k}"));
            }
        }
    }

    /// `at_b` on both sides of `AT_B_TRANSPOSED_MAX_COLS` (the column-major route and the
    /// direct one), into a destination wider than the product, overwriting and accumulating.
    #[test]
    fn at_b_narrow_destinations_match_naive_loops() {
        for (m, n, k) in [
            (40, 1, 13),
            (64, 8, 50),
            (33, 16, 7),
            (20, 17, 9),
            (8, 8, 5),
        ] {
            let a: Vec<f64> = (0..k * m).map(|v| (v as f64 * 0.41).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|v| (v as f64 * 0.23).cos()).collect();
            let want = naive(m, n, k, |i, p| a[p * m + i], |p, j| b[p * n + j]);
            let ld = n + 3;
            for accumulate in [false, true] {
                let mut c = vec![2.0; m * ld];
                at_b(
                    &mut c,
                    ld,
                    accumulate,
                    Mat::new(&a, k, m),
                    Mat::new(&b, k, n),
                );
                assert_written(&c, ld, &want, n, accumulate, &format!("m={m} n={n} k={k}"));
            }
        }
    }
}
