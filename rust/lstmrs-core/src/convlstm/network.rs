//! The fast ConvLSTM: forward pass and backpropagation through time.
//!
//! Shapes (row-major throughout): `B` sequences of `T` steps, frames `[C, H, W]` in, states
//! `[K, Ho, Wo]` (`P = Ho·Wo` pixels) per layer, `G = 4K` gate channels, `L` layers.
//!
//! Every convolution is `im2col` plus the core's GEMM (`matmul`), not a direct kernel: the three
//! products of a step (gates, weight gradients, input gradients) then all run on the GEMM's tested
//! AVX2/AVX-512 micro-kernels, which a direct loop nest would need its own blocking and SIMD to
//! approach; the column matrix (`C·kh·kw × P` per frame) is small next to the product's work
//! (`4K` times as many multiply-adds). A direct kernel was not written to compare.
//!
//! The sequences of a batch never interact, so each batch row runs the whole network (every layer,
//! every step) as one rayon task: no synchronisation per step. The backward pass gives each thread
//! a fixed run of rows and its own weight-gradient buffer, summed in a fixed order at the end, so
//! the same inputs at the same thread count give the same bits.

use super::cell::{cell_backward, cell_forward};
use super::config::ConvLstmConfig;
use super::im2col::{col2im_add, im2col, Geometry};
use super::params::ConvLstmParams;
use crate::error::{check_len, Error, Result};
use crate::matmul::{a_b, a_bt, at_b, Mat};
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
pub struct ConvForward<T> {
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

/// One layer of one batch row over the whole sequence.
#[derive(Debug, Clone)]
struct LayerRow<T> {
    /// `[T, G, P]` gate activations i, f, g, o (one step `[G, P]` when no tape is kept).
    gates: Vec<T>,
    /// `[T, K, P]` hidden states.
    h: Vec<T>,
    /// `[T, K, P]` cell states.
    c: Vec<T>,
    /// `[K, P]` initial states.
    h0: Vec<T>,
    c0: Vec<T>,
}

/// What [`backward`] needs from a forward call: the input and every layer's activations.
#[derive(Debug)]
pub struct ConvTape<T> {
    config: ConvLstmConfig,
    dims: Dims,
    /// `[B, T, C, H, W]`.
    input: Vec<T>,
    /// `[B][L]`.
    rows: Vec<Vec<LayerRow<T>>>,
}

impl<T> ConvTape<T> {
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
    // The activations kept per row and layer: gates, h and c at every step.
    let per_row = (cfg.gate_channels() + 2 * cfg.hidden_channels) * dims.pixels();
    memory::check(
        "x",
        memory::bytes_of(
            std::mem::size_of::<T>(),
            &[b.batch, b.seq_len, cfg.num_layers, per_row],
        ),
    )?;
    // The column matrices of a row's work (four in the backward pass), one row per thread: a
    // large kernel over a wide frame must fail here, not in the allocator.
    memory::check(
        "kernel_size",
        memory::bytes_of(
            std::mem::size_of::<T>(),
            &[
                4 * crate::threads::num_threads(),
                cfg.in_channels.max(cfg.hidden_channels) * cfg.taps(),
                dims.pixels(),
            ],
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

/// Runs the network over `batch`; `keep_tape` records what [`backward`] needs.
pub fn forward<T: Scalar>(
    params: &ConvLstmParams<T>,
    batch: &ConvBatch<T>,
    keep_tape: bool,
) -> Result<ConvForward<T>> {
    let cfg = *params.config();
    let dims = check_dims(params, batch)?;
    let frame = dims.frame_len(&cfg);
    let seq = dims.seq_len * frame;
    let rows: Vec<Vec<LayerRow<T>>> = crate::threads::install_for(work(&cfg, &dims), || {
        (0..dims.batch)
            .into_par_iter()
            .map(|b| {
                let x = &batch.input[b * seq..(b + 1) * seq];
                forward_row(params, &dims, b, x, batch.h0, batch.c0, keep_tape)
            })
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
        input: batch.input.to_vec(),
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
) -> Vec<LayerRow<T>> {
    let cfg = params.config();
    let w = params.as_slice();
    let (g_ch, k, p) = (cfg.gate_channels(), cfg.hidden_channels, dims.pixels());
    let mut layers: Vec<LayerRow<T>> = Vec::with_capacity(cfg.num_layers);
    for layer in 0..cfg.num_layers {
        let (gx, gh) = geometries(cfg, dims, layer);
        let o = cfg.offsets(layer);
        let w_ih = Mat::new(&w[o.w_ih..o.w_ih + g_ch * gx.rows()], g_ch, gx.rows());
        let w_hh = Mat::new(&w[o.w_hh..o.w_hh + g_ch * gh.rows()], g_ch, gh.rows());
        let bias = o.bias.map(|at| &w[at..at + g_ch]);
        let in_len = gx.channels * gx.input[0] * gx.input[1];
        let input: &[T] = match layers.last() {
            Some(below) => &below.h,
            None => x,
        };
        let init = |s: Option<&[T]>| {
            s.map_or_else(
                || vec![T::zero(); k * p],
                |s| state_of(s, layer, b, dims, k).to_vec(),
            )
        };
        let mut row = LayerRow {
            gates: vec![T::zero(); if keep_tape { dims.seq_len } else { 1 } * g_ch * p],
            h: vec![T::zero(); dims.seq_len * k * p],
            c: vec![T::zero(); dims.seq_len * k * p],
            h0: init(h0),
            c0: init(c0),
        };
        let mut cols_x = vec![T::zero(); gx.rows() * p];
        let mut cols_h = vec![T::zero(); gh.rows() * p];
        for t in 0..dims.seq_len {
            let slot = if keep_tape { t } else { 0 };
            let gates = &mut row.gates[slot * g_ch * p..(slot + 1) * g_ch * p];
            im2col(&gx, &input[t * in_len..(t + 1) * in_len], &mut cols_x);
            a_b(gates, p, false, w_ih, Mat::new(&cols_x, gx.rows(), p));
            let (h_prev, c_prev) = if t == 0 {
                (&row.h0[..], &row.c0[..])
            } else {
                (
                    &row.h[(t - 1) * k * p..t * k * p],
                    &row.c[(t - 1) * k * p..t * k * p],
                )
            };
            im2col(&gh, h_prev, &mut cols_h);
            a_b(gates, p, true, w_hh, Mat::new(&cols_h, gh.rows(), p));
            if let Some(bias) = bias {
                for (chan, &bv) in gates.chunks_exact_mut(p).zip(bias) {
                    chan.iter_mut().for_each(|v| *v += bv);
                }
            }
            let mut c_t = vec![T::zero(); k * p];
            let mut h_t = vec![T::zero(); k * p];
            cell_forward(gates, c_prev, &mut c_t, &mut h_t, k * p);
            row.c[t * k * p..(t + 1) * k * p].copy_from_slice(&c_t);
            row.h[t * k * p..(t + 1) * k * p].copy_from_slice(&h_t);
        }
        layers.push(row);
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
                for (r, (d_x_row, d_init_row)) in
                    d_x.chunks_mut(seq).zip(d_init.iter_mut()).enumerate()
                {
                    let b = chunk * per_chunk + r;
                    let d_out_row = d_out.map(|d| &d[b * out_seq..(b + 1) * out_seq]);
                    *d_init_row =
                        backward_row(params, tape, b, d_out_row, d_h_n, d_c_n, d_x_row, &mut d_w);
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
    let kp = k * p;
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
        // Below the top, the input gradient of this layer is the next one's `d_seq`.
        let mut d_in = if layer == 0 {
            None
        } else {
            Some(vec![T::zero(); t_len * in_len])
        };
        let mut dh = d_h_n.map_or_else(
            || vec![T::zero(); kp],
            |d| state_of(d, layer, b, dims, k).to_vec(),
        );
        let mut dc = d_c_n.map_or_else(
            || vec![T::zero(); kp],
            |d| state_of(d, layer, b, dims, k).to_vec(),
        );
        let mut d_gates = vec![T::zero(); g_ch * p];
        let mut cols_x = vec![T::zero(); gx.rows() * p];
        let mut cols_h = vec![T::zero(); gh.rows() * p];
        let mut d_cols_x = vec![T::zero(); gx.rows() * p];
        let mut d_cols_h = vec![T::zero(); gh.rows() * p];
        for t in (0..t_len).rev() {
            if let Some(d) = d_seq {
                dh.iter_mut()
                    .zip(&d[t * kp..(t + 1) * kp])
                    .for_each(|(a, &v)| *a += v);
            }
            let (h_prev, c_prev) = if t == 0 {
                (&row.h0[..], &row.c0[..])
            } else {
                (&row.h[(t - 1) * kp..t * kp], &row.c[(t - 1) * kp..t * kp])
            };
            cell_backward(
                &row.gates[t * g_ch * p..(t + 1) * g_ch * p],
                c_prev,
                &row.c[t * kp..(t + 1) * kp],
                &dh,
                &mut dc,
                &mut d_gates,
                kp,
            );
            if let Some(at) = o.bias {
                for (gb, chan) in d_w[at..at + g_ch].iter_mut().zip(d_gates.chunks_exact(p)) {
                    *gb += chan.iter().copied().sum::<T>();
                }
            }
            let dg = Mat::new(&d_gates, g_ch, p);
            im2col(&gh, h_prev, &mut cols_h);
            a_bt(
                &mut d_w[o.w_hh..o.w_hh + nh],
                gh.rows(),
                true,
                dg,
                Mat::new(&cols_h, gh.rows(), p),
            );
            let frame_in = &input[t * in_len..(t + 1) * in_len];
            im2col(&gx, frame_in, &mut cols_x);
            a_bt(
                &mut d_w[o.w_ih..o.w_ih + nx],
                gx.rows(),
                true,
                dg,
                Mat::new(&cols_x, gx.rows(), p),
            );
            // The state-to-state path: d h_{t-1}.
            at_b(&mut d_cols_h, p, false, w_hh, dg);
            dh.fill(T::zero());
            col2im_add(&gh, &d_cols_h, &mut dh);
            // The input path: d x_t, or d h_t of the layer below.
            at_b(&mut d_cols_x, p, false, w_ih, dg);
            let d_frame = match &mut d_in {
                Some(d) => &mut d[t * in_len..(t + 1) * in_len],
                None => &mut d_x[t * in_len..(t + 1) * in_len],
            };
            col2im_add(&gx, &d_cols_x, d_frame);
        }
        d_h0[layer * kp..(layer + 1) * kp].copy_from_slice(&dh);
        d_c0[layer * kp..(layer + 1) * kp].copy_from_slice(&dc);
        if let Some(d) = d_in {
            d_below = d;
        }
    }
    (d_h0, d_c0)
}
