//! The fast ConvLSTM: forward pass and backpropagation through time.
//!
//! Shapes (row-major throughout): `B` sequences of `T` steps, frames `[C, H, W]` in, states
//! `[K, Ho, Wo]` (`P = Ho·Wo` pixels) per layer, `G = 4K` gate channels, `L` layers.
//!
//! Every convolution is `im2col` plus the core's GEMM (`matmul`), not a direct kernel: the
//! products then all run on the GEMM's tested AVX2/AVX-512 micro-kernels, which a direct loop nest
//! would need its own blocking and SIMD to approach. A direct kernel was not written to compare.
//!
//! Only the state-to-state convolution is inside the recurrence; everything else is one product
//! over the whole sequence. A layer's gates are kept channel-major over the steps, `[G, T·P]`, and
//! the column matrices of the frames side by side, `[C·kh·kw, T·P]`, so:
//! - forward: the input-to-state convolution of every step is one GEMM before the time loop;
//!   each step then adds its `W_hh · im2col(h_{t-1})` into its columns of the gate buffer;
//! - backward: the time loop runs the cell backward and `W_hhᵀ · dG_t` (for `d h_{t-1}`); after
//!   it, each weight gradient is one GEMM over all steps (`dG · colsᵀ`, `T·P` long sums) and the
//!   input gradient one GEMM (`W_ihᵀ · dG`) followed by `col2im` per frame. The sequence-wide
//!   column matrix is built in runs of steps of at most [`COLS_MAX_ELEMS`] values.
//!
//! The sequences of a batch never interact, so each batch row runs the whole network (every layer,
//! every step) as one rayon task: no synchronisation per step. Each task reuses its work buffers
//! ([`Scratch`]) across the rows, layers and steps it runs. The backward pass gives each thread
//! a fixed run of rows and its own weight-gradient buffer, summed in a fixed order at the end, so
//! the same inputs at the same thread count give the same bits.

use super::cell::{cell_backward, cell_forward, StepView};
use super::config::ConvLstmConfig;
use super::im2col::{col2im_add, im2col, Geometry};
use super::params::ConvLstmParams;
use super::spare;
use crate::error::{check_len, Error, Result};
use crate::matmul::{a_b, at_b, Mat};
use crate::memory;
use crate::scalar::Scalar;
use rayon::prelude::*;

/// One call's input: `x` `[B, T, C, H, W]` and the optional initial states `[L, B, K, Ho, Wo]`.
#[derive(Debug, Clone, Copy)]
pub struct ConvBatch<'a, T> {
    pub input: &'a [T],
    pub batch: usize,
    pub seq_len: usize,
    pub height: usize,
    pub width: usize,
    pub h0: Option<&'a [T]>,
    pub c0: Option<&'a [T]>,
}

/// What [`forward`] returns: the top layer's states at every step, `[B, T, K, Ho, Wo]`, the final
/// states `[L, B, K, Ho, Wo]`, and the tape when asked for.
#[derive(Debug)]
pub struct ConvForward<T: Scalar> {
    pub output: Vec<T>,
    pub h_n: Vec<T>,
    pub c_n: Vec<T>,
    pub tape: Option<ConvTape<T>>,
}

/// Gradients from [`backward`]: parameters (flat, the parameters' layout), input
/// `[B, T, C, H, W]`, initial states `[L, B, K, Ho, Wo]`.
#[derive(Debug)]
pub struct ConvGradients<T> {
    pub params: Vec<T>,
    pub input: Vec<T>,
    pub h0: Vec<T>,
    pub c0: Vec<T>,
}

/// The sequence-wide column matrix holds at most this many values (or one step's, if more): a
/// run of steps this long already makes each product long enough to run at the GEMM's speed.
const COLS_MAX_ELEMS: usize = 1 << 23;

/// One layer of one batch row over the whole sequence. Its buffers go back to [`spare`] when it
/// is dropped.
#[derive(Debug)]
struct LayerRow<T: Scalar> {
    /// `[G, T·P]` gate activations i, f, g, o, channel-major over the steps (empty when no tape is
    /// kept).
    gates: Vec<T>,
    /// `[T, K, P]` hidden states.
    h: Vec<T>,
    /// `[T, K, P]` cell states.
    c: Vec<T>,
    /// `[K, P]` initial states.
    h0: Vec<T>,
    c0: Vec<T>,
}

