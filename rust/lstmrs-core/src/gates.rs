//! Fused element-wise gate kernels: one pass per time step computes every nonlinearity and the new
//! state of a batch, forward and backward.
//!
//! Shapes (per step): `B` rows, `H` hidden units, `G*H` gate columns in PyTorch's order.
//! Each kernel works on a range of hidden units (all `G` gate columns of those units), so the
//! members of a sweep's team each update their own units right after their share of the
//! recurrent product; the buffers are then shared between threads, hence the raw row views.
//! The bodies are plain loops over equally long slices; `dispatch!` compiles each body again with
//! AVX2+FMA and AVX-512 enabled and picks one at run time, so LLVM vectorises them (including the
//! branch-free `activations`) without the crate being built for a specific CPU.

use crate::scalar::Scalar;
use std::marker::PhantomData;
use std::ops::Range;

/// Rows of a step: which of them are inside their sequence at this time step.
#[derive(Clone, Copy)]
pub struct Active<'a> {
    pub lengths: Option<&'a [usize]>,
    pub t: usize,
}

impl Active<'_> {
    /// Every row is inside its sequence (no lengths): streamed steps and the benchmarks.
    pub const ALL: Active<'static> = Active {
        lengths: None,
        t: 0,
    };

    #[inline(always)]
    pub fn row(&self, b: usize) -> bool {
        self.lengths.is_none_or(|l| self.t < l[b])
    }
}

/// A read-only row-major matrix (row stride `ld`) that the members of a team read at once.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a, T> {
    ptr: *const T,
    len: usize,
    ld: usize,
    _life: PhantomData<&'a [T]>,
}

// SAFETY: a `Rows` is a shared borrow of `[T]`.
unsafe impl<T: Sync> Send for Rows<'_, T> {}
unsafe impl<T: Sync> Sync for Rows<'_, T> {}

impl<'a, T> Rows<'a, T> {
    pub fn new(data: &'a [T], ld: usize) -> Self {
        Rows {
            ptr: data.as_ptr(),
            len: data.len(),
            ld,
            _life: PhantomData,
        }
    }
    /// Row `r`, columns `col..col + n` (bounds-checked).
    ///
    /// # Safety
    /// No thread writes those elements while the slice lives.
    #[inline(always)]
    pub unsafe fn row(&self, r: usize, col: usize, n: usize) -> &'a [T] {
        let start = r * self.ld + col;
        assert!(start + n <= self.len, "row view out of bounds");
        // SAFETY: in bounds (checked above); no concurrent writer (the caller's contract).
        unsafe { std::slice::from_raw_parts(self.ptr.add(start), n) }
    }
    /// The view starting `rows` rows further.
    pub fn skip(&self, rows: usize) -> Self {
        let off = (rows * self.ld).min(self.len);
        Rows {
            // SAFETY: `off <= len`.
            ptr: unsafe { self.ptr.add(off) },
            len: self.len - off,
            ld: self.ld,
            _life: PhantomData,
        }
    }
    /// The view starting `offset` elements further with row stride `ld`: e.g. one time step's
    /// rows of a batch-first `[B, T, S]` buffer (`offset = t*S`, `ld = T*S`).
    pub fn strided(&self, offset: usize, ld: usize) -> Self {
        let off = offset.min(self.len);
        Rows {
            // SAFETY: `off <= len`.
            ptr: unsafe { self.ptr.add(off) },
            len: self.len - off,
            ld,
            _life: PhantomData,
        }
    }
    pub fn ptr(&self) -> *const T {
        self.ptr
    }
    pub fn ld(&self) -> usize {
        self.ld
    }
    /// Whether `rows` rows of `cols` columns lie inside the view.
    pub fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || ((rows - 1) * self.ld + cols <= self.len && cols <= self.ld)
    }
}

/// A writable row-major matrix that the members of a team write at once, each only its own
/// columns.
#[derive(Clone, Copy)]
pub(crate) struct RowsMut<'a, T> {
    ptr: *mut T,
    len: usize,
    ld: usize,
    _life: PhantomData<&'a mut [T]>,
}

// SAFETY: a `RowsMut` is a mutable borrow of `[T]` split by column between threads; every access
// goes through the unsafe methods below, whose callers keep the threads' elements disjoint.
unsafe impl<T: Send> Send for RowsMut<'_, T> {}
unsafe impl<T: Send> Sync for RowsMut<'_, T> {}

