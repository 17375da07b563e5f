//! The reduced-precision product `C[M, N] (+)= A[M, K] · W[N, K]ᵀ` over packed operands
//! ([`super::pack`]), with one tile kernel per instruction set, picked at run time.
//!
//! A tile is [`MR`] rows × [`NR`] columns over all of `K`: 16 accumulator vectors, two loads of
//! `W` and [`MR`] broadcasts of `A` per 32-bit group. The epilogue (scales, zero points,
//! accumulation into `C`) is one scalar function shared by every kernel, so the int8 kernels,
//! whose sums are exact integers, give the same bits on every path.

use super::pack::{PackedActivations, PackedWeight, Precision, MR, NR};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// A tile kernel (an instruction set) for one precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// bf16 pairs through `vdpbf16ps` (AVX512_BF16).
    Avx512Bf16,
    /// bf16 widened to f32 (a shift) and multiplied with FMA (AVX-512F): the emulation for
    /// AVX-512 CPUs without BF16.
    Avx512Widen,
    /// uint8 × int8 quads through `vpdpbusd` (AVX512_VNNI).
    Avx512Vnni,
    /// Plain Rust loops: every CPU.
    Portable,
}

impl Kernel {
    pub const ALL: [Kernel; 4] = [
        Kernel::Avx512Bf16,
        Kernel::Avx512Widen,
        Kernel::Avx512Vnni,
        Kernel::Portable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Bf16 => "avx512_bf16",
            Kernel::Avx512Widen => "avx512f_widen",
            Kernel::Avx512Vnni => "avx512_vnni",
            Kernel::Portable => "portable",
        }
    }

    pub fn from_name(name: &str) -> Result<Kernel> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| Error::Name {
                arg: "kernel",
                expected: Kernel::ALL
                    .iter()
                    .map(|k| format!("{:?}", k.name()))
                    .collect::<Vec<_>>()
                    .join(", "),
                got: name.to_string(),
            })
    }

    /// Whether the kernel computes products of `precision`.
    pub fn computes(self, precision: Precision) -> bool {
        match self {
            Kernel::Avx512Bf16 | Kernel::Avx512Widen => precision == Precision::Bf16,
            Kernel::Avx512Vnni => precision == Precision::Int8,
            Kernel::Portable => true,
        }
    }

    /// Whether this CPU has the instructions the kernel needs.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let f = std::arch::is_x86_feature_detected!("avx512f");
            match self {
                Kernel::Avx512Bf16 => f && std::arch::is_x86_feature_detected!("avx512bf16"),
                Kernel::Avx512Widen => f,
                Kernel::Avx512Vnni => f && std::arch::is_x86_feature_detected!("avx512vnni"),
                Kernel::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Portable
        }
    }

    /// The kernels of `precision` this CPU can run, fastest first (the last is `Portable`).
    pub fn available(precision: Precision) -> Vec<Kernel> {
        Kernel::ALL
            .into_iter()
            .filter(|k| k.computes(precision) && k.supported())
            .collect()
    }

    /// What runtime dispatch picks for `precision` on this CPU.
    pub fn best(precision: Precision) -> Kernel {
        Kernel::available(precision)[0]
    }

    /// `self` when it computes `precision` on this CPU, else an error naming what can.
    pub fn check(self, precision: Precision) -> Result<Kernel> {
        if self.computes(precision) && self.supported() {
            return Ok(self);
        }
        Err(Error::Value {
            arg: "kernel",
            expected: format!(
                "one of {} for {} on this CPU",
                Kernel::available(precision)
                    .iter()
                    .map(|k| format!("{:?}", k.name()))
                    .collect::<Vec<_>>()
                    .join(", "),
                precision.name()
            ),
            got: format!("{:?}", self.name()),
        })
    }
}

/// Raw sums of one tile: f32 for bf16, i32 for int8 (bit-cast into the same storage).
type Tile = [[u32; NR]; MR];

/// Bytes of converted activations per row block (about a quarter of a 1 MiB L2).
const A_BLOCK_BYTES: usize = 256 << 10;