impl<T: Scalar> Drop for LayerRow<T> {
    fn drop(&mut self) {
        for v in [&mut self.gates, &mut self.h, &mut self.c] {
            spare::give(std::mem::take(v));
        }
    }
}

/// What [`backward`] needs from a forward call: the input and every layer's activations.
#[derive(Debug)]
pub struct ConvTape<T: Scalar> {
    config: ConvLstmConfig,
    dims: Dims,
    /// `[B, T, C, H, W]`.
    input: Vec<T>,
    /// `[B][L]`.
    rows: Vec<Vec<LayerRow<T>>>,
}

impl<T: Scalar> Drop for ConvTape<T> {
    fn drop(&mut self) {
        spare::give(std::mem::take(&mut self.input));
    }
}

impl<T: Scalar> ConvTape<T> {
    pub fn batch(&self) -> usize {
        self.dims.batch
    }
    pub fn seq_len(&self) -> usize {
        self.dims.seq_len
    }
    /// `(H, W)` of the input frames.
    pub fn frame_size(&self) -> (usize, usize) {
        (self.dims.height, self.dims.width)
    }
}

/// The sizes of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dims {
    batch: usize,
    seq_len: usize,
    height: usize,
    width: usize,
    /// State frame `(Ho, Wo)`.
    state: (usize, usize),
}

impl Dims {
    fn pixels(&self) -> usize {
        self.state.0 * self.state.1
    }
    fn frame_len(&self, cfg: &ConvLstmConfig) -> usize {
        cfg.in_channels * self.height * self.width
    }
    /// `[L, B, K, Ho, Wo]` elements.
    fn state_len(&self, cfg: &ConvLstmConfig) -> usize {
        cfg.num_layers * self.batch * cfg.hidden_channels * self.pixels()
    }
}

/// The input-to-state convolution of `layer` and the state-to-state one.
fn geometries(cfg: &ConvLstmConfig, dims: &Dims, layer: usize) -> (Geometry, Geometry) {
    let out = [dims.state.0, dims.state.1];
    let input = if layer == 0 {
        [dims.height, dims.width]
    } else {
        out
    };
    let x = Geometry {
        channels: cfg.layer_in_channels(layer),
        input,
        kernel: cfg.kernel,
        pad: cfg.padding,
        out,
    };
    let h = Geometry {
        channels: cfg.hidden_channels,
        input: out,
        kernel: cfg.kernel,
        pad: [cfg.kernel[0] / 2, cfg.kernel[1] / 2],
        out,
    };
    (x, h)
}

/// Multiply-adds of one pass, to decide whether threads pay off.
fn work(cfg: &ConvLstmConfig, dims: &Dims) -> usize {
    let per_step = cfg.gate_channels()
        * dims.pixels()
        * (cfg.in_channels + (2 * cfg.num_layers - 1) * cfg.hidden_channels)
        * cfg.taps();
    per_step.saturating_mul(dims.batch * dims.seq_len)
}

fn check_dims<T: Scalar>(p: &ConvLstmParams<T>, b: &ConvBatch<T>) -> Result<Dims> {
    let cfg = p.config();
    for (arg, v) in [
        ("batch", b.batch),
        ("seq_len", b.seq_len),
        ("height", b.height),
        ("width", b.width),
    ] {
        if v == 0 {
            return Err(Error::Value {
                arg,
                expected: "an integer >= 1".into(),
                got: "0".into(),
            });
        }
    }
    let state = cfg.state_size(b.height, b.width)?;
    let dims = Dims {
        batch: b.batch,
        seq_len: b.seq_len,
        height: b.height,
        width: b.width,
        state,
    };
    check_len(
        "x",
        b.input.len(),
        &[b.batch, b.seq_len, cfg.in_channels, b.height, b.width],
    )?;
    let state_shape = [
        cfg.num_layers,
        b.batch,
        cfg.hidden_channels,
        state.0,
        state.1,
    ];
    if let Some(h0) = b.h0 {
        check_len("h0", h0.len(), &state_shape)?;
    }
    if let Some(c0) = b.c0 {
        check_len("c0", c0.len(), &state_shape)?;
    }
    // The activations kept per row and layer (gates, h and c at every step), and each task's
    // gradients of the gates at every step (and their transposed copy).
    let tasks = b.batch.min(crate::threads::num_threads());
    let per_row = (cfg.gate_channels() + 2 * cfg.hidden_channels) * dims.pixels();
    let kept = memory::bytes_of(
        std::mem::size_of::<T>(),
        &[b.batch, b.seq_len, cfg.num_layers, per_row],
    );
    let work_gates = memory::bytes_of(
        std::mem::size_of::<T>(),
        &[2, b.seq_len, cfg.gate_channels(), dims.pixels()],
    )
    .and_then(|v| v.checked_mul(tasks as u128));
    memory::check(
        "x",
        kept.zip(work_gates).and_then(|(a, w)| a.checked_add(w)),
    )?;
    // Each task's column matrices: a run of steps and one step. A large kernel over a wide frame
    // must fail here, not in the allocator.
    let rows = cfg
        .in_channels
        .max(cfg.hidden_channels)
        .saturating_mul(cfg.taps());
    let run = steps_per_run(COLS_MAX_ELEMS, rows, dims.pixels(), b.seq_len);
    memory::check(
        "kernel_size",
        memory::bytes_of(
            std::mem::size_of::<T>(),
            &[tasks, rows, dims.pixels(), run + 1],
        ),
    )?;
    Ok(dims)
}

