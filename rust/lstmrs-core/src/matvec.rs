//! Matrix-vector products for step-by-step inference ([`crate::stepper`]) at small batch sizes.
//!
//! A streamed step at batch 1 multiplies `[1, K]` rows by `[G, K]` weights. The general GEMM pays
//! per call for packing and blocking that only amortise over many rows, so these products use a
//! dedicated kernel instead: eight weight rows at a time, each dotted with the input row by
//! FMA accumulators, reduced together by a horizontal-add tree and written with their biases.
//! The weights are read in place (PyTorch's row-major `[G, K]` layout), so a step always uses the
//! current weights and no packed copy has to be kept in sync; measured on the 2-core AVX2 machine
//! this layout streams as fast as a pre-packed panel at hidden 128 (both are bound by L2 bandwidth).
//!
//! Two products can share one set of accumulators (`W_ih·x + W_hh·h` for the LSTM gates and the
//! GRU's r, z gates), or be written to two destinations (the GRU's n gate keeps `W_hn·h` apart).
//! Kernels, picked at run time: for f32 on a CPU with AVX-512, register tiles of up to four
//! batch rows by four weight rows ([`avx512`]), which keep the FMA units busy at any batch size,
//! and from [`LANES_MIN_BATCH`] streams tiles whose vectors run along the batch ([`lanes`]: the
//! inputs transposed once per call, no horizontal sums);
//! for f32 and f64 with AVX2+FMA, eight weight rows per batch row; elsewhere a portable loop.
//! All give the same results up to summation order. [`rows_split`] shares the rows of a large
//! product among the pool's threads.

use crate::gates::RowsMut;
use crate::packed_gemm::UNIT_BLOCK;
use crate::scalar::Scalar;
#[cfg(target_arch = "x86_64")]
use std::any::TypeId;
use std::cell::RefCell;
use std::ops::Range;

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod lanes;

/// One product's operands: `w[rows, k]` row-major and `x[batch, k]` row-major.
#[derive(Clone, Copy)]
pub(crate) struct Product<'a, T> {
    pub w: &'a [T],
    pub x: &'a [T],
    pub k: usize,
}

impl<'a, T> Product<'a, T> {
    /// The same product restricted to weight rows `from..from + n`.
    pub fn sub(self, from: usize, n: usize) -> Self {
        Product {
            w: &self.w[from * self.k..][..n * self.k],
            ..self
        }
    }
}

/// A destination `dst[b * ld + r]` and up to two bias vectors `[rows]` added to it.
pub(crate) struct Out<'a, T> {
    pub dst: &'a mut [T],
    pub ld: usize,
    pub bias: [Option<&'a [T]>; 2],
}

/// Which kernel runs: `Auto` picks the fastest one the CPU has for the element type; tests and
/// benchmarks force the others ([`Kernel::available`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kernel {
    Auto,
    /// f32 register tiles with AVX-512 (F, VL, DQ).
    Avx512,
    /// f32 register tiles along the batch with AVX-512 (the inputs transposed per call).
    Avx512Lanes,
    /// Eight rows at a time with AVX2 and FMA (f32 and f64).
    Avx2,
    Portable,
}

impl Kernel {
    /// The kernel that runs for element type `T` when `self` is asked for: `Auto` the best one
    /// the CPU has; a kernel that does not exist for `T` on this CPU falls back to `Portable`.
    pub fn resolve<T: 'static>(self) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            let f32 = TypeId::of::<T>() == TypeId::of::<f32>();
            let f64 = TypeId::of::<T>() == TypeId::of::<f64>();
            let avx512 = f32 && avx512::available();
            let avx2 = (f32 || f64)
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            match self {
                Kernel::Auto if avx512 => return Kernel::Avx512,
                Kernel::Auto if avx2 => return Kernel::Avx2,
                Kernel::Avx512 if avx512 => return Kernel::Avx512,
                Kernel::Avx512Lanes if avx512 => return Kernel::Avx512Lanes,
                Kernel::Avx2 if avx2 => return Kernel::Avx2,
                _ => {}
            }
        }
        Kernel::Portable
    }

    /// The kernel that runs a product of `batch` streams through `weights` weight elements:
    /// [`Kernel::resolve`], except that `Auto` takes the batch-lane tiles from
    /// [`LANES_MIN_BATCH`] streams and [`LANES_MIN_WEIGHTS`] weights where the CPU has them.
    pub fn resolve_for<T: 'static>(self, batch: usize, weights: usize) -> Kernel {
        match self.resolve::<T>() {
            Kernel::Avx512
                if self == Kernel::Auto
                    && batch >= LANES_MIN_BATCH
                    && weights >= LANES_MIN_WEIGHTS =>
            {
                Kernel::Avx512Lanes
            }
            k => k,
        }
    }

    /// The kernels this CPU runs for `T`, the fastest at small batches first.
    pub fn available<T: 'static>() -> Vec<Kernel> {
        let mut v: Vec<Kernel> = [Kernel::Avx512, Kernel::Avx512Lanes, Kernel::Avx2]
            .into_iter()
            .filter(|k| k.resolve::<T>() == *k)
            .collect();
        v.push(Kernel::Portable);
        v
    }

    /// Whether the kernel is register-blocked over batch rows, so that it beats the general GEMM
    /// at every batch size (not only the few rows the others serve).
    pub fn tiles_batches<T: 'static>(self) -> bool {
        matches!(self.resolve::<T>(), Kernel::Avx512 | Kernel::Avx512Lanes)
    }
}

/// The batch from which `Kernel::Auto` runs the batch-lane tiles ([`lanes`]) rather than the
/// dot-product ones ([`avx512`]), for products of at least [`LANES_MIN_WEIGHTS`] weights.
pub const LANES_MIN_BATCH: usize = 16;

