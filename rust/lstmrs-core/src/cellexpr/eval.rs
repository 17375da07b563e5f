//! The row evaluator: runs a program over every row of a step, op by op, each op one tight loop
//! over the row's `H` units.
//!
//! Per-element work has no interpretation overhead: the op is chosen once per row, and its loop is
//! a monomorphised kernel ([`Elem`]) over plain slices, which LLVM vectorises (including the
//! branch-free f32 activations). As in `gates`, the whole evaluator is compiled again with
//! AVX2+FMA and AVX-512 enabled and one variant is picked at run time.
//!
//! Slots are reached through a table of `(row-0 pointer, row stride)` pairs that the step
//! functions fill from their slice arguments after checking every length; registers sit in a
//! per-thread scratch buffer (see [`with_scratch`]).

use super::graph::{DIV_EPS, LOG_FLOOR};
use super::program::{Kind, Loc, Op};
use crate::gates::Active;
use crate::scalar::Scalar;
use std::any::Any;
use std::cell::RefCell;

/// Row pointers of one step.
pub(crate) struct Frame<'a, T> {
    /// Per slot-table entry: pointer to the slot in row 0 and the distance between rows
    /// (0 for unit params, which are the same in every row).
    pub table: &'a [(*mut T, usize)],
    /// `regs * h` elements.
    pub regs: *mut T,
    pub h: usize,
}

impl<T> Frame<'_, T> {
    /// # Safety
    /// `loc` must name a table entry or register whose row `b` lies inside its buffer.
    #[inline(always)]
    unsafe fn ptr(&self, loc: Loc, b: usize) -> *mut T {
        match loc {
            // SAFETY: (all three) the caller guarantees the slot's row is in bounds.
            Loc::Reg(r) => unsafe { self.regs.add(r as usize * self.h) },
            Loc::Tab(i) => {
                let (p, stride) = self.table[i as usize];
                unsafe { p.add(b * stride) }
            }
        }
    }
}

/// One element-wise function of up to four operands.
trait Elem<T: Scalar>: Copy {
    fn f(self, a: T, b: T, c: T, e: T) -> T;
}

macro_rules! elem {
    ($name:ident, |$a:ident, $b:ident, $c:ident, $e:ident| $body:expr) => {
        #[derive(Clone, Copy)]
        struct $name;
        impl<T: Scalar> Elem<T> for $name {
            #[inline(always)]
            #[allow(unused_variables)]
            fn f(self, $a: T, $b: T, $c: T, $e: T) -> T {
                $body
            }
        }
    };
}

elem!(CopyE, |a, b, c, e| a);
elem!(SigmoidE, |a, b, c, e| a.sigmoid());
elem!(TanhE, |a, b, c, e| a.tanh_act());
elem!(ReluE, |a, b, c, e| a.max(T::zero()));
elem!(SquareE, |a, b, c, e| a * a);
elem!(ExpE, |a, b, c, e| a.exp_act());
elem!(LogE, |a, b, c, e| a.max(T::from_f64(LOG_FLOOR)).ln());
elem!(SqrtE, |a, b, c, e| a.max(T::zero()).sqrt());
// max(a, 0) + ln(1 + e^-|a|): no overflow for large |a|.
elem!(SoftplusE, |a, b, c, e| a.max(T::zero())
    + (-a.abs()).exp_act().ln_1p());
elem!(DivE, |a, b, c, e| a / safe_denominator(b));
elem!(MaxE, |a, b, c, e| if a >= b { a } else { b });
elem!(MinE, |a, b, c, e| if a <= b { a } else { b });
elem!(DLogE, |a, b, c, e| if b > T::from_f64(LOG_FLOOR) {
    a / b
} else {
    T::zero()
});
elem!(DSqrtE, |a, b, c, e| if b > T::zero() {
    a / (b + b)
} else {
    T::zero()
});
elem!(DSoftplusE, |a, b, c, e| a * (T::one() - (-b).exp_act()));
elem!(MaskGeE, |a, b, c, e| if b >= T::zero() {
    a
} else {
    T::zero()
});
elem!(DivMaskE, |a, b, c, e| if b.abs() >= T::from_f64(DIV_EPS) {
    a / b
} else {
    T::zero()
});
elem!(AddE, |a, b, c, e| a + b);
elem!(SubE, |a, b, c, e| a - b);
elem!(MulE, |a, b, c, e| a * b);
elem!(DSigE, |a, b, c, e| a * (b * (T::one() - b)));
elem!(DTanhE, |a, b, c, e| a * (T::one() - b * b));
elem!(MaskE, |a, b, c, e| if b > T::zero() {
    a
} else {
    T::zero()
});
elem!(SigmoidAddE, |a, b, c, e| (a + b).sigmoid());
elem!(TanhAddE, |a, b, c, e| (a + b).tanh_act());
elem!(ReluAddE, |a, b, c, e| (a + b).max(T::zero()));
elem!(FmaE, |a, b, c, e| a * b + c);
elem!(DSigMulE, |a, b, c, e| (a * b) * (c * (T::one() - c)));
elem!(DTanhMulE, |a, b, c, e| (a * b) * (T::one() - c * c));
elem!(Fma2E, |a, b, c, e| a * b + c * e);