impl<'a, T> RowsMut<'a, T> {
    pub fn new(data: &'a mut [T], ld: usize) -> Self {
        RowsMut {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            ld,
            _life: PhantomData,
        }
    }
    /// Row `r`, columns `col..col + n`, writable (bounds-checked).
    ///
    /// # Safety
    /// No other live slice, on any thread, covers those elements while this one lives.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn row_mut(&self, r: usize, col: usize, n: usize) -> &'a mut [T] {
        let start = r * self.ld + col;
        assert!(start + n <= self.len, "row view out of bounds");
        // SAFETY: in bounds (checked above); exclusive (the caller's contract).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), n) }
    }
    /// Read-only view of the same memory.
    ///
    /// # Safety
    /// The elements read through it are not written meanwhile.
    pub unsafe fn read(&self) -> Rows<'a, T> {
        Rows {
            ptr: self.ptr,
            len: self.len,
            ld: self.ld,
            _life: PhantomData,
        }
    }
    pub fn skip(&self, rows: usize) -> Self {
        let off = (rows * self.ld).min(self.len);
        RowsMut {
            // SAFETY: `off <= len`.
            ptr: unsafe { self.ptr.add(off) },
            len: self.len - off,
            ld: self.ld,
            _life: PhantomData,
        }
    }
    /// The view starting `offset` elements further with row stride `ld`: e.g. one time step's
    /// rows of a batch-first `[B, T, S]` buffer (`offset = t*S`, `ld = T*S`).
    pub fn strided(&self, offset: usize, ld: usize) -> Self {
        let off = offset.min(self.len);
        RowsMut {
            // SAFETY: `off <= len`.
            ptr: unsafe { self.ptr.add(off) },
            len: self.len - off,
            ld,
            _life: PhantomData,
        }
    }
    pub fn ptr(&self) -> *mut T {
        self.ptr
    }
    pub fn ld(&self) -> usize {
        self.ld
    }
    pub fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || ((rows - 1) * self.ld + cols <= self.len && cols <= self.ld)
    }
}