/// Weight elements (both products) from which the batch-lane tiles run: 2 MiB of f32, weights
/// that outgrow the 1 MiB L2 of the 2-core AVX-512 machine even when two threads share them.
/// Measured there (`examples/stepper_speed.rs`, one thread, least thread-CPU time of 200 runs
/// of 3 steps, µs per step, dot-product vs batch-lane tiles): LSTM B=32 H=512 (4.5 MB) 370-379
/// vs 341-356, GRU B=32 H=1024 1497-1610 vs 1176-1224, LSTM B=64 H=1024 3892-3975 vs
/// 3126-3382; with the weights in L2 the dot-product tiles are as fast or faster: GRU B=64
/// H=256 144-155 vs 152-165, GRU B=16 H=128 13.7-18.5 vs 15.0-19.7.
pub const LANES_MIN_WEIGHTS: usize = 1 << 19;

/// For every batch row `b` and weight row `r < rows`:
/// - `second` is `None` or `split` is `None`: `out.dst[b, r] = Σbias + p.w[r]·p.x[b] (+ second.w[r]·second.x[b])`
/// - `split` is `Some`: the second product goes there instead, with its own biases.
///
/// Sizes are the callers' invariants and are asserted.
pub(crate) fn rows<T: Scalar>(
    rows: usize,
    batch: usize,
    p: Product<T>,
    second: Option<Product<T>>,
    out: Out<T>,
    split: Option<Out<T>>,
) {
    rows_with(Kernel::Auto, rows, batch, p, second, out, split)
}

/// [`rows`] with the kernel chosen by the caller.
pub(crate) fn rows_with<T: Scalar>(
    kernel: Kernel,
    rows: usize,
    batch: usize,
    p: Product<T>,
    second: Option<Product<T>>,
    out: Out<T>,
    split: Option<Out<T>>,
) {
    if let Some(raw) = Raw::checked(rows, batch, p, second, out, split) {
        let kernel = kernel.resolve_for::<T>(batch, raw.weights());
        // SAFETY: `checked` asserted the bounds; `with_lanes` adds the transposed inputs.
        with_lanes(kernel, raw, |raw| unsafe { run_raw(kernel, &raw) });
    }
}

/// Weight rows of the unit a split hands to a thread: whole row blocks of every kernel.
const SPLIT_ROWS: usize = 16;

/// [`rows_with`] with the rows shared among this thread and `parts - 1` threads of the pool
/// (`handoff::beside`; inside a serial call all on this thread). Each part is a run of whole
/// row blocks, so every sum is formed as without the split: the results do not depend on
/// `parts`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_split<T: Scalar>(
    kernel: Kernel,
    parts: usize,
    rows: usize,
    batch: usize,
    p: Product<T>,
    second: Option<Product<T>>,
    out: Out<T>,
    split: Option<Out<T>>,
) {
    let parts = if crate::threads::parallel_allowed() {
        parts
    } else {
        1
    };
    if let Some(raw) = Raw::checked(rows, batch, p, second, out, split) {
        let kernel = kernel.resolve_for::<T>(batch, raw.weights());
        // SAFETY: `checked` asserted the bounds; `with_lanes` adds the transposed inputs.
        with_lanes(kernel, raw, |raw| unsafe { run_split(kernel, parts, raw) });
    }
}

/// A layer's fused product whose `gates * h` rows are `gates` blocks of `h` hidden units (one
/// block per gate), with its hidden units shared among this thread and `parts - 1` threads of
/// the pool (inside a serial call all on this thread): each part computes rows `g * h + units`
/// of every block into `dst` (`[batch, gates * h]`, rows `dst.ld()` apart, with the biases
/// `bias`) and then calls `after(units)` on the same thread, so that a gate pass over those
/// units runs beside the other parts' products instead of after all of them on one thread.
/// Parts are runs of whole [`UNIT_BLOCK`] units, so every sum is formed as without the split:
/// the results do not depend on `parts`.
///
/// `last_apart` (the GRU's n gate, whose `W_hn h` is scaled by `r`): the last gate block's
/// second product goes to the same columns of `last_apart` instead, without biases, and its
/// first product takes only `bias[0]`.
///
/// `after` must only write the columns of its units (of `dst` or elsewhere), and only read
/// what no part writes, or the columns of its own units.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate_units_split<T: Scalar>(
    kernel: Kernel,
    parts: usize,
    gates: usize,
    h: usize,
    batch: usize,
    p: Product<T>,
    second: Option<Product<T>>,
    dst: &RowsMut<'_, T>,
    bias: [Option<&[T]>; 2],
    last_apart: Option<&RowsMut<'_, T>>,
    after: &(dyn Fn(Range<usize>) + Sync),
) {
    let rows = gates * h;
    let q = second.unwrap_or(Product {
        w: &[],
        x: &[],
        k: 0,
    });
    for prod in [&p, &q] {
        assert!(prod.w.len() >= rows * prod.k && prod.x.len() >= batch * prod.k);
    }
    assert!(dst.holds(batch, rows), "destination too short");
    assert!(bias.iter().flatten().all(|b| b.len() >= rows));
    if let Some(apart) = last_apart {
        assert!(
            gates > 0 && second.is_some(),
            "a gate apart needs a second product"
        );
        assert!(apart.holds(batch, rows), "destination apart too short");
    }
    if h == 0 || batch == 0 {
        return;
    }
    let ptrs = bias.map(|b| b.map_or(std::ptr::null(), <[T]>::as_ptr));
    let whole = Raw {
        rows,
        batch,
        w1: p.w.as_ptr(),
        x1: p.x.as_ptr(),
        k1: p.k,
        w2: q.w.as_ptr(),
        x2: q.x.as_ptr(),
        k2: q.k,
        dst1: dst.ptr(),
        ld1: dst.ld(),
        bias1: ptrs,
        dst2: std::ptr::null_mut(),
        ld2: 0,
        bias2: [std::ptr::null(); 2],
        xt1: std::ptr::null(),
        xt2: std::ptr::null(),
        xld: 0,
    };
    let parts = if crate::threads::parallel_allowed() {
        parts
    } else {
        1
    };
    let kernel = kernel.resolve_for::<T>(batch, whole.weights());
    with_lanes(kernel, whole, |whole| {
        UnitJob::new(kernel, &whole, gates, h, last_apart, after).run(parts)
    });
}