/// Products below this many multiply-adds run on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// `c[M, N] (+)= a · wᵀ (+ bias)` for the converted activations `a` (`a.m` rows) into the
/// row-major `c` (row stride `ldc`), on `kernel` (which must compute `w.precision` on this CPU);
/// `bias` `[N]` is added to every row in the same pass.
pub(crate) fn matmul(
    kernel: Kernel,
    w: &PackedWeight,
    a: &PackedActivations,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
) {
    let (m, n) = (a.m, w.n);
    if m == 0 || n == 0 {
        return;
    }
    assert_eq!(a.kg, w.kg, "activation and weight depths differ");
    assert!(kernel.computes(w.precision) && kernel.supported());
    assert!((m - 1) * ldc + n <= c.len() && n <= ldc);
    assert!(bias.is_none_or(|b| b.len() == n));
    let panels = w.panels();
    let threads = rayon::current_num_threads();
    let parallel = threads > 1
        && m * n * w.k >= PARALLEL_MIN_WORK
        && crate::threads::parallel_allowed()
        && panels > 1;
    let out = SendPtr(c.as_mut_ptr());
    // Rows per block: a block of converted activations stays in L2 while every panel of the
    // task passes over it, and each panel is read once per block (from L1/L2 for all its tiles).
    let block = (A_BLOCK_BYTES / (4 * w.kg)).max(MR) / MR * MR;
    let run = |p0: usize, p1: usize| {
        let mut tile: Tile = [[0; NR]; MR];
        for b0 in (0..m).step_by(block) {
            for p in p0..p1 {
                for r0 in (b0..m.min(b0 + block)).step_by(MR) {
                    tile_sums(kernel, w, a, r0, p, &mut tile);
                    // SAFETY: each task owns the columns of its panels; rows and columns were
                    // bounds-checked above.
                    unsafe { epilogue(w, a, r0, p, &tile, out, ldc, accumulate, bias) };
                }
            }
        }
    };
    if parallel {
        let tasks = threads.min(panels);
        (0..tasks).into_par_iter().for_each(|t| {
            run(t * panels / tasks, (t + 1) * panels / tasks);
        });
    } else {
        run(0, panels);
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks of one `matmul` write disjoint columns of the output.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Scales, zero points, bias and accumulation of one tile into `c` (valid rows and columns only).
///
/// # Safety
/// `c` points at an `m × ldc` output that only this call writes in this tile's columns.
#[allow(clippy::too_many_arguments)]
unsafe fn epilogue(
    w: &PackedWeight,
    a: &PackedActivations,
    r0: usize,
    p: usize,
    tile: &Tile,
    c: SendPtr,
    ldc: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
) {
    let c0 = p * NR;
    let cols = NR.min(w.n - c0);
    let zeros = [0.0f32; NR];
    let bias = bias.map_or(&zeros[..cols], |b| &b[c0..c0 + cols]);
    for (i, sums) in tile.iter().enumerate().take(MR.min(a.m - r0)) {
        let r = r0 + i;
        // SAFETY: row r, columns c0..c0+cols are inside the output (caller's contract).
        let row = unsafe { std::slice::from_raw_parts_mut(c.0.add(r * ldc + c0), cols) };
        match w.precision {
            Precision::Bf16 => {
                for (j, o) in row.iter_mut().enumerate() {
                    let v = f32::from_bits(sums[j]) + bias[j];
                    *o = if accumulate { *o + v } else { v };
                }
            }
            Precision::Int8 => {
                let (sa, za) = (a.scale[r], a.zero[r]);
                for (j, o) in row.iter_mut().enumerate() {
                    let exact = sums[j] as i32 - za * w.row_sum[c0 + j];
                    let v = sa * w.scale[c0 + j] * exact as f32 + bias[j];
                    *o = if accumulate { *o + v } else { v };
                }
            }
        }
    }
}

/// The raw sums of rows `r0..r0+MR` × panel `p` on `kernel`.
fn tile_sums(
    kernel: Kernel,
    w: &PackedWeight,
    a: &PackedActivations,
    r0: usize,
    p: usize,
    tile: &mut Tile,
) {
    let kg = w.kg;
    let panel = &w.words[p * kg * NR..(p + 1) * kg * NR];
    let rows = &a.words[r0 * kg..(r0 + MR) * kg];
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul` checked that the CPU has the kernel's features; the slices hold MR
        // rows and one panel of `kg` groups.
        Kernel::Avx512Bf16 => unsafe { x86::bf16_dot(rows, panel, kg, tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Kernel::Avx512Widen => unsafe { x86::bf16_widen(rows, panel, kg, tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Kernel::Avx512Vnni => unsafe { x86::int8_vnni(rows, panel, kg, tile) },
        _ => match w.precision {
            Precision::Bf16 => portable_bf16(rows, panel, kg, tile),
            Precision::Int8 => portable_int8(rows, panel, kg, tile),
        },
    }
}

fn portable_bf16(rows: &[u32], panel: &[u32], kg: usize, tile: &mut Tile) {
    let mut acc = [[0.0f32; NR]; MR];
    for g in 0..kg {
        let b = &panel[g * NR..(g + 1) * NR];
        for (i, acc) in acc.iter_mut().enumerate() {
            let aw = rows[i * kg + g];
            let (a0, a1) = (f32::from_bits(aw << 16), f32::from_bits(aw & 0xffff_0000));
            for j in 0..NR {
                let (b0, b1) = (
                    f32::from_bits(b[j] << 16),
                    f32::from_bits(b[j] & 0xffff_0000),
                );
                acc[j] += a0 * b0 + a1 * b1;
            }
        }
    }
    for (t, a) in tile.iter_mut().zip(&acc) {
        for (t, a) in t.iter_mut().zip(a) {
            *t = a.to_bits();
        }
    }
}

fn portable_int8(rows: &[u32], panel: &[u32], kg: usize, tile: &mut Tile) {
    let mut acc = [[0i32; NR]; MR];
    for g in 0..kg {
        let b = &panel[g * NR..(g + 1) * NR];
        for (i, acc) in acc.iter_mut().enumerate() {
            let av = rows[i * kg + g].to_le_bytes();
            for j in 0..NR {
                let bv = b[j].to_le_bytes();
                acc[j] += (0..4)
                    .map(|t| av[t] as i32 * (bv[t] as i8) as i32)
                    .sum::<i32>();
            }
        }
    }
    for (t, a) in tile.iter_mut().zip(&acc) {
        for (t, a) in t.iter_mut().zip(a) {
            *t = *a as u32;
        }
    }
}

// The AVX-512 intrinsics are stable from Rust 1.89 (the workspace's rust-version).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Tile, MR, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; `rows` holds `MR * kg` words and `panel` `kg * NR`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_dot(rows: &[u32], panel: &[u32], kg: usize, tile: &mut Tile) {
        debug_assert!(rows.len() >= MR * kg && panel.len() >= kg * NR);
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let (a, b) = (rows.as_ptr(), panel.as_ptr());
        for g in 0..kg {
            // SAFETY: in bounds per the contract (group g of the panel, word g of each row).
            unsafe {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(g * NR).cast()));
                let b1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(b.add(g * NR + 16).cast()));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*a.add(i * kg + g) as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
                }
            }
        }
        for (t, acc) in tile.iter_mut().zip(&acc) {
            // SAFETY: each tile row holds NR = 32 words.
            unsafe {
                _mm512_storeu_ps(t.as_mut_ptr().cast(), acc[0]);
                _mm512_storeu_ps(t.as_mut_ptr().add(16).cast(), acc[1]);
            }
        }
    }

    /// # Safety
    /// The CPU has AVX-512F; sizes as in [`bf16_dot`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bf16_widen(rows: &[u32], panel: &[u32], kg: usize, tile: &mut Tile) {
        debug_assert!(rows.len() >= MR * kg && panel.len() >= kg * NR);
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let (a, b) = (rows.as_ptr(), panel.as_ptr());
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        for g in 0..kg {
            // SAFETY: in bounds per the contract.
            unsafe {
                let w0 = _mm512_loadu_si512(b.add(g * NR).cast());
                let w1 = _mm512_loadu_si512(b.add(g * NR + 16).cast());
                let (b0e, b0o) = (
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w0)),
                    _mm512_castsi512_ps(_mm512_and_si512(w0, high)),
                );
                let (b1e, b1o) = (
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w1)),
                    _mm512_castsi512_ps(_mm512_and_si512(w1, high)),
                );
                for (i, acc) in acc.iter_mut().enumerate() {
                    let aw = *a.add(i * kg + g);
                    let ae = _mm512_set1_ps(f32::from_bits(aw << 16));
                    let ao = _mm512_set1_ps(f32::from_bits(aw & 0xffff_0000));
                    acc[0] = _mm512_fmadd_ps(ao, b0o, _mm512_fmadd_ps(ae, b0e, acc[0]));
                    acc[1] = _mm512_fmadd_ps(ao, b1o, _mm512_fmadd_ps(ae, b1e, acc[1]));
                }
            }
        }
        for (t, acc) in tile.iter_mut().zip(&acc) {
            // SAFETY: each tile row holds NR = 32 words.
            unsafe {
                _mm512_storeu_ps(t.as_mut_ptr().cast(), acc[0]);
                _mm512_storeu_ps(t.as_mut_ptr().add(16).cast(), acc[1]);
            }
        }
    }

    /// # Safety
    /// The CPU has AVX-512F and AVX512_VNNI; sizes as in [`bf16_dot`].
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn int8_vnni(rows: &[u32], panel: &[u32], kg: usize, tile: &mut Tile) {
        debug_assert!(rows.len() >= MR * kg && panel.len() >= kg * NR);
        let mut acc = [[_mm512_setzero_si512(); 2]; MR];
        let (a, b) = (rows.as_ptr(), panel.as_ptr());
        for g in 0..kg {
            // SAFETY: in bounds per the contract.
            unsafe {
                let b0 = _mm512_loadu_si512(b.add(g * NR).cast());
                let b1 = _mm512_loadu_si512(b.add(g * NR + 16).cast());
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_epi32(*a.add(i * kg + g) as i32);
                    acc[0] = _mm512_dpbusd_epi32(acc[0], av, b0);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], av, b1);
                }
            }
        }
        for (t, acc) in tile.iter_mut().zip(&acc) {
            // SAFETY: each tile row holds NR = 32 words.
            unsafe {
                _mm512_storeu_si512(t.as_mut_ptr().cast(), acc[0]);
                _mm512_storeu_si512(t.as_mut_ptr().add(16).cast(), acc[1]);
            }
        }
    }
}