/// The instruction set [`dispatch!`] picks on this CPU.
pub(crate) fn isa() -> crate::packed_gemm::Isa {
    use crate::packed_gemm::Isa;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && Isa::Avx2.supported()
        {
            return Isa::Avx512;
        }
        if Isa::Avx2.supported() {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

macro_rules! dispatch {
    ($name:ident, $body:ident, ($($arg:ident : $ty:ty),* $(,)?)) => {
        /// # Safety
        /// The row views' contracts: no other thread touches the elements of `units` on the
        /// views written here, nor writes the elements read here.
        pub(crate) unsafe fn $name<T: Scalar>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512<T: Scalar>($($arg: $ty),*) {
                    // SAFETY: forwarded contract.
                    unsafe { $body($($arg),*) }
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<T: Scalar>($($arg: $ty),*) {
                    // SAFETY: forwarded contract.
                    unsafe { $body($($arg),*) }
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features the variant was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            // SAFETY: forwarded contract.
            unsafe { $body($($arg),*) }
        }
    };
}

/// LSTM forward step on hidden units `units` of `rows` rows.
/// `pre_act[B,4H]` holds `W_ih x + b_ih + b_hh` and is overwritten with the activations i, f, g,
/// o (in place: each pre-activation is dead once its gate is computed, so the tape needs no
/// second `[T, B, 4H]` buffer); `h_pre[B,4H]` holds `W_hh h`; `tanh_c[B,H]` receives `tanh(c')`.
/// Inactive rows carry `h`, `c` unchanged and write zero activations.
#[inline(always)]
unsafe fn lstm_forward_body<T: Scalar>(
    h: usize,
    units: Range<usize>,
    rows: usize,
    active: Active,
    pre_act: RowsMut<T>,
    h_pre: Rows<T>,
    c_prev: Rows<T>,
    h_prev: Rows<T>,
    tanh_c: RowsMut<T>,
    c_next: RowsMut<T>,
    h_next: RowsMut<T>,
) {
    let (u, n) = (units.start, units.len());
    for b in 0..rows {
        // SAFETY (all views below): this call's units only, per the contract.
        let (ai, af, ag, ao) = unsafe {
            (
                pre_act.row_mut(b, u, n),
                pre_act.row_mut(b, h + u, n),
                pre_act.row_mut(b, 2 * h + u, n),
                pre_act.row_mut(b, 3 * h + u, n),
            )
        };
        let (tc, cn, hn) = unsafe {
            (
                tanh_c.row_mut(b, u, n),
                c_next.row_mut(b, u, n),
                h_next.row_mut(b, u, n),
            )
        };
        let (cp, hp) = unsafe { (c_prev.row(b, u, n), h_prev.row(b, u, n)) };
        if !active.row(b) {
            for a in [ai, af, ag, ao, tc] {
                a.fill(T::zero());
            }
            cn.copy_from_slice(cp);
            hn.copy_from_slice(hp);
            continue;
        }
        let (pi, pf, pg, po) = unsafe {
            (
                h_pre.row(b, u, n),
                h_pre.row(b, h + u, n),
                h_pre.row(b, 2 * h + u, n),
                h_pre.row(b, 3 * h + u, n),
            )
        };
        lstm_forward_row(ai, af, ag, ao, pi, pf, pg, po, cp, tc, cn, hn);
    }
}

/// One row of [`lstm_forward_body`]. Each slice arrives as its own function argument so that
/// LLVM knows they do not overlap (slices made from raw pointers inside the body, or passed
/// inside an array, carry no such promise, and the loop would stay scalar).
#[inline(always)]
fn lstm_forward_row<T: Scalar>(
    ai: &mut [T],
    af: &mut [T],
    ag: &mut [T],
    ao: &mut [T],
    pi: &[T],
    pf: &[T],
    pg: &[T],
    po: &[T],
    cp: &[T],
    tc: &mut [T],
    cn: &mut [T],
    hn: &mut [T],
) {
    let n = cp.len();
    let (pi, pf, pg, po) = (&pi[..n], &pf[..n], &pg[..n], &po[..n]);
    let (ai, af, ag, ao) = (&mut ai[..n], &mut af[..n], &mut ag[..n], &mut ao[..n]);
    let (tc, cn, hn) = (&mut tc[..n], &mut cn[..n], &mut hn[..n]);
    for j in 0..n {
        let i = (ai[j] + pi[j]).sigmoid();
        let f = (af[j] + pf[j]).sigmoid();
        let gg = (ag[j] + pg[j]).tanh_act();
        let o = (ao[j] + po[j]).sigmoid();
        let c = f * cp[j] + i * gg;
        let t = c.tanh_act();
        ai[j] = i;
        af[j] = f;
        ag[j] = gg;
        ao[j] = o;
        cn[j] = c;
        tc[j] = t;
        hn[j] = o * t;
    }
}
dispatch!(lstm_forward_units, lstm_forward_body, (
    h: usize, units: Range<usize>, rows: usize, active: Active, pre_act: RowsMut<T>,
    h_pre: Rows<T>, c_prev: Rows<T>, h_prev: Rows<T>, tanh_c: RowsMut<T>, c_next: RowsMut<T>,
    h_next: RowsMut<T>,
));

/// LSTM forward step on hidden units `units` of `rows` rows when `act[B,4H]` already holds the
/// whole pre-activations (the sweep adds its recurrent product onto the input side in place):
/// [`lstm_forward_body`] with no second product to read and add. Writes `c_next`, `h_next` and,
/// when `keep` (a tape), the activations over `act` and `tanh(c')` into `tanh_c`; without a tape
/// those are left as they were. Inactive rows carry `h`, `c` unchanged.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn lstm_forward_summed_body<T: Scalar>(
    h: usize,
    units: Range<usize>,
    rows: usize,
    active: Active,
    act: RowsMut<T>,
    c_prev: Rows<T>,
    h_prev: Rows<T>,
    tanh_c: RowsMut<T>,
    c_next: RowsMut<T>,
    h_next: RowsMut<T>,
    keep: bool,
) {
    let (u, n) = (units.start, units.len());
    for b in 0..rows {
        // SAFETY (all views below): this call's units only, per the contract.
        let (ai, af, ag, ao) = unsafe {
            (
                act.row_mut(b, u, n),
                act.row_mut(b, h + u, n),
                act.row_mut(b, 2 * h + u, n),
                act.row_mut(b, 3 * h + u, n),
            )
        };
        let (tc, cn, hn) = unsafe {
            (
                tanh_c.row_mut(b, u, n),
                c_next.row_mut(b, u, n),
                h_next.row_mut(b, u, n),
            )
        };
        let (cp, hp) = unsafe { (c_prev.row(b, u, n), h_prev.row(b, u, n)) };
        if !active.row(b) {
            for a in [ai, af, ag, ao, tc] {
                a.fill(T::zero());
            }
            cn.copy_from_slice(cp);
            hn.copy_from_slice(hp);
            continue;
        }
        if keep {
            lstm_forward_summed_row::<T, true>(ai, af, ag, ao, cp, tc, cn, hn);
        } else {
            lstm_forward_summed_row::<T, false>(ai, af, ag, ao, cp, tc, cn, hn);
        }
    }
}

/// One row of [`lstm_forward_summed_body`] (each slice its own argument, as in
/// [`lstm_forward_row`]); the activations and `tanh(c')` are stored only when `KEEP`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn lstm_forward_summed_row<T: Scalar, const KEEP: bool>(
    ai: &mut [T],
    af: &mut [T],
    ag: &mut [T],
    ao: &mut [T],
    cp: &[T],
    tc: &mut [T],
    cn: &mut [T],
    hn: &mut [T],
) {
    let n = cp.len();
    let (ai, af, ag, ao) = (&mut ai[..n], &mut af[..n], &mut ag[..n], &mut ao[..n]);
    let (tc, cn, hn) = (&mut tc[..n], &mut cn[..n], &mut hn[..n]);
    for j in 0..n {
        let i = ai[j].sigmoid();
        let f = af[j].sigmoid();
        let gg = ag[j].tanh_act();
        let o = ao[j].sigmoid();
        let c = f * cp[j] + i * gg;
        let t = c.tanh_act();
        if KEEP {
            ai[j] = i;
            af[j] = f;
            ag[j] = gg;
            ao[j] = o;
            tc[j] = t;
        }
        cn[j] = c;
        hn[j] = o * t;
    }
}
dispatch!(lstm_forward_summed_units, lstm_forward_summed_body, (
    h: usize, units: Range<usize>, rows: usize, active: Active, act: RowsMut<T>,
    c_prev: Rows<T>, h_prev: Rows<T>, tanh_c: RowsMut<T>, c_next: RowsMut<T>,
    h_next: RowsMut<T>, keep: bool,
));

/// LSTM backward step on hidden units `units`.
/// In: `dh[B,H]` (gradient of the step's output state, output gradient included), `dc[B,H]`
/// (gradient of `c'`), the step's `act`, `tanh_c` and `c_prev`.
/// Out: `d_pre[B,4H]` (gradient of the gate pre-activations), `dc` becomes the gradient of `c_prev`
/// and `dh` is zeroed (the recurrent product adds `d_pre · W_hh` afterwards). Inactive rows write
/// zero `d_pre` and leave `dh`, `dc` to flow through unchanged.
#[inline(always)]
unsafe fn lstm_backward_body<T: Scalar>(
    h: usize,
    units: Range<usize>,
    rows: usize,
    active: Active,
    act: Rows<T>,
    tanh_c: Rows<T>,
    c_prev: Rows<T>,
    dh: RowsMut<T>,
    dc: RowsMut<T>,
    d_pre: RowsMut<T>,
) {
    let (u, n) = (units.start, units.len());
    for b in 0..rows {
        // SAFETY (all views below): this call's units only, per the contract.
        let (di, df, dg, d_o) = unsafe {
            (
                d_pre.row_mut(b, u, n),
                d_pre.row_mut(b, h + u, n),
                d_pre.row_mut(b, 2 * h + u, n),
                d_pre.row_mut(b, 3 * h + u, n),
            )
        };
        if !active.row(b) {
            for d in [di, df, dg, d_o] {
                d.fill(T::zero());
            }
            continue;
        }
        let (ai, af, ag, ao) = unsafe {
            (
                act.row(b, u, n),
                act.row(b, h + u, n),
                act.row(b, 2 * h + u, n),
                act.row(b, 3 * h + u, n),
            )
        };
        let (tc, cp) = unsafe { (tanh_c.row(b, u, n), c_prev.row(b, u, n)) };
        let (dhr, dcr) = unsafe { (dh.row_mut(b, u, n), dc.row_mut(b, u, n)) };
        lstm_backward_row(ai, af, ag, ao, tc, cp, dhr, dcr, di, df, dg, d_o);
    }
}

/// One row of [`lstm_backward_body`] (slices as arguments: see [`lstm_forward_row`]).
#[inline(always)]
fn lstm_backward_row<T: Scalar>(
    ai: &[T],
    af: &[T],
    ag: &[T],
    ao: &[T],
    tc: &[T],
    cp: &[T],
    dhr: &mut [T],
    dcr: &mut [T],
    di: &mut [T],
    df: &mut [T],
    dg: &mut [T],
    d_o: &mut [T],
) {
    let n = tc.len();
    let (ai, af, ag, ao) = (&ai[..n], &af[..n], &ag[..n], &ao[..n]);
    let cp = &cp[..n];
    let (dhr, dcr) = (&mut dhr[..n], &mut dcr[..n]);
    let (di, df, dg, d_o) = (&mut di[..n], &mut df[..n], &mut dg[..n], &mut d_o[..n]);
    for j in 0..n {
        let (g, dct) =
            lstm_backward_elem([ai[j], af[j], ag[j], ao[j]], tc[j], cp[j], dhr[j], dcr[j]);
        (di[j], df[j], dg[j], d_o[j]) = (g[0], g[1], g[2], g[3]);
        dcr[j] = dct;
        dhr[j] = T::zero();
    }
}
dispatch!(lstm_backward_units, lstm_backward_body, (
    h: usize, units: Range<usize>, rows: usize, active: Active, act: Rows<T>, tanh_c: Rows<T>,
    c_prev: Rows<T>, dh: RowsMut<T>, dc: RowsMut<T>, d_pre: RowsMut<T>,
));

/// One element of the LSTM backward step: from the activations `[i, f, g, o]`, `tanh(c')`,
/// `c_prev` and the incoming `dh`, `dc`, the gate pre-activation gradients and the gradient of
/// `c_prev`. Shared by the in-place and out-of-place kernels, so both round identically.
#[inline(always)]
fn lstm_backward_elem<T: Scalar>(a: [T; 4], tc: T, cp: T, dh: T, dc: T) -> ([T; 4], T) {
    let one = T::one();
    let [i, f, gg, o] = a;
    let dct = dc + dh * o * (one - tc * tc);
    let d = [
        dct * gg * i * (one - i),
        dct * cp * f * (one - f),
        dct * i * (one - gg * gg),
        dh * tc * o * (one - o),
    ];
    (d, dct * f)
}

/// [`lstm_backward_body`] with the gate gradients written over the activations they are
/// computed from (`act_grad[B,4H]`: the activations in, `d_pre` out), so a consumed tape's
/// `[T, B, 4H]` activations become the gradients without a second buffer.
#[inline(always)]
unsafe fn lstm_backward_in_place_body<T: Scalar>(
    h: usize,
    units: Range<usize>,
    rows: usize,
    active: Active,
    act_grad: RowsMut<T>,
    tanh_c: Rows<T>,
    c_prev: Rows<T>,
    dh: RowsMut<T>,
    dc: RowsMut<T>,
) {
    let (u, n) = (units.start, units.len());
    for b in 0..rows {
        // SAFETY (all views below): this call's units only, per the contract.
        let (gi, gf, gg, go) = unsafe {
            (
                act_grad.row_mut(b, u, n),
                act_grad.row_mut(b, h + u, n),
                act_grad.row_mut(b, 2 * h + u, n),
                act_grad.row_mut(b, 3 * h + u, n),
            )
        };
        if !active.row(b) {
            for d in [gi, gf, gg, go] {
                d.fill(T::zero());
            }
            continue;
        }
        let (tc, cp) = unsafe { (tanh_c.row(b, u, n), c_prev.row(b, u, n)) };
        let (dhr, dcr) = unsafe { (dh.row_mut(b, u, n), dc.row_mut(b, u, n)) };
        lstm_backward_in_place_row(gi, gf, gg, go, tc, cp, dhr, dcr);
    }
}

/// One row of [`lstm_backward_in_place_body`] (slices as arguments: see [`lstm_forward_row`];
/// built inside the body, the loop stayed scalar).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn lstm_backward_in_place_row<T: Scalar>(
    gi: &mut [T],
    gf: &mut [T],
    gg: &mut [T],
    go: &mut [T],
    tc: &[T],
    cp: &[T],
    dhr: &mut [T],
    dcr: &mut [T],
) {
    let n = tc.len();
    let (cp, dhr, dcr) = (&cp[..n], &mut dhr[..n], &mut dcr[..n]);
    let (gi, gf, gg, go) = (&mut gi[..n], &mut gf[..n], &mut gg[..n], &mut go[..n]);
    for j in 0..n {
        let (g, dct) =
            lstm_backward_elem([gi[j], gf[j], gg[j], go[j]], tc[j], cp[j], dhr[j], dcr[j]);
        (gi[j], gf[j], gg[j], go[j]) = (g[0], g[1], g[2], g[3]);
        dcr[j] = dct;
        dhr[j] = T::zero();
    }
}
dispatch!(lstm_backward_in_place_units, lstm_backward_in_place_body, (
    h: usize, units: Range<usize>, rows: usize, active: Active, act_grad: RowsMut<T>,
    tanh_c: Rows<T>, c_prev: Rows<T>, dh: RowsMut<T>, dc: RowsMut<T>,
));

