//! The packed GEMM of a sweep: the per-step recurrent product with its weight packed once per
//! sweep.
//!
//! Each time step multiplies a small `[B, K]` matrix (the state, or the gate gradients going
//! back) by the same weight. A general GEMM packs that weight again at every call; here each
//! member of a sweep's team packs the columns it owns once, into panels laid out for its
//! register tile, and keeps them hot in its core's cache for the whole sweep.
//!
//! Layout: the weight is seen as `W(k, n) = w[k * rs + n * cs]`. Output columns come in vectors
//! of one register's lanes (16 f32 with AVX-512, 8 with AVX2 and in the portable kernel) of
//! consecutive columns; a vector never crosses a run (a gate block), and the last one of a run may
//! be short and is padded with zero weights. `NV` vectors form a panel; a tile of `MR` rows by one
//! panel is summed in registers over a `KC`-long stretch of `k`, and each panel's stretch is
//! stored `[KC][NV*lanes]`, in the order the product visits them (`panel_offset`: panel by panel,
//! or stretch by stretch, whichever rereads less from L2, see `panel_major`), so the micro-kernel
//! and the whole product read contiguous streams, the next block prefetched during the current.
//!
//! The instruction set ([`Isa`]) is picked at run time when packing: AVX-512, else AVX2 with FMA,
//! else the portable kernel (always for f64). The sum for every output element runs over `k` in
//! the same order whatever the tile, the panel position or the number of threads, so results do
//! not depend on the thread count.

use crate::scalar::{DType, Scalar};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Lanes of the portable kernel and of the AVX2 one (one AVX2 register of f32).
const LANES: usize = 8;
/// Lanes of the AVX-512 kernel (one zmm register of f32).
const LANES_512: usize = 16;

/// What a product's sums are added onto.
#[derive(Clone, Copy)]
enum Start<T> {
    /// Nothing: `c` is overwritten.
    Zero,
    /// What `c` holds.
    Output,
    /// The same row (one value per output column) for every output row.
    Row(*const T),
}

/// Hidden units are split between threads in blocks of this many: a whole AVX-512 vector (two
/// AVX2 ones), so no thread's share ends in a padded vector.
pub(crate) const UNIT_BLOCK: usize = LANES_512;

/// Bytes of L1 cache a panel stretch may fill, with the row tile beside it.
const L1_PANEL_BYTES: usize = 20 * 1024;

/// Whether the tile loop prefetches the next panel stretch into L2 rather than L1: into L1
/// only where L1 holds it beside the stretch being read (two stretches of [`L1_PANEL_BYTES`]),
/// else it evicts the stretch the remaining row tiles still read. Zen 5 (48 KiB L1d) keeps L1;
/// on Zen 4 (32 KiB, 8-way) the L1 prefetch made the H = 1024 step products 13-15% slower:
/// `examples/train_products`, B = 64, T = 64, one thread, builds alternating on the loaded
/// 2-core Genoa VM, GFLOP/s per CPU second (medians of 3 rounds of 3): forward 87.3 -> 100.2,
/// backward 88.2 -> 99.5. A prefetch only moves data: the results keep their bits.
fn prefetch_into_l2() -> bool {
    static INTO_L2: OnceLock<bool> = OnceLock::new();
    *INTO_L2.get_or_init(|| l1d_bytes().is_some_and(|b| b < 2 * L1_PANEL_BYTES))
}

/// This CPU's L1 data cache in bytes, as Linux reports it (`None` elsewhere, or unreadable:
/// the prefetch then goes into L1, as it did before the size was read).
fn l1d_bytes() -> Option<usize> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    (0..8).find_map(|i| {
        let read = |f: &str| std::fs::read_to_string(dir.join(format!("index{i}/{f}"))).ok();
        let (level, kind) = (read("level")?, read("type")?);
        if level.trim() != "1" || kind.trim() != "Data" {
            return None;
        }
        parse_cache_size(&read("size")?)
    })
}

/// `"32K"`, `"1024K"`, `"2M"` or a plain byte count, as sysfs writes cache sizes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, unit) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    digits.parse::<usize>().ok().map(|n| n * unit)
}

/// The instruction set a packed product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// 16-lane f32 vectors, 32 registers (`avx512f`).
    Avx512,
    /// 8-lane f32 vectors, 16 registers (`avx2` and `fma`).
    Avx2,
    /// Plain Rust over arrays of 8 lanes (f64, and CPUs without AVX2).
    Portable,
}

impl Isa {
    /// Every instruction set, fastest first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// `"avx512"`, `"avx2"` or `"portable"`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => LANES_512,
            Isa::Avx2 | Isa::Portable => LANES,
        }
    }

    /// Whether this CPU has the instructions.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Isa::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
                Isa::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// The instruction set f32 products run on: the fastest this CPU has, or the one named by
    /// the environment variable `LSTMRS_PACKED_ISA` (`avx512`, `avx2`, `portable`; for comparing
    /// the kernels inside one benchmark run) when the CPU has it. Read once per process.
    pub fn f32_default() -> Isa {
        static CHOSEN: OnceLock<Isa> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let wanted = std::env::var("LSTMRS_PACKED_ISA").ok();
            let named = Isa::ALL
                .into_iter()
                .find(|i| wanted.as_deref() == Some(i.name()) && i.supported());
            named.unwrap_or_else(|| {
                Isa::ALL
                    .into_iter()
                    .find(|i| i.supported())
                    .unwrap_or(Isa::Portable)
            })
        })
    }

    /// The instruction set products of `T` run on by default: f64 always runs the portable
    /// kernel.
    pub fn default_for<T: Scalar>() -> Isa {
        if T::DTYPE == DType::F32 {
            Isa::f32_default()
        } else {
            Isa::Portable
        }
    }
}

/// A run of `len` consecutive columns taken from weight column `src` onward and written to
/// output column `col` onward (one gate block of a thread's units).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Vector {
    pub src: usize,
    pub col: usize,
    pub len: usize,
}

/// Runs covering `units` of each of `gates` blocks of `h` columns (PyTorch's gate-major order):
/// output columns equal weight columns.
pub(crate) fn gate_vectors(gates: usize, h: usize, units: std::ops::Range<usize>) -> Vec<Vector> {
    (0..gates)
        .filter(|_| !units.is_empty())
        .map(|g| Vector {
            src: g * h + units.start,
            col: g * h + units.start,
            len: units.len(),
        })
        .collect()
}

