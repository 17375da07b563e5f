//! The AVX-512 kernel of [`super::rows_with`] for f32: register tiles of `MR` batch rows by `NR`
//! weight rows, one 16-lane accumulator per output (4 × 4 and 2 × 8: 16 accumulators; 1 × 8 for
//! a last single batch row).
//!
//! Both operands are read along `k` in place (the weight's PyTorch row-major `[G, K]` layout and
//! the input's `[B, K]`), so nothing is packed and a step always reads the current weights. One
//! `k` stretch of a 4 × 4 tile loads 8 vectors for 16 FMAs, the balance of two loads per two
//! FMAs the core issues per cycle. At batch 1 the weights stream from L2 and bound the time;
//! 1 × 8 tiles measured faster there than 1 × 16 ones (2.9 vs 3.6 µs per LSTM step at H = 128,
//! on par with the AVX2 kernel with 64-byte aligned weights, as a model's are). At the end a
//! shuffle tree turns the accumulators into one vector of their sums, the tile's outputs in
//! order, so the biases are added and the rows stored as vectors. Every sum runs over `k` and
//! then through the tree in the same order whatever its place in a tile, the tile shape or the
//! thread that runs it: results do not depend on the batch size or the thread count.

use super::{Job, Raw, Sides};
use std::arch::x86_64::*;

/// Weight rows of one block: every tile shape covers them (`NR` = 8 or 4 rows per tile).
pub(super) const BLOCK_ROWS: usize = 16;

/// Whether this CPU runs the kernel: every feature the kernel is compiled for (a virtual
/// machine may hide AVX2 or FMA while showing AVX-512).
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
}

/// The lanes `0..n` of a 16-lane mask.
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// Lane `j` of the result is the sum of the lanes of `a[j]`.
///
/// Four levels of shuffles and adds (30 shuffles, 15 adds for 16 vectors). Each sum is formed
/// in the same order whatever `j`: lanes `l` and `l + 8`, then the two 4-lane halves, then
/// within 4 lanes `(0 + 2) + (1 + 3)`.
#[inline(always)]
unsafe fn reduce16(a: &[__m512; 16]) -> __m512 {
    // The last level leaves lane `4c + m` holding the sum of input `c + 4m`: feed the
    // accumulators transposed so that lane `j` gets `a[j]`. (Plain loops, not closures: a
    // closure would not inherit the caller's target features, and its intrinsics would stay
    // calls.)
    let mut q = [a[0]; 16];
    for (i, v) in q.iter_mut().enumerate() {
        *v = a[(i % 4) * 4 + i / 4];
    }
    // SAFETY (whole body): register operations of the target features of the caller.
    unsafe {
        // t[i]: 256-bit halves hold 8-lane partials of q[2i] and q[2i+1].
        let mut t = [q[0]; 8];
        for (i, v) in t.iter_mut().enumerate() {
            let (x, y) = (q[2 * i], q[2 * i + 1]);
            *v = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(x, y),
                _mm512_shuffle_f32x4::<0xEE>(x, y),
            );
        }
        // u[i]: 128-bit chunk c holds 4-lane partials of q[4i + c].
        let mut u = [q[0]; 4];
        for (i, v) in u.iter_mut().enumerate() {
            let (x, y) = (t[2 * i], t[2 * i + 1]);
            *v = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(x, y),
                _mm512_shuffle_f32x4::<0xDD>(x, y),
            );
        }
        // v[i]: chunk c holds 2-lane partials of q[8i + c] (lanes 0, 1) and q[8i + 4 + c].
        let mut v = [q[0]; 2];
        for (i, o) in v.iter_mut().enumerate() {
            let (x, y) = (u[2 * i], u[2 * i + 1]);
            *o = _mm512_add_ps(
                _mm512_shuffle_ps::<0x44>(x, y),
                _mm512_shuffle_ps::<0xEE>(x, y),
            );
        }
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(v[0], v[1]),
            _mm512_shuffle_ps::<0xDD>(v[0], v[1]),
        )
    }
}