/// The `[K, P]` state of `layer` and row `b` inside an `[L, B, K, P]` buffer.
fn state_of<'a, T>(buf: &'a [T], layer: usize, b: usize, dims: &Dims, k: usize) -> &'a [T] {
    let n = k * dims.pixels();
    let at = (layer * dims.batch + b) * n;
    &buf[at..at + n]
}

/// One task's work buffers, grown on demand and reused for every row, layer and step it runs, so
/// a step touches no fresh memory; they go back to [`spare`] for the next call when it is dropped.
struct Scratch<T: Scalar> {
    /// The most values the column matrix of a run of steps holds ([`COLS_MAX_ELEMS`]; smaller in
    /// tests, to run the sequence in several runs).
    cols_max: usize,
    /// Column matrices of a run of steps, `[C·kh·kw, n·P]` (also their gradients).
    cols: Vec<T>,
    /// One step's column matrix, `[K·kh·kw, P]` (in the backward pass its gradient).
    step_cols: Vec<T>,
    /// `[G, T·P]`: the gradients of the gate pre-activations at every step (in a forward pass
    /// without a tape, the gates).
    d_gates: Vec<T>,
    /// `d_gates` transposed, `[T·P, G]`.
    d_gates_t: Vec<T>,
    /// A weight gradient, transposed: `[C·kh·kw, G]`.
    w_grad: Vec<T>,
}

impl<T: Scalar> Scratch<T> {
    fn new(cols_max: usize) -> Self {
        Scratch {
            cols_max,
            cols: Vec::new(),
            step_cols: Vec::new(),
            d_gates: Vec::new(),
            d_gates_t: Vec::new(),
            w_grad: Vec::new(),
        }
    }
}

impl<T: Scalar> Drop for Scratch<T> {
    fn drop(&mut self) {
        for v in [
            &mut self.cols,
            &mut self.step_cols,
            &mut self.d_gates,
            &mut self.d_gates_t,
            &mut self.w_grad,
        ] {
            spare::give(std::mem::take(v));
        }
    }
}

/// The first `n` values of `buf`, which grows when shorter (into a kept buffer when one fits).
/// The contents are whatever the last user left, or zeros: callers write before they read.
fn prefix<T: Scalar>(buf: &mut Vec<T>, n: usize) -> &mut [T] {
    if buf.len() < n {
        if buf.capacity() < n {
            spare::give(std::mem::replace(buf, spare::take(n)));
        }
        buf.resize(n, T::zero());
    }
    &mut buf[..n]
}

/// `dst[c, r] = src[r, c]`: `dst` is `[src.cols, src.rows]`, packed. In square tiles, so both
/// sides stay in cache.
fn transpose<T: Copy>(src: Mat<T>, dst: &mut [T]) {
    const TILE: usize = 16;
    let (rows, cols) = (src.rows, src.cols);
    assert!(dst.len() >= rows * cols);
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let from = &src.data[r * src.ld + c0..r * src.ld + (c0 + TILE).min(cols)];
                for (c, &v) in (c0..).zip(from) {
                    dst[c * rows + r] = v;
                }
            }
        }
    }
}