impl<'a, T: Scalar> UnitJob<'a, T> {
    /// The job of [`gate_units_split`] over the whole product `whole` (bounds checked).
    fn new(
        kernel: Kernel,
        whole: &'a Raw<T>,
        gates: usize,
        h: usize,
        last_apart: Option<&RowsMut<'_, T>>,
        after: &'a (dyn Fn(Range<usize>) + Sync),
    ) -> Self {
        let (fused_gates, apart) = match last_apart {
            None => (gates, None),
            Some(to) => {
                let last = gates - 1;
                // SAFETY: rows `last * h..rows` lie inside the checked rows.
                let mut raw = unsafe { whole.rows_range(last * h, h) };
                raw.bias1[1] = std::ptr::null();
                raw.dst2 = to.ptr().wrapping_add(last * h);
                raw.ld2 = to.ld();
                (last, Some(raw))
            }
        };
        UnitJob {
            kernel,
            raw: whole,
            gates: fused_gates,
            apart,
            h,
            after,
        }
    }

    /// Runs the whole job in `parts` runs of unit blocks.
    fn run(&self, parts: usize) {
        let blocks = self.h.div_ceil(UNIT_BLOCK);
        self.run_blocks(0..blocks, parts.clamp(1, blocks));
    }
}

/// The units of a layer's fused product that one thread runs; see [`gate_units_split`].
struct UnitJob<'a, T> {
    kernel: Kernel,
    /// The product of every gate; the first `gates` blocks run fused from it.
    raw: &'a Raw<T>,
    gates: usize,
    /// The block after them with its second product apart (see `last_apart`), `h` rows.
    apart: Option<Raw<T>>,
    h: usize,
    after: &'a (dyn Fn(Range<usize>) + Sync),
}

// SAFETY: the parts read the shared operands and write the disjoint columns of their units (the
// bounds checked by `gate_units_split`); `after` is `Sync`.
unsafe impl<T: Sync> Sync for UnitJob<'_, T> {}

impl<T: Scalar> UnitJob<'_, T> {
    /// Unit blocks `blocks` in `parts` runs: the first here, the others handed to the pool.
    fn run_blocks(&self, blocks: Range<usize>, parts: usize) {
        if parts <= 1 {
            let units =
                (blocks.start * UNIT_BLOCK).min(self.h)..(blocks.end * UNIT_BLOCK).min(self.h);
            for g in (0..self.gates).filter(|_| !units.is_empty()) {
                // SAFETY: rows `g * h + units` lie inside the rows `gate_units_split` checked.
                unsafe {
                    let part = self.raw.rows_range(g * self.h + units.start, units.len());
                    run_raw(self.kernel, &part);
                }
            }
            if let Some(apart) = self.apart.as_ref().filter(|_| !units.is_empty()) {
                // SAFETY: rows `units` of the apart block's `h` rows.
                unsafe { run_raw(self.kernel, &apart.rows_range(units.start, units.len())) };
            }
            (self.after)(units);
            return;
        }
        let mid = blocks.start + blocks.len().div_ceil(parts);
        crate::handoff::beside_scoped(
            || self.run_blocks(blocks.start..mid, 1),
            || self.run_blocks(mid..blocks.end, parts - 1),
        );
    }
}

thread_local! {
    /// The transposed inputs of the batch-lane kernel, kept from call to call: a stream's steps
    /// allocate nothing once its first one has grown it.
    static LANES_INPUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with `raw`, its inputs transposed first when `kernel` (resolved for `T`) is the
/// batch-lane one: `[k, xld]` with `xld` the batch rounded up to whole vectors, the padding
/// lanes zero. Once per call, before any split: every part reads the same copy.
fn with_lanes<T: Scalar>(kernel: Kernel, mut raw: Raw<T>, f: impl FnOnce(Raw<T>)) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512Lanes && TypeId::of::<T>() == TypeId::of::<f32>() {
        let xld = raw.batch.next_multiple_of(lanes::LANES);
        let (k1, k2, batch) = (raw.k1, raw.k2, raw.batch);
        let (x1, x2) = (raw.x1.cast::<f32>(), raw.x2.cast::<f32>());
        let fill = |buf: &mut Vec<f32>| {
            buf.resize((k1 + k2) * xld, 0.0);
            let (t1, t2) = buf.split_at_mut(k1 * xld);
            // SAFETY: `T` is f32; the inputs hold `batch * k` elements (checked by the
            // callers that made `raw`); `xld` is whole vectors; the kernel (so the CPU's
            // AVX-512) was resolved.
            unsafe {
                lanes::transpose(x1, batch, k1, t1, xld);
                lanes::transpose(x2, batch, k2, t2, xld);
            }
        };
        let mut own = Vec::new();
        LANES_INPUT.with(|cell| {
            // A nested call (none today) would find the buffer borrowed: it gets its own.
            let mut guard = cell.try_borrow_mut();
            let buf = match guard.as_deref_mut() {
                Ok(buf) => buf,
                Err(_) => &mut own,
            };
            fill(buf);
            raw.xt1 = buf.as_ptr().cast();
            raw.xt2 = buf[k1 * xld..].as_ptr().cast();
            raw.xld = xld;
            f(raw)
        });
        return;
    }
    let _ = kernel;
    f(raw)
}

/// The destination columns of a thread are strided (`ld`) among the others', so the parts get
/// raw pointers rather than slices.
struct SendRaw<T>(Raw<T>);
// SAFETY: the parts of a split read shared operands and write disjoint destination columns.
unsafe impl<T: Send> Send for SendRaw<T> {}

/// `raw` in `parts` runs of row blocks: the first here, the others handed to the pool.
///
/// # Safety
/// `raw` must describe checked bounds.
unsafe fn run_split<T: Scalar + 'static>(kernel: Kernel, parts: usize, raw: Raw<T>) {
    let blocks = raw.rows.div_ceil(SPLIT_ROWS);
    let parts = parts.clamp(1, blocks);
    if parts == 1 {
        // SAFETY: the caller's contract.
        return unsafe { run_raw(kernel, &raw) };
    }
    let head = blocks.div_ceil(parts) * SPLIT_ROWS;
    // SAFETY: `head < rows`, so both ranges lie inside the checked rows.
    let (lo, hi) = unsafe {
        (
            SendRaw(raw.rows_range(0, head)),
            SendRaw(raw.rows_range(head, raw.rows - head)),
        )
    };
    crate::handoff::beside(
        // SAFETY: disjoint rows of checked bounds.
        move || unsafe { run_raw(kernel, &{ lo }.0) },
        // SAFETY: as above; `beside` returns only after this has run, so the pointers stay
        // valid.
        move || unsafe { run_split(kernel, parts - 1, { hi }.0) },
    );
}

