//! A system BLAS (OpenBLAS from the distribution: `apt-get install libopenblas-dev`), linked only
//! with the cargo feature `blas`; the default build uses the pure-Rust `gemm` crate and needs no
//! system library. Here: the two CBLAS calls and OpenBLAS's thread setting, as `gemm_shapes`
//! (examples/) measures them against `gemm` at the layers' shapes.

use std::os::raw::c_int;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

#[link(name = "openblas")]
extern "C" {
    fn cblas_sgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
    fn openblas_set_num_threads(n: c_int);
}

/// OpenBLAS's own thread count (its pthread pool, not rayon's).
pub fn set_num_threads(n: usize) {
    // SAFETY: a plain setter of OpenBLAS's global thread count.
    unsafe { openblas_set_num_threads(n as c_int) }
}

/// Row-major `c[m, n] = op(a) · op(b)` with `op` a transpose when the flag is set: `a` is
/// `[m, k]` (or `[k, m]` transposed), `b` `[k, n]` (or `[n, k]`).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    let lda = if trans_a { m } else { k };
    let ldb = if trans_b { k } else { n };
    let t = |f: bool| if f { TRANS } else { NO_TRANS };
    // SAFETY: the slices hold the row-major operands of these shapes (asserted above).
    unsafe {
        cblas_sgemm(
            ROW_MAJOR,
            t(trans_a),
            t(trans_b),
            m as c_int,
            n as c_int,
            k as c_int,
            1.0,
            a.as_ptr(),
            lda as c_int,
            b.as_ptr(),
            ldb as c_int,
            0.0,
            c.as_mut_ptr(),
            n as c_int,
        )
    }
}