/// `d_w[G, R] += dG[G, n] · cols[R, n]ᵀ`, computed as `(cols · dGᵀ)ᵀ` from `dg_t = dGᵀ`
/// `[n, G]`. Both of `dG` and `cols` lie contiguous along the sum, which `gemm` handles by
/// gathering one of them into its packed form element by element (a quarter of the backward
/// pass's time at `G = 64`); with `dG` transposed beforehand, in tiles, every factor is read as
/// it lies. `prod` is work space.
fn add_weight_grad<T: Scalar>(d_w: &mut [T], dg_t: Mat<T>, cols: Mat<T>, prod: &mut Vec<T>) {
    let (n, g, r) = (dg_t.rows, dg_t.cols, cols.rows);
    assert_eq!(cols.cols, n);
    assert_eq!(d_w.len(), g * r);
    let prod = prefix(prod, r * g);
    a_b(prod, g, false, cols, dg_t);
    for (gi, d_row) in d_w.chunks_exact_mut(r).enumerate() {
        for (ri, d) in d_row.iter_mut().enumerate() {
            *d += prod[ri * g + gi];
        }
    }
}

/// Steps per run of the sequence-wide column matrix of a convolution with `rows` rows, when a
/// run may hold `cols_max` values.
fn steps_per_run(cols_max: usize, rows: usize, pixels: usize, seq_len: usize) -> usize {
    (cols_max / rows.saturating_mul(pixels).max(1)).clamp(1, seq_len)
}

/// The columns `[t0·P, t1·P)` of a `[rows, ld]` matrix, as a view.
fn columns<T>(data: &[T], rows: usize, ld: usize, t0: usize, t1: usize, p: usize) -> Mat<'_, T> {
    Mat {
        data: &data[t0 * p..],
        rows,
        cols: (t1 - t0) * p,
        ld,
    }
}

/// Runs the network over `batch`; `keep_tape` records what [`backward`] needs.
pub fn forward<T: Scalar>(
    params: &ConvLstmParams<T>,
    batch: &ConvBatch<T>,
    keep_tape: bool,
) -> Result<ConvForward<T>> {
    forward_in_runs(params, batch, keep_tape, COLS_MAX_ELEMS)
}

/// [`forward`] with column matrices of at most `cols_max` values.
fn forward_in_runs<T: Scalar>(
    params: &ConvLstmParams<T>,
    batch: &ConvBatch<T>,
    keep_tape: bool,
    cols_max: usize,
) -> Result<ConvForward<T>> {
    let cfg = *params.config();
    let dims = check_dims(params, batch)?;
    let frame = dims.frame_len(&cfg);
    let seq = dims.seq_len * frame;
    let rows: Vec<Vec<LayerRow<T>>> = crate::threads::install_for(work(&cfg, &dims), || {
        (0..dims.batch)
            .into_par_iter()
            .map_init(
                || Scratch::new(cols_max),
                |scratch, b| {
                    let x = &batch.input[b * seq..(b + 1) * seq];
                    forward_row(params, &dims, b, x, batch.h0, batch.c0, keep_tape, scratch)
                },
            )
            .collect()
    });

    let (k, p, t_len) = (cfg.hidden_channels, dims.pixels(), dims.seq_len);
    let top = cfg.num_layers - 1;
    let mut output = Vec::with_capacity(dims.batch * t_len * k * p);
    for row in &rows {
        output.extend_from_slice(&row[top].h);
    }
    let mut h_n = Vec::with_capacity(dims.state_len(&cfg));
    let mut c_n = Vec::with_capacity(dims.state_len(&cfg));
    for layer in 0..cfg.num_layers {
        for row in &rows {
            let last = (t_len - 1) * k * p..t_len * k * p;
            h_n.extend_from_slice(&row[layer].h[last.clone()]);
            c_n.extend_from_slice(&row[layer].c[last]);
        }
    }
    let tape = keep_tape.then(|| ConvTape {
        config: cfg,
        dims,
        input: {
            let mut v = spare::take(batch.input.len());
            v.extend_from_slice(batch.input);
            v
        },
        rows,
    });
    Ok(ConvForward {
        output,
        h_n,
        c_n,
        tape,
    })
}