#[derive(Clone, Copy)]
struct AffineE<T>(T, T);
impl<T: Scalar> Elem<T> for AffineE<T> {
    #[inline(always)]
    fn f(self, a: T, _: T, _: T, _: T) -> T {
        self.0 * a + self.1
    }
}

#[derive(Clone, Copy)]
struct AffineMulE<T>(T, T);
impl<T: Scalar> Elem<T> for AffineMulE<T> {
    #[inline(always)]
    fn f(self, a: T, b: T, _: T, _: T) -> T {
        self.0 * (a * b) + self.1
    }
}

/// `d[j] = f(a[j], b[j], c[j], e[j])`, also stored to `d2` when given. Slice arguments carry
/// no-alias facts into the inlined loop, so it vectorises without runtime overlap checks.
#[inline(always)]
fn map<T: Scalar, F: Elem<T>>(
    f: F,
    d: &mut [T],
    d2: Option<&mut [T]>,
    a: &[T],
    b: &[T],
    c: &[T],
    e: &[T],
) {
    let h = d.len();
    let (a, b, c, e) = (&a[..h], &b[..h], &c[..h], &e[..h]);
    match d2 {
        None => {
            for j in 0..h {
                d[j] = f.f(a[j], b[j], c[j], e[j]);
            }
        }
        Some(d2) => {
            let d2 = &mut d2[..h];
            for j in 0..h {
                let v = f.f(a[j], b[j], c[j], e[j]);
                d[j] = v;
                d2[j] = v;
            }
        }
    }
}

/// The denominator of safe division: `b` moved out to `±DIV_EPS` when `|b| < DIV_EPS` (`+` at
/// 0), with selects so the loop stays branch-free.
#[inline(always)]
fn safe_denominator<T: Scalar>(b: T) -> T {
    let eps = T::from_f64(DIV_EPS);
    let away = if b < T::zero() { -eps } else { eps };
    if b.abs() >= eps {
        b
    } else {
        away
    }
}

/// Row reduction broadcast back: `d[j] = scale * sum_k a[k]`, summed in f64 so a long row of
/// f32 loses no precision (the sum is once per row, not per unit).
#[inline(always)]
fn reduce<T: Scalar>(d: &mut [T], d2: Option<&mut [T]>, a: &[T], scale: f64) {
    let a = &a[..d.len()];
    let s: f64 = a.iter().map(|&v| Scalar::to_f64(v)).sum();
    let v = T::from_f64(s * scale);
    d.fill(v);
    if let Some(d2) = d2 {
        d2.fill(v);
    }
}

/// `d += a`.
#[inline(always)]
fn acc<T: Scalar>(d: &mut [T], a: &[T]) {
    let a = &a[..d.len()];
    for j in 0..d.len() {
        d[j] += a[j];
    }
}

/// # Safety
/// As [`run`], for one op and one row.
#[inline(always)]
unsafe fn exec<T: Scalar>(op: &Op, fr: &Frame<T>, b: usize) {
    let h = fr.h;
    // SAFETY: the slots are in bounds (caller) and `Program::validate` guarantees that `dst`,
    // `dst2` and the sources are pairwise distinct slots, so the mutable slices overlap nothing.
    let d = unsafe { std::slice::from_raw_parts_mut(fr.ptr(op.dst, b), h) };
    let d2 = op
        .dst2
        .map(|l| unsafe { std::slice::from_raw_parts_mut(fr.ptr(l, b), h) });
    if let Kind::Fill(c) = op.kind {
        let c = T::from_f64(c);
        d.fill(c);
        if let Some(d2) = d2 {
            d2.fill(c);
        }
        return;
    }
    // SAFETY: as above; unused sources repeat `src[0]` and are only read.
    let s = |i: usize| unsafe { std::slice::from_raw_parts(fr.ptr(op.src[i], b), h) as &[T] };
    let (a, bb, c, e) = (s(0), s(1), s(2), s(3));
    match op.kind {
        Kind::Fill(_) => {}
        Kind::Acc => acc(d, a),
        Kind::Copy => map(CopyE, d, d2, a, bb, c, e),
        Kind::Affine(k, o) => map(AffineE(T::from_f64(k), T::from_f64(o)), d, d2, a, bb, c, e),
        Kind::Sigmoid => map(SigmoidE, d, d2, a, bb, c, e),
        Kind::Tanh => map(TanhE, d, d2, a, bb, c, e),
        Kind::Relu => map(ReluE, d, d2, a, bb, c, e),
        Kind::Square => map(SquareE, d, d2, a, bb, c, e),
        Kind::Exp => map(ExpE, d, d2, a, bb, c, e),
        Kind::Log => map(LogE, d, d2, a, bb, c, e),
        Kind::Sqrt => map(SqrtE, d, d2, a, bb, c, e),
        Kind::Softplus => map(SoftplusE, d, d2, a, bb, c, e),
        Kind::RowSum => reduce(d, d2, a, 1.0),
        Kind::RowMean => reduce(d, d2, a, 1.0 / h as f64),
        Kind::Div => map(DivE, d, d2, a, bb, c, e),
        Kind::Max => map(MaxE, d, d2, a, bb, c, e),
        Kind::Min => map(MinE, d, d2, a, bb, c, e),
        Kind::DLog => map(DLogE, d, d2, a, bb, c, e),
        Kind::DSqrt => map(DSqrtE, d, d2, a, bb, c, e),
        Kind::DSoftplus => map(DSoftplusE, d, d2, a, bb, c, e),
        Kind::MaskGe => map(MaskGeE, d, d2, a, bb, c, e),
        Kind::DivMask => map(DivMaskE, d, d2, a, bb, c, e),
        Kind::Add => map(AddE, d, d2, a, bb, c, e),
        Kind::Sub => map(SubE, d, d2, a, bb, c, e),
        Kind::Mul => map(MulE, d, d2, a, bb, c, e),
        Kind::DSig => map(DSigE, d, d2, a, bb, c, e),
        Kind::DTanh => map(DTanhE, d, d2, a, bb, c, e),
        Kind::Mask => map(MaskE, d, d2, a, bb, c, e),
        Kind::SigmoidAdd => map(SigmoidAddE, d, d2, a, bb, c, e),
        Kind::TanhAdd => map(TanhAddE, d, d2, a, bb, c, e),
        Kind::ReluAdd => map(ReluAddE, d, d2, a, bb, c, e),
        Kind::AffineMul(k, o) => {
            let f = AffineMulE(T::from_f64(k), T::from_f64(o));
            map(f, d, d2, a, bb, c, e)
        }
        Kind::Fma => map(FmaE, d, d2, a, bb, c, e),
        Kind::DSigMul => map(DSigMulE, d, d2, a, bb, c, e),
        Kind::DTanhMul => map(DTanhMulE, d, d2, a, bb, c, e),
        Kind::Fma2 => map(Fma2E, d, d2, a, bb, c, e),
    }
}

