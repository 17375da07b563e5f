//! Entry points for the criterion benchmarks (`benches/kernels.rs`) and the timing examples
//! (`examples/cellexpr_speed.rs`): the step product through the packed kernel and through the
//! general GEMM it replaced, and the built-in fused gate passes. Hidden; not a stable API.

use crate::matmul::{a_b, a_bt, Mat};
use crate::network::{Batch, Layout};
use crate::packed_gemm::{gate_vectors, Packed};
use crate::scalar::Scalar;

/// The instruction sets of the packed product (`PackedWeight::*_on` pick one).
pub use crate::packed_gemm::Isa;

/// Makes every later sweep run on a team of `n` threads (at most the pool's size), whatever the
/// cost model would pick; `0` gives the choice back to the model. For measuring the model's
/// table (`examples/team_cost.rs`); process-wide, not for concurrent use. While it is set, a team
/// waits up to 50 ms (instead of 300 us) for its members to pick up their jobs, so that the team
/// asked for forms on a loaded machine too ([`teams_formed`] tells whether it did).
pub fn set_team_override(n: usize) {
    crate::packed_gemm::set_team_override(n);
    crate::threads::set_forced_join_wait(n > 0);
}

/// Makes every later packed product copy its lhs tile by tile first (`Some(true)`, whenever it
/// has more than one panel), never copy it (`Some(false)`), or leave it to the kernel's rule
/// (`None`). For comparing the two in `examples/packed_kernels.rs`; process-wide.
pub fn set_lhs_copy(copy: Option<bool>) {
    crate::packed_gemm::set_lhs_copy(copy);
}

/// How many teams of each size the sweeps have formed so far in this process (index `n`: teams of
/// `n` threads, the last entry also counts larger ones). [`set_team_override`] is an upper
/// bound, not a promise: a pool thread that does not pick up its job in time is left out, so a
/// test of a forced team compares two snapshots to learn which team actually ran.
pub fn teams_formed() -> Vec<usize> {
    crate::threads::teams_formed()
}

/// How many teams so far formed with fewer threads than they asked for (their partners did not
/// pick up their jobs within the join wait); with [`teams_formed`], what was asked for.
pub fn teams_short() -> usize {
    crate::threads::teams_short()
}

/// Runs `steps` barrier waits and nothing else on a team of up to `members` pool threads (inside
/// the pool, like a sweep); returns the size of the team that formed and the seconds from
/// forming it to its last member leaving. For `examples/barrier_cost.rs`.
pub fn team_barrier_cost(members: usize, steps: usize) -> (usize, f64) {
    crate::threads::install(|| {
        let start = std::time::Instant::now();
        let formed = crate::threads::team(members, |_, _, barrier| {
            for _ in 0..steps {
                barrier.wait();
            }
        });
        (formed, start.elapsed().as_secs_f64())
    })
}

/// A batch of `batch` whole sequences of `seq_len` steps starting from zero states (no `h0`,
/// `c0` or `lengths`; struct update syntax adds them), as the tests and timing examples build
/// one.
pub fn plain_batch<T>(input: &[T], layout: Layout, seq_len: usize, batch: usize) -> Batch<'_, T> {
    Batch {
        input,
        layout,
        seq_len,
        batch,
        h0: None,
        c0: None,
        lengths: None,
    }
}

/// The built-in cells' fused gate passes; `Active::ALL` marks every row as inside its sequence.
pub use crate::gates::{gru_forward, lstm_backward, lstm_forward, Active};

/// A whole `[gates*h, h]` recurrent weight packed for one direction of the step product.
pub struct PackedWeight<T> {
    packed: Packed<T>,
    width: usize,
}

