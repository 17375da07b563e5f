//! Step-by-step inference ([`Stepper`]): advance a unidirectional network one time step per call,
//! keeping the state between calls and allocating nothing after construction.
//!
//! Per step and layer: the input product `[B, I]·[I, GH]`, the recurrent product `[B, H]·[H, GH]`
//! and one fused gate pass. The products run through `matvec` (both products in one
//! accumulation, the weights read in place, no per-call packing) at every batch size where its
//! kernel is register-blocked over batch rows (f32 with AVX-512), else up to [`SMALL_BATCH_MAX`]
//! streams; above that through the general GEMM, as the full-sequence sweep. A `matvec` step of
//! at least [`SPLIT_MIN_WORK`] multiply-adds shares its weight rows among the pool's threads; a
//! built-in LSTM's step shares its hidden units instead, each thread running the gate pass of its
//! units right after their products (`matvec::gate_units_split`), so the gate pass runs in
//! parallel too.
//! A projected LSTM (`proj_size = P`) always takes the GEMM path: its `[B, P]` hidden state enters
//! `W_hh`, and after the gate pass `h = (o*tanh(c))·W_hrᵀ`.

use crate::config::{CellKind, RnnConfig};
use crate::error::{check_len, Error, Result};
use crate::gates::{self, Active, Rows, RowsMut};
use crate::matmul::{a_bt, Mat};
pub use crate::matvec::Kernel;
use crate::matvec::{self, Out, Product};
use crate::memory;
use crate::params::{dir_offsets, RnnWeights};
use crate::scalar::Scalar;
use crate::sweep::fold_bias;

/// The largest batch the matrix-vector kernel serves when it is not register-blocked over batch
/// rows (AVX2, portable, f64). It reads each weight row from memory once and from L1 for the
/// other streams; GEMM's register blocking reuses loaded weights across rows and catches up
/// around 32 streams. Measured per step on the 2-core AVX2 machine (input 32, one thread),
/// kernel vs GEMM: B=2 10 vs 35 µs (H=128), 118 vs 507 µs (H=512); B=16 64 vs 72 µs and
/// 1.0 vs 1.2 ms; B=32 155 vs 137 µs and 2.3 vs 1.4 ms. The AVX-512 tiles serve every batch:
/// on the 2-core AVX-512 machine (thread CPU time, `examples/stepper_speed.rs`) B=32 LSTM
/// H=128 took 32 µs and H=512 360 µs on one thread, the AVX2 kernel 80 µs and 1.0 ms.
pub const SMALL_BATCH_MAX: usize = 16;

/// `matvec` steps of at least this many multiply-adds share their weight rows among the pool's
/// threads; smaller ones run on the calling thread, where handing work to the pool would cost
/// more than it saves. Measured with `examples/stepper_speed.rs` on the shared 2-core machine
/// (fastest of 15 runs): a forced split of a GRU step B=1 H=128 (61K) took 2.9 µs against
/// 2.2 µs on one thread; an LSTM step B=1 H=256 (295K) 5.7 µs against 10.9 µs. A pool thread
/// that is late to start costs little (the caller takes its half back, see `handoff`).
pub const SPLIT_MIN_WORK: usize = 1 << 18;

/// The running state of a stream of `B` sequences through a unidirectional network.
#[derive(Debug, Clone)]
pub struct Stepper<T> {
    cell: CellKind,
    layers: usize,
    batch: usize,
    hidden: usize,
    /// Features of `h`: `proj_size`, or `hidden` without projections (`S`).
    state: usize,
    /// `[L, B, S]` hidden and `[L, B, H]` (LSTM) cell states.
    h: Vec<T>,
    c: Vec<T>,
    /// The states a step writes (the same shapes), swapped with `h` and `c` at its end: the gate
    /// passes write the new states in place of copying them back (128 KB per step at B = 32,
    /// H = 512). Their contents between steps mean nothing.
    h_new: Vec<T>,
    c_new: Vec<T>,
    /// `[L, S, B, H]`: a custom cell's states after `c` (`S` of them), carried from step to
    /// step like `h` and `c` but internal: they restart at zero with `reset` and `set_state`.
    extra: Vec<T>,
    scratch: Scratch<T>,
    /// Whether the small-batch kernel runs the products (fixed at construction: its path keeps
    /// `h_pre` zero where the recurrent product is accumulated into `x_pre`).
    small: bool,
    kernel: Kernel,
    /// See [`SPLIT_MIN_WORK`].
    split_min_work: usize,
}