/// GRU forward step on hidden units `units`.
/// `pre_act[B,3H]` holds `W_ih x + b_ih` plus `b_hr`, `b_hz` on the r and z columns, and is
/// overwritten with the activations r, z, n (in place, as for the LSTM); `h_pre[B,3H]` holds
/// `W_hh h` and `b_hn` is added to its n columns here (it sits inside `r * (...)`);
/// `hn_lin[B,H]` receives `W_hn h + b_hn`.
#[inline(always)]
unsafe fn gru_forward_body<T: Scalar>(
    h: usize,
    units: Range<usize>,
    rows: usize,
    active: Active,
    pre_act: RowsMut<T>,
    h_pre: Rows<T>,
    b_hn: &[T],
    h_prev: Rows<T>,
    hn_lin: RowsMut<T>,
    h_next: RowsMut<T>,
) {
    let (u, n) = (units.start, units.len());
    let b_hn = &b_hn[u..u + n];
    for b in 0..rows {
        // SAFETY (all views below): this call's units only, per the contract.
        let (ar, az, an) = unsafe {
            (
                pre_act.row_mut(b, u, n),
                pre_act.row_mut(b, h + u, n),
                pre_act.row_mut(b, 2 * h + u, n),
            )
        };
        let (hl, hn) = unsafe { (hn_lin.row_mut(b, u, n), h_next.row_mut(b, u, n)) };
        let hprev = unsafe { h_prev.row(b, u, n) };
        if !active.row(b) {
            for a in [ar, az, an, hl] {
                a.fill(T::zero());
            }
            hn.copy_from_slice(hprev);
            continue;
        }
        let (pr, pz, pn) = unsafe {
            (
                h_pre.row(b, u, n),
                h_pre.row(b, h + u, n),
                h_pre.row(b, 2 * h + u, n),
            )
        };
        gru_forward_row(ar, az, an, pr, pz, pn, b_hn, hprev, hl, hn);
    }
}