/// Lanes `0..8` of the result are the sums of the lanes of `a[0..8]` (lanes 8.. are
/// duplicates): the tree of [`reduce16`] on half as many vectors, each sum in the same order.
#[inline(always)]
unsafe fn reduce8(a: &[__m512; 16]) -> __m512 {
    // SAFETY (whole body): register operations of the target features of the caller.
    unsafe {
        let mut t = [a[0]; 4];
        for (i, v) in t.iter_mut().enumerate() {
            let (x, y) = (a[2 * i], a[2 * i + 1]);
            *v = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(x, y),
                _mm512_shuffle_f32x4::<0xEE>(x, y),
            );
        }
        let mut u = [a[0]; 2];
        for (i, v) in u.iter_mut().enumerate() {
            let (x, y) = (t[2 * i], t[2 * i + 1]);
            *v = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(x, y),
                _mm512_shuffle_f32x4::<0xDD>(x, y),
            );
        }
        // Chunk c: 2-lane partials of a[c] (lanes 0, 1) and a[4 + c] (lanes 2, 3).
        let v = _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(u[0], u[1]),
            _mm512_shuffle_ps::<0xEE>(u[0], u[1]),
        );
        // Lane 4c holds the sum of a[c], lane 4c + 1 that of a[4 + c].
        let w = _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(v, v),
            _mm512_shuffle_ps::<0xDD>(v, v),
        );
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 4, 8, 12, 1, 5, 9, 13);
        _mm512_permutexvar_ps(order, w)
    }
}

/// Accumulates `w[row n]·x[batch row m]` over `k` into `acc[m * NR + n]`.
///
/// # Safety
/// Every `w[n]` and `x[m]` must be valid for `k` elements.
#[inline(always)]
unsafe fn dot<const MR: usize, const NR: usize>(
    acc: &mut [__m512; 16],
    w: &[*const f32; NR],
    x: &[*const f32; MR],
    k: usize,
) {
    // SAFETY: loads at offsets below `k` (the tail masked), the caller's contract.
    unsafe {
        let full = k / 16 * 16;
        let mut j = 0;
        while j < full {
            let mut xv = [acc[0]; MR];
            for m in 0..MR {
                xv[m] = _mm512_loadu_ps(x[m].add(j));
            }
            for n in 0..NR {
                let wv = _mm512_loadu_ps(w[n].add(j));
                for m in 0..MR {
                    acc[m * NR + n] = _mm512_fmadd_ps(wv, xv[m], acc[m * NR + n]);
                }
            }
            j += 16;
        }
        if full < k {
            let mask = lanes(k - full);
            let mut xv = [acc[0]; MR];
            for m in 0..MR {
                xv[m] = _mm512_maskz_loadu_ps(mask, x[m].add(full));
            }
            for n in 0..NR {
                let wv = _mm512_maskz_loadu_ps(mask, w[n].add(full));
                for m in 0..MR {
                    acc[m * NR + n] = _mm512_fmadd_ps(wv, xv[m], acc[m * NR + n]);
                }
            }
        }
    }
}

/// One side of a job: a product `w[rows, k]·x[batch, k]`.
#[derive(Clone, Copy)]
pub(super) struct Side {
    w: *const f32,
    x: *const f32,
    k: usize,
}

impl Sides for Side {
    fn of(raw: &Raw<f32>) -> [Self; 2] {
        [(raw.w1, raw.x1, raw.k1), (raw.w2, raw.x2, raw.k2)].map(|(w, x, k)| Side { w, x, k })
    }

    unsafe fn run(job: &Job<Self>) {
        // SAFETY: the caller's contract.
        unsafe { run(job) }
    }
}

