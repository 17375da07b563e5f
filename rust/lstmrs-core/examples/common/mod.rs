//! What the timing examples share: the `gemm` crate's product with the strides `src/matmul.rs`
//! passes, the register-only FMA loop that measures a core's peak, and the pool set-up.

// Each example compiles this module on its own and uses only some of it.
#![allow(dead_code)]

use gemm::Parallelism;

/// One product `c[m, n] += op(a) · op(b)` of a layer (`op(a)` is `[m, k]`, `op(b)` is `[k, n]`):
/// its role and which operands are transposed.
pub struct Product {
    pub role: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

impl Product {
    /// The product through the `gemm` crate, row-major, transposes given as strides.
    pub fn gemm_crate(&self, a: &[f32], b: &[f32], c: &mut [f32], par: Parallelism) {
        let Product {
            m,
            n,
            k,
            trans_a,
            trans_b,
            ..
        } = *self;
        let (a_rs, a_cs) = if trans_a { (1, m) } else { (k, 1) };
        let (b_rs, b_cs) = if trans_b { (1, k) } else { (n, 1) };
        assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
        // SAFETY: the assert keeps the operands of these shapes and strides inside their slices.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                a_cs as isize,
                a_rs as isize,
                b.as_ptr(),
                b_cs as isize,
                b_rs as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            )
        }
    }
}

/// A rayon pool of `threads` and the `gemm` crate's parallelism that runs inside it.
pub fn pool(threads: usize) -> (rayon::ThreadPool, Parallelism) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    (pool, par)
}

/// 12 independent AVX-512 FMA chains for `iters` iterations, over registers only: more chains
/// than latency × issue width (4 cycles × 2 pipes), so nothing but the FMA units limits it.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn fma_chains(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    // Values near 1 that stay bounded: acc = acc * a + b with a < 1 converges.
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let mut sum = _mm512_setzero_ps();
    for v in acc {
        sum = _mm512_add_ps(sum, v);
    }
    _mm512_reduce_add_ps(sum)
}