/// One row of [`gru_forward_body`] (slices as arguments: see [`lstm_forward_row`]).
#[inline(always)]
fn gru_forward_row<T: Scalar>(
    ar: &mut [T],
    az: &mut [T],
    an: &mut [T],
    pr: &[T],
    pz: &[T],
    pn: &[T],
    b_hn: &[T],
    hprev: &[T],
    hl: &mut [T],
    hn: &mut [T],
) {
    let n = hprev.len();
    let (pr, pz, pn) = (&pr[..n], &pz[..n], &pn[..n]);
    let b_hn = &b_hn[..n];
    let (ar, az, an) = (&mut ar[..n], &mut az[..n], &mut an[..n]);
    let (hl, hn) = (&mut hl[..n], &mut hn[..n]);
    for j in 0..n {
        let r = (ar[j] + pr[j]).sigmoid();
        let z = (az[j] + pz[j]).sigmoid();
        let lin = pn[j] + b_hn[j];
        let nn = (an[j] + r * lin).tanh_act();
        ar[j] = r;
        az[j] = z;
        an[j] = nn;
        hl[j] = lin;
        hn[j] = nn + z * (hprev[j] - nn);
    }
}
dispatch!(gru_forward_units, gru_forward_body, (
    h: usize, units: Range<usize>, rows: usize, active: Active, pre_act: RowsMut<T>,
    h_pre: Rows<T>, b_hn: &[T], h_prev: Rows<T>, hn_lin: RowsMut<T>, h_next: RowsMut<T>,
));