/// One tile: batch rows `b0..b0 + MR`, weight rows `r0..r0 + nr` (`nr <= NR`; rows past the end
/// repeat the last one and are not stored).
///
/// # Safety
/// The job's bounds as `rows_with` asserts them; `b0 + MR <= batch`, `r0 + nr <= rows`, `nr > 0`.
#[inline(always)]
unsafe fn tile<const MR: usize, const NR: usize>(job: &Job<Side>, b0: usize, r0: usize, nr: usize) {
    // SAFETY (whole body): pointer offsets inside the asserted rows, batch rows and
    // destinations; masked stores write only the `nr` valid lanes of a row.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); 16];
        for s in job.sides {
            // Opaque row pointers: LLVM would otherwise chain each address off the previous one
            // (see the AVX2 kernel).
            let w: [*const f32; NR] =
                std::hint::black_box(std::array::from_fn(|n| s.w.add((r0 + n.min(nr - 1)) * s.k)));
            let x: [*const f32; MR] = std::array::from_fn(|m| s.x.add((b0 + m) * s.k));
            dot::<MR, NR>(&mut acc, &w, &x, s.k);
        }
        let mut sums = if MR * NR == 16 {
            reduce16(&acc)
        } else {
            reduce8(&acc)
        };
        let mask = lanes(nr);
        for &b in &job.bias {
            if !b.is_null() {
                // The bias of rows r0..r0 + NR, repeated for each batch row of the tile.
                let bv = match NR {
                    16 => _mm512_maskz_loadu_ps(mask, b.add(r0)),
                    8 => _mm512_broadcast_f32x8(_mm256_maskz_loadu_ps(mask as u8, b.add(r0))),
                    _ => _mm512_broadcast_f32x4(_mm_maskz_loadu_ps(mask as u8, b.add(r0))),
                };
                sums = _mm512_add_ps(sums, bv);
            }
        }
        for m in 0..MR {
            let d = job.dst.add((b0 + m) * job.ld + r0);
            match NR {
                16 => _mm512_mask_storeu_ps(d, mask, sums),
                8 => {
                    let half = if m == 0 {
                        _mm512_extractf32x8_ps::<0>(sums)
                    } else {
                        _mm512_extractf32x8_ps::<1>(sums)
                    };
                    _mm256_mask_storeu_ps(d, mask as u8, half)
                }
                _ => {
                    let quarter = match m {
                        0 => _mm512_extractf32x4_ps::<0>(sums),
                        1 => _mm512_extractf32x4_ps::<1>(sums),
                        2 => _mm512_extractf32x4_ps::<2>(sums),
                        _ => _mm512_extractf32x4_ps::<3>(sums),
                    };
                    _mm_mask_storeu_ps(d, mask as u8, quarter)
                }
            }
        }
    }
}

/// The tiles of one job, block of [`BLOCK_ROWS`] weight rows by block: the block stays in L1
/// while every batch tile passes over it.
///
/// # Safety
/// As [`tile`], for the whole job; the CPU has the kernel's features.
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
unsafe fn run(job: &Job<Side>) {
    // SAFETY: every tile lies inside the job's rows and batch rows.
    unsafe {
        for r in (0..job.rows).step_by(BLOCK_ROWS) {
            let block = BLOCK_ROWS.min(job.rows - r);
            let mut b = 0;
            while b + 4 <= job.batch {
                for sub in (0..block).step_by(4) {
                    tile::<4, 4>(job, b, r + sub, 4.min(block - sub));
                }
                b += 4;
            }
            if b + 2 <= job.batch {
                for sub in (0..block).step_by(8) {
                    tile::<2, 8>(job, b, r + sub, 8.min(block - sub));
                }
                b += 2;
            }
            if b < job.batch {
                // Eight rows, not sixteen: measured 20% faster at batch 1 (fewer weight rows
                // streaming at once).
                for sub in (0..block).step_by(8) {
                    tile::<1, 8>(job, b, r + sub, 8.min(block - sub));
                }
            }
        }
    }
}