#[inline(always)]
unsafe fn run_body<T: Scalar>(
    busy: &[Op],
    idle: &[Op],
    active: Active,
    rows: usize,
    fr: &Frame<T>,
) {
    for b in 0..rows {
        let ops = if active.row(b) { busy } else { idle };
        for op in ops {
            // SAFETY: forwarded from `run`.
            unsafe { exec(op, fr, b) };
        }
    }
}

/// Runs `busy` on the active rows and `idle` on the others, rows `0..rows`.
///
/// # Safety
/// Both programs passed `Program::validate` against the layout `fr.table` was filled from, and
/// for every table entry and register they use, rows `0..rows` of `h` elements lie inside the
/// buffer the pointer came from (the step functions check every slice length). Buffers the
/// programs write are not borrowed elsewhere for the duration of the call.
pub(crate) unsafe fn run<T: Scalar>(
    busy: &[Op],
    idle: &[Op],
    active: Active,
    rows: usize,
    fr: &Frame<T>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn avx512<T: Scalar>(
            busy: &[Op],
            idle: &[Op],
            active: Active,
            rows: usize,
            fr: &Frame<T>,
        ) {
            // SAFETY: forwarded from `run`.
            unsafe { run_body(busy, idle, active, rows, fr) }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<T: Scalar>(
            busy: &[Op],
            idle: &[Op],
            active: Active,
            rows: usize,
            fr: &Frame<T>,
        ) {
            // SAFETY: forwarded from `run`.
            unsafe { run_body(busy, idle, active, rows, fr) }
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has the features; the rest is the caller's contract.
            return unsafe { avx512(busy, idle, active, rows, fr) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { avx2(busy, idle, active, rows, fr) };
        }
    }
    // SAFETY: the caller's contract.
    unsafe { run_body(busy, idle, active, rows, fr) }
}

/// Per-thread working memory of the step functions: `regs * H` register elements and the slot
/// table. It grows to the largest request a thread has seen and is reused afterwards, so steady
/// state calls do not allocate.
pub(crate) struct Scratch<T> {
    pub regs: Vec<T>,
    pub table: Vec<(*mut T, usize)>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Scratch {
            regs: Vec::new(),
            table: Vec::new(),
        }
    }
}

thread_local! {
    /// One `Scratch<T>` per element type used on this thread.
    static SCRATCH: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with this thread's scratch for `T`.
pub(crate) fn with_scratch<T: Scalar, R>(f: impl FnOnce(&mut Scratch<T>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut list) => {
            let pos = match list.iter().position(|b| b.is::<Scratch<T>>()) {
                Some(p) => p,
                None => {
                    list.push(Box::new(Scratch::<T>::default()));
                    list.len() - 1
                }
            };
            match list[pos].downcast_mut::<Scratch<T>>() {
                Some(s) => f(s),
                None => f(&mut Scratch::default()),
            }
        }
        // Only reachable if `f` itself re-entered a step function; correct, merely allocating.
        Err(_) => f(&mut Scratch::default()),
    })
}