/// One batch row through every layer and step.
fn forward_row<T: Scalar>(
    params: &ConvLstmParams<T>,
    dims: &Dims,
    b: usize,
    x: &[T],
    h0: Option<&[T]>,
    c0: Option<&[T]>,
    keep_tape: bool,
    scratch: &mut Scratch<T>,
) -> Vec<LayerRow<T>> {
    let cfg = params.config();
    let w = params.as_slice();
    let (g_ch, k, p, t_len) = (
        cfg.gate_channels(),
        cfg.hidden_channels,
        dims.pixels(),
        dims.seq_len,
    );
    let (kp, tp) = (k * p, t_len * p);
    let mut layers: Vec<LayerRow<T>> = Vec::with_capacity(cfg.num_layers);
    for layer in 0..cfg.num_layers {
        let (gx, gh) = geometries(cfg, dims, layer);
        let o = cfg.offsets(layer);
        let w_ih = Mat::new(&w[o.w_ih..o.w_ih + g_ch * gx.rows()], g_ch, gx.rows());
        let w_hh = Mat::new(&w[o.w_hh..o.w_hh + g_ch * gh.rows()], g_ch, gh.rows());
        let in_len = gx.channels * gx.input[0] * gx.input[1];
        let input: &[T] = match layers.last() {
            Some(below) => &below.h,
            None => x,
        };
        let init = |s: Option<&[T]>| {
            s.map_or_else(
                || vec![T::zero(); kp],
                |s| state_of(s, layer, b, dims, k).to_vec(),
            )
        };
        let (h_init, c_init) = (init(h0), init(c0));

        // `[G, T·P]`: the bias, plus the input-to-state convolution of every step. Without a tape
        // the gates are work space.
        let mut gates = if keep_tape {
            spare::take(g_ch * tp)
        } else {
            let mut v = std::mem::take(&mut scratch.d_gates);
            v.clear();
            v
        };
        for ch in 0..g_ch {
            let bv = o.bias.map_or(T::zero(), |at| w[at + ch]);
            gates.resize((ch + 1) * tp, bv);
        }
        let run = steps_per_run(scratch.cols_max, gx.rows(), p, t_len);
        for t0 in (0..t_len).step_by(run) {
            let t1 = (t0 + run).min(t_len);
            let ld = (t1 - t0) * p;
            let cols = prefix(&mut scratch.cols, gx.rows() * ld);
            for t in t0..t1 {
                im2col(
                    &gx,
                    &input[t * in_len..(t + 1) * in_len],
                    &mut cols[(t - t0) * p..],
                    ld,
                );
            }
            a_b(
                &mut gates[t0 * p..],
                tp,
                true,
                w_ih,
                Mat::new(cols, gx.rows(), ld),
            );
        }

        // The recurrence: the state-to-state convolution and the cell, step by step.
        let mut h = spare::zeros(t_len * kp);
        let mut c = spare::zeros(t_len * kp);
        // A zero initial state adds nothing to the first step's gates.
        let h_init_zero = h_init.iter().all(|&v| v == T::zero());
        let cols_h = prefix(&mut scratch.step_cols, gh.rows() * p);
        for t in 0..t_len {
            let (h_done, h_rest) = h.split_at_mut(t * kp);
            let (c_done, c_rest) = c.split_at_mut(t * kp);
            let (h_prev, c_prev) = if t == 0 {
                (&h_init[..], &c_init[..])
            } else {
                (&h_done[(t - 1) * kp..], &c_done[(t - 1) * kp..])
            };
            if t > 0 || !h_init_zero {
                im2col(&gh, h_prev, cols_h, p);
                a_b(
                    &mut gates[t * p..],
                    tp,
                    true,
                    w_hh,
                    Mat::new(cols_h, gh.rows(), p),
                );
            }
            let step = StepView {
                channels: k,
                pixels: p,
                ld: tp,
                at: t * p,
            };
            cell_forward(
                &mut gates,
                step,
                c_prev,
                &mut c_rest[..kp],
                &mut h_rest[..kp],
            );
        }
        if !keep_tape {
            scratch.d_gates = std::mem::take(&mut gates);
        }
        layers.push(LayerRow {
            gates,
            h,
            c,
            h0: h_init,
            c0: c_init,
        });
    }
    layers
}

/// Backpropagation through time for the forward call that recorded `tape`. Each gradient of the
/// outputs may be absent (zero): `d_out` `[B, T, K, Ho, Wo]`, `d_h_n` and `d_c_n`
/// `[L, B, K, Ho, Wo]`.
pub fn backward<T: Scalar>(
    params: &ConvLstmParams<T>,
    tape: &ConvTape<T>,
    d_out: Option<&[T]>,
    d_h_n: Option<&[T]>,
    d_c_n: Option<&[T]>,
) -> Result<ConvGradients<T>> {
    backward_in_runs(params, tape, [d_out, d_h_n, d_c_n], COLS_MAX_ELEMS)
}