/// Register tile `(MR rows, NV vectors)` for a product of `rows` rows on `isa`.
///
/// AVX2 (16 registers): with enough rows, up to 6 rows by 2 vectors: 12 accumulators, 2 panel
/// registers and a broadcast fit with one to spare (4 × 3 needs all 16, and LLVM then spills an
/// accumulator inside the loop). AVX-512 (32 registers): 6 rows by 4 vectors, 24 accumulators,
/// 4 panel registers and a broadcast. Fewer rows get wider panels so that 8 or more independent
/// sums hide the FMA latency.
fn tile_for(rows: usize, isa: Isa) -> (usize, usize) {
    match (isa, rows) {
        (Isa::Avx512, 0 | 1) => (1, 8),
        (Isa::Avx512, 2) => (2, 6),
        (Isa::Avx512, 3) => (3, 4),
        (Isa::Avx512, 4) => (4, 4),
        (Isa::Avx512, 5) => (5, 4),
        (Isa::Avx512, _) => (6, 4),
        (_, 0 | 1) => (1, 8),
        (_, 2) => (2, 4),
        (_, 3) => (3, 3),
        (_, _) => (6, 2),
    }
}

/// Where row `k` of panel `p` starts in a packed buffer (past its alignment offset), in the
/// order the product reads the weight, so that it reads the whole packed weight as one forward
/// stream (a weight larger than L2 then comes in with the hardware prefetcher running ahead, not
/// restarting at every panel): panel by panel, each `[k_len][nr]` (`panel_major`), or stretch by
/// stretch: for each `kc`-long stretch of `k`, each panel's `[kl][nr]` block in turn.
fn panel_offset(
    k: usize,
    kc: usize,
    k_len: usize,
    panels: usize,
    p: usize,
    nr: usize,
    panel_major: bool,
) -> usize {
    if panel_major {
        return (p * k_len + k) * nr;
    }
    let k0 = k / kc * kc;
    let kl = kc.min(k_len - k0);
    k0 * panels * nr + (p * kl + (k - k0)) * nr
}

/// Whether a product with `k_len`-deep rows and `cols` (padded) output columns runs panel by
/// panel, each over all its stretches of `k`, rather than stretch by stretch over all panels.
/// Either way a panel stretch stays in L1 across the row tiles; what differs is the block reread
/// from L2: the whole lhs (`rows × k_len`) once per panel, or the whole output (`rows × cols`,
/// read and written) once per stretch. The smaller one is reread: with `h · W_hhᵀ` at H = 1024,
/// B = 64, two members, the lhs is 256 KiB and a member's output 512 KiB (13 stretches of 80
/// made 13 MiB of output traffic a step against the weight's 8 MiB); the backward step
/// `dg · W_hh` (lhs 1 MiB, output 128 KiB) keeps the stretch order.
fn panel_major(k_len: usize, cols: usize) -> bool {
    k_len <= cols
}

/// Whether a product over `panels` panels copies its lhs (rows `lda_bytes` apart) tile by tile
/// first. The copy is a scalar transposition costing about a pass over the lhs: on AVX2 and the
/// portable kernel it pays when many panels reread the lhs, or when its rows lie a multiple of
/// 2 KiB apart and so share L1 sets. The AVX-512 kernel never copies: reading the rows in place
/// was as fast or faster in the step shapes of the benchmark cases (the lhs table of
/// `examples/packed_kernels`, copy and no copy taking turns in one process on the shared 2-core
/// Zen 5 VM, L1 48 KiB 12-way, so even rows 4 KiB apart fit; fastest of 9, load 7): one
/// member's half of the forward columns (a team of two) at (B,H) = (64,256) 88.9 -> 81.4 us,
/// (64,1024) 1560 -> 1502 us, (8,128) 3.97 -> 3.18 us; backward (64,256) 184 -> 154 us, (64,1024)
/// 3136 -> 2917 us; the whole forward at (64,1024) the one near-tie, 3037 -> 3104 us (medians
/// 3303 -> 3251).
fn packs_lhs(isa: Isa, panels: usize, lda_bytes: usize) -> bool {
    match LHS_COPY_OVERRIDE.load(Ordering::Relaxed) {
        1 => return false,
        2 => return panels > 1,
        _ => {}
    }
    isa != Isa::Avx512 && panels > 1 && (panels >= 8 || lda_bytes.is_multiple_of(2048))
}

/// Benchmarks only (`bench::set_lhs_copy`): 0 lets [`packs_lhs`] decide, 1 never copies, 2
/// copies whenever there is more than one panel.
static LHS_COPY_OVERRIDE: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn set_lhs_copy(copy: Option<bool>) {
    let v = match copy {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    };
    LHS_COPY_OVERRIDE.store(v, Ordering::Relaxed);
}

/// Rows of the next tile when `left` rows remain: full tiles, except that the last two share
/// what is left of `mr..2*mr` so that no tile has fewer than `mr/2` rows (few rows leave too
/// few independent sums).
fn next_tile(left: usize, mr: usize) -> usize {
    if left <= mr {
        left
    } else if left < 2 * mr {
        left.div_ceil(2)
    } else {
        mr
    }
}

/// `k_len` rows of a weight to pack, `W(k, n) = w[k * rs + n * cs]` (see [`Packed::stacked`]).
#[derive(Clone, Copy)]
pub(crate) struct WeightRows<'a, T> {
    pub w: &'a [T],
    pub rs: usize,
    pub cs: usize,
    pub k_len: usize,
}

/// Whether every part's column stride fits the 32-bit lane offsets of a gather.
fn cs_fits_gather<T>(parts: &[WeightRows<T>]) -> bool {
    parts
        .iter()
        .all(|p| p.cs.saturating_mul(LANES_512) <= i32::MAX as usize)
}

/// A weight (or the part of it one thread owns) packed for [`Packed::product`].
pub(crate) struct Packed<T> {
    buf: Vec<T>,
    /// Offset of the first panel in `buf` (aligned to 64 bytes).
    off: usize,
    k: usize,
    isa: Isa,
    mr: usize,
    nv: usize,
    kc: usize,
    /// The weight's order and the loops' ([`panel_major`]).
    panel_major: bool,
    /// `panels * nv` output slots `(col, len)`, padding slots with `len == 0`.
    slots: Vec<(usize, usize)>,
    /// The lhs, stretch by stretch of `k` and in each tile by tile `[kl][mr]`: read as one stream,
    /// its rows never fight over L1 sets (rows of a state 4 KiB apart, `H = 1024` in f32, all map
    /// to the same set). Stretch order holds only the current stretch (read once per panel from
    /// L1 instead of L2); panel order the whole lhs, copied once per product.
    lhs: std::cell::RefCell<Vec<T>>,
}

impl<T: Scalar> Packed<T> {
    /// Packs `W(k, n) = w[k * rs + n * cs]`, `k < k_len`, for the output runs `vectors`, tiled
    /// for products of about `rows` rows, on this CPU's fastest kernel for `T`.
    pub fn new(
        w: &[T],
        rs: usize,
        cs: usize,
        k_len: usize,
        vectors: &[Vector],
        rows: usize,
    ) -> Self {
        Self::new_on(Isa::default_for::<T>(), w, rs, cs, k_len, vectors, rows)
    }