/// GRU backward step on hidden units `units`.
/// Out: `dx_pre[B,3H]` (gradient of the input-side pre-activations), `dh_pre[B,3H]` (gradient of
/// the recurrent-side ones: equal on r, z; `da_n * r` on n) and `dh` becomes `dh * z`, the direct
/// path to `h_prev`; the recurrent product adds `dh_pre · W_hh` afterwards.
#[inline(always)]
unsafe fn gru_backward_body<T: Scalar>(
    h: usize,
    units: Range<usize>,
    rows: usize,
    active: Active,
    act: Rows<T>,
    hn_lin: Rows<T>,
    h_prev: Rows<T>,
    dh: RowsMut<T>,
    dx_pre: RowsMut<T>,
    dh_pre: RowsMut<T>,
) {
    let (u, n) = (units.start, units.len());
    for b in 0..rows {
        // SAFETY (all views below): this call's units only, per the contract.
        let (dxr, dxz, dxn) = unsafe {
            (
                dx_pre.row_mut(b, u, n),
                dx_pre.row_mut(b, h + u, n),
                dx_pre.row_mut(b, 2 * h + u, n),
            )
        };
        let (dpr, dpz, dpn) = unsafe {
            (
                dh_pre.row_mut(b, u, n),
                dh_pre.row_mut(b, h + u, n),
                dh_pre.row_mut(b, 2 * h + u, n),
            )
        };
        if !active.row(b) {
            for d in [dxr, dxz, dxn, dpr, dpz, dpn] {
                d.fill(T::zero());
            }
            continue;
        }
        let (ar, az, an) = unsafe {
            (
                act.row(b, u, n),
                act.row(b, h + u, n),
                act.row(b, 2 * h + u, n),
            )
        };
        let (hl, hp) = unsafe { (hn_lin.row(b, u, n), h_prev.row(b, u, n)) };
        let dhr = unsafe { dh.row_mut(b, u, n) };
        gru_backward_row(ar, az, an, hl, hp, dhr, dxr, dxz, dxn, dpr, dpz, dpn);
    }
}

/// One row of [`gru_backward_body`] (slices as arguments: see [`lstm_forward_row`]).
#[inline(always)]
fn gru_backward_row<T: Scalar>(
    ar: &[T],
    az: &[T],
    an: &[T],
    hl: &[T],
    hp: &[T],
    dhr: &mut [T],
    dxr: &mut [T],
    dxz: &mut [T],
    dxn: &mut [T],
    dpr: &mut [T],
    dpz: &mut [T],
    dpn: &mut [T],
) {
    let n = hl.len();
    let (ar, az, an) = (&ar[..n], &az[..n], &an[..n]);
    let hp = &hp[..n];
    let dhr = &mut dhr[..n];
    let (dxr, dxz, dxn) = (&mut dxr[..n], &mut dxz[..n], &mut dxn[..n]);
    let (dpr, dpz, dpn) = (&mut dpr[..n], &mut dpz[..n], &mut dpn[..n]);
    for j in 0..n {
        let ([da_r, da_z, da_n], dpn_j, dh_prev) =
            gru_backward_elem([ar[j], az[j], an[j]], hl[j], hp[j], dhr[j]);
        dxr[j] = da_r;
        dxz[j] = da_z;
        dxn[j] = da_n;
        dpr[j] = da_r;
        dpz[j] = da_z;
        dpn[j] = dpn_j;
        dhr[j] = dh_prev;
    }
}
dispatch!(gru_backward_units, gru_backward_body, (
    h: usize, units: Range<usize>, rows: usize, active: Active, act: Rows<T>, hn_lin: Rows<T>,
    h_prev: Rows<T>, dh: RowsMut<T>, dx_pre: RowsMut<T>, dh_pre: RowsMut<T>,
));

/// One element of the GRU backward step: from the activations `[r, z, n]`, `W_hn h + b_hn`,
/// `h_prev` and the incoming `dh`, the input-side gate gradients, the recurrent side's n-gate
/// gradient and the direct path `dh * z`. Shared by the in-place and out-of-place kernels.
#[inline(always)]
fn gru_backward_elem<T: Scalar>(a: [T; 3], hl: T, hp: T, d: T) -> ([T; 3], T, T) {
    let one = T::one();
    let [r, z, nn] = a;
    let da_n = d * (one - z) * (one - nn * nn);
    let da_r = da_n * hl * r * (one - r);
    let da_z = d * (hp - nn) * z * (one - z);
    ([da_r, da_z, da_n], da_n * r, d * z)
}

/// [`gru_backward_body`] in place: the input-side gate gradients are written over the
/// activations (`act_grad[B,3H]`), as [`lstm_backward_in_place_units`] does, and the recurrent
/// side's n-gate gradient `da_n * r` over `W_hn h + b_hn` (`hn[B,H]`). The recurrent side's r, z
/// gradients are the input side's, so they are not written twice.
#[inline(always)]
unsafe fn gru_backward_in_place_body<T: Scalar>(
    h: usize,
    units: Range<usize>,
    rows: usize,
    active: Active,
    act_grad: RowsMut<T>,
    hn: RowsMut<T>,
    h_prev: Rows<T>,
    dh: RowsMut<T>,
) {
    let (u, n) = (units.start, units.len());
    for b in 0..rows {
        // SAFETY (all views below): this call's units only, per the contract.
        let (gr, gz, gn, hnr) = unsafe {
            (
                act_grad.row_mut(b, u, n),
                act_grad.row_mut(b, h + u, n),
                act_grad.row_mut(b, 2 * h + u, n),
                hn.row_mut(b, u, n),
            )
        };
        if !active.row(b) {
            for d in [gr, gz, gn, hnr] {
                d.fill(T::zero());
            }
            continue;
        }
        let hp = unsafe { h_prev.row(b, u, n) };
        let dhr = unsafe { dh.row_mut(b, u, n) };
        gru_backward_in_place_row(gr, gz, gn, hnr, hp, dhr);
    }
}

