//! The AVX-512 batch-lane kernel of [`super::rows_with`] for f32 (`Kernel::Avx512Lanes`):
//! vectors run along the batch, so no sum needs a horizontal reduction.
//!
//! The inputs come transposed (`[k, xld]`, 16 batch rows per vector, padded with zeros; the
//! caller transposes them once per call, see `super::with_lanes`), the weights are read in
//! place (PyTorch's row-major `[G, K]`) one element at a time, broadcast into the FMA. A tile is
//! `NV` batch vectors by [`NR`] weight rows: per `k`, `NV` vector loads and `NR` broadcasts feed
//! `NV * NR` FMAs into as many accumulators (28 of the 32 registers at `NV = 2`). The dot-product
//! kernel (`super::avx512`) needs two vector loads per two FMAs and a reduction tree per tile; at
//! batch 32 and hidden 512 its inputs no longer stay in L1 and its loads bound it.
//!
//! Every output is one sum over `k` in order (the first product, then the second), then the
//! biases: results do not depend on the tile, the block or the thread that forms them.

use super::{Job, Raw, Sides};
use std::arch::x86_64::*;

/// Batch rows per vector.
pub(super) const LANES: usize = 16;

/// Weight rows per tile: 14 measured 1-2% faster than 12 at batch 32, hidden 512 (least
/// thread-CPU time, `examples/stepper_speed.rs`).
const NR: usize = 14;

/// How far ahead along a weight row its lines are prefetched, in elements.
const PREFETCH: usize = 128;

/// One side of a job: weights `w[rows, k]` and the transposed input `xt[k, xld]`.
#[derive(Clone, Copy)]
pub(super) struct Side {
    w: *const f32,
    xt: *const f32,
    k: usize,
    xld: usize,
}

impl Sides for Side {
    fn of(raw: &Raw<f32>) -> [Self; 2] {
        [(raw.w1, raw.xt1, raw.k1), (raw.w2, raw.xt2, raw.k2)].map(|(w, xt, k)| Side {
            w,
            xt,
            k,
            xld: raw.xld,
        })
    }

    unsafe fn run(job: &Job<Self>) {
        // SAFETY: the caller's contract.
        unsafe { run(job) }
    }
}

/// One tile: batch vectors `v0..v0 + NV`, weight rows `r0..r0 + nr` (`0 < nr <= R`; rows past
/// the end repeat the last one and are not stored). `R` is [`NR`], or a shorter height for the
/// last rows of a job (see [`run`]).
///
/// # Safety
/// The job's bounds as `rows_with` asserts them; `v0 + NV` vectors within `xld`, batch rows
/// from `v0 * LANES` exist; `r0 + nr <= rows`.
#[inline(always)]
unsafe fn tile<const NV: usize, const R: usize>(job: &Job<Side>, v0: usize, r0: usize, nr: usize) {
    // SAFETY (whole body): offsets inside the asserted rows, the transposed inputs' `k * xld`
    // elements and the destination rows of existing batch rows.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); R]; NV];
        for s in job.sides {
            // Opaque row pointers (as in `super::avx512`): one base register per row, indexed
            // by `j`, rather than addresses chained off each other.
            let w: [*const f32; R] =
                std::hint::black_box(std::array::from_fn(|n| s.w.add((r0 + n.min(nr - 1)) * s.k)));
            let mut xt = s.xt.add(v0 * LANES);
            for j in 0..s.k {
                if j % LANES == 0 {
                    // The rows' cache lines a few ahead: each row is a stream of its own, read
                    // 4 bytes per `j`, from L3 at hidden 512 (the weights outgrow L2).
                    for row in w {
                        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(j + PREFETCH).cast());
                    }
                }
                let mut xv = [_mm512_setzero_ps(); NV];
                for (v, x) in xv.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(xt.add(v * LANES));
                }
                for n in 0..R {
                    let wb = _mm512_set1_ps(*w[n].add(j));
                    for v in 0..NV {
                        acc[v][n] = _mm512_fmadd_ps(xv[v], wb, acc[v][n]);
                    }
                }
                xt = xt.add(s.xld);
            }
        }
        for &b in &job.bias {
            if !b.is_null() {
                // Constant indices only (a loop to `nr` would move `acc` to memory).
                for n in 0..R {
                    let bv = _mm512_set1_ps(*b.add(r0 + n.min(nr - 1)));
                    for v in 0..NV {
                        acc[v][n] = _mm512_add_ps(acc[v][n], bv);
                    }
                }
            }
        }
        // The sums through memory first: a loop with a run-time bound indexing `acc` would
        // keep `acc` in memory in the loop above as well.
        let mut sums = [[[0f32; LANES]; R]; NV];
        for v in 0..NV {
            for n in 0..R {
                _mm512_storeu_ps(sums[v][n].as_mut_ptr(), acc[v][n]);
            }
        }
        // Along each destination row: its `nr` outputs share one or two cache lines (by
        // weight row first, each store would touch a line of its own).
        for (v, block) in sums.iter().enumerate() {
            let base = (v0 + v) * LANES;
            let rows = (job.batch - base).min(LANES);
            for l in 0..rows {
                let d = job.dst.add((base + l) * job.ld + r0);
                for (n, lane) in block.iter().enumerate().take(nr) {
                    *d.add(n) = lane[l];
                }
            }
        }
    }
}