impl<T: Scalar> PackedWeight<T> {
    /// For the forward step `h[B,H] · W_hhᵀ -> [B, gates*H]`.
    pub fn forward(w_hh: &[T], gates: usize, h: usize, rows: usize) -> Self {
        Self::forward_on(Isa::default_for::<T>(), w_hh, gates, h, rows)
    }
    /// For the backward step `dg[B, gates*H] · W_hh -> [B, H]`.
    pub fn backward(w_hh: &[T], gates: usize, h: usize, rows: usize) -> Self {
        Self::backward_on(Isa::default_for::<T>(), w_hh, gates, h, rows)
    }
    /// [`PackedWeight::forward`] on the kernel of `isa` (panics if this CPU lacks it).
    pub fn forward_on(isa: Isa, w_hh: &[T], gates: usize, h: usize, rows: usize) -> Self {
        let runs = gate_vectors(gates, h, 0..h);
        PackedWeight {
            packed: Packed::new_on(isa, w_hh, 1, h, h, &runs, rows),
            width: gates * h,
        }
    }
    /// [`PackedWeight::forward_on`] for the columns of the hidden units `units` only: what one
    /// member of a sweep's team packs (its output columns stay where they are in `[B, gates*H]`).
    pub fn forward_units_on(
        isa: Isa,
        w_hh: &[T],
        gates: usize,
        h: usize,
        units: std::ops::Range<usize>,
        rows: usize,
    ) -> Self {
        let runs = gate_vectors(gates, h, units);
        PackedWeight {
            packed: Packed::new_on(isa, w_hh, 1, h, h, &runs, rows),
            width: gates * h,
        }
    }
    /// [`PackedWeight::backward`] on the kernel of `isa`.
    pub fn backward_on(isa: Isa, w_hh: &[T], gates: usize, h: usize, rows: usize) -> Self {
        let runs = gate_vectors(1, h, 0..h);
        PackedWeight {
            packed: Packed::new_on(isa, w_hh, h, 1, gates * h, &runs, rows),
            width: h,
        }
    }
    /// `c[rows, width] = a[rows, k] · W` (row-major, dense).
    pub fn product(&self, a: &[T], rows: usize, c: &mut [T]) {
        let k = self.packed.depth();
        self.packed.product(a, k, rows, c, self.width, false);
    }
    /// `c[rows, ..width] (+)= a[rows, k] · W` into rows `ldc` apart (`+=` when `accumulate`): the
    /// forward LSTM step adds onto its input side in place, in rows `4H` wide.
    pub fn product_into(&self, a: &[T], rows: usize, c: &mut [T], ldc: usize, accumulate: bool) {
        let k = self.packed.depth();
        self.packed.product(a, k, rows, c, ldc, accumulate);
    }
}

/// The forward step product through the general GEMM (packs `W_hh` at every call).
pub fn gemm_forward<T: Scalar>(
    w_hh: &[T],
    gates: usize,
    h: usize,
    a: &[T],
    rows: usize,
    c: &mut [T],
) {
    a_bt(
        c,
        gates * h,
        false,
        Mat::new(a, rows, h),
        Mat::new(w_hh, gates * h, h),
    );
}

/// The backward step product through the general GEMM.
pub fn gemm_backward<T: Scalar>(
    w_hh: &[T],
    gates: usize,
    h: usize,
    a: &[T],
    rows: usize,
    c: &mut [T],
) {
    a_b(
        c,
        h,
        false,
        Mat::new(a, rows, gates * h),
        Mat::new(w_hh, gates * h, h),
    );
}

/// The built-in LSTM step kernels of `gates` (forward, then backward), for
/// `examples/cellexpr_speed.rs`, which times the compiled cells against them.
pub fn builtin_lstm_step<T: Scalar>(
    h: usize,
    active: Active,
    pre_act: &mut [T],
    h_pre: &[T],
    c_prev: &[T],
    h_prev: &[T],
    tanh_c: &mut [T],
    c_next: &mut [T],
    h_next: &mut [T],
    dh: &mut [T],
    dc: &mut [T],
    d_pre: &mut [T],
) {
    crate::gates::lstm_forward(
        h, active, pre_act, h_pre, c_prev, h_prev, tanh_c, c_next, h_next,
    );
    crate::gates::lstm_backward(h, active, pre_act, tanh_c, c_prev, dh, dc, d_pre);
}

/// The built-in GRU step kernels of `gates`, for the same timing comparison.
pub fn builtin_gru_step<T: Scalar>(
    h: usize,
    active: Active,
    pre_act: &mut [T],
    h_pre: &[T],
    b_hn: &[T],
    h_prev: &[T],
    hn_lin: &mut [T],
    h_next: &mut [T],
    dh: &mut [T],
    dx_pre: &mut [T],
    dh_pre: &mut [T],
) {
    crate::gates::gru_forward(h, active, pre_act, h_pre, b_hn, h_prev, hn_lin, h_next);
    crate::gates::gru_backward(h, active, pre_act, hn_lin, h_prev, dh, dx_pre, dh_pre);
}
