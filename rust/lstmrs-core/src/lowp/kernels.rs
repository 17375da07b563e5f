//! The reduced-precision product `C[M, N] (+)= A[M, K] · W[N, K]ᵀ` over packed operands
//! ([`super::pack`]), with one tile kernel per instruction set, picked at run time, on the calling
//! thread (the sweep's team splits the panels between its members).
//!
//! A tile is [`MR`] rows × [`NR`] columns over all of `K`: 16 accumulator vectors, two loads of
//! `W` and [`MR`] broadcasts of `A` per 32-bit group. The epilogue (scales, zero points, bias,
//! accumulation into `C`) is one function with the same arithmetic, element by element, on every
//! path, so the int8 kernels, whose sums are exact integers, give the same bits everywhere; it is
//! inlined into each kernel, where it compiles to the kernel's vector instructions (scalar and
//! separate, it had 15% of the perf samples of a one-thread bf16 (64,128,128,256) LSTM, against
//! 35% in the tile kernel).

use super::pack::{PackedActivations, PackedWeight, Precision, MR, NR};
use crate::error::{Error, Result};

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

/// `c[M, N] (+)= a · wᵀ (+ bias)` for the converted activations `a` (`a.m` rows) into the
/// row-major `c` (row stride `ldc`), on `kernel` (which must compute `w.precision` on this CPU)
/// and the calling thread; `bias` `[N]` is added to every row in the same pass.
#[cfg(test)]
pub(crate) fn matmul(
    kernel: Kernel,
    w: &PackedWeight,
    a: &PackedActivations,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
) {
    let out = Out {
        ptr: c.as_mut_ptr(),
        len: c.len(),
        ld: ldc,
    };
    // SAFETY: `c` is borrowed mutably for the call.
    unsafe { matmul_panels(kernel, w, a, out, accumulate, bias, 0..w.panels()) };
}

/// A row-major output (row stride `ld`, `len` elements) that several threads write at once,
/// each only the columns of its own panels.
#[derive(Clone, Copy)]
pub(crate) struct Out {
    pub ptr: *mut f32,
    pub len: usize,
    pub ld: usize,
}

/// [`matmul`] over the panels `panels` of `w` only: their output columns (`w.dest`).
///
/// # Safety
/// `c` is valid for `c.len` elements and no other thread reads or writes those panels' columns
/// of its first `a.m` rows meanwhile.
pub(crate) unsafe fn matmul_panels(
    kernel: Kernel,
    w: &PackedWeight,
    a: &PackedActivations,
    c: Out,
    accumulate: bool,
    bias: Option<&[f32]>,
    panels: std::ops::Range<usize>,
) {
    let m = a.m;
    if m == 0 || panels.is_empty() {
        return;
    }
    assert_eq!(a.kg, w.kg, "activation and weight depths differ");
    assert!(kernel.computes(w.precision) && kernel.supported());
    assert!(panels.end <= w.panels());
    assert!((m - 1) * c.ld + w.n <= c.len && w.n <= c.ld);
    assert!(bias.is_none_or(|b| b.len() >= w.n));
    let ep = Epilogue {
        w,
        a,
        c,
        accumulate,
        bias,
    };
    // Rows per block: a block of converted activations stays in L2 while every panel passes
    // over it, and each panel is read once per block (from L1/L2 for all its tiles).
    let block = (A_BLOCK_BYTES / (4 * w.kg)).max(MR) / MR * MR;
    for b0 in (0..m).step_by(block) {
        for p in panels.clone() {
            for r0 in (b0..m.min(b0 + block)).step_by(MR) {
                // SAFETY: the caller's contract; rows and columns were bounds-checked above.
                unsafe { tile(kernel, &ep, r0, p) };
            }
        }
    }
}

/// What the epilogue of a tile needs: the operands' scales and the output.
struct Epilogue<'a> {
    w: &'a PackedWeight,
    a: &'a PackedActivations,
    c: Out,
    accumulate: bool,
    bias: Option<&'a [f32]>,
}

