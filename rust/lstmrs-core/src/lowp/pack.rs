//! Weights in reduced precision, packed once for the product kernels, and the per-call conversion
//! of the activations.
//!
//! Shapes: a weight `W[N, K]` (PyTorch's `[out, in]`), activations `A[M, K]`, the product
//! `C[M, N] = A · Wᵀ`. `W` is cut into panels of [`NR`] output columns; inside a panel, for each
//! group of `K` (2 for bf16, 4 for int8) the [`NR`] columns' groups sit next to each other as one
//! 32-bit word per column, which is what `vdpbf16ps` / `vpdpbusd` take as their second operand.
//! Activation rows are converted to the same groups, one 32-bit word per group, so a kernel
//! broadcasts one word of `A` against a vector of `W`. Padding (columns past `N`, elements past
//! `K`) is zero in `W`, so it adds nothing whatever `A` holds there.

/// Output columns per panel: two 16-lane AVX-512 vectors.
pub(crate) const NR: usize = 32;
/// Activation rows per kernel tile; the converted activations are padded to a multiple of it.
pub(crate) const MR: usize = 8;

/// The reduced-precision formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    /// bfloat16 weights and activations (8-bit mantissa), products accumulated in f32.
    Bf16,
    /// int8 weights with one scale per output row; activations quantized to uint8 per row and
    /// call (dynamic quantization), products accumulated exactly in i32.
    Int8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Bf16 => "bfloat16",
            Precision::Int8 => "qint8",
        }
    }

    /// Elements of `K` in one 32-bit word.
    pub(crate) fn group(self) -> usize {
        match self {
            Precision::Bf16 => 2,
            Precision::Int8 => 4,
        }
    }
}

/// f32 → bf16 bits, rounding to nearest even (NaN stays a quiet NaN), as `vcvtneps2bf16` and
/// `torch.Tensor.bfloat16()` do.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let round = 0x7fff + ((bits >> 16) & 1);
    let rounded = (bits.wrapping_add(round) >> 16) as u16;
    // A select rather than a branch, so conversion loops vectorise.
    let nan = ((bits >> 16) | 0x40) as u16;
    if x.is_nan() {
        nan
    } else {
        rounded
    }
}