/// [`backward`] with column matrices of at most `cols_max` values.
fn backward_in_runs<T: Scalar>(
    params: &ConvLstmParams<T>,
    tape: &ConvTape<T>,
    [d_out, d_h_n, d_c_n]: [Option<&[T]>; 3],
    cols_max: usize,
) -> Result<ConvGradients<T>> {
    let cfg = *params.config();
    if tape.config != cfg {
        return Err(Error::Value {
            arg: "tape",
            expected: format!("a tape recorded by a network of {cfg:?}"),
            got: format!("one of {:?}", tape.config),
        });
    }
    let dims = tape.dims;
    let (k, p) = (cfg.hidden_channels, dims.pixels());
    let state_shape = [cfg.num_layers, dims.batch, k, dims.state.0, dims.state.1];
    if let Some(d) = d_out {
        check_len(
            "d_out",
            d.len(),
            &[dims.batch, dims.seq_len, k, dims.state.0, dims.state.1],
        )?;
    }
    if let Some(d) = d_h_n {
        check_len("d_h_n", d.len(), &state_shape)?;
    }
    if let Some(d) = d_c_n {
        check_len("d_c_n", d.len(), &state_shape)?;
    }
    let n_params = params.as_slice().len();
    let frame = dims.frame_len(&cfg);
    let seq = dims.seq_len * frame;
    let out_seq = dims.seq_len * k * p;

    let mut d_input = memory::try_filled("x", dims.batch * seq, T::zero())?;
    // Per row: d_h0 and d_c0 of every layer, `[L, K, P]` each.
    let mut d_init = vec![(Vec::new(), Vec::new()); dims.batch];
    let d_params = crate::threads::install_for(2 * work(&cfg, &dims), || {
        // A fixed run of rows per thread, so the summation order depends only on the thread count.
        let per_chunk = dims.batch.div_ceil(rayon::current_num_threads().max(1));
        let partials: Vec<Vec<T>> = d_input
            .par_chunks_mut(per_chunk * seq)
            .zip(d_init.par_chunks_mut(per_chunk))
            .enumerate()
            .map(|(chunk, (d_x, d_init))| {
                let mut d_w = vec![T::zero(); n_params];
                let mut scratch = Scratch::new(cols_max);
                for (r, (d_x_row, d_init_row)) in
                    d_x.chunks_mut(seq).zip(d_init.iter_mut()).enumerate()
                {
                    let b = chunk * per_chunk + r;
                    let d_out_row = d_out.map(|d| &d[b * out_seq..(b + 1) * out_seq]);
                    *d_init_row = backward_row(
                        params,
                        tape,
                        b,
                        d_out_row,
                        d_h_n,
                        d_c_n,
                        d_x_row,
                        &mut d_w,
                        &mut scratch,
                    );
                }
                d_w
            })
            .collect();
        let mut total = vec![T::zero(); n_params];
        for part in &partials {
            total.iter_mut().zip(part).for_each(|(t, &v)| *t += v);
        }
        total
    });

    let mut h0 = Vec::with_capacity(dims.state_len(&cfg));
    let mut c0 = Vec::with_capacity(dims.state_len(&cfg));
    for layer in 0..cfg.num_layers {
        for (dh, dc) in &d_init {
            h0.extend_from_slice(&dh[layer * k * p..(layer + 1) * k * p]);
            c0.extend_from_slice(&dc[layer * k * p..(layer + 1) * k * p]);
        }
    }
    Ok(ConvGradients {
        params: d_params,
        input: d_input,
        h0,
        c0,
    })
}