    /// [`Packed::new`] for the kernel of `isa`, which must be supported and, unless portable,
    /// `T` must be f32.
    pub fn new_on(
        isa: Isa,
        w: &[T],
        rs: usize,
        cs: usize,
        k_len: usize,
        vectors: &[Vector],
        rows: usize,
    ) -> Self {
        Self::stacked_on(isa, &[WeightRows { w, rs, cs, k_len }], vectors, rows)
    }

    /// Packs the weight whose `k` rows are those of `parts` one after another (as
    /// [`Packed::new`] packs one): a product over `[a | b | ...]` without first copying the
    /// parts into one matrix.
    pub fn stacked(parts: &[WeightRows<T>], vectors: &[Vector], rows: usize) -> Self {
        Self::stacked_on(Isa::default_for::<T>(), parts, vectors, rows)
    }

    /// [`Packed::stacked`] for the kernel of `isa` (as [`Packed::new_on`]).
    pub fn stacked_on(isa: Isa, parts: &[WeightRows<T>], vectors: &[Vector], rows: usize) -> Self {
        assert!(
            isa.supported() && (isa == Isa::Portable || T::DTYPE == DType::F32),
            "the {} kernel cannot run {} here",
            isa.name(),
            T::DTYPE.name()
        );
        let k_len: usize = parts.iter().map(|part| part.k_len).sum();
        let lanes = isa.lanes();
        let (mr, nv) = tile_for(rows, isa);
        let nr = nv * lanes;
        // Runs cut into vectors of at most `lanes` columns.
        let mut cut = Vec::new();
        for v in vectors.iter().filter(|v| v.len > 0) {
            for j in (0..v.len).step_by(lanes) {
                let len = lanes.min(v.len - j);
                cut.push(Vector {
                    src: v.src + j,
                    col: v.col + j,
                    len,
                });
            }
        }
        let panels = cut.len().div_ceil(nv);
        // One row tile reuses nothing across tiles: stream the whole `k` at once then.
        let kc = if rows <= mr {
            k_len.max(1)
        } else {
            (L1_PANEL_BYTES / (nr * std::mem::size_of::<T>())).max(16)
        };
        let panel_major = panel_major(k_len, panels * nr);
        let align = 64 / std::mem::size_of::<T>();
        let mut buf = vec![T::zero(); panels * k_len * nr + align];
        let off = buf.as_ptr().align_offset(64).min(align);
        let mut slots = vec![(0, 0); panels * nv];
        // A strided vector (`W_hhᵀ`, one column per weight row) comes in by one masked gather per
        // `k` on AVX-512 rather than element by element: the scalar gather was 30% of a
        // (32,1,8,64) LSTM inference call (`perf record`).
        let gathers = cfg!(target_arch = "x86_64")
            && isa == Isa::Avx512
            && T::DTYPE == DType::F32
            && cs_fits_gather(parts);
        for (i, v) in cut.iter().enumerate() {
            if k_len == 0 {
                continue;
            }
            slots[i] = (v.col, v.len);
            let (p, lane0) = (i / nv, (i % nv) * lanes);
            let mut k0 = 0;
            for part in parts.iter().filter(|part| part.k_len > 0) {
                let WeightRows { w, rs, cs, .. } = *part;
                assert!(
                    (part.k_len - 1) * rs + (v.src + v.len - 1) * cs < w.len(),
                    "packed vector outside the weight"
                );
                for k in 0..part.k_len {
                    let at = off + panel_offset(k0 + k, kc, k_len, panels, p, nr, panel_major);
                    let row = &mut buf[at + lane0..][..v.len];
                    if cs == 1 {
                        // A row of the source is contiguous: one copy per vector.
                        row.copy_from_slice(&w[k * rs + v.src..][..v.len]);
                    } else if gathers {
                        // SAFETY: `gathers` says the CPU has AVX-512F and `T` is f32; the assert
                        // above keeps `w[k * rs + (v.src + j) * cs]` inside `w` for `j < len`,
                        // and `row` holds `len` values.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            avx512::gather(
                                w.as_ptr().add(k * rs + v.src * cs) as *const f32,
                                cs,
                                v.len,
                                row.as_mut_ptr() as *mut f32,
                            )
                        };
                    } else {
                        for (j, x) in row.iter_mut().enumerate() {
                            *x = w[k * rs + (v.src + j) * cs];
                        }
                    }
                }
                k0 += part.k_len;
            }
        }
        Packed {
            buf,
            off,
            k: k_len,
            isa,
            mr,
            nv,
            kc,
            panel_major,
            slots,
            // Allocated on first use: the AVX-512 kernel never copies (see `packs_lhs`).
            lhs: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Packs the rows `gates × units` of a `[gates*h, h]` weight for `C = A · Wᵀ` (the forward
    /// step `h · W_hhᵀ`): `K = h`, output columns in gate-major order.
    pub fn rows_of(
        w: &[T],
        gates: usize,
        h: usize,
        units: std::ops::Range<usize>,
        rows: usize,
    ) -> Self {
        Self::new(w, 1, h, h, &gate_vectors(gates, h, units), rows)
    }

    /// Packs the columns `units` of a `[gates*h, h]` weight for `C = A · W` (the backward step
    /// `d_gates · W_hh`): `K = gates*h`, output columns `units`.
    pub fn cols_of(
        w: &[T],
        gates: usize,
        h: usize,
        units: std::ops::Range<usize>,
        rows: usize,
    ) -> Self {
        Self::new(w, h, 1, gates * h, &gate_vectors(1, h, units), rows)
    }

    /// Elements held (panels, padding and alignment included).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// `k`, the inner dimension.
    pub fn depth(&self) -> usize {
        self.k
    }

    /// The kernel the products run on.
    #[cfg(test)]
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The largest output column written plus one.
    pub fn col_end(&self) -> usize {
        self.slots.iter().map(|&(c, l)| c + l).max().unwrap_or(0)
    }

    /// Panics unless `rows` (≥ 1) rows of the left operand, `lda` apart in `a_len` values, and
    /// the output rows, `ldc` apart in `c_len` values, hold every value the product touches.
    fn check_operands(&self, a_len: usize, lda: usize, rows: usize, c_len: usize, ldc: usize) {
        assert!(self.k <= lda || rows == 1, "lhs row stride below its width");
        assert!((rows - 1) * lda + self.k <= a_len, "lhs too short");
        assert!(
            self.col_end() <= ldc || rows == 1,
            "output stride below its width"
        );
        assert!(
            (rows - 1) * ldc + self.col_end() <= c_len,
            "output too short"
        );
    }

    /// `c[r, col..col+len] (+)= Σ_k a[r, k] · W(k, src..src+len)` for every vector and rows
    /// `0..rows` (`+=` when `accumulate`), bounds-checked.
    pub fn product(
        &self,
        a: &[T],
        lda: usize,
        rows: usize,
        c: &mut [T],
        ldc: usize,
        accumulate: bool,
    ) {
        if rows == 0 {
            return;
        }
        self.check_operands(a.len(), lda, rows, c.len(), ldc);
        // SAFETY: bounds checked above; `c` is borrowed mutably.
        unsafe { self.product_raw(a.as_ptr(), lda, rows, c.as_mut_ptr(), ldc, accumulate) }
    }

    /// `c[r, col..col+len] = row[col..col+len] + Σ_k a[r, k] · W(k, src..src+len)` for every
    /// vector and rows `0..rows`, bounds-checked (the tests' entry to
    /// [`Packed::product_raw_from`]): [`Packed::product`] onto a row every output
    /// row starts from (a bias), without `c` holding it first.
    #[cfg(test)]
    pub fn product_onto_row(
        &self,
        a: &[T],
        lda: usize,
        rows: usize,
        c: &mut [T],
        ldc: usize,
        row: &[T],
    ) {
        if rows == 0 {
            return;
        }
        self.check_operands(a.len(), lda, rows, c.len(), ldc);
        // SAFETY: bounds checked above; `c` is borrowed mutably, `row` only read.
        unsafe { self.product_raw_from(a.as_ptr(), lda, rows, c.as_mut_ptr(), ldc, Some(row)) }
    }

    /// [`Packed::product`] on raw pointers, for the members of a team sharing `a` and `c`.
    ///
    /// # Safety
    /// `a` holds `rows` rows of `depth()` values, `lda` apart; in `c` (rows `ldc` apart) every
    /// slot's columns exist, and no other thread reads or writes them during the call, nor writes
    /// what is read from `a`.
    pub unsafe fn product_raw(
        &self,
        a: *const T,
        lda: usize,
        rows: usize,
        c: *mut T,
        ldc: usize,
        accumulate: bool,
    ) {
        let start = if accumulate {
            Start::Output
        } else {
            Start::Zero
        };
        // SAFETY: `new_on` checked that the CPU has the kernel's instructions and that `T` is
        // f32 unless the kernel is portable; the pointers' contract is the caller's.
        unsafe { self.drive(a, lda, rows, c, ldc, start) }
    }

    /// [`Packed::product_raw`] starting from `start` instead of zero: with a row, the first
    /// stretch of `k` adds its sums onto `row` where accumulating would add them onto `c`. Those
    /// are the same additions in the same order as copying `row` into every output row and
    /// accumulating, so the same bits, without writing and reloading those rows (a pass over the
    /// output that missed L2 when the output was a projection chunk). Panics if the row is
    /// shorter than `col_end()`.
    ///
    /// # Safety
    /// As [`Packed::product_raw`].
    pub unsafe fn product_raw_from(
        &self,
        a: *const T,
        lda: usize,
        rows: usize,
        c: *mut T,
        ldc: usize,
        start: Option<&[T]>,
    ) {
        let start = match start {
            Some(row) => {
                assert!(row.len() >= self.col_end(), "start row too short");
                Start::Row(row.as_ptr())
            }
            None => Start::Zero,
        };
        // SAFETY: as in `product_raw`; a start row was checked above.
        unsafe { self.drive(a, lda, rows, c, ldc, start) }
    }

    /// The loops around the micro-kernel: `k` in stretches that keep a panel stretch in L1, then
    /// panels, then row tiles.
    ///
    /// # Safety
    /// As [`Packed::product_raw`].
    unsafe fn drive(
        &self,
        a: *const T,
        lda: usize,
        rows: usize,
        c: *mut T,
        ldc: usize,
        start: Start<T>,
    ) {
        let nr = self.nv * self.isa.lanes();
        let panels = self.slots.len() / self.nv;
        // SAFETY: `off` is inside `buf`.
        let base = unsafe { self.buf.as_ptr().add(self.off) };
        if self.k == 0 {
            if !matches!(start, Start::Output) {
                for r in 0..rows {
                    for &(col, len) in &self.slots {
                        for j in 0..len {
                            // SAFETY: the caller's contract covers every slot column, of `c`
                            // and of the start row.
                            unsafe {
                                *c.add(r * ldc + col + j) = match start {
                                    Start::Row(row) => *row.add(col + j),
                                    _ => T::zero(),
                                }
                            };
                        }
                    }
                }
            }
            return;
        }
        let pack_lhs = packs_lhs(self.isa, panels, lda * std::mem::size_of::<T>());
        // Measured on the AVX-512 kernel only; the others keep their L1 prefetch.
        let pf_l2 = self.isa == Isa::Avx512 && prefetch_into_l2();
        let lhs_len = rows * Self::lhs_depth(self.k, self.kc, self.panel_major);
        let mut lhs = self.lhs.borrow_mut();
        if pack_lhs && lhs.len() < lhs_len {
            // At the first product that copies (and when called with more rows than packed for).
            lhs.resize(lhs_len, T::zero());
        }
        let lhs_ptr = lhs.as_mut_ptr();
        // Where stretch `k0`'s copy of the lhs starts in `lhs`.
        let lhs_at = |k0: usize| if self.panel_major { k0 * rows } else { 0 };
        // Copies stretch `k0` (`kl` long) of the lhs, tile by tile `[kl][mr]`.
        let pack = |k0: usize, kl: usize| {
            let dst = lhs_ptr.wrapping_add(lhs_at(k0));
            let mut r0 = 0;
            while r0 < rows {
                let mr = next_tile(rows - r0, self.mr);
                for k in 0..kl {
                    for r in 0..mr {
                        // SAFETY: row `r0 + r`, column `k0 + k` of `a` (the caller's contract);
                        // `lhs` holds `lhs_len` values.
                        unsafe { *dst.add(r0 * kl + k * mr + r) = *a.add((r0 + r) * lda + k0 + k) };
                    }
                }
                r0 += mr;
            }
        };
        // Stretch `k0` (`kl` long) of panel `p`, over every row tile.
        let panel_stretch = |p: usize, k0: usize, kl: usize| {
            let slots = &self.slots[p * self.nv..(p + 1) * self.nv];
            // Later stretches add onto the earlier ones' sums in `c`.
            let (acc, row) = match start {
                _ if k0 > 0 => (true, std::ptr::null()),
                Start::Output => (true, std::ptr::null()),
                Start::Zero => (false, std::ptr::null()),
                Start::Row(row) => (false, row),
            };
            let at = panel_offset(k0, self.kc, self.k, panels, p, nr, self.panel_major);
            // SAFETY: panel `p`, rows `k0..k0+kl`, inside `buf`.
            let b = unsafe { base.add(at) };
            // The block that follows in the packed stream (the next stretch or panel): its
            // prefetch rides along the first row tile, about 10k cycles before it is read, so
            // a weight larger than L2 arrives from L3 without stalling the tile loop. Measured
            // on (B, H) = (64, 1024), one thread, examples/packed_kernels alternating runs under
            // load 5: forward 154-173 -> 176-192 GFLOP/s, backward 171-175 -> 177-192.
            let next_block = b.wrapping_add(kl * nr);
            let mut r0 = 0;
            while r0 < rows {
                let mr = next_tile(rows - r0, self.mr);
                // Row and `k` strides of the tile's lhs.
                let (tile_a, ars, aks) = if pack_lhs {
                    // Inside `lhs` (filled by `pack`).
                    (
                        lhs_ptr.wrapping_add(lhs_at(k0) + r0 * kl) as *const T,
                        1,
                        mr,
                    )
                } else {
                    // Rows `r0..r0+mr` of `a` (the caller's contract).
                    (a.wrapping_add(r0 * lda + k0), lda, 1)
                };
                // SAFETY: rows `r0..r0+mr` exist in `c` (the caller's contract); the kernel's
                // requirements were checked in `new_on`.
                unsafe {
                    tile(
                        self.isa,
                        mr,
                        self.nv,
                        kl,
                        tile_a,
                        ars,
                        aks,
                        b,
                        c.add(r0 * ldc),
                        ldc,
                        slots,
                        acc,
                        row,
                        if r0 == 0 {
                            next_block
                        } else {
                            std::ptr::null()
                        },
                        pf_l2,
                    )
                }
                r0 += mr;
            }
        };
        let stretches = || {
            (0..self.k)
                .step_by(self.kc)
                .map(|k0| (k0, self.kc.min(self.k - k0)))
        };
        if self.panel_major {
            if pack_lhs {
                stretches().for_each(|(k0, kl)| pack(k0, kl));
            }
            for p in 0..panels {
                stretches().for_each(|(k0, kl)| panel_stretch(p, k0, kl));
            }
        } else {
            for (k0, kl) in stretches() {
                if pack_lhs {
                    pack(k0, kl);
                }
                for p in 0..panels {
                    panel_stretch(p, k0, kl);
                }
            }
        }
    }

    /// Columns of `k` the lhs copy holds per row: the whole depth in panel order, one stretch in
    /// stretch order.
    fn lhs_depth(k_len: usize, kc: usize, panel_major: bool) -> usize {
        if panel_major {
            k_len
        } else {
            k_len.min(kc)
        }
    }
}

/// Calls the micro-kernel instance of `isa` for the tile `(mr, nv)`.
///
/// # Safety
/// As [`Packed::product_raw`], for this tile; unless `isa` is portable, `U` is f32 and the CPU
/// has the instructions of `isa`. `pf`, unless null, is where the SIMD kernels prefetch a block
/// as long as the panel stretch they read (any address: a prefetch never faults), into L2 with
/// `pf_l2`, else into L1 ([`prefetch_into_l2`]). Unless `acc`, the sums go onto `row` (by output
/// column) where it is not null, else onto nothing.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile<U: Scalar>(
    isa: Isa,
    mr: usize,
    nv: usize,
    k: usize,
    a: *const U,
    ars: usize,
    aks: usize,
    b: *const U,
    c: *mut U,
    ldc: usize,
    slots: &[(usize, usize)],
    acc: bool,
    row: *const U,
    pf: *const U,
    pf_l2: bool,
) {
    // One arm per tile shape a packing can produce: `tile_for`'s `(MR, NV)` and every smaller
    // `MR` with the same `NV` (the last row tiles of a product).
    macro_rules! pick {
        (@arms $call:tt; $($m:literal, $n:literal);*) => {
            match (mr, nv) {
                $(($m, $n) => pick!(@call $call, $m, $n),)*
                _ => unreachable!("no {} micro-kernel for a {mr}x{nv} tile", isa.name()),
            }
        };
        // SAFETY (both): the caller's contract.
        (@call [portable], $m:literal, $n:literal) => {
            unsafe { portable_tile::<U, $m, $n>(k, a, ars, aks, b, c, ldc, slots, acc, row) }
        };
        (@call [$f:ident, $a:ident, $b:ident, $c:ident, $row:ident, $pf:ident], $m:literal, $n:literal) => {
            unsafe { $f::<$m, $n>(k, $a, ars, aks, $b, $c, ldc, slots, acc, $row, $pf, pf_l2) }
        };
    }
    // The SIMD kernels' f32 views of the pointers (`U` is f32 whenever they run; unused by the
    // portable arm).
    #[cfg(target_arch = "x86_64")]
    let (a32, b32, c32, row32, pf32) = (
        a as *const f32,
        b as *const f32,
        c as *mut f32,
        row as *const f32,
        pf as *const f32,
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            pick!(@arms [avx512_tile, a32, b32, c32, row32, pf32];
                6, 4; 5, 4; 4, 4; 3, 4; 2, 4; 1, 4; 2, 6; 1, 6; 1, 8)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            pick!(@arms [avx2_tile, a32, b32, c32, row32, pf32];
                6, 2; 5, 2; 4, 2; 3, 2; 2, 2; 1, 2; 3, 3; 2, 3; 1, 3; 2, 4; 1, 4; 1, 8)
        }
        _ => pick!(@arms [portable];
            6, 2; 5, 2; 4, 2; 3, 2; 2, 2; 1, 2; 3, 3; 2, 3; 1, 3; 2, 4; 1, 4; 1, 8),
    }
}