impl<T: Scalar> Stepper<T> {
    /// A stepper for `batch` streams, starting from zero states.
    pub fn new(weights: RnnWeights<T>, batch: usize) -> Result<Self> {
        let small = batch <= SMALL_BATCH_MAX || Kernel::Auto.tiles_batches::<T>();
        Self::with_path(weights, batch, small, Kernel::Auto)
    }

    /// [`Stepper::new`] with the product path chosen by the caller: `small` the `matvec`
    /// kernel `kernel` (a projected LSTM ignores it), else the general GEMM. Tests cover every
    /// path at every size; the `stepper_speed` example times them.
    #[doc(hidden)]
    pub fn with_path(
        weights: RnnWeights<T>,
        batch: usize,
        small: bool,
        kernel: Kernel,
    ) -> Result<Self> {
        let cfg = weights.config();
        if cfg.bidirectional {
            return Err(Error::Value {
                arg: "bidirectional",
                expected: "a unidirectional network (a reverse direction needs the whole sequence)"
                    .into(),
                got: "true".into(),
            });
        }
        if batch == 0 {
            return Err(Error::Value {
                arg: "batch",
                expected: "at least 1".into(),
                got: "0".into(),
            });
        }
        let (l, h, gw, hw) = (
            cfg.num_layers,
            cfg.hidden_size,
            cfg.x_gate_width(),
            cfg.h_gate_width(),
        );
        let lstm = cfg.cell.has_cell_state();
        let extra = cfg.cell.num_states().saturating_sub(2);
        // States and scratch: 4 [L, B, H] states (old and new) and about G + 4 [B, H] rows.
        let rows = (4 * l as u128 + cfg.cell.gate_count() as u128 * 2 + 4)
            .checked_mul(h as u128)
            .and_then(|r| r.checked_mul(batch as u128))
            .and_then(|r| r.checked_mul(std::mem::size_of::<T>() as u128));
        memory::check("batch", rows)?;
        let state = cfg.state_size();
        Ok(Stepper {
            cell: cfg.cell,
            layers: l,
            batch,
            hidden: h,
            state,
            h: vec![T::zero(); l * batch * state],
            c: vec![T::zero(); if lstm { l * batch * h } else { 0 }],
            h_new: vec![T::zero(); l * batch * state],
            c_new: vec![T::zero(); if lstm { l * batch * h } else { 0 }],
            extra: vec![T::zero(); l * extra * batch * h],
            scratch: Scratch {
                x_pre: vec![T::zero(); batch * gw],
                h_pre: vec![T::zero(); batch * hw],
                aux: vec![T::zero(); batch * h],
                h_next: vec![T::zero(); batch * h],
                extra_next: vec![T::zero(); extra * batch * h],
                zero_b_hn: vec![T::zero(); h],
            },
            // The small-batch kernel has no projection step.
            small: small && cfg.proj_size == 0,
            kernel,
            split_min_work: SPLIT_MIN_WORK,
        })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Whether steps run through the small-batch kernel (see [`SMALL_BATCH_MAX`]).
    pub fn uses_small_kernel(&self) -> bool {
        self.small
    }

    /// Replaces [`SPLIT_MIN_WORK`] for this stepper (`usize::MAX`: never split), to time both
    /// sides of the threshold.
    #[doc(hidden)]
    pub fn set_split_min_work(&mut self, work: usize) {
        self.split_min_work = work;
    }

    /// `[L, B, S]`
    pub fn h(&self) -> &[T] {
        &self.h
    }

    /// `[L, B, H]`, empty for a GRU.
    pub fn c(&self) -> &[T] {
        &self.c
    }

    /// Zeroes the states.
    pub fn reset(&mut self) {
        self.h.fill(T::zero());
        self.c.fill(T::zero());
        self.extra.fill(T::zero());
    }

    /// Replaces the states (`h` `[L, B, S]`, `c` `[L, B, H]` only for a cell with a second
    /// state).
    pub fn set_state(&mut self, h: &[T], c: Option<&[T]>) -> Result<()> {
        check_len("h", h.len(), &[self.layers, self.batch, self.state])?;
        match (c, self.cell.has_cell_state()) {
            (Some(c), true) => {
                check_len("c", c.len(), &[self.layers, self.batch, self.hidden])?;
                self.c.copy_from_slice(c);
            }
            (None, true) => self.c.fill(T::zero()),
            (Some(_), false) => {
                return Err(Error::Value {
                    arg: "c",
                    expected: format!("no cell state for a {} cell", self.cell.name()),
                    got: "a cell state".into(),
                })
            }
            (None, false) => {}
        }
        self.h.copy_from_slice(h);
        self.extra.fill(T::zero());
        Ok(())
    }

    /// Advances every stream by one step: `x[B, I]` in, the top layer's new hidden state
    /// `[B, S]` written to `out`. `weights` must be the network the stepper was built for; they
    /// are read in place at every step, so a stepper follows weights that change between steps.
    pub fn step(&mut self, weights: RnnWeights<T>, x: &[T], out: &mut [T]) -> Result<()> {
        let cfg = *weights.config();
        if cfg.num_layers != self.layers
            || cfg.hidden_size != self.hidden
            || cfg.cell != self.cell
            || cfg.state_size() != self.state
            || cfg.bidirectional
        {
            return Err(Error::Value {
                arg: "weights",
                expected: "the network this stepper was built for".into(),
                got: format!("{cfg:?}"),
            });
        }
        check_len("x", x.len(), &[self.batch, cfg.input_size])?;
        check_len("out", out.len(), &[self.batch, self.state])?;
        let data = weights.as_slice();
        if self.small {
            let work = crate::network::forward_work(&cfg, 1, self.batch);
            // The pool's size is looked up only for a step large enough to split.
            let threads = if work >= self.split_min_work {
                crate::threads::num_threads()
            } else {
                1
            };
            for layer in 0..self.layers {
                self.layer_small(&cfg, data, x, layer, threads);
            }
        } else {
            let work = crate::network::forward_work(&cfg, 1, self.batch);
            crate::threads::install_for(work, || {
                for layer in 0..self.layers {
                    self.layer_gemm(&cfg, data, x, layer);
                }
            });
        }
        std::mem::swap(&mut self.h, &mut self.h_new);
        std::mem::swap(&mut self.c, &mut self.c_new);
        let bs = self.batch * self.state;
        out.copy_from_slice(&self.h[(self.layers - 1) * bs..]);
        Ok(())
    }

    /// One layer through the small-batch kernel: the input and recurrent products of a gate
    /// share their accumulators where the cell adds them anyway, then the fused gate pass. The
    /// products are shared among `parts` threads (see [`SPLIT_MIN_WORK`]).
    fn layer_small(&mut self, cfg: &RnnConfig, data: &[T], x: &[T], layer: usize, parts: usize) {
        let (b, h, gw, hw) = (
            self.batch,
            self.hidden,
            cfg.x_gate_width(),
            cfg.h_gate_width(),
        );
        let bh = b * h;
        let o = dir_offsets(cfg, layer, 0);
        let inp = cfg.layer_input_size(layer);
        let w_ih = &data[o.w_ih..][..gw * inp];
        let w_hh = &data[o.w_hh..][..hw * h];
        // The layer below has written its new states already.
        let (below, h_new) = self.h_new.split_at_mut(layer * bh);
        let input: &[T] = if layer == 0 {
            x
        } else {
            &below[(layer - 1) * bh..]
        };
        let h_new = &mut h_new[..bh];
        let h_prev = &self.h[layer * bh..][..bh];
        let (c, c_new) = (
            layer_state(&mut self.c, layer, bh),
            layer_state(&mut self.c_new, layer, bh),
        );
        let (b_ih, b_hh) = match o.bias {
            Some((bi, bhh)) => (Some(&data[bi..][..gw]), Some(&data[bhh..][..hw])),
            None => (None, None),
        };
        let xp = Product {
            w: w_ih,
            x: input,
            k: inp,
        };
        // One kernel for the whole layer, chosen from its whole product: the GRU's one-thread
        // path runs its r, z and n rows apart, which alone could choose another kernel than the
        // split path's whole product (and give other bits at another thread count).
        let kernel = self.kernel.resolve_for::<T>(b, gw * inp + hw * h);
        if self.cell.compiled().is_some() {
            // A custom cell reads the two sides apart, each with its own bias.
            let out = Out {
                dst: &mut self.scratch.x_pre,
                ld: gw,
                bias: [b_ih, None],
            };
            matvec::rows_split(kernel, parts, gw, b, xp, None, out, None);
            if hw > 0 {
                let hp = Product {
                    w: w_hh,
                    x: h_prev,
                    k: h,
                };
                let out = Out {
                    dst: &mut self.scratch.h_pre,
                    ld: hw,
                    bias: [b_hh, None],
                };
                matvec::rows_split(kernel, parts, hw, b, hp, None, out, None);
            }
            let xs = layer_state(&mut self.extra, layer, self.scratch.extra_next.len());
            let units = &data[o.units..][..cfg.unit_width()];
            let states = States {
                h: h_prev,
                c,
                h_new,
                c_new,
            };
            self.scratch.update(self.cell, h, states, xs, None, units);
            return;
        }
        let hp = Product {
            w: w_hh,
            x: h_prev,
            k: h,
        };
        // A built-in cell's layer with its hidden units shared among `parts` threads: the fused
        // product of `gates` gate blocks into `pre` (the last block's recurrent side into
        // `apart` when given), each thread's `gate_pass` over its units right after them.
        let split_units =
            |gates: usize,
             pre: &RowsMut<'_, T>,
             apart: Option<&RowsMut<'_, T>>,
             gate_pass: &(dyn Fn(std::ops::Range<usize>) + Sync)| {
                matvec::gate_units_split(
                    kernel,
                    parts,
                    gates,
                    h,
                    b,
                    xp,
                    Some(hp),
                    pre,
                    [b_ih, b_hh],
                    apart,
                    gate_pass,
                )
            };
        match self.cell {
            CellKind::Lstm if parts > 1 => {
                // Each thread takes a share of the hidden units through the product and its
                // gate pass, so the gate pass runs in parallel, beside the other products.
                let sc = &mut self.scratch;
                let pre = RowsMut::new(&mut sc.x_pre, gw);
                let (h_pre, c_prev, h_old) = (
                    Rows::new(&sc.h_pre, gw),
                    Rows::new(c, h),
                    Rows::new(h_prev, h),
                );
                let (tanh_c, c_next, h_next) = (
                    RowsMut::new(&mut sc.aux, h),
                    RowsMut::new(c_new, h),
                    RowsMut::new(h_new, h),
                );
                let gate_pass = |units: std::ops::Range<usize>| {
                    // SAFETY: each part writes only the columns of its own units of `pre`,
                    // `tanh_c`, `c_next` and `h_next`, after its own product wrote its `pre`
                    // columns; `h_pre` (zero on this path), `c_prev` and `h_old` are not written
                    // during the split.
                    unsafe {
                        gates::lstm_forward_units(
                            h,
                            units,
                            b,
                            Active::ALL,
                            pre,
                            h_pre,
                            c_prev,
                            h_old,
                            tanh_c,
                            c_next,
                            h_next,
                        )
                    }
                };
                split_units(4, &pre, None, &gate_pass);
                return;
            }
            CellKind::Gru if parts > 1 => {
                // As the LSTM's above: r and z add both sides, n keeps `W_hn h` apart in
                // `h_pre` (it is scaled by r); each thread's gate pass follows its products.
                let sc = &mut self.scratch;
                let pre = RowsMut::new(&mut sc.x_pre, gw);
                let n_h = RowsMut::new(&mut sc.h_pre, gw);
                // `h_pre`'s r and z columns stay zero on this path; `n_h` writes its n columns.
                // SAFETY: read by each part's gate pass only in the columns of its own units,
                // after its own product wrote them.
                let h_pre = unsafe { n_h.read() };
                let h_old = Rows::new(h_prev, h);
                let (hn_lin, h_next) = (RowsMut::new(&mut sc.aux, h), RowsMut::new(h_new, h));
                let b_hn = b_hh.map_or(&sc.zero_b_hn[..], |v| &v[2 * h..]);
                let gate_pass = |units: std::ops::Range<usize>| {
                    // SAFETY: each part writes only the columns of its own units of `pre`,
                    // `hn_lin` and `h_next`, after its own products wrote its `pre` and `h_pre`
                    // columns; `h_old` is not written during the split.
                    unsafe {
                        gates::gru_forward_units(
                            h,
                            units,
                            b,
                            Active::ALL,
                            pre,
                            h_pre,
                            b_hn,
                            h_old,
                            hn_lin,
                            h_next,
                        )
                    }
                };
                split_units(3, &pre, Some(&n_h), &gate_pass);
                return;
            }
            CellKind::Lstm => {
                // All four gates add both products and both biases: one accumulation.
                let out = Out {
                    dst: &mut self.scratch.x_pre,
                    ld: gw,
                    bias: [b_ih, b_hh],
                };
                // `h_pre` stays zero on this path: the recurrent product is already in `x_pre`.
                matvec::rows_split(kernel, parts, gw, b, xp, Some(hp), out, None);
            }
            CellKind::Gru => {
                // r and z add both sides; n keeps `W_hn h` apart (it is scaled by r).
                let rz = 2 * h;
                let out = Out {
                    dst: &mut self.scratch.x_pre[..],
                    ld: gw,
                    bias: [b_ih.map(|v| &v[..rz]), b_hh.map(|v| &v[..rz])],
                };
                matvec::rows_split(
                    kernel,
                    parts,
                    rz,
                    b,
                    xp.sub(0, rz),
                    Some(hp.sub(0, rz)),
                    out,
                    None,
                );
                let n_x = Out {
                    dst: &mut self.scratch.x_pre[rz..],
                    ld: gw,
                    bias: [b_ih.map(|v| &v[rz..]), None],
                };
                // `h_pre`'s r and z columns stay zero on this path.
                let n_h = Out {
                    dst: &mut self.scratch.h_pre[rz..],
                    ld: gw,
                    bias: [None, None],
                };
                matvec::rows_split(
                    kernel,
                    parts,
                    h,
                    b,
                    xp.sub(rz, h),
                    Some(hp.sub(rz, h)),
                    n_x,
                    Some(n_h),
                );
            }
            CellKind::Custom(_) => unreachable!("custom cells step above"),
        }
        let b_hn = b_hh.map(|v| &v[2 * h..]);
        let states = States {
            h: h_prev,
            c,
            h_new,
            c_new,
        };
        self.scratch
            .update(self.cell, h, states, &mut [], b_hn, &[]);
    }

    /// One layer through the general matrix products (larger batches).
    fn layer_gemm(&mut self, cfg: &RnnConfig, data: &[T], x: &[T], layer: usize) {
        let (b, h, gw, hw) = (
            self.batch,
            self.hidden,
            cfg.x_gate_width(),
            cfg.h_gate_width(),
        );
        let (bh, s) = (b * h, self.state);
        let bs = b * s;
        let custom = self.cell.compiled();
        let o = dir_offsets(cfg, layer, 0);
        let inp = cfg.layer_input_size(layer);
        let w_ih = &data[o.w_ih..][..gw * inp];
        let w_hh = &data[o.w_hh..][..hw * s];
        // The layer below has written its new states already.
        let (below, h_new) = self.h_new.split_at_mut(layer * bs);
        let input: &[T] = if layer == 0 {
            x
        } else {
            &below[(layer - 1) * bs..]
        };
        let h_new = &mut h_new[..bs];
        let h_prev = &self.h[layer * bs..][..bs];
        let (c, c_new) = (
            layer_state(&mut self.c, layer, bh),
            layer_state(&mut self.c_new, layer, bh),
        );
        match o.bias {
            // A custom cell keeps `b_hh` on the recurrent side, where its `hg` leaves read it.
            Some((bi, bhh)) if custom.is_some() => {
                for row in self.scratch.x_pre.chunks_exact_mut(gw) {
                    row.copy_from_slice(&data[bi..][..gw]);
                }
                if hw > 0 {
                    for row in self.scratch.h_pre.chunks_exact_mut(hw) {
                        row.copy_from_slice(&data[bhh..][..hw]);
                    }
                }
            }
            Some((bi, bhh)) => {
                // Folded into the first row, then copied to the others.
                let lstm = self.cell == CellKind::Lstm;
                let (first, rest) = self.scratch.x_pre.split_at_mut(gw);
                fold_bias(first, lstm, h, &data[bi..][..gw], &data[bhh..][..gw]);
                for dst in rest.chunks_exact_mut(gw) {
                    dst.copy_from_slice(first);
                }
            }
            None => {
                self.scratch.x_pre.fill(T::zero());
                self.scratch.h_pre.fill(T::zero());
            }
        }
        a_bt(
            &mut self.scratch.x_pre,
            gw,
            true,
            Mat::new(input, b, inp),
            Mat::new(w_ih, gw, inp),
        );
        if custom.is_some() {
            if hw > 0 {
                a_bt(
                    &mut self.scratch.h_pre,
                    hw,
                    true,
                    Mat::new(h_prev, b, h),
                    Mat::new(w_hh, hw, h),
                );
            }
            let xs = layer_state(&mut self.extra, layer, self.scratch.extra_next.len());
            let units = &data[o.units..][..cfg.unit_width()];
            let states = States {
                h: h_prev,
                c,
                h_new,
                c_new,
            };
            self.scratch.update(self.cell, h, states, xs, None, units);
            return;
        }
        a_bt(
            &mut self.scratch.h_pre,
            gw,
            false,
            Mat::new(h_prev, b, s),
            Mat::new(w_hh, gw, s),
        );
        if cfg.proj_size > 0 {
            let sc = &mut self.scratch;
            // Every row is active, so the gate pass never reads its `h_prev`: `c` stands in.
            gates::lstm_forward(
                h,
                Active::ALL,
                &mut sc.x_pre,
                &sc.h_pre,
                c,
                c,
                &mut sc.aux,
                c_new,
                &mut sc.h_next,
            );
            // h = (o * tanh(c)) · W_hrᵀ, `[B, H]·[H, P]`.
            let w_hr = &data[o.w_hr..][..s * h];
            a_bt(
                h_new,
                s,
                false,
                Mat::new(&sc.h_next, b, h),
                Mat::new(w_hr, s, h),
            );
            return;
        }
        let b_hn = o.bias.map(|(_, bhh)| &data[bhh + 2 * h..][..h]);
        let states = States {
            h: h_prev,
            c,
            h_new,
            c_new,
        };
        self.scratch
            .update(self.cell, h, states, &mut [], b_hn, &[]);
    }
}

/// The buffers of one layer's step, reused every step.
#[derive(Debug, Clone)]
struct Scratch<T> {
    /// The input side of the pre-activations `[B, G*H]` (for the built-in cells on the
    /// small-batch path, with the recurrent side accumulated in); the built-in gate passes
    /// overwrite it with the activations.
    x_pre: Vec<T>,
    /// The recurrent side `[B, G*H]` (custom cells: `[B, hw]`).
    h_pre: Vec<T>,
    aux: Vec<T>,
    /// A projected LSTM's `o * tanh(c)` `[B, H]` before the projection.
    h_next: Vec<T>,
    /// A custom cell's new internal states `[S, B, H]`.
    extra_next: Vec<T>,
    /// Zeros `[H]`: the GRU's `b_hn` when the network has no biases.
    zero_b_hn: Vec<T>,
}

impl<T: Scalar> Scratch<T> {
    /// The cell's update from the pre-activations in `x_pre` and `h_pre`: from the layer's
    /// `states` before the step to their new values; `xs` a custom cell's states after `c`
    /// (`[S, B, H]`, empty when it has none), read and overwritten. `b_hn` is the GRU's
    /// recurrent n-gate bias (None: no biases); `units` are a custom cell's unit parameters.
    fn update(
        &mut self,
        cell: CellKind,
        hidden: usize,
        states: States<'_, T>,
        xs: &mut [T],
        b_hn: Option<&[T]>,
        units: &[T],
    ) {
        let States { h, c, h_new, c_new } = states;
        match cell {
            CellKind::Lstm => gates::lstm_forward(
                hidden,
                Active::ALL,
                &mut self.x_pre,
                &self.h_pre,
                c,
                h,
                &mut self.aux,
                c_new,
                h_new,
            ),
            CellKind::Gru => gates::gru_forward(
                hidden,
                Active::ALL,
                &mut self.x_pre,
                &self.h_pre,
                b_hn.unwrap_or(&self.zero_b_hn),
                h,
                &mut self.aux,
                h_new,
            ),
            CellKind::Custom(_) => {
                let compiled = cell.compiled().expect("a custom cell is compiled");
                let bh = h.len();
                if xs.is_empty() {
                    let (prev, next): (&[&[T]], &mut [&mut [T]]) = if c.is_empty() {
                        (&[h], &mut [h_new])
                    } else {
                        (&[h, c], &mut [h_new, c_new])
                    };
                    compiled.forward_step(
                        hidden,
                        Active::ALL,
                        &self.x_pre,
                        &self.h_pre,
                        units,
                        prev,
                        next,
                        &mut [],
                    );
                } else {
                    let mut prev: Vec<&[T]> = vec![h, c];
                    prev.extend(xs.chunks(bh));
                    let mut next: Vec<&mut [T]> = vec![h_new, c_new];
                    next.extend(self.extra_next.chunks_mut(bh));
                    compiled.forward_step(
                        hidden,
                        Active::ALL,
                        &self.x_pre,
                        &self.h_pre,
                        units,
                        &prev,
                        &mut next,
                        &mut [],
                    );
                    xs.copy_from_slice(&self.extra_next);
                }
            }
        }
    }
}

/// One layer's `[B, H]` states before a step (`h`, `c`) and the buffers of their new values
/// (`c` and `c_new` empty for a cell without a cell state).
struct States<'a, T> {
    h: &'a [T],
    c: &'a [T],
    h_new: &'a mut [T],
    c_new: &'a mut [T],
}