/// bf16 bits → f32 (exact).
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Rounds to the nearest integer, ties to even, for `|x| < 2^22` (here `|x| <= 255`): adding and
/// subtracting 1.5·2^23 leaves no fraction bits. Plain SSE2 arithmetic that vectorises, where
/// `f32::round` is a call into libm on the baseline x86-64 target.
#[inline(always)]
fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Symmetric int8 quantization of one weight row: `w ≈ scale · q`, `q ∈ [-127, 127]`.
/// An all-zero row gets scale 1 (its products are zero anyway).
pub fn quantize_weight_row(row: &[f32], q: &mut [i8]) -> f32 {
    let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
    for (o, &v) in q.iter_mut().zip(row) {
        *o = (v / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// Asymmetric uint8 quantization of one activation row (torch's dynamic quantization, per row):
/// `x ≈ scale · (q − zero)`, with the range widened to include 0 so that 0 is exact.
/// Returns `(scale, zero)`.
pub fn quantize_activation_row(row: &[f32], q: &mut [u8]) -> (f32, i32) {
    let (lo, hi) = row
        .iter()
        .fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if hi - lo <= 0.0 {
        q.fill(0);
        return (1.0, 0);
    }
    let scale = (hi - lo) / 255.0;
    let inv = 1.0 / scale;
    let zero = round_even(-lo * inv).clamp(0.0, 255.0) as i32;
    for (o, &v) in q.iter_mut().zip(row) {
        *o = (round_even(v * inv) as i32 + zero).clamp(0, 255) as u8;
    }
    (scale, zero)
}

/// A weight `W[N, K]` packed for the kernels.
pub(crate) struct PackedWeight {
    pub precision: Precision,
    pub n: usize,
    pub k: usize,
    /// 32-bit groups per column: `ceil(K / group)`.
    pub kg: usize,
    /// `panels * kg * NR` words; panel `p` starts at `p * kg * NR`.
    pub words: Vec<u32>,
    /// int8: the scale of each output row (`N`); empty for bf16.
    pub scale: Vec<f32>,
    /// int8: `Σ_k q[n, k]` of each output row, for the activations' zero point; empty for bf16.
    /// Indexed, like `scale`, by the packed column `p * NR + j` (zero in a panel's padding).
    pub row_sum: Vec<i32>,
    /// Where each panel's columns go: `(first output column, columns)`; a panel's columns are
    /// consecutive in the output, and the panels may come in any order (see
    /// [`PackedWeight::gate_blocked`]).
    pub dest: Vec<(usize, usize)>,
}

impl PackedWeight {
    /// Packs the row-major `w[N, K]`, panel `p` holding rows (output columns) `p*NR..`.
    #[cfg(test)]
    pub fn new(precision: Precision, w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        let panels = (0..n).step_by(NR).map(|c0| (c0, NR.min(n - c0))).collect();
        Self::from_panels(precision, w, k, panels)
    }

    /// Packs a recurrent network's `w[G*H, K]` (gate `g`'s rows at `g*H..(g+1)*H`) by unit
    /// block: the panels of units `u*NR..(u+1)*NR` of gates 0..G come one after another, so the
    /// member of a team that owns unit blocks `u0..u1` owns the contiguous panels
    /// `u0*G..u1*G` and writes every gate's columns of its units.
    pub fn gate_blocked(precision: Precision, w: &[f32], gates: usize, h: usize, k: usize) -> Self {
        assert_eq!(w.len(), gates * h * k);
        let mut panels = Vec::new();
        for u0 in (0..h).step_by(NR) {
            for g in 0..gates {
                panels.push((g * h + u0, NR.min(h - u0)));
            }
        }
        Self::from_panels(precision, w, k, panels)
    }

    /// Panel `p` holds rows `dest[p].0..dest[p].0 + dest[p].1` of `w[·, K]`.
    fn from_panels(precision: Precision, w: &[f32], k: usize, dest: Vec<(usize, usize)>) -> Self {
        let g = precision.group();
        let kg = k.div_ceil(g);
        let n = dest.iter().map(|&(c0, cols)| c0 + cols).max().unwrap_or(0);
        let mut words = vec![0u32; dest.len() * kg * NR];
        let int8 = precision == Precision::Int8;
        let padded = if int8 { dest.len() * NR } else { 0 };
        let (mut scale, mut row_sum) = (vec![0.0f32; padded], vec![0i32; padded]);
        let mut q = vec![0i8; k];
        for (p, &(c0, cols)) in dest.iter().enumerate() {
            for j in 0..cols {
                let row = &w[(c0 + j) * k..(c0 + j + 1) * k];
                let base = p * kg * NR + j;
                match precision {
                    Precision::Bf16 => {
                        for (gi, pair) in row.chunks(2).enumerate() {
                            let lo = f32_to_bf16(pair[0]) as u32;
                            let hi = pair.get(1).map_or(0, |&v| f32_to_bf16(v) as u32);
                            words[base + gi * NR] = lo | (hi << 16);
                        }
                    }
                    Precision::Int8 => {
                        scale[p * NR + j] = quantize_weight_row(row, &mut q);
                        row_sum[p * NR + j] = q.iter().map(|&v| v as i32).sum();
                        for (gi, quad) in q.chunks(4).enumerate() {
                            let mut bytes = [0u8; 4];
                            for (b, &v) in bytes.iter_mut().zip(quad) {
                                *b = v as u8;
                            }
                            words[base + gi * NR] = u32::from_le_bytes(bytes);
                        }
                    }
                }
            }
        }
        PackedWeight {
            precision,
            n,
            k,
            kg,
            words,
            scale,
            row_sum,
            dest,
        }
    }

    pub fn panels(&self) -> usize {
        self.dest.len()
    }

    /// The weight as the kernels see it, back in f32 (`[N, K]`): for the references and tests.
    pub fn dequantized(&self) -> Vec<f32> {
        let g = self.precision.group();
        let mut w = vec![0.0f32; self.n * self.k];
        for (p, &(c0, cols)) in self.dest.iter().enumerate() {
            for j in 0..cols {
                let base = p * self.kg * NR + j;
                for kk in 0..self.k {
                    let word = self.words[base + (kk / g) * NR];
                    w[(c0 + j) * self.k + kk] = match self.precision {
                        Precision::Bf16 => bf16_to_f32((word >> (16 * (kk % 2))) as u16),
                        Precision::Int8 => {
                            let q = (word >> (8 * (kk % 4))) as u8 as i8;
                            self.scale[p * NR + j] * q as f32
                        }
                    };
                }
            }
        }
        w
    }

    pub fn bytes(&self) -> usize {
        4 * (self.words.len() + self.scale.len() + self.row_sum.len()) + 16 * self.dest.len()
    }
}

/// Activations `A[M, K]` converted for one product: `rows` (M padded to [`MR`]) × `kg` words,
/// and for int8 each row's scale and zero point.
#[derive(Default)]
pub(crate) struct PackedActivations {
    pub m: usize,
    pub kg: usize,
    pub words: Vec<u32>,
    pub scale: Vec<f32>,
    pub zero: Vec<i32>,
}

impl PackedActivations {
    /// Converts the row-major `a[M, K]` (row stride `ld`) into `self`, reusing its buffers, on
    /// the calling thread (each member of a sweep's team converts what it multiplies).
    pub fn fill(&mut self, precision: Precision, a: &[f32], m: usize, k: usize, ld: usize) {
        self.fill_rows(precision, m, k, |r| &a[r * ld..r * ld + k]);
    }

    /// [`PackedActivations::fill`] with row `r` of `A` at `row(r)` (`K` elements).
    pub fn fill_rows<'a>(
        &mut self,
        precision: Precision,
        m: usize,
        k: usize,
        row: impl Fn(usize) -> &'a [f32],
    ) {
        let g = precision.group();
        let kg = k.div_ceil(g);
        let rows = m.div_ceil(MR) * MR;
        self.m = m;
        self.kg = kg;
        self.words.clear();
        self.words.resize(rows * kg, 0);
        self.scale.clear();
        self.zero.clear();
        if precision == Precision::Int8 {
            self.scale.resize(rows, 1.0);
            self.zero.resize(rows, 0);
        }
        for (r, out) in self.words.chunks_mut(kg).take(m).enumerate() {
            let row = &row(r)[..k];
            // Padding past K meets zero weights; it stays 0.
            match precision {
                Precision::Int8 => {
                    let (s, z) = quantize_activation_row(row, as_bytes(out));
                    (self.scale[r], self.zero[r]) = (s, z);
                    // Byte t of the memory is byte t of the little-endian word (no-op on x86).
                    for w in out.iter_mut() {
                        *w = u32::from_le(*w);
                    }
                }
                Precision::Bf16 => to_bf16_row(row, out),
            }
        }
    }
}

/// The words' memory as bytes.
fn as_bytes(words: &mut [u32]) -> &mut [u8] {
    // SAFETY: u8 has no alignment or validity requirement; the length covers the same bytes.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 4) }
}

/// `row` as bf16, element `2g + t` in half `t` of word `g` (on a little-endian CPU, the bf16
/// array in memory): the conversion runs once per step on `[B, H]`, so it is written to
/// vectorise.
fn to_bf16_row(row: &[f32], out: &mut [u32]) {
    let pairs = row.chunks_exact(2);
    let last = pairs.remainder().first().map(|&v| f32_to_bf16(v) as u32);
    for (o, pair) in out.iter_mut().zip(pairs) {
        *o = f32_to_bf16(pair[0]) as u32 | ((f32_to_bf16(pair[1]) as u32) << 16);
    }
    if let Some(v) = last {
        out[row.len() / 2] = v;
    }
}