#[cfg(target_arch = "x86_64")]
use {avx2::tile as avx2_tile, avx512::tile as avx512_tile};

/// The micro-kernel in plain Rust (f64, and CPUs without AVX2): a `MR × NV·LANES` tile.
///
/// # Safety
/// As [`tile`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn portable_tile<U: Scalar, const MR: usize, const NV: usize>(
    k: usize,
    a: *const U,
    ars: usize,
    aks: usize,
    b: *const U,
    c: *mut U,
    ldc: usize,
    slots: &[(usize, usize)],
    acc: bool,
    row: *const U,
) {
    let mut sum = [[[U::zero(); LANES]; NV]; MR];
    for kk in 0..k {
        // SAFETY: row `kk` of the panel stretch.
        let brow = unsafe { std::slice::from_raw_parts(b.add(kk * NV * LANES), NV * LANES) };
        for r in 0..MR {
            // SAFETY: row `r`, column `kk` of the lhs tile.
            let av = unsafe { *a.add(r * ars + kk * aks) };
            for v in 0..NV {
                for j in 0..LANES {
                    sum[r][v][j] += av * brow[v * LANES + j];
                }
            }
        }
    }
    for r in 0..MR {
        for (v, &(col, len)) in slots.iter().enumerate().take(NV) {
            for j in 0..len {
                // SAFETY: a slot column of row `r` (the caller's contract).
                let p = unsafe { c.add(r * ldc + col + j) };
                unsafe {
                    *p = if acc {
                        *p + sum[r][v][j]
                    } else if !row.is_null() {
                        *row.add(col + j) + sum[r][v][j]
                    } else {
                        sum[r][v][j]
                    }
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::LANES;
    use std::arch::x86_64::*;

    /// The f32 micro-kernel: `MR × NV` accumulator registers, one broadcast of `a` per row and one
    /// load per vector of the panel at each `k`.
    ///
    /// # Safety
    /// As [`super::tile`]; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile<const MR: usize, const NV: usize>(
        k: usize,
        a: *const f32,
        ars: usize,
        aks: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        slots: &[(usize, usize)],
        acc: bool,
        row: *const f32,
        pf: *const f32,
        pf_l2: bool,
    ) {
        let mut sum = [[_mm256_setzero_ps(); NV]; MR];
        let (mut a, mut b) = (a, b);
        for kk in 0..k {
            if !pf.is_null() {
                for off in (0..NV * LANES).step_by(16) {
                    // A hint only: never faults, whatever the address.
                    let at = pf.wrapping_add(kk * NV * LANES + off) as *const i8;
                    if pf_l2 {
                        _mm_prefetch::<_MM_HINT_T1>(at);
                    } else {
                        _mm_prefetch::<_MM_HINT_T0>(at);
                    }
                }
            }
            let mut bv = [_mm256_setzero_ps(); NV];
            for v in 0..NV {
                // SAFETY: the panel row holds NV vectors (packed 64-byte aligned, so the load never splits a cache line).
                bv[v] = unsafe { _mm256_loadu_ps(b.add(v * LANES)) };
            }
            for r in 0..MR {
                // SAFETY: row `r` of the lhs tile at the current `k`.
                let av = _mm256_set1_ps(unsafe { *a.add(r * ars) });
                for v in 0..NV {
                    sum[r][v] = _mm256_fmadd_ps(av, bv[v], sum[r][v]);
                }
            }
            // SAFETY: one step along `k` (the last step points one past the stretch).
            unsafe {
                a = a.add(aks);
                b = b.add(NV * LANES);
            }
        }
        for r in 0..MR {
            for v in 0..NV {
                let (col, len) = slots[v];
                // SAFETY: the slot's columns of row `r` (the caller's contract).
                let p = unsafe { c.add(r * ldc + col) };
                // The start row's columns (the caller's contract), when it is used.
                let q = row.wrapping_add(col);
                if len == LANES {
                    unsafe {
                        let x = if acc {
                            _mm256_add_ps(_mm256_loadu_ps(p), sum[r][v])
                        } else if !row.is_null() {
                            _mm256_add_ps(_mm256_loadu_ps(q), sum[r][v])
                        } else {
                            sum[r][v]
                        };
                        _mm256_storeu_ps(p, x);
                    }
                } else if len > 0 {
                    let mut tmp = [0f32; LANES];
                    // SAFETY: `tmp` holds one vector; `p..p+len` and `q..q+len` as above.
                    unsafe {
                        _mm256_storeu_ps(tmp.as_mut_ptr(), sum[r][v]);
                        for j in 0..len {
                            *p.add(j) = if acc {
                                *p.add(j) + tmp[j]
                            } else if !row.is_null() {
                                *q.add(j) + tmp[j]
                            } else {
                                tmp[j]
                            };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::LANES_512;
    use std::arch::x86_64::*;

    /// `dst[j] = src[j * stride]` for `j < len` (at most 16), one masked gather.
    ///
    /// # Safety
    /// The CPU has AVX-512F; those `src` elements are readable and `dst[..len]` writable;
    /// `15 * stride` fits in an `i32`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gather(src: *const f32, stride: usize, len: usize, dst: *mut f32) {
        let mask: __mmask16 = if len >= LANES_512 {
            0xffff
        } else {
            (1u16 << len) - 1
        };
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let offsets = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(stride as i32));
        // SAFETY: the masked lanes read and write only the elements the contract names.
        unsafe {
            let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, offsets, src);
            _mm512_mask_storeu_ps(dst, mask, v);
        }
    }

    /// The f32 micro-kernel on 16-lane registers: `MR × NV` accumulators, one broadcast of `a`
    /// per row and one load per vector of the panel at each `k`; short vectors are stored
    /// through a lane mask.
    ///
    /// # Safety
    /// As [`super::tile`]; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile<const MR: usize, const NV: usize>(
        k: usize,
        a: *const f32,
        ars: usize,
        aks: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        slots: &[(usize, usize)],
        acc: bool,
        row: *const f32,
        pf: *const f32,
        pf_l2: bool,
    ) {
        let mut sum = [[_mm512_setzero_ps(); NV]; MR];
        let (mut a, mut b) = (a, b);
        for kk in 0..k {
            if !pf.is_null() {
                for off in (0..NV * LANES_512).step_by(16) {
                    // A hint only: never faults, whatever the address.
                    let at = pf.wrapping_add(kk * NV * LANES_512 + off) as *const i8;
                    if pf_l2 {
                        _mm_prefetch::<_MM_HINT_T1>(at);
                    } else {
                        _mm_prefetch::<_MM_HINT_T0>(at);
                    }
                }
            }
            let mut bv = [_mm512_setzero_ps(); NV];
            for v in 0..NV {
                // SAFETY: the panel row holds NV vectors, 64-byte aligned.
                bv[v] = unsafe { _mm512_loadu_ps(b.add(v * LANES_512)) };
            }
            for r in 0..MR {
                // SAFETY: row `r` of the lhs tile at the current `k`.
                let av = _mm512_set1_ps(unsafe { *a.add(r * ars) });
                for v in 0..NV {
                    sum[r][v] = _mm512_fmadd_ps(av, bv[v], sum[r][v]);
                }
            }
            // SAFETY: one step along `k` (the last step points one past the stretch).
            unsafe {
                a = a.add(aks);
                b = b.add(NV * LANES_512);
            }
        }
        for r in 0..MR {
            for v in 0..NV {
                let (col, len) = slots[v];
                if len == 0 {
                    continue;
                }
                // SAFETY: the slot's `len` columns of row `r` (the caller's contract); the
                // masked load and store touch only those.
                unsafe {
                    let p = c.add(r * ldc + col);
                    let mask: __mmask16 = if len == LANES_512 {
                        0xffff
                    } else {
                        (1u16 << len) - 1
                    };
                    let x = if acc {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), sum[r][v])
                    } else if !row.is_null() {
                        // The start row's `len` columns (the caller's contract).
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, row.add(col)), sum[r][v])
                    } else {
                        sum[r][v]
                    };
                    _mm512_mask_storeu_ps(p, mask, x);
                }
            }
        }
    }
}

/// Splits `h` hidden units between at most `n` threads, in blocks of [`UNIT_BLOCK`] units.
pub(crate) fn split_units(h: usize, n: usize) -> Vec<std::ops::Range<usize>> {
    let blocks = h.div_ceil(UNIT_BLOCK).max(1);
    let n = n.clamp(1, blocks);
    (0..n)
        .map(|i| (blocks * i / n * UNIT_BLOCK).min(h)..(blocks * (i + 1) / n * UNIT_BLOCK).min(h))
        .collect()
}

/// Multiply-adds per thread below which a step's product is not split: a barrier between two
/// busy cores costs about a microsecond of skew and cache-line traffic.
pub(crate) const MIN_STEP_WORK: usize = 1 << 16;

/// Multiply-adds of a whole sweep's step products below which the sweep runs on one thread: 2^27,
/// about 0.7 ms on one core at the ~190 GFLOP/s the AVX-512 step product reaches
/// (`examples/packed_kernels.rs`). A team can save at most half of that, while a partner that
/// joins late or is preempted stalls every step's barrier: measured on the shared 2-core VM,
/// (B,T,I,H) = (32,100,8,64) LSTM inference (52M multiply-adds) took 0.84-1.0 ms on one thread
/// and 1.2-2.7 ms on a team of two (5.9 ms in the benchmark record, where torch's and ONNX
/// Runtime's threads spin beside it), and `examples/team_cost.rs` under a load average of 10 had
/// the team lose at every batch for H <= 256 (2.9x slower at H=128, B=8). Longer sweeps, such as
/// (8,2000,16,128) at 1G multiply-adds, keep the team. Idle, the team of two wins from much
/// smaller sweeps (LSTM H=64 B=32: 7.6 against 11.9 us per step), so the built-in sweeps from
/// `team_choice::PROBE_MIN_SWEEP_WORK` up to here measure both instead ([`probe_team`]).
pub(crate) const TEAM_MIN_SWEEP_WORK: usize = 1 << 27;

/// Benchmarks and tests only (`bench::set_team_override`): a team size every sweep takes instead
/// of the cost model's (0: the model decides).
static TEAM_OVERRIDE: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn set_team_override(n: usize) {
    TEAM_OVERRIDE.store(n, Ordering::Relaxed);
}

/// Threads for a sweep of `steps` steps that each do `step_work` multiply-adds over `h` units,
/// given at most `capacity` threads.
pub(crate) fn team_size(capacity: usize, h: usize, step_work: usize, steps: usize) -> usize {
    let blocks = h.div_ceil(UNIT_BLOCK);
    match TEAM_OVERRIDE.load(Ordering::Relaxed) {
        0 if step_work.saturating_mul(steps) < TEAM_MIN_SWEEP_WORK => 1,
        0 => capacity.min(blocks).min(step_work / MIN_STEP_WORK).max(1),
        n => capacity.min(blocks).min(n).max(1),
    }
}

/// The team a sweep in the band below [`TEAM_MIN_SWEEP_WORK`] (and from
/// `team_choice::PROBE_MIN_SWEEP_WORK`) could form, for `team_choice` to measure against one
/// thread; `None` outside the band, with an override set, or when the team would be one thread
/// anyway (few unit blocks, or steps under two threads' [`MIN_STEP_WORK`]).
pub(crate) fn probe_team(
    capacity: usize,
    h: usize,
    step_work: usize,
    steps: usize,
) -> Option<usize> {
    let total = step_work.saturating_mul(steps);
    if TEAM_OVERRIDE.load(Ordering::Relaxed) != 0
        || !(crate::team_choice::PROBE_MIN_SWEEP_WORK..TEAM_MIN_SWEEP_WORK).contains(&total)
    {
        return None;
    }
    let n = capacity
        .min(h.div_ceil(UNIT_BLOCK))
        .min(step_work / MIN_STEP_WORK);
    (n >= 2).then_some(n)
}

/// The plain loop the packed product is tested against:
/// `c[r, v.col + j] (+)= Σ_k a[r*lda + k] · w[k*rs + (v.src + j)*cs]`.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn reference_product<T: Scalar>(
    a: &[T],
    lda: usize,
    rows: usize,
    w: &[T],
    rs: usize,
    cs: usize,
    k_len: usize,
    vectors: &[Vector],
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    for r in 0..rows {
        for v in vectors {
            for j in 0..v.len {
                let mut s = T::zero();
                for k in 0..k_len {
                    s += a[r * lda + k] * w[k * rs + (v.src + j) * cs];
                }
                let d = &mut c[r * ldc + v.col + j];
                *d = if accumulate { *d + s } else { s };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill<T: Scalar>(n: usize, seed: f64) -> Vec<T> {
        (0..n)
            .map(|i| T::from_f64(((i as f64 + 1.0) * seed).sin()))
            .collect()
    }

    /// The kernels this CPU can run for `T`: every supported one for f32, the portable one for
    /// f64. The portable kernel runs everywhere, so every machine tests at least one path, and
    /// an AVX-512 machine tests all three.
    fn isas<T: Scalar>() -> Vec<Isa> {
        Isa::ALL
            .into_iter()
            .filter(|i| i.supported() && (*i == Isa::Portable || T::DTYPE == DType::F32))
            .collect()
    }

    fn check<T: Scalar>(
        isa: Isa,
        rows: usize,
        gates: usize,
        h: usize,
        units: std::ops::Range<usize>,
        tol: f64,
    ) {
        let gw = gates * h;
        let w: Vec<T> = fill(gw * h, 0.37);
        for forward in [true, false] {
            // Forward: a [rows, h] (padded stride), out [rows, gw]; backward: a [rows, gw], out [rows, h].
            let (k, lda, ldc) = if forward {
                (h, h + 3, gw + 1)
            } else {
                (gw, gw + 2, h + 5)
            };
            let a: Vec<T> = fill(rows * lda, 0.71);
            let (vectors, rs, cs) = if forward {
                (gate_vectors(gates, h, units.clone()), 1, h)
            } else {
                (gate_vectors(1, h, units.clone()), h, 1)
            };
            let packed = Packed::new_on(isa, &w, rs, cs, k, &vectors, rows);
            assert_eq!((packed.depth(), packed.isa()), (k, isa));
            for accumulate in [false, true] {
                let init: Vec<T> = fill(rows * ldc, 0.13);
                let mut got = init.clone();
                packed.product(&a, lda, rows, &mut got, ldc, accumulate);
                let mut want = init.clone();
                reference_product(
                    &a, lda, rows, &w, rs, cs, k, &vectors, &mut want, ldc, accumulate,
                );
                for (i, (g, wv)) in got.iter().zip(&want).enumerate() {
                    let (g, wv) = (Scalar::to_f64(*g), Scalar::to_f64(*wv));
                    assert!(
                        (g - wv).abs() <= tol * (1.0 + wv.abs()) * (k as f64).sqrt(),
                        "{isa:?} rows={rows} gates={gates} h={h} units={units:?} fwd={forward} \
                         acc={accumulate} elem {i}: {g} vs {wv}"
                    );
                }
                // Columns outside the vectors are untouched.
                let covered = |col: usize| {
                    vectors
                        .iter()
                        .any(|v| (v.col..v.col + v.len).contains(&col))
                };
                for r in 0..rows {
                    for col in 0..ldc {
                        if !covered(col) {
                            assert_eq!(got[r * ldc + col], init[r * ldc + col]);
                        }
                    }
                }
            }
            // Starting from a row gives the bits of copying the row into every output row and
            // accumulating onto it, and leaves the other columns alone.
            let row: Vec<T> = fill(ldc, 0.29);
            let init: Vec<T> = fill(rows * ldc, 0.13);
            let mut copied = init.clone();
            for r in 0..rows {
                for v in &vectors {
                    copied[r * ldc + v.col..][..v.len].copy_from_slice(&row[v.col..][..v.len]);
                }
            }
            packed.product(&a, lda, rows, &mut copied, ldc, true);
            let mut got = init.clone();
            packed.product_onto_row(&a, lda, rows, &mut got, ldc, &row);
            let bits = |v: &[T]| {
                v.iter()
                    .map(|x| Scalar::to_f64(*x).to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                bits(&got),
                bits(&copied),
                "{isa:?} rows={rows} gates={gates} h={h} units={units:?} fwd={forward} onto row"
            );
        }
    }

    #[test]
    fn every_kernel_matches_reference_on_odd_sizes() {
        // Rows 1..=8 reach every tile shape of every kernel (and the split last tiles), 17 and
        // 33 several row tiles; h = 5, 33, 130 leave short vectors of 8 and of 16 lanes.
        for rows in [1, 2, 3, 4, 5, 6, 7, 8, 17, 33] {
            for h in [1, 5, 33, 130] {
                for gates in [3, 4] {
                    for isa in isas::<f32>() {
                        check::<f32>(isa, rows, gates, h, 0..h, 2e-6);
                        // A thread's share: units from a block boundary to the end.
                        if h > UNIT_BLOCK {
                            check::<f32>(isa, rows, gates, h, UNIT_BLOCK..h, 2e-6);
                        }
                    }
                    for isa in isas::<f64>() {
                        check::<f64>(isa, rows, gates, h, 0..h, 1e-14);
                        if h > UNIT_BLOCK {
                            check::<f64>(
                                isa,
                                rows,
                                gates,
                                h,
                                UNIT_BLOCK..h.min(3 * UNIT_BLOCK),
                                1e-14,
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn long_depth_is_summed_in_stretches_like_one() {
        // K = 4*300 > the L1 stretch with 17 rows (several row tiles): exercises the k blocking,
        // in panel order (forward, K = 300 < 1200 columns) and stretch order (backward).
        let w: Vec<f32> = fill(4 * 300 * 300, 0.37);
        let fwd = Packed::new(&w, 1, 300, 300, &gate_vectors(4, 300, 0..300), 17);
        let bwd = Packed::new(&w, 300, 1, 1200, &gate_vectors(1, 300, 0..300), 17);
        assert!(fwd.panel_major && fwd.kc < 300);
        assert!(!bwd.panel_major && bwd.kc < 1200);
        for isa in isas::<f32>() {
            check::<f32>(isa, 17, 4, 300, 0..300, 2e-6);
        }
        check::<f64>(Isa::Portable, 9, 4, 300, 40..300, 1e-14);
    }

    #[test]
    fn stacked_parts_pack_like_their_concatenation() {
        // The fused LSTM step's weight: `W_hhᵀ` (strided), `W_ihᵀ` (strided), a bias row
        // (contiguous), against the same rows copied into one matrix first; every kernel, rows
        // of one and of several tiles, a thread's share of the units, every buf word compared.
        let (h, input, gates) = (33, 5, 4);
        let gw = gates * h;
        let w_hh: Vec<f32> = fill(gw * h, 0.37);
        let w_ih: Vec<f32> = fill(gw * input, 0.53);
        let bias: Vec<f32> = fill(gw, 0.91);
        let depth = h + input + 1;
        let mut cat = vec![0.0f32; depth * gw];
        for n in 0..gw {
            for k in 0..h {
                cat[k * gw + n] = w_hh[n * h + k];
            }
            for k in 0..input {
                cat[(h + k) * gw + n] = w_ih[n * input + k];
            }
            cat[(h + input) * gw + n] = bias[n];
        }
        let parts = [
            WeightRows {
                w: &w_hh[..],
                rs: 1,
                cs: h,
                k_len: h,
            },
            WeightRows {
                w: &w_ih[..],
                rs: 1,
                cs: input,
                k_len: input,
            },
            WeightRows {
                w: &bias[..],
                rs: 0,
                cs: 1,
                k_len: 1,
            },
        ];
        for isa in isas::<f32>() {
            for rows in [1, 7, 32] {
                for units in [0..h, UNIT_BLOCK..h] {
                    let vectors = gate_vectors(gates, h, units.clone());
                    let got = Packed::stacked_on(isa, &parts, &vectors, rows);
                    let want = Packed::new_on(isa, &cat, gw, 1, depth, &vectors, rows);
                    assert_eq!(got.depth(), depth);
                    assert_eq!(got.slots, want.slots);
                    // Past its alignment offset each buffer holds `panels * k * nr` words.
                    let len = want.buf.len() - 64 / 4;
                    let (g, w) = (&got.buf[got.off..][..len], &want.buf[want.off..][..len]);
                    assert_eq!(
                        g.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        w.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        "{isa:?} rows={rows} units={units:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn default_kernel_is_the_fastest_supported() {
        // Unless the environment names another one for a benchmark.
        if std::env::var_os("LSTMRS_PACKED_ISA").is_none() {
            assert_eq!(Isa::f32_default(), isas::<f32>()[0]);
        }
        assert!(Isa::f32_default().supported());
        assert_eq!(Isa::default_for::<f64>(), Isa::Portable);
    }

    #[test]
    fn thread_shares_give_the_same_bits_as_one_thread() {
        let (rows, gates, h) = (17, 4, 130);
        let w: Vec<f32> = fill(gates * h * h, 0.37);
        let a: Vec<f32> = fill(rows * h, 0.71);
        for isa in isas::<f32>() {
            let pack = |u: std::ops::Range<usize>| {
                Packed::new_on(isa, &w, 1, h, h, &gate_vectors(gates, h, u), rows)
            };
            let mut whole = vec![0f32; rows * gates * h];
            pack(0..h).product(&a, h, rows, &mut whole, gates * h, false);
            for n in [2, 3, 5] {
                let mut parts = vec![0f32; rows * gates * h];
                for u in split_units(h, n) {
                    pack(u).product(&a, h, rows, &mut parts, gates * h, false);
                }
                assert!(
                    whole
                        .iter()
                        .zip(&parts)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{isa:?} with {n} threads"
                );
            }
        }
    }

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_cache_size("32K\n"), Some(32 << 10));
        assert_eq!(parse_cache_size("48K"), Some(48 << 10));
        assert_eq!(parse_cache_size("2M"), Some(2 << 20));
        assert_eq!(parse_cache_size("65536"), Some(65536));
        assert_eq!(parse_cache_size(""), None);
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size("big"), None);
    }

    #[test]
    fn units_split_in_blocks_and_cover_all() {
        for h in [1, 5, 8, 33, 130, 1024] {
            for n in 1..6 {
                let parts = split_units(h, n);
                assert!(parts.len() <= n && !parts.is_empty());
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts.last().unwrap().end, h);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert_eq!(w[0].end % UNIT_BLOCK, 0);
                    assert!(w[0].start < w[0].end);
                }
            }
        }
    }
}