/// Layer `layer`'s `[B, H]` cell states (`bh` = B·H), empty for a cell without them.
fn layer_state<T>(c: &mut [T], layer: usize, bh: usize) -> &mut [T] {
    if c.is_empty() {
        c
    } else {
        &mut c[layer * bh..(layer + 1) * bh]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{Batch, ForwardOptions, Layout};
    use crate::params::RnnParams;

    /// Steps a network through three time steps from a non-zero state and checks every output
    /// and the final states against the plain-loop reference forward pass. `path` forces a
    /// product path (small-batch kernel or not, SIMD or portable); `None` takes the one
    /// `Stepper::new` picks, which must be the small kernel exactly up to `SMALL_BATCH_MAX`.
    fn check<T: Scalar>(
        cell: CellKind,
        dims: (usize, usize, usize, usize, bool),
        path: Option<(bool, Kernel)>,
        tol: f64,
    ) {
        check_proj::<T>(cell, dims, 0, path, tol)
    }

    /// [`check`] with `proj_size = proj` (0: none).
    fn check_proj<T: Scalar>(
        cell: CellKind,
        (b, h, i, layers, bias): (usize, usize, usize, usize, bool),
        proj: usize,
        path: Option<(bool, Kernel)>,
        tol: f64,
    ) {
        let t = 3;
        let cfg = RnnConfig::new(cell, i, h, layers, false, bias)
            .and_then(|c| c.with_proj_size(proj))
            .unwrap();
        let sz = cfg.state_size();
        let p = RnnParams::<T>::init_uniform(cfg, (b * 31 + h * 7 + i) as u64);
        let wave = |n: usize, f: f64| -> Vec<T> {
            (0..n).map(|k| T::from_f64((k as f64 * f).sin())).collect()
        };
        let x = wave(t * b * i, 0.37);
        let (h0, c0) = (wave(layers * b * sz, 0.91), wave(layers * b * h, 0.53));
        let lstm = cell == CellKind::Lstm;
        let want = crate::reference::forward(
            &p,
            &Batch {
                input: &x,
                layout: Layout::TimeMajor,
                seq_len: t,
                batch: b,
                h0: Some(&h0),
                c0: lstm.then_some(&c0[..]),
                lengths: None,
            },
            &ForwardOptions::default(),
        )
        .unwrap();
        let mut s = match path {
            Some((small, kernel)) => Stepper::with_path(p.view(), b, small, kernel).unwrap(),
            None => {
                let s = Stepper::new(p.view(), b).unwrap();
                let small =
                    (b <= SMALL_BATCH_MAX || Kernel::Auto.tiles_batches::<T>()) && proj == 0;
                assert_eq!(s.uses_small_kernel(), small, "b={b} proj={proj}");
                s
            }
        };
        s.set_state(&h0, lstm.then_some(&c0[..])).unwrap();
        let what = format!(
            "{cell:?} {} b={b} h={h} p={proj} i={i} L={layers} bias={bias} path={path:?}",
            std::any::type_name::<T>()
        );
        let close = |got: &[T], want: &[T], part: &str| {
            assert_eq!(got.len(), want.len(), "{what} {part}");
            for (k, (&g, &e)) in got.iter().zip(want).enumerate() {
                let (g, e) = (Scalar::to_f64(g), Scalar::to_f64(e));
                assert!(
                    (g - e).abs() <= tol * (1.0 + e.abs()),
                    "{what} {part}[{k}]: {g} vs {e}"
                );
            }
        };
        let mut out = vec![T::zero(); b * sz];
        for step in 0..t {
            s.step(p.view(), &x[step * b * i..][..b * i], &mut out)
                .unwrap();
            close(
                &out,
                &want.output[step * b * sz..][..b * sz],
                &format!("step {step}"),
            );
        }
        close(s.h(), &want.h_n, "h_n");
        if let Some(c_n) = &want.c_n {
            close(s.c(), c_n, "c_n");
        }
    }

    #[test]
    fn every_path_equals_the_reference_at_odd_sizes() {
        for cell in [CellKind::Lstm, CellKind::Gru] {
            for b in [1, 2, 33] {
                for h in [1, 7, 128, 130] {
                    for i in [1, 5] {
                        for (layers, bias) in [(1, true), (2, false), (3, true)] {
                            let dims = (b, h, i, layers, bias);
                            // The automatic choice, every kernel this CPU has, the GEMM.
                            let paths = |kernels: Vec<Kernel>| {
                                let mut v = vec![None, Some((false, Kernel::Auto))];
                                v.extend(kernels.into_iter().map(|k| Some((true, k))));
                                v
                            };
                            for path in paths(Kernel::available::<f64>()) {
                                check::<f64>(cell, dims, path, 1e-12);
                            }
                            for path in paths(Kernel::available::<f32>()) {
                                check::<f32>(cell, dims, path, 2e-5);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The projected LSTM steps through the GEMM path whatever the batch.
    #[test]
    fn projected_lstm_equals_the_reference() {
        for b in [1, 2, 33] {
            for (h, proj) in [(2, 1), (7, 3), (130, 9)] {
                for (layers, bias) in [(1, true), (3, false)] {
                    let dims = (b, h, 5, layers, bias);
                    for path in [None, Some((true, Kernel::Auto))] {
                        check_proj::<f64>(CellKind::Lstm, dims, proj, path, 1e-12);
                        check_proj::<f32>(CellKind::Lstm, dims, proj, path, 2e-5);
                    }
                }
            }
        }
    }

    #[test]
    fn the_batch_picks_the_path() {
        let cfg = RnnConfig::new(CellKind::Lstm, 3, 4, 1, false, true).unwrap();
        let p = RnnParams::<f32>::init_uniform(cfg, 0);
        // Register tiles over batch rows serve every batch; the other kernels only small ones.
        let tiles = Kernel::Auto.tiles_batches::<f32>();
        for (b, small) in [
            (1, true),
            (SMALL_BATCH_MAX, true),
            (SMALL_BATCH_MAX + 1, tiles),
            (256, tiles),
        ] {
            assert_eq!(
                Stepper::new(p.view(), b).unwrap().uses_small_kernel(),
                small,
                "batch {b}"
            );
        }
        let p = RnnParams::<f64>::init_uniform(cfg, 0);
        assert!(!Stepper::new(p.view(), SMALL_BATCH_MAX + 1)
            .unwrap()
            .uses_small_kernel());
    }

    /// Steps whose products are shared among the pool's threads give the bits of one-thread
    /// steps (with one pool thread both run on one thread and agree trivially).
    #[test]
    fn split_steps_equal_one_thread_steps_bit_for_bit() {
        // Hidden 420 (with batch 16): a layer past `LANES_MIN_WEIGHTS`, where `Auto` picks the
        // batch-lane tiles for the whole layer, on either path.
        for cell in [CellKind::Lstm, CellKind::Gru] {
            for (b, h) in [(1, 130), (5, 130), (33, 130), (16, 420)] {
                let cfg = RnnConfig::new(cell, 6, h, 2, false, true).unwrap();
                let p = RnnParams::<f32>::init_uniform(cfg, b as u64);
                let mut kernels = Kernel::available::<f32>();
                kernels.push(Kernel::Auto);
                for kernel in kernels {
                    let run = |split_min_work: usize| {
                        let mut s = Stepper::with_path(p.view(), b, true, kernel).unwrap();
                        s.set_split_min_work(split_min_work);
                        let mut out = vec![0f32; b * h];
                        let mut outs = Vec::new();
                        for t in 0..3 {
                            let x: Vec<f32> = (0..b * 6)
                                .map(|k| ((k + t * 7) as f32 * 0.3).sin())
                                .collect();
                            s.step(p.view(), &x, &mut out).unwrap();
                            outs.extend_from_slice(&out);
                        }
                        (outs, s.h().to_vec(), s.c().to_vec())
                    };
                    assert_eq!(run(0), run(usize::MAX), "{cell:?} b={b} h={h} {kernel:?}");
                }
            }
        }
    }
}