/// The tiles of one job: a block of [`NR`] weight rows at a time, every batch vector pair over
/// it (the block's weights stay in L1 between the pairs). The last block, when short, runs in
/// a tile of 4 or 8 rows where that covers it: a full tile would compute its missing rows as
/// copies of the last one, 10 of 14 wasted in each gate of a thread's 256 units (4% of a split
/// LSTM step at hidden 512). The tile's height does not change any sum.
///
/// # Safety
/// As [`tile`], for the whole job; the CPU has the kernel's features.
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
unsafe fn run(job: &Job<Side>) {
    // SAFETY: every tile lies inside the job's rows and batch vectors.
    unsafe {
        for r in (0..job.rows).step_by(NR) {
            match NR.min(job.rows - r) {
                nr @ ..=4 => block::<4>(job, r, nr),
                nr @ ..=8 => block::<8>(job, r, nr),
                nr => block::<NR>(job, r, nr),
            }
        }
    }
}

/// Rows `r..r + nr` of a job in tiles `R` rows high, every batch vector pair.
///
/// # Safety
/// As [`tile`].
#[inline(always)]
unsafe fn block<const R: usize>(job: &Job<Side>, r: usize, nr: usize) {
    let vectors = job.batch.div_ceil(LANES);
    let mut v = 0;
    // SAFETY: the caller's contract, `nr <= R`.
    unsafe {
        while v + 2 <= vectors {
            tile::<2, R>(job, v, r, nr);
            v += 2;
        }
        if v < vectors {
            tile::<1, R>(job, v, r, nr);
        }
    }
}