/// One row of [`gru_backward_in_place_body`] (slices as arguments: see [`lstm_forward_row`]).
#[inline(always)]
fn gru_backward_in_place_row<T: Scalar>(
    gr: &mut [T],
    gz: &mut [T],
    gn: &mut [T],
    hnr: &mut [T],
    hp: &[T],
    dhr: &mut [T],
) {
    let n = hp.len();
    let (hnr, dhr) = (&mut hnr[..n], &mut dhr[..n]);
    let (gr, gz, gn) = (&mut gr[..n], &mut gz[..n], &mut gn[..n]);
    for j in 0..n {
        let ([da_r, da_z, da_n], dpn_j, dh_prev) =
            gru_backward_elem([gr[j], gz[j], gn[j]], hnr[j], hp[j], dhr[j]);
        (gr[j], gz[j], gn[j]) = (da_r, da_z, da_n);
        hnr[j] = dpn_j;
        dhr[j] = dh_prev;
    }
}
dispatch!(gru_backward_in_place_units, gru_backward_in_place_body, (
    h: usize, units: Range<usize>, rows: usize, active: Active, act_grad: RowsMut<T>,
    hn: RowsMut<T>, h_prev: Rows<T>, dh: RowsMut<T>,
));

/// Adds the column sums of `rows` rows of `src` to `sums[0]` (one row), on this call's units of
/// each of `gates` blocks of `h` columns: the bias gradients of a backward sweep, gathered step by
/// step while the step's gate gradients are still in cache.
#[inline(always)]
unsafe fn add_gate_column_sums_body<T: Scalar>(
    h: usize,
    units: Range<usize>,
    gates: usize,
    rows: usize,
    src: Rows<T>,
    sums: RowsMut<T>,
) {
    let (u, n) = (units.start, units.len());
    for g in 0..gates {
        // SAFETY: this call's units only, per the contract.
        let dst = unsafe { &mut sums.row_mut(0, g * h + u, n)[..n] };
        for r in 0..rows {
            let row = unsafe { &src.row(r, g * h + u, n)[..n] };
            for (d, &v) in dst.iter_mut().zip(row) {
                *d += v;
            }
        }
    }
}
dispatch!(add_gate_column_sums_units, add_gate_column_sums_body, (
    h: usize, units: Range<usize>, gates: usize, rows: usize, src: Rows<T>, sums: RowsMut<T>,
));

/// Rows of a whole-batch call: every `[B, w]` slice holds `rows * w` elements.
fn rows_of(len: usize, width: usize, others: &[(usize, usize)]) -> usize {
    let rows = len / width.max(1);
    for &(l, w) in others {
        assert!(l >= rows * w, "gate buffer too short for {rows} rows");
    }
    rows
}

/// [`lstm_forward_units`] over all units of whole `[B, ...]` slices.
pub fn lstm_forward<T: Scalar>(
    h: usize,
    active: Active,
    pre_act: &mut [T],
    h_pre: &[T],
    c_prev: &[T],
    h_prev: &[T],
    tanh_c: &mut [T],
    c_next: &mut [T],
    h_next: &mut [T],
) {
    let g = 4 * h;
    let rows = rows_of(
        c_prev.len(),
        h,
        &[
            (pre_act.len(), g),
            (h_pre.len(), g),
            (h_prev.len(), h),
            (tanh_c.len(), h),
            (c_next.len(), h),
            (h_next.len(), h),
        ],
    );
    // SAFETY: one thread; the mutable views come from distinct `&mut` slices.
    unsafe {
        lstm_forward_units(
            h,
            0..h,
            rows,
            active,
            RowsMut::new(pre_act, g),
            Rows::new(h_pre, g),
            Rows::new(c_prev, h),
            Rows::new(h_prev, h),
            RowsMut::new(tanh_c, h),
            RowsMut::new(c_next, h),
            RowsMut::new(h_next, h),
        )
    }
}

/// [`lstm_backward_units`] over all units of whole `[B, ...]` slices.
pub fn lstm_backward<T: Scalar>(
    h: usize,
    active: Active,
    act: &[T],
    tanh_c: &[T],
    c_prev: &[T],
    dh: &mut [T],
    dc: &mut [T],
    d_pre: &mut [T],
) {
    let g = 4 * h;
    let rows = rows_of(
        dh.len(),
        h,
        &[
            (act.len(), g),
            (tanh_c.len(), h),
            (c_prev.len(), h),
            (dc.len(), h),
            (d_pre.len(), g),
        ],
    );
    // SAFETY: as in `lstm_forward`.
    unsafe {
        lstm_backward_units(
            h,
            0..h,
            rows,
            active,
            Rows::new(act, g),
            Rows::new(tanh_c, h),
            Rows::new(c_prev, h),
            RowsMut::new(dh, h),
            RowsMut::new(dc, h),
            RowsMut::new(d_pre, g),
        )
    }
}