/// Scales, zero points, bias and accumulation of one tile's sums into `c` (valid rows and
/// columns only). Inlined into each tile kernel, so it is compiled with the kernel's vector
/// instructions; a whole panel's row (the common case) takes the fixed-width loops.
///
/// # Safety
/// [`matmul_panels`]'s contract; `r0`, `p` inside the checked bounds.
#[inline(always)]
unsafe fn epilogue(ep: &Epilogue, r0: usize, p: usize, tile: &Tile) {
    let (w, a) = (ep.w, ep.a);
    let (c0, cols) = w.dest[p];
    let lc = p * NR;
    let rows = MR.min(a.m - r0);
    if cols == NR {
        let bias: [f32; NR] = match ep.bias {
            Some(b) => b[c0..c0 + NR].try_into().expect("NR columns"),
            None => [0.0; NR],
        };
        for (i, sums) in tile.iter().enumerate().take(rows) {
            let r = r0 + i;
            // SAFETY: row r, columns c0..c0+NR are inside the output (the caller's contract).
            let row = unsafe { &mut *ep.c.ptr.add(r * ep.c.ld + c0).cast::<[f32; NR]>() };
            let mut v = [0.0f32; NR];
            match w.precision {
                Precision::Bf16 => {
                    for j in 0..NR {
                        v[j] = f32::from_bits(sums[j]) + bias[j];
                    }
                }
                Precision::Int8 => {
                    let (sa, za) = (a.scale[r], a.zero[r]);
                    let ws: &[f32; NR] = w.scale[lc..lc + NR].try_into().expect("NR scales");
                    let rs: &[i32; NR] = w.row_sum[lc..lc + NR].try_into().expect("NR sums");
                    for j in 0..NR {
                        let exact = sums[j] as i32 - za * rs[j];
                        v[j] = sa * ws[j] * exact as f32 + bias[j];
                    }
                }
            }
            if ep.accumulate {
                for j in 0..NR {
                    row[j] += v[j];
                }
            } else {
                *row = v;
            }
        }
        return;
    }
    let zeros = [0.0f32; NR];
    let bias = ep.bias.map_or(&zeros[..cols], |b| &b[c0..c0 + cols]);
    for (i, sums) in tile.iter().enumerate().take(rows) {
        let r = r0 + i;
        // SAFETY: row r, columns c0..c0+cols are inside the output (the caller's contract).
        let row = unsafe { std::slice::from_raw_parts_mut(ep.c.ptr.add(r * ep.c.ld + c0), cols) };
        match w.precision {
            Precision::Bf16 => {
                for (j, o) in row.iter_mut().enumerate() {
                    let v = f32::from_bits(sums[j]) + bias[j];
                    *o = if ep.accumulate { *o + v } else { v };
                }
            }
            Precision::Int8 => {
                let (sa, za) = (a.scale[r], a.zero[r]);
                for (j, o) in row.iter_mut().enumerate() {
                    let exact = sums[j] as i32 - za * w.row_sum[lc + j];
                    let v = sa * w.scale[lc + j] * exact as f32 + bias[j];
                    *o = if ep.accumulate { *o + v } else { v };
                }
            }
        }
    }
}

/// Rows `r0..r0+MR` × panel `p` on `kernel`: the sums, then the epilogue.
///
/// # Safety
/// As [`epilogue`].
unsafe fn tile(kernel: Kernel, ep: &Epilogue, r0: usize, p: usize) {
    let (w, a) = (ep.w, ep.a);
    let kg = w.kg;
    let panel = &w.words[p * kg * NR..(p + 1) * kg * NR];
    let rows = &a.words[r0 * kg..(r0 + MR) * kg];
    // SAFETY (all arms): `matmul_panels` checked that the CPU has the kernel's features; the
    // slices hold MR rows and one panel of `kg` groups; the epilogue's contract is the caller's.
    unsafe {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => x86::bf16_dot(rows, panel, kg, ep, r0, p),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Widen => x86::bf16_widen(rows, panel, kg, ep, r0, p),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => x86::int8_vnni(rows, panel, kg, ep, r0, p),
            _ => {
                let mut tile: Tile = [[0; NR]; MR];
                match w.precision {
                    Precision::Bf16 => portable_bf16(rows, panel, kg, &mut tile),
                    Precision::Int8 => portable_int8(rows, panel, kg, &mut tile),
                }
                epilogue(ep, r0, p, &tile);
            }
        }
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
    use super::{epilogue, Epilogue, Tile, MR, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; `rows` holds `MR * kg` words and `panel` `kg * NR`;
    /// the epilogue's contract (`super::epilogue`).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_dot(
        rows: &[u32],
        panel: &[u32],
        kg: usize,
        ep: &Epilogue,
        r0: usize,
        p: usize,
    ) {
        let mut tile: Tile = [[0; NR]; MR];
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
        // SAFETY: the caller's contract (`super::tile`).
        unsafe { epilogue(ep, r0, p, &tile) };
    }

    /// # Safety
    /// The CPU has AVX-512F; sizes as in [`bf16_dot`]; the epilogue's contract.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bf16_widen(
        rows: &[u32],
        panel: &[u32],
        kg: usize,
        ep: &Epilogue,
        r0: usize,
        p: usize,
    ) {
        let mut tile: Tile = [[0; NR]; MR];
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
        // SAFETY: the caller's contract (`super::tile`).
        unsafe { epilogue(ep, r0, p, &tile) };
    }

    /// # Safety
    /// The CPU has AVX-512F and AVX512_VNNI; sizes as in [`bf16_dot`]; the epilogue's contract.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn int8_vnni(
        rows: &[u32],
        panel: &[u32],
        kg: usize,
        ep: &Epilogue,
        r0: usize,
        p: usize,
    ) {
        let mut tile: Tile = [[0; NR]; MR];
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
        // SAFETY: the caller's contract (`super::tile`).
        unsafe { epilogue(ep, r0, p, &tile) };
    }
}