/// Runs `kernel` (resolved: available for `T` on this CPU) on `raw`.
///
/// # Safety
/// `raw` must describe checked bounds; `kernel` must come from [`Kernel::resolve`] for `T`.
unsafe fn run_raw<T: Scalar>(kernel: Kernel, raw: &Raw<T>) {
    #[cfg(target_arch = "x86_64")]
    {
        let f32 = TypeId::of::<T>() == TypeId::of::<f32>();
        let f64 = TypeId::of::<T>() == TypeId::of::<f64>();
        match kernel {
            // SAFETY: `T` is f32; `resolve` gives Avx512 only on a CPU that has it.
            Kernel::Avx512 if f32 => return unsafe { two_sided::<avx512::Side>(&raw.cast()) },
            // SAFETY: as above, with the transposed inputs `with_lanes` made (else the
            // dot-product tiles).
            Kernel::Avx512Lanes if f32 && !raw.xt1.is_null() => {
                return unsafe { two_sided::<lanes::Side>(&raw.cast()) }
            }
            // SAFETY: as above.
            Kernel::Avx512Lanes if f32 => return unsafe { two_sided::<avx512::Side>(&raw.cast()) },
            // SAFETY: `T` is f32 (f64 below); `resolve` gives Avx2 only with AVX2 and FMA.
            Kernel::Avx2 if f32 => return unsafe { avx2::rows_f32(&raw.cast()) },
            // SAFETY: as above.
            Kernel::Avx2 if f64 => return unsafe { avx2::rows_f64(&raw.cast()) },
            _ => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = kernel;
    // SAFETY: the caller's contract.
    unsafe { portable(raw) };
}

/// One pass of an AVX-512 kernel: `dst[b * ld + r] = Σbias[r] + Σ sides` for `b < batch`,
/// `r < rows`.
#[cfg(target_arch = "x86_64")]
struct Job<'a, S> {
    rows: usize,
    batch: usize,
    sides: &'a [S],
    dst: *mut f32,
    ld: usize,
    bias: [*const f32; 2],
}

/// An f32 kernel of two-sided products ([`avx512`], [`lanes`]): how it reads each product of a
/// [`Raw`], and its pass over a [`Job`].
#[cfg(target_arch = "x86_64")]
trait Sides: Copy + Sized {
    /// The first and the second product of `raw`.
    fn of(raw: &Raw<f32>) -> [Self; 2];

    /// The kernel's pass.
    ///
    /// # Safety
    /// `job` must describe the bounds `rows_with` asserts (and whatever inputs the kernel's
    /// sides carry), and the CPU must have the kernel's features.
    unsafe fn run(job: &Job<Self>);
}

/// Kernel `S` on `raw`: the fused products in one set of accumulators, or the second product
/// to its own destination.
///
/// # Safety
/// As [`Sides::run`], for `raw`.
#[cfg(target_arch = "x86_64")]
unsafe fn two_sided<S: Sides>(raw: &Raw<f32>) {
    let both = S::of(raw);
    let fused = raw.dst2.is_null();
    let job = Job {
        rows: raw.rows,
        batch: raw.batch,
        sides: if fused { &both } else { &both[..1] },
        dst: raw.dst1,
        ld: raw.ld1,
        bias: raw.bias1,
    };
    // SAFETY: the caller's contract.
    unsafe { S::run(&job) };
    if !fused {
        let job = Job {
            sides: &both[1..],
            dst: raw.dst2,
            ld: raw.ld2,
            bias: raw.bias2,
            ..job
        };
        // SAFETY: as above.
        unsafe { S::run(&job) };
    }
}

/// The checked operands as raw pointers. Null bias pointers mean no bias; a null `dst2` means the
/// second product is added into `dst1`.
struct Raw<T> {
    rows: usize,
    batch: usize,
    w1: *const T,
    x1: *const T,
    k1: usize,
    w2: *const T,
    x2: *const T,
    k2: usize,
    dst1: *mut T,
    ld1: usize,
    bias1: [*const T; 2],
    dst2: *mut T,
    ld2: usize,
    bias2: [*const T; 2],
    /// The inputs transposed (`[k1, xld]`, `[k2, xld]`) for the batch-lane kernel, else null.
    xt1: *const T,
    xt2: *const T,
    xld: usize,
}

impl<T> Raw<T> {
    /// The operands of [`rows_with`] after checking their sizes (the callers' invariants,
    /// asserted); None when there is nothing to compute.
    fn checked(
        rows: usize,
        batch: usize,
        p: Product<T>,
        second: Option<Product<T>>,
        out: Out<T>,
        mut split: Option<Out<T>>,
    ) -> Option<Self> {
        assert!(
            split.is_none() || second.is_some(),
            "a split destination needs a second product"
        );
        let empty = Product {
            w: &[],
            x: &[],
            k: 0,
        };
        let q = second.unwrap_or(empty);
        for prod in [&p, &q] {
            assert!(prod.w.len() >= rows * prod.k && prod.x.len() >= batch * prod.k);
        }
        for o in std::iter::once(&out).chain(split.as_ref()) {
            assert!(o.ld >= rows);
            assert!(batch == 0 || o.dst.len() >= (batch - 1) * o.ld + rows);
            assert!(o.bias.iter().flatten().all(|b| b.len() >= rows));
        }
        if rows == 0 || batch == 0 {
            return None;
        }
        let ptrs =
            |bias: [Option<&[T]>; 2]| bias.map(|b| b.map_or(std::ptr::null(), <[T]>::as_ptr));
        Some(Raw {
            rows,
            batch,
            w1: p.w.as_ptr(),
            x1: p.x.as_ptr(),
            k1: p.k,
            w2: q.w.as_ptr(),
            x2: q.x.as_ptr(),
            k2: q.k,
            dst1: out.dst.as_mut_ptr(),
            ld1: out.ld,
            bias1: ptrs(out.bias),
            dst2: split
                .as_mut()
                .map_or(std::ptr::null_mut(), |s| s.dst.as_mut_ptr()),
            ld2: split.as_ref().map_or(0, |s| s.ld),
            bias2: split
                .as_ref()
                .map_or([std::ptr::null(); 2], |s| ptrs(s.bias)),
            xt1: std::ptr::null(),
            xt2: std::ptr::null(),
            xld: 0,
        })
    }

    /// Weight elements of both products.
    fn weights(&self) -> usize {
        self.rows * (self.k1 + self.k2)
    }

    /// Weight rows `from..from + n` of the same product.
    ///
    /// # Safety
    /// `from + n <= self.rows`.
    unsafe fn rows_range(&self, from: usize, n: usize) -> Self {
        let shift = |p: *const T| if p.is_null() { p } else { p.wrapping_add(from) };
        Raw {
            rows: n,
            batch: self.batch,
            w1: self.w1.wrapping_add(from * self.k1),
            x1: self.x1,
            k1: self.k1,
            w2: self.w2.wrapping_add(from * self.k2),
            x2: self.x2,
            k2: self.k2,
            dst1: self.dst1.wrapping_add(from),
            ld1: self.ld1,
            bias1: self.bias1.map(shift),
            dst2: if self.dst2.is_null() {
                self.dst2
            } else {
                self.dst2.wrapping_add(from)
            },
            ld2: self.ld2,
            bias2: self.bias2.map(shift),
            xt1: self.xt1,
            xt2: self.xt2,
            xld: self.xld,
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn cast<U>(&self) -> Raw<U> {
        Raw {
            rows: self.rows,
            batch: self.batch,
            w1: self.w1.cast(),
            x1: self.x1.cast(),
            k1: self.k1,
            w2: self.w2.cast(),
            x2: self.x2.cast(),
            k2: self.k2,
            dst1: self.dst1.cast(),
            ld1: self.ld1,
            bias1: self.bias1.map(<*const T>::cast),
            dst2: self.dst2.cast(),
            ld2: self.ld2,
            bias2: self.bias2.map(<*const T>::cast),
            xt1: self.xt1.cast(),
            xt2: self.xt2.cast(),
            xld: self.xld,
        }
    }
}

/// The sum of the non-null biases at row `r`.
///
/// # Safety
/// Non-null pointers must be valid for `r + 1` elements.
#[inline(always)]
unsafe fn bias_at<T: Scalar>(bias: &[*const T; 2], r: usize) -> T {
    let mut s = T::zero();
    for &b in bias {
        if !b.is_null() {
            // SAFETY: the caller's contract.
            s += unsafe { *b.add(r) };
        }
    }
    s
}

/// Scalar loops, four partial sums per dot product.
///
/// # Safety
/// `raw` must describe the bounds `rows_with` asserts.
unsafe fn portable<T: Scalar>(raw: &Raw<T>) {
    #[inline(always)]
    unsafe fn dot<T: Scalar>(w: *const T, x: *const T, k: usize) -> T {
        let mut acc = [T::zero(); 4];
        let full = k / 4 * 4;
        for j in (0..full).step_by(4) {
            for l in 0..4 {
                // SAFETY: `j + l < k`, inside both rows.
                acc[l] += unsafe { *w.add(j + l) * *x.add(j + l) };
            }
        }
        let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        for j in full..k {
            // SAFETY: `j < k`.
            s += unsafe { *w.add(j) * *x.add(j) };
        }
        s
    }
    let fused = raw.dst2.is_null();
    for r in 0..raw.rows {
        // SAFETY: rows and batch rows inside the asserted bounds.
        unsafe {
            let (w1, w2) = (raw.w1.add(r * raw.k1), raw.w2.add(r * raw.k2));
            let (b1, b2) = (bias_at(&raw.bias1, r), bias_at(&raw.bias2, r));
            for b in 0..raw.batch {
                let s1 = dot(w1, raw.x1.add(b * raw.k1), raw.k1);
                let s2 = dot(w2, raw.x2.add(b * raw.k2), raw.k2);
                if fused {
                    *raw.dst1.add(b * raw.ld1 + r) = b1 + s1 + s2;
                } else {
                    *raw.dst1.add(b * raw.ld1 + r) = b1 + s1;
                    *raw.dst2.add(b * raw.ld2 + r) = b2 + s2;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{bias_at, Raw};
    use std::arch::x86_64::*;

    /// Leading all-ones lanes for the masked loads of a row's tail: `MASK32[8 - n..]` selects
    /// `n` f32 lanes, `MASK64[4 - n..]` `n` f64 lanes.
    static MASK32: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
    static MASK64: [i64; 8] = [-1, -1, -1, -1, 0, 0, 0, 0];

    /// Eight f32 accumulators to one vector of their eight sums.
    macro_rules! reduce_f32 {
        ($a:expr) => {{
            let a = $a;
            let ab = _mm256_hadd_ps(a[0], a[1]);
            let cd = _mm256_hadd_ps(a[2], a[3]);
            let ef = _mm256_hadd_ps(a[4], a[5]);
            let gh = _mm256_hadd_ps(a[6], a[7]);
            // [a0 a1 a2 a3 partial | the other four partials], likewise for a4..a7.
            let abcd = _mm256_hadd_ps(ab, cd);
            let efgh = _mm256_hadd_ps(ef, gh);
            let lo = _mm256_permute2f128_ps::<0x20>(abcd, efgh);
            let hi = _mm256_permute2f128_ps::<0x31>(abcd, efgh);
            [_mm256_add_ps(lo, hi)]
        }};
    }

    /// Eight f64 accumulators to two vectors of their eight sums.
    macro_rules! reduce_f64 {
        ($a:expr) => {{
            let a = $a;
            let half = |i: usize| {
                let ab = _mm256_hadd_pd(a[i], a[i + 1]);
                let cd = _mm256_hadd_pd(a[i + 2], a[i + 3]);
                let lo = _mm256_permute2f128_pd::<0x20>(ab, cd);
                let hi = _mm256_permute2f128_pd::<0x31>(ab, cd);
                _mm256_add_pd(lo, hi)
            };
            [half(0), half(4)]
        }};
    }

    /// The kernel for one element type: `$lanes` per vector, `$mask` the tail mask table.
    macro_rules! kernel {
        ($name:ident, $t:ty, $lanes:expr, $zero:ident, $load:ident, $store:ident, $add:ident,
         $mload:ident, $fmadd:ident, $mask:ident, $reduce:ident) => {
            /// # Safety
            /// `raw` must describe the bounds `rows_with` asserts, and the CPU must have AVX2
            /// and FMA.
            #[target_feature(enable = "avx2,fma")]
            pub(super) unsafe fn $name(raw: &Raw<$t>) {
                const V: usize = 8 / $lanes;
                // SAFETY (whole body): every pointer offset stays inside the rows, batch rows
                // and destinations whose sizes `rows_with` asserted; masked loads touch only
                // the selected lanes, which lie inside the row.
                unsafe {
                    let fused = raw.dst2.is_null();
                    let (k1, k2) = (raw.k1, raw.k2);
                    // Accumulates `w[row(q)]·x` over `k` into `acc[q]` for the eight rows, where
                    // `$row(q, j)` points at element `j` of row `q`.
                    macro_rules! dot {
                        ($acc:ident, $row:expr, $x:expr, $k:expr) => {{
                            let (x, k) = ($x, $k);
                            let full = k / $lanes * $lanes;
                            let mut j = 0;
                            while j < full {
                                let z = $load(x.add(j));
                                for q in 0..8 {
                                    $acc[q] = $fmadd($load($row(q, j)), z, $acc[q]);
                                }
                                j += $lanes;
                            }
                            if full < k {
                                let m = _mm256_loadu_si256(
                                    $mask.as_ptr().add($lanes - (k - full)).cast(),
                                );
                                let z = $mload(x.add(full), m);
                                for q in 0..8 {
                                    $acc[q] = $fmadd($mload($row(q, full), m), z, $acc[q]);
                                }
                            }
                        }};
                    }
                    // The sums of batch row `b` for the eight rows, `(first (+ second), second)`
                    // (the second is zero when fused).
                    macro_rules! sums {
                        ($row1:expr, $row2:expr, $b:expr) => {{
                            let b = $b;
                            let mut acc = [$zero(); 8];
                            dot!(acc, $row1, raw.x1.add(b * k1), k1);
                            if fused {
                                dot!(acc, $row2, raw.x2.add(b * k2), k2);
                                ($reduce!(acc), [$zero(); V])
                            } else {
                                let s1 = $reduce!(acc);
                                let mut acc = [$zero(); 8];
                                dot!(acc, $row2, raw.x2.add(b * k2), k2);
                                (s1, $reduce!(acc))
                            }
                        }};
                    }
                    // Full blocks of eight rows.
                    let full = raw.rows / 8 * 8;
                    for r0 in (0..full).step_by(8) {
                        // Eight opaque row pointers: seeing them as `base + q * k`, LLVM chains
                        // each address off the previous one, which serialises the eight loads
                        // (measured 1.6x slower at hidden 32).
                        let rp1: [*const $t; 8] = std::hint::black_box(std::array::from_fn(|q| {
                            raw.w1.add((r0 + q) * k1)
                        }));
                        let rp2: [*const $t; 8] = std::hint::black_box(std::array::from_fn(|q| {
                            raw.w2.add((r0 + q) * k2)
                        }));
                        let mut bias = [[$zero(); V]; 2];
                        for (sum, ptrs) in bias.iter_mut().zip([&raw.bias1, &raw.bias2]) {
                            for &p in ptrs {
                                if !p.is_null() {
                                    for c in 0..V {
                                        sum[c] = $add(sum[c], $load(p.add(r0 + c * $lanes)));
                                    }
                                }
                            }
                        }
                        for b in 0..raw.batch {
                            let (s1, s2) = sums!(
                                |q: usize, j: usize| rp1[q].add(j),
                                |q: usize, j: usize| rp2[q].add(j),
                                b
                            );
                            let d1 = raw.dst1.add(b * raw.ld1 + r0);
                            for c in 0..V {
                                $store(d1.add(c * $lanes), $add(s1[c], bias[0][c]));
                            }
                            if !fused {
                                let d2 = raw.dst2.add(b * raw.ld2 + r0);
                                for c in 0..V {
                                    $store(d2.add(c * $lanes), $add(s2[c], bias[1][c]));
                                }
                            }
                        }
                    }
                    // The last `n < 8` rows: rows past the end repeat the last one, and only the
                    // first `n` sums are stored.
                    let n = raw.rows - full;
                    if n > 0 {
                        let row = |q: usize| full + q.min(n - 1);
                        let rp1: [*const $t; 8] = std::array::from_fn(|q| raw.w1.add(row(q) * k1));
                        let rp2: [*const $t; 8] = std::array::from_fn(|q| raw.w2.add(row(q) * k2));
                        let b1: [$t; 8] = std::array::from_fn(|q| bias_at(&raw.bias1, row(q)));
                        let b2: [$t; 8] = std::array::from_fn(|q| bias_at(&raw.bias2, row(q)));
                        for b in 0..raw.batch {
                            let (s1, s2) = sums!(
                                |q: usize, j: usize| rp1[q].add(j),
                                |q: usize, j: usize| rp2[q].add(j),
                                b
                            );
                            let (mut v1, mut v2) = ([0 as $t; 8], [0 as $t; 8]);
                            for c in 0..V {
                                $store(v1.as_mut_ptr().add(c * $lanes), s1[c]);
                                $store(v2.as_mut_ptr().add(c * $lanes), s2[c]);
                            }
                            let d1 = raw.dst1.add(b * raw.ld1 + full);
                            for q in 0..n {
                                *d1.add(q) = b1[q] + v1[q];
                            }
                            if !fused {
                                let d2 = raw.dst2.add(b * raw.ld2 + full);
                                for q in 0..n {
                                    *d2.add(q) = b2[q] + v2[q];
                                }
                            }
                        }
                    }
                }
            }
        };
    }

    kernel!(
        rows_f32,
        f32,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_add_ps,
        _mm256_maskload_ps,
        _mm256_fmadd_ps,
        MASK32,
        reduce_f32
    );
    kernel!(
        rows_f64,
        f64,
        4,
        _mm256_setzero_pd,
        _mm256_loadu_pd,
        _mm256_storeu_pd,
        _mm256_add_pd,
        _mm256_maskload_pd,
        _mm256_fmadd_pd,
        MASK64,
        reduce_f64
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data<T: Scalar>(n: usize, seed: usize) -> Vec<T> {
        (0..n)
            .map(|i| T::from_f64(((i * 7 + seed * 13) % 23) as f64 / 11.0 - 1.0))
            .collect()
    }

    /// The operands of a two-sided test product: weights `[rows, k]` and inputs `[batch, k]` of
    /// each side, and a bias `[rows]` for each.
    struct Operands<T> {
        w1: Vec<T>,
        x1: Vec<T>,
        k1: usize,
        w2: Vec<T>,
        x2: Vec<T>,
        k2: usize,
        ba: Vec<T>,
        bb: Vec<T>,
    }

    impl<T: Scalar> Operands<T> {
        fn new(rows: usize, batch: usize, k1: usize, k2: usize) -> Self {
            Operands {
                w1: data(rows * k1, 1),
                x1: data(batch * k1, 2),
                k1,
                w2: data(rows * k2, 3),
                x2: data(batch * k2, 4),
                k2,
                ba: data(rows, 5),
                bb: data(rows, 6),
            }
        }

        /// The first and the second product.
        fn products(&self) -> (Product<'_, T>, Product<'_, T>) {
            let p1 = Product {
                w: &self.w1,
                x: &self.x1,
                k: self.k1,
            };
            let p2 = Product {
                w: &self.w2,
                x: &self.x2,
                k: self.k2,
            };
            (p1, p2)
        }
    }

    /// The plain triple loop in f64.
    fn reference(rows: usize, batch: usize, w: &[f64], x: &[f64], k: usize) -> Vec<f64> {
        let mut y = vec![0.0; batch * rows];
        for b in 0..batch {
            for r in 0..rows {
                y[b * rows + r] = (0..k).map(|j| w[r * k + j] * x[b * k + j]).sum();
            }
        }
        y
    }

    fn check<T: Scalar>(kernel: Kernel, tol: f64) {
        // Rows and batch sizes around every tile shape (4 x 4, 2 x 8, 1 x 16) and block; depths
        // around the vector widths (8, 16).
        // Batches past one and two 16-lane vectors for the batch-lane tiles.
        for rows in [1, 3, 8, 9, 17, 64, 70] {
            for batch in [1, 2, 3, 5, 7, 9, 16, 17, 33] {
                for (k1, k2) in [(1, 0), (5, 7), (8, 16), (13, 130), (4, 1), (32, 17)] {
                    let ops = Operands::<T>::new(rows, batch, k1, k2);
                    let (ba, bb) = (&ops.ba, &ops.bb);
                    let f = |v: &[T]| v.iter().map(|&x| Scalar::to_f64(x)).collect::<Vec<_>>();
                    let y1 = reference(rows, batch, &f(&ops.w1), &f(&ops.x1), k1);
                    let y2 = reference(rows, batch, &f(&ops.w2), &f(&ops.x2), k2);
                    let (p1, p2) = ops.products();
                    let ld = rows + 3; // a strided destination, like one gate block of a row
                    let sentinel = T::from_f64(99.0);
                    // Fused, both biases.
                    let mut d = vec![sentinel; batch * ld];
                    let out = Out {
                        dst: &mut d,
                        ld,
                        bias: [Some(ba), Some(bb)],
                    };
                    rows_with(kernel, rows, batch, p1, Some(p2), out, None);
                    // Split, one bias each side.
                    let (mut s1, mut s2) = (vec![sentinel; batch * ld], vec![sentinel; batch * ld]);
                    let o1 = Out {
                        dst: &mut s1,
                        ld,
                        bias: [Some(ba), None],
                    };
                    let o2 = Out {
                        dst: &mut s2,
                        ld,
                        bias: [None, Some(bb)],
                    };
                    rows_with(kernel, rows, batch, p1, Some(p2), o1, Some(o2));
                    for b in 0..batch {
                        for c in 0..ld {
                            let (i, o) = (b * rows + c, b * ld + c);
                            let what = format!(
                                "{kernel:?} rows {rows} batch {batch} k {k1},{k2} [{b},{c}]"
                            );
                            if c >= rows {
                                // Padding columns are never written.
                                assert_eq!(d[o], sentinel, "{what}");
                                assert_eq!(s1[o], sentinel, "{what}");
                                assert_eq!(s2[o], sentinel, "{what}");
                                continue;
                            }
                            let close = |got: T, want: f64| {
                                (Scalar::to_f64(got) - want).abs() <= tol * (1.0 + want.abs())
                            };
                            let (bc, bd) = (Scalar::to_f64(ba[c]), Scalar::to_f64(bb[c]));
                            let fused = bc + bd + y1[i] + y2[i];
                            assert!(close(d[o], fused), "{what}: fused {:?} vs {fused}", d[o]);
                            let (e1, e2) = (bc + y1[i], bd + y2[i]);
                            assert!(close(s1[o], e1), "{what}: split 1 {:?} vs {e1}", s1[o]);
                            assert!(close(s2[o], e2), "{what}: split 2 {:?} vs {e2}", s2[o]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn simd_and_portable_kernels_match_the_plain_loop() {
        for kernel in Kernel::available::<f32>() {
            assert_eq!(kernel.resolve::<f32>(), kernel);
            check::<f32>(kernel, 1e-5);
        }
        for kernel in Kernel::available::<f64>() {
            assert_eq!(kernel.resolve::<f64>(), kernel);
            check::<f64>(kernel, 1e-13);
        }
        check::<f32>(Kernel::Auto, 1e-5);
        check::<f64>(Kernel::Auto, 1e-13);
    }

    /// Auto takes the best kernel the CPU has; one that does not exist for a type falls back.
    #[test]
    fn kernels_resolve_to_what_the_cpu_has() {
        let best = Kernel::available::<f32>()[0];
        assert_eq!(Kernel::Auto.resolve::<f32>(), best);
        assert_eq!(Kernel::Avx512.resolve::<f64>(), Kernel::Portable);
        assert_eq!(Kernel::Avx512Lanes.resolve::<f64>(), Kernel::Portable);
        // Only `Auto` turns to the batch-lane tiles, and only for products of
        // `LANES_MIN_BATCH` streams and `LANES_MIN_WEIGHTS` weights.
        let (b, w) = (LANES_MIN_BATCH, LANES_MIN_WEIGHTS);
        assert_eq!(Kernel::Avx512.resolve_for::<f32>(1000, w * 9), best);
        let wide = Kernel::Auto.resolve_for::<f32>(b, w);
        assert_eq!(Kernel::Auto.resolve_for::<f32>(b - 1, w), best);
        assert_eq!(Kernel::Auto.resolve_for::<f32>(b, w - 1), best);
        assert_eq!(
            Kernel::Auto.resolve_for::<f64>(b, w),
            Kernel::Auto.resolve::<f64>()
        );
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            assert_eq!(best, Kernel::Avx512);
            assert_eq!(wide, Kernel::Avx512Lanes);
        } else {
            assert_eq!(wide, best);
        }
    }

    /// A product shared among threads gives the bits of the one-thread call, for every part
    /// count and kernel.
    #[test]
    fn split_rows_equal_one_part_bit_for_bit() {
        for batch in [6, 40] {
            split_rows_equal_one_part(batch);
        }
    }

    fn split_rows_equal_one_part(batch: usize) {
        let rows = 150;
        let ops = Operands::<f32>::new(rows, batch, 21, 40);
        let (ba, bb) = (&ops.ba, &ops.bb);
        let (p1, p2) = ops.products();
        for kernel in Kernel::available::<f32>() {
            let run = |parts: usize| {
                let (mut d, mut e) = (vec![0f32; batch * rows], vec![0f32; batch * rows]);
                let out = Out {
                    dst: &mut d,
                    ld: rows,
                    bias: [Some(ba), None],
                };
                let split = Out {
                    dst: &mut e,
                    ld: rows,
                    bias: [Some(bb), None],
                };
                rows_split(kernel, parts, rows, batch, p1, Some(p2), out, Some(split));
                (d, e)
            };
            let one = run(1);
            for parts in [2, 3, 16] {
                assert_eq!(run(parts), one, "{kernel:?} batch {batch} parts {parts}");
            }
        }
    }

    /// Sharing a layer's units among threads gives the bits of the whole fused product (the
    /// LSTM's four gates; the GRU's three with the last one's second product apart), and
    /// `after` sees each unit exactly once, in runs of whole unit blocks.
    #[test]
    fn unit_split_equals_the_whole_product_bit_for_bit() {
        let (k1, k2) = (19, 40);
        for (gates, apart, batch) in [(4, false, 5), (3, true, 5), (4, false, 33), (3, true, 33)] {
            for h in [1, 16, 130] {
                let rows = gates * h;
                let ops = Operands::<f32>::new(rows, batch, k1, k2);
                let (ba, bb) = (&ops.ba, &ops.bb);
                let (p1, p2) = ops.products();
                let fused = if apart { rows - h } else { rows };
                for kernel in Kernel::available::<f32>() {
                    // The whole products through `rows_with`: the fused blocks, then the last
                    // block's sides apart.
                    let (mut want, mut want_apart) =
                        (vec![0f32; batch * rows], vec![0f32; batch * rows]);
                    let out = Out {
                        dst: &mut want,
                        ld: rows,
                        bias: [Some(ba), Some(bb)],
                    };
                    rows_with(kernel, fused, batch, p1, Some(p2), out, None);
                    if apart {
                        let out = Out {
                            dst: &mut want[fused..],
                            ld: rows,
                            bias: [Some(&ba[fused..]), None],
                        };
                        let split = Out {
                            dst: &mut want_apart[fused..],
                            ld: rows,
                            bias: [None, None],
                        };
                        let (q1, q2) = (p1.sub(fused, h), p2.sub(fused, h));
                        rows_with(kernel, h, batch, q1, Some(q2), out, Some(split));
                    }
                    for parts in [1, 2, 3, 16] {
                        let (mut got, mut got_apart) =
                            (vec![0f32; batch * rows], vec![0f32; batch * rows]);
                        let seen = std::sync::Mutex::new(Vec::new());
                        let after = |u: Range<usize>| seen.lock().unwrap().push(u);
                        let dst = RowsMut::new(&mut got, rows);
                        let to = RowsMut::new(&mut got_apart, rows);
                        let bias = [Some(&ba[..]), Some(&bb[..])];
                        gate_units_split(
                            kernel,
                            parts,
                            gates,
                            h,
                            batch,
                            p1,
                            Some(p2),
                            &dst,
                            bias,
                            apart.then_some(&to),
                            &after,
                        );
                        let what = format!("{kernel:?} gates {gates} h {h} parts {parts}");
                        assert_eq!(got, want, "{what}");
                        assert_eq!(got_apart, want_apart, "{what}");
                        let mut seen = seen.into_inner().unwrap();
                        seen.sort_by_key(|u| u.start);
                        let mut next = 0;
                        for u in &seen {
                            assert_eq!(u.start, next, "{what}: {seen:?}");
                            assert!(u.start % UNIT_BLOCK == 0 && !u.is_empty());
                            next = u.end;
                        }
                        assert_eq!(next, h, "{what}: {seen:?}");
                        assert!(seen.len() <= parts);
                    }
                }
            }
        }
    }

    #[test]
    fn one_product_and_no_bias() {
        let (rows, batch, k) = (11, 3, 9);
        let (w, x) = (data::<f32>(rows * k, 7), data::<f32>(batch * k, 8));
        let want = reference(
            rows,
            batch,
            &w.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            &x.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            k,
        );
        for kernel in Kernel::available::<f32>() {
            let mut y = vec![0f32; batch * rows];
            let out = Out {
                dst: &mut y,
                ld: rows,
                bias: [None, None],
            };
            rows_with(
                kernel,
                rows,
                batch,
                Product { w: &w, x: &x, k },
                None,
                out,
                None,
            );
            for (g, e) in y.iter().zip(&want) {
                assert!((*g as f64 - e).abs() < 1e-5, "{kernel:?}: {g} vs {e}");
            }
        }
    }
}