/// The kernel's input layout: `dst[j * xld + b] = x[b * k + j]` for `b < batch`, zero for
/// `batch <= b < xld`. By 16 × 16 blocks transposed in registers: an element at a time, the
/// batch rows' reads (`4k` bytes apart) fell into a few L1 sets, and the transpose (before the
/// product's split, on one thread) took 6-8% of a one-thread LSTM step at B=32 H=512 (`perf`).
///
/// # Safety
/// `x` must be valid for `batch * k` elements, `xld` a multiple of [`LANES`] of at least
/// `batch`, `dst` at least `k * xld` long; the CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose(x: *const f32, batch: usize, k: usize, dst: &mut [f32], xld: usize) {
    assert!(xld.is_multiple_of(LANES) && xld >= batch && dst.len() >= k * xld);
    let d = dst.as_mut_ptr();
    for b0 in (0..xld).step_by(LANES) {
        let rows = batch.saturating_sub(b0).min(LANES);
        for j0 in (0..k).step_by(LANES) {
            let cols = (k - j0).min(LANES);
            let mask = if cols == LANES {
                0xffff
            } else {
                ((1u32 << cols) - 1) as __mmask16
            };
            let mut r = [_mm512_setzero_ps(); LANES];
            for (i, v) in r.iter_mut().enumerate().take(rows) {
                // SAFETY: row `b0 + i < batch`, columns `j0..j0 + cols` (the rest masked).
                *v = unsafe { _mm512_maskz_loadu_ps(mask, x.add((b0 + i) * k + j0)) };
            }
            let t = transpose16(&r);
            for (j, v) in t.iter().enumerate().take(cols) {
                // SAFETY: row `j0 + j < k` of `dst`, lanes `b0..b0 + 16 <= xld`.
                unsafe { _mm512_storeu_ps(d.add((j0 + j) * xld + b0), *v) };
            }
        }
    }
}

/// Lane `i` of result `j` is lane `j` of `r[i]`.
#[inline(always)]
fn transpose16(r: &[__m512; LANES]) -> [__m512; LANES] {
    // SAFETY (whole body): register operations; the caller (`transpose`) has AVX-512F.
    unsafe {
        // t[2p], t[2p + 1]: within each 128-bit chunk `l`, the elements `4l..4l + 4` of rows
        // 2p and 2p + 1 interleaved (the low and the high pairs).
        let mut t = [_mm512_setzero_ps(); LANES];
        for p in 0..8 {
            t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
            t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
        }
        // u[4q + c]: chunk `l` holds column `4l + c` of rows `4q..4q + 4`.
        let mut u = [_mm512_setzero_ps(); LANES];
        for q in 0..4 {
            let (a, b) = (&t[4 * q..4 * q + 2], &t[4 * q + 2..4 * q + 4]);
            u[4 * q] = _mm512_shuffle_ps::<0x44>(a[0], b[0]);
            u[4 * q + 1] = _mm512_shuffle_ps::<0xEE>(a[0], b[0]);
            u[4 * q + 2] = _mm512_shuffle_ps::<0x44>(a[1], b[1]);
            u[4 * q + 3] = _mm512_shuffle_ps::<0xEE>(a[1], b[1]);
        }
        // Column `4l + c` gathers chunk `l` of u[c], u[4 + c], u[8 + c], u[12 + c].
        let mut out = [_mm512_setzero_ps(); LANES];
        for c in 0..4 {
            let lo_a = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
            let lo_b = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
            let hi_a = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
            let hi_b = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
            out[c] = _mm512_shuffle_f32x4::<0x88>(lo_a, lo_b);
            out[4 + c] = _mm512_shuffle_f32x4::<0xDD>(lo_a, lo_b);
            out[8 + c] = _mm512_shuffle_f32x4::<0x88>(hi_a, hi_b);
            out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(hi_a, hi_b);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element lands where the plain index says, the padding lanes zero, at batch and
    /// depth tails on both sides of a vector.
    #[test]
    fn transpose_matches_the_plain_index() {
        if !super::super::avx512::available() {
            return;
        }
        for batch in [1usize, 5, 16, 17, 33] {
            for k in [1, 7, 16, 21, 40] {
                let xld = batch.next_multiple_of(LANES);
                let x: Vec<f32> = (0..batch * k).map(|v| v as f32 + 0.5).collect();
                let mut dst = vec![f32::NAN; k * xld];
                // SAFETY: sizes as `transpose` asks; AVX-512 checked above.
                unsafe { transpose(x.as_ptr(), batch, k, &mut dst, xld) };
                for j in 0..k {
                    for b in 0..xld {
                        let want = if b < batch { x[b * k + j] } else { 0.0 };
                        assert_eq!(dst[j * xld + b], want, "batch {batch} k {k} [{j}, {b}]");
                    }
                }
            }
        }
    }
}