/// One batch row's backward pass through every layer, top down. Adds the weight gradients into
/// `d_w`, writes `d_x` (`[T, C, H, W]`) and returns `(d_h0, d_c0)`, each `[L, K, P]`.
fn backward_row<T: Scalar>(
    params: &ConvLstmParams<T>,
    tape: &ConvTape<T>,
    b: usize,
    d_out: Option<&[T]>,
    d_h_n: Option<&[T]>,
    d_c_n: Option<&[T]>,
    d_x: &mut [T],
    d_w: &mut [T],
    scratch: &mut Scratch<T>,
) -> (Vec<T>, Vec<T>) {
    let cfg = params.config();
    let dims = &tape.dims;
    let w = params.as_slice();
    let (g_ch, k, p, t_len) = (
        cfg.gate_channels(),
        cfg.hidden_channels,
        dims.pixels(),
        dims.seq_len,
    );
    let (kp, tp) = (k * p, t_len * p);
    let frame = dims.frame_len(cfg);
    let x = &tape.input[b * t_len * frame..(b + 1) * t_len * frame];
    let rows = &tape.rows[b];
    let mut d_h0 = vec![T::zero(); cfg.num_layers * kp];
    let mut d_c0 = vec![T::zero(); cfg.num_layers * kp];
    // The input gradient of the layer above, `[T, K, P]`: the gradient of this layer's outputs.
    let mut d_below: Vec<T> = Vec::new();
    for layer in (0..cfg.num_layers).rev() {
        let d_seq = if layer + 1 == cfg.num_layers {
            d_out
        } else {
            Some(&d_below[..])
        };
        let (gx, gh) = geometries(cfg, dims, layer);
        let o = cfg.offsets(layer);
        let (nx, nh) = (g_ch * gx.rows(), g_ch * gh.rows());
        let w_ih = Mat::new(&w[o.w_ih..o.w_ih + nx], g_ch, gx.rows());
        let w_hh = Mat::new(&w[o.w_hh..o.w_hh + nh], g_ch, gh.rows());
        let row = &rows[layer];
        let in_len = gx.channels * gx.input[0] * gx.input[1];
        let input: &[T] = if layer == 0 { x } else { &rows[layer - 1].h };
        let mut dh = d_h_n.map_or_else(
            || vec![T::zero(); kp],
            |d| state_of(d, layer, b, dims, k).to_vec(),
        );
        let mut dc = d_c_n.map_or_else(
            || vec![T::zero(); kp],
            |d| state_of(d, layer, b, dims, k).to_vec(),
        );

        // The recurrence: the cell backward and the state-to-state path, `d h_{t-1}`. Every step
        // writes all of its columns of `d_gates`.
        let d_gates = prefix(&mut scratch.d_gates, g_ch * tp);
        let d_cols_h = prefix(&mut scratch.step_cols, gh.rows() * p);
        for t in (0..t_len).rev() {
            if let Some(d) = d_seq {
                dh.iter_mut()
                    .zip(&d[t * kp..(t + 1) * kp])
                    .for_each(|(a, &v)| *a += v);
            }
            let c_prev = if t == 0 {
                &row.c0[..]
            } else {
                &row.c[(t - 1) * kp..t * kp]
            };
            let step = StepView {
                channels: k,
                pixels: p,
                ld: tp,
                at: t * p,
            };
            cell_backward(
                &row.gates,
                step,
                c_prev,
                &row.c[t * kp..(t + 1) * kp],
                &dh,
                &mut dc,
                d_gates,
            );
            at_b(
                d_cols_h,
                p,
                false,
                w_hh,
                columns(d_gates, g_ch, tp, t, t + 1, p),
            );
            dh.fill(T::zero());
            col2im_add(&gh, d_cols_h, p, &mut dh);
        }
        d_h0[layer * kp..(layer + 1) * kp].copy_from_slice(&dh);
        d_c0[layer * kp..(layer + 1) * kp].copy_from_slice(&dc);

        // Every step at once: the bias gradient, the weight gradients (one product per run of
        // steps, its sums `run·P` long) and the input gradient.
        let d_gates = &scratch.d_gates[..g_ch * tp];
        // `[T·P, G]`, for the weight gradients.
        let d_gates_t = prefix(&mut scratch.d_gates_t, tp * g_ch);
        transpose(Mat::new(d_gates, g_ch, tp), d_gates_t);
        let d_gates_t = &*d_gates_t;
        let steps_t = |t0: usize, t1: usize| {
            Mat::new(
                &d_gates_t[t0 * p * g_ch..t1 * p * g_ch],
                (t1 - t0) * p,
                g_ch,
            )
        };
        if let Some(at) = o.bias {
            for (gb, chan) in d_w[at..at + g_ch].iter_mut().zip(d_gates.chunks_exact(tp)) {
                *gb += chan.iter().copied().sum::<T>();
            }
        }
        // A zero initial state contributes nothing to the first step's `W_hh` gradient.
        let first = usize::from(row.h0.iter().all(|&v| v == T::zero()));
        let run = steps_per_run(scratch.cols_max, gh.rows(), p, t_len);
        for t0 in (first..t_len).step_by(run) {
            let t1 = (t0 + run).min(t_len);
            let ld = (t1 - t0) * p;
            let cols = prefix(&mut scratch.cols, gh.rows() * ld);
            for t in t0..t1 {
                let h_prev = if t == 0 {
                    &row.h0[..]
                } else {
                    &row.h[(t - 1) * kp..t * kp]
                };
                im2col(&gh, h_prev, &mut cols[(t - t0) * p..], ld);
            }
            add_weight_grad(
                &mut d_w[o.w_hh..o.w_hh + nh],
                steps_t(t0, t1),
                Mat::new(cols, gh.rows(), ld),
                &mut scratch.w_grad,
            );
        }
        // Below the top, the input gradient of this layer is the next one's `d_seq`.
        let mut d_in = if layer == 0 {
            Vec::new()
        } else {
            spare::zeros(t_len * in_len)
        };
        let run = steps_per_run(scratch.cols_max, gx.rows(), p, t_len);
        for t0 in (0..t_len).step_by(run) {
            let t1 = (t0 + run).min(t_len);
            let ld = (t1 - t0) * p;
            let cols = prefix(&mut scratch.cols, gx.rows() * ld);
            for t in t0..t1 {
                let frame_in = &input[t * in_len..(t + 1) * in_len];
                im2col(&gx, frame_in, &mut cols[(t - t0) * p..], ld);
            }
            add_weight_grad(
                &mut d_w[o.w_ih..o.w_ih + nx],
                steps_t(t0, t1),
                Mat::new(cols, gx.rows(), ld),
                &mut scratch.w_grad,
            );
            // The input path, d x_t (or d h_t of the layer below): the columns' gradient, then
            // each frame's share.
            at_b(cols, ld, false, w_ih, columns(d_gates, g_ch, tp, t0, t1, p));
            for t in t0..t1 {
                let d_frame = if layer == 0 {
                    &mut d_x[t * in_len..(t + 1) * in_len]
                } else {
                    &mut d_in[t * in_len..(t + 1) * in_len]
                };
                col2im_add(&gx, &cols[(t - t0) * p..], ld, d_frame);
            }
        }
        spare::give(std::mem::replace(&mut d_below, d_in));
    }
    (d_h0, d_c0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sequence-wide products split into runs of steps (down to one step per run) give what
    /// one run over the whole sequence gives: the same forward pass, the same gradients up to the
    /// order of the weight-gradient sums.
    #[test]
    fn runs_of_steps_match_one_run() {
        let cfg = ConvLstmConfig::new(2, 3, [3, 3], [1, 1], 2, true).expect("config");
        let mut params = ConvLstmParams::<f64>::try_init(cfg, 3).expect("params");
        for (i, v) in params.as_mut_slice().iter_mut().enumerate() {
            *v = (i as f64 * 0.37).sin() * 0.4;
        }
        let (b, t, h, w) = (2, 5, 4, 5);
        let x: Vec<f64> = (0..b * t * 2 * h * w)
            .map(|i| (i as f64 * 0.11).cos())
            .collect();
        let h0: Vec<f64> = (0..2 * b * 3 * h * w)
            .map(|i| (i as f64 * 0.23).sin() * 0.5)
            .collect();
        let batch = ConvBatch {
            input: &x,
            batch: b,
            seq_len: t,
            height: h,
            width: w,
            h0: Some(&h0),
            c0: None,
        };
        let d_out: Vec<f64> = (0..b * t * 3 * h * w)
            .map(|i| (i as f64 * 0.07).cos())
            .collect();
        let run = |cols_max: usize| {
            let out = forward_in_runs(&params, &batch, true, cols_max).expect("forward");
            let tape = out.tape.as_ref().expect("tape");
            let g = backward_in_runs(&params, tape, [Some(&d_out[..]), None, None], cols_max)
                .expect("backward");
            (out.output, g)
        };
        let (out, whole) = run(COLS_MAX_ELEMS);
        // One layer's column matrix for one step holds 3·9·20 = 540 values.
        for cols_max in [1, 540, 2 * 540 + 1] {
            let (o, g) = run(cols_max);
            assert_eq!(o, out, "forward, cols_max {cols_max}");
            for (name, got, want) in [
                ("params", &g.params, &whole.params),
                ("input", &g.input, &whole.input),
                ("h0", &g.h0, &whole.h0),
                ("c0", &g.c0, &whole.c0),
            ] {
                let d = got
                    .iter()
                    .zip(want)
                    .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
                assert!(d < 1e-12, "{name}: {d:e} apart with cols_max {cols_max}");
            }
        }
    }
}