/// [`gru_forward_units`] over all units of whole `[B, ...]` slices.
pub fn gru_forward<T: Scalar>(
    h: usize,
    active: Active,
    pre_act: &mut [T],
    h_pre: &[T],
    b_hn: &[T],
    h_prev: &[T],
    hn_lin: &mut [T],
    h_next: &mut [T],
) {
    let g = 3 * h;
    let rows = rows_of(
        h_prev.len(),
        h,
        &[
            (pre_act.len(), g),
            (h_pre.len(), g),
            (hn_lin.len(), h),
            (h_next.len(), h),
        ],
    );
    // SAFETY: as in `lstm_forward`.
    unsafe {
        gru_forward_units(
            h,
            0..h,
            rows,
            active,
            RowsMut::new(pre_act, g),
            Rows::new(h_pre, g),
            b_hn,
            Rows::new(h_prev, h),
            RowsMut::new(hn_lin, h),
            RowsMut::new(h_next, h),
        )
    }
}

/// [`gru_backward_units`] over all units of whole `[B, ...]` slices.
pub(crate) fn gru_backward<T: Scalar>(
    h: usize,
    active: Active,
    act: &[T],
    hn_lin: &[T],
    h_prev: &[T],
    dh: &mut [T],
    dx_pre: &mut [T],
    dh_pre: &mut [T],
) {
    let g = 3 * h;
    let rows = rows_of(
        dh.len(),
        h,
        &[
            (act.len(), g),
            (hn_lin.len(), h),
            (h_prev.len(), h),
            (dx_pre.len(), g),
            (dh_pre.len(), g),
        ],
    );
    // SAFETY: as in `lstm_forward`.
    unsafe {
        gru_backward_units(
            h,
            0..h,
            rows,
            active,
            Rows::new(act, g),
            Rows::new(hn_lin, h),
            Rows::new(h_prev, h),
            RowsMut::new(dh, h),
            RowsMut::new(dx_pre, g),
            RowsMut::new(dh_pre, g),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gate pass on pre-summed activations gives the bits of the pass that adds the two
    /// products itself (the sum is the same f32 addition), over a unit range that is no multiple
    /// of a vector, one row and 33 rows, rows past their sequence's end, with and without a tape.
    #[test]
    fn summed_lstm_pass_matches_the_two_product_pass() {
        let h = 45;
        let g = 4 * h;
        let units = 3..40;
        for rows in [1, 33] {
            let lengths: Vec<usize> = (0..rows).map(|r| if r % 3 == 1 { 0 } else { 2 }).collect();
            let active = Active {
                lengths: Some(&lengths),
                t: 1,
            };
            let v = |n: usize, s: f64| -> Vec<f32> {
                (0..n)
                    .map(|j| (3.0 * (j as f64 * 0.37 + s).sin()) as f32)
                    .collect()
            };
            let (x_side, h_side) = (v(rows * g, 0.1), v(rows * g, 0.7));
            let (c_prev, h_prev) = (v(rows * h, 1.3), v(rows * h, 2.9));
            let mut want_act = x_side.clone();
            let (mut want_tc, mut want_c, mut want_h) = (
                vec![9f32; rows * h],
                vec![7f32; rows * h],
                vec![7f32; rows * h],
            );
            // SAFETY: one thread; every view comes from its own buffer.
            unsafe {
                lstm_forward_units(
                    h,
                    units.clone(),
                    rows,
                    active,
                    RowsMut::new(&mut want_act, g),
                    Rows::new(&h_side, g),
                    Rows::new(&c_prev, h),
                    Rows::new(&h_prev, h),
                    RowsMut::new(&mut want_tc, h),
                    RowsMut::new(&mut want_c, h),
                    RowsMut::new(&mut want_h, h),
                )
            };
            for keep in [true, false] {
                let summed: Vec<f32> = x_side.iter().zip(&h_side).map(|(a, b)| a + b).collect();
                let mut act = summed.clone();
                let (mut tc, mut c, mut hn) = (
                    vec![9f32; rows * h],
                    vec![7f32; rows * h],
                    vec![7f32; rows * h],
                );
                // SAFETY: as above.
                unsafe {
                    lstm_forward_summed_units(
                        h,
                        units.clone(),
                        rows,
                        active,
                        RowsMut::new(&mut act, g),
                        Rows::new(&c_prev, h),
                        Rows::new(&h_prev, h),
                        RowsMut::new(&mut tc, h),
                        RowsMut::new(&mut c, h),
                        RowsMut::new(&mut hn, h),
                        keep,
                    )
                };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&c), bits(&want_c), "c, rows={rows} keep={keep}");
                assert_eq!(bits(&hn), bits(&want_h), "h, rows={rows} keep={keep}");
                // With a tape `tanh(c')` as the two-product pass writes it; without, only the
                // inactive rows' zeros.
                for (e, &got) in tc.iter().enumerate() {
                    let want = if keep || !active.row(e / h) {
                        want_tc[e]
                    } else {
                        9.0
                    };
                    assert_eq!(got.to_bits(), want.to_bits(), "tanh_c[{e}], keep={keep}");
                }
                // The call's units hold the activations with a tape (zeros on inactive rows
                // either way); everything else keeps its sums.
                for (e, &got) in act.iter().enumerate() {
                    let (r, unit) = (e / g, e % g % h);
                    let want = if units.contains(&unit) && (keep || !active.row(r)) {
                        want_act[e]
                    } else {
                        summed[e]
                    };
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "act[{e}], rows={rows} keep={keep}"
                    );
                }
            }
        }
    }
}
