//! A plain reference implementation of the same mathematics as the fast path, written to be read.
//!
//! Everything here is one time step, one batch row, one hidden unit at a time, with the standard
//! library's `exp` and `tanh`. It shares nothing with `sweep`, `gates` or `matmul`: weights are
//! looked up by their PyTorch names, and packed-sequence semantics are spelled out literally (each
//! row runs over its own `0..len` and nothing else). The only shared pieces are the public types
//! and `dropout_mask`, so both paths draw the same mask. The tests hold the fast path to this
//! module; it is the specification, not something to run for speed.
//!
//! The cells, in PyTorch's gate order (`x` the step input, `h`, `c` the previous state):
//! - LSTM: `i, f, g, o = σ, σ, tanh, σ (W_ih x + b_ih + W_hh h + b_hh)`,
//!   `c' = f*c + i*g`, `h' = o*tanh(c')`.
//! - GRU: `r, z = σ(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})`,
//!   `n = tanh(W_in x + b_in + r*(W_hn h + b_hn))`, `h' = (1-z)*n + z*h`.
//! - LSTM with `proj_size = P`: as the LSTM, then `h' = W_hr (o*tanh(c'))`; `h` has `P`
//!   features (so `W_hh` is `[4H, P]`), `c` keeps `H`.

use crate::config::{CellKind, RnnConfig};
use crate::dropout::dropout_mask;
use crate::error::{check_len, Error, Result};
use crate::network::{Batch, ForwardOptions, ForwardOutput, GradOutputs, Gradients, Layout};
use crate::params::{param_specs, ParamSpec, RnnWeights};
use crate::scalar::Scalar;
use num_traits::Float;

fn sigmoid<T: Scalar>(v: T) -> T {
    T::one() / (T::one() + Float::exp(-v))
}

fn tanh<T: Scalar>(v: T) -> T {
    Float::tanh(v)
}

/// Start of the `feat` elements of step `t`, row `b` in a sequence laid out as `layout` says.
fn seq_index(layout: Layout, steps: usize, batch: usize, feat: usize, t: usize, b: usize) -> usize {
    match layout {
        Layout::BatchFirst => (b * steps + t) * feat,
        Layout::TimeMajor => (t * batch + b) * feat,
    }
}

/// One layer-direction's weights, copied out of the parameters by name.
struct CellWeights<T> {
    kind: CellKind,
    hidden: usize,
    /// Features of the hidden state `h`: `P` with projections, else `H`.
    state: usize,
    input: usize,
    /// `[G*H, I]`
    w_ih: Vec<T>,
    /// `[G*H, S]`
    w_hh: Vec<T>,
    /// `[P, H]` when the LSTM projects its hidden state.
    w_hr: Option<Vec<T>>,
    /// `[G*H]`, zeros when the network has no biases.
    b_ih: Vec<T>,
    b_hh: Vec<T>,
}

fn names(layer: usize, dir: usize) -> [String; 4] {
    let suffix = if dir == 1 { "_reverse" } else { "" };
    ["weight_ih", "weight_hh", "bias_ih", "bias_hh"].map(|k| format!("{k}_l{layer}{suffix}"))
}

/// The named tensor's place in the flat buffer.
fn spec<'s>(specs: &'s [ParamSpec], name: &str) -> &'s ParamSpec {
    specs
        .iter()
        .find(|s| s.name == name)
        .expect("param_specs names every layer-direction's tensors")
}

impl<T: Scalar> CellWeights<T> {
    fn load(params: &RnnWeights<T>, specs: &[ParamSpec], layer: usize, dir: usize) -> Self {
        let cfg = params.config();
        let gw = cfg.gate_width();
        let get = |name: &str| {
            let s = spec(specs, name);
            params.as_slice()[s.offset..s.offset + s.len].to_vec()
        };
        let [w_ih, w_hh, b_ih, b_hh] = names(layer, dir);
        let bias = |name: &str| {
            if cfg.bias {
                get(name)
            } else {
                vec![T::zero(); gw]
            }
        };
        let suffix = if dir == 1 { "_reverse" } else { "" };
        CellWeights {
            kind: cfg.cell,
            hidden: cfg.hidden_size,
            state: cfg.state_size(),
            input: cfg.layer_input_size(layer),
            w_ih: get(&w_ih),
            w_hh: get(&w_hh),
            w_hr: (cfg.proj_size > 0).then(|| get(&format!("weight_hr_l{layer}{suffix}"))),
            b_ih: bias(&b_ih),
            b_hh: bias(&b_hh),
        }
    }

    /// `W_ih[row] · x + b_ih[row]`.
    fn input_part(&self, row: usize, x: &[T]) -> T {
        let mut acc = self.b_ih[row];
        for k in 0..self.input {
            acc += self.w_ih[row * self.input + k] * x[k];
        }
        acc
    }

    /// `W_hh[row] · h + b_hh[row]`.
    fn hidden_part(&self, row: usize, h: &[T]) -> T {
        let mut acc = self.b_hh[row];
        for k in 0..self.state {
            acc += self.w_hh[row * self.state + k] * h[k];
        }
        acc
    }
}

/// Everything one step computed, kept for the backward pass.
struct Step<T> {
    /// Time index of the step.
    t: usize,
    x: Vec<T>,
    h_prev: Vec<T>,
    /// LSTM's previous cell state (unused zeros for the GRU).
    c_prev: Vec<T>,
    /// `[G*H]` gate values after their nonlinearities: i, f, g, o or r, z, n.
    gates: Vec<T>,
    /// LSTM: the new cell state `c'`. GRU: `W_hn h + b_hn`.
    extra: Vec<T>,
    /// `[H]` the new hidden state before any projection (`o*tanh(c')` for the LSTM).
    m: Vec<T>,
    /// `[S]` the new hidden state: `m`, or `W_hr m` with projections.
    h: Vec<T>,
}

/// One cell step from `(h_prev, c_prev)` on input `x`.
fn cell_step<T: Scalar>(
    w: &CellWeights<T>,
    t: usize,
    x: &[T],
    h_prev: &[T],
    c_prev: &[T],
) -> Step<T> {
    let hsz = w.hidden;
    let mut gates = vec![T::zero(); w.kind.gate_count() * hsz];
    let mut extra = vec![T::zero(); hsz];
    let mut h = vec![T::zero(); hsz];
    for j in 0..hsz {
        match w.kind {
            CellKind::Lstm => {
                let pre = |gate: usize| {
                    let row = gate * hsz + j;
                    w.input_part(row, x) + w.hidden_part(row, h_prev)
                };
                let i = sigmoid(pre(0));
                let f = sigmoid(pre(1));
                let g = tanh(pre(2));
                let o = sigmoid(pre(3));
                let c = f * c_prev[j] + i * g;
                gates[j] = i;
                gates[hsz + j] = f;
                gates[2 * hsz + j] = g;
                gates[3 * hsz + j] = o;
                extra[j] = c;
                h[j] = o * tanh(c);
            }
            CellKind::Gru => {
                let (rr, zr, nr) = (j, hsz + j, 2 * hsz + j);
                let r = sigmoid(w.input_part(rr, x) + w.hidden_part(rr, h_prev));
                let z = sigmoid(w.input_part(zr, x) + w.hidden_part(zr, h_prev));
                let hn_lin = w.hidden_part(nr, h_prev);
                let n = tanh(w.input_part(nr, x) + r * hn_lin);
                gates[rr] = r;
                gates[zr] = z;
                gates[nr] = n;
                extra[j] = hn_lin;
                // The GRU has no projection (`with_proj_size` refuses it): `S == H`.
                h[j] = (T::one() - z) * n + z * h_prev[j];
            }
            CellKind::Custom(_) => unreachable!("`validate` rejects custom cells"),
        }
    }
    let m = h;
    let h = match &w.w_hr {
        Some(w_hr) => (0..w.state)
            .map(|r| {
                let mut acc = T::zero();
                for j in 0..hsz {
                    acc += w_hr[r * hsz + j] * m[j];
                }
                acc
            })
            .collect(),
        None => m.clone(),
    };
    Step {
        t,
        x: x.to_vec(),
        h_prev: h_prev.to_vec(),
        c_prev: c_prev.to_vec(),
        gates,
        extra,
        m,
        h,
    }
}

/// Gradients of one step, given the gradients `dh`, `dc` of its new state.
struct StepGrad<T> {
    /// `[G*H]` gradient of the input-side pre-activations (`W_ih x + b_ih`).
    d_in: Vec<T>,
    /// `[G*H]` gradient of the hidden-side pre-activations (`W_hh h + b_hh`); equal to `d_in`
    /// except on the GRU's n gate, whose hidden side sits inside `r * (...)`.
    d_hid: Vec<T>,
    /// `[H]` gradient of the previous cell state (LSTM).
    dc_prev: Vec<T>,
    /// `[H]` part of the previous hidden state's gradient that skips the weights (GRU's `z*h`).
    dh_direct: Vec<T>,
}

/// `dh` is the gradient of the unprojected state `m` (`[H]`).
fn cell_step_backward<T: Scalar>(kind: CellKind, s: &Step<T>, dh: &[T], dc: &[T]) -> StepGrad<T> {
    let hsz = s.m.len();
    let one = T::one();
    let mut d_in = vec![T::zero(); kind.gate_count() * hsz];
    let mut d_hid = vec![T::zero(); kind.gate_count() * hsz];
    let mut dc_prev = vec![T::zero(); hsz];
    let mut dh_direct = vec![T::zero(); hsz];
    for j in 0..hsz {
        match kind {
            CellKind::Lstm => {
                let (i, f, g, o) = (
                    s.gates[j],
                    s.gates[hsz + j],
                    s.gates[2 * hsz + j],
                    s.gates[3 * hsz + j],
                );
                let tc = tanh(s.extra[j]);
                // h' = o*tanh(c'), c' = f*c + i*g.
                let dc_total = dc[j] + dh[j] * o * (one - tc * tc);
                d_in[j] = dc_total * g * i * (one - i);
                d_in[hsz + j] = dc_total * s.c_prev[j] * f * (one - f);
                d_in[2 * hsz + j] = dc_total * i * (one - g * g);
                d_in[3 * hsz + j] = dh[j] * tc * o * (one - o);
                dc_prev[j] = dc_total * f;
            }
            CellKind::Gru => {
                let (r, z, n) = (s.gates[j], s.gates[hsz + j], s.gates[2 * hsz + j]);
                let hn_lin = s.extra[j];
                // h' = (1-z)*n + z*h_prev.
                let dn = dh[j] * (one - z);
                let dz = dh[j] * (s.h_prev[j] - n);
                // n = tanh(a_in + r * hn_lin).
                let da_n = dn * (one - n * n);
                let dr = da_n * hn_lin;
                let da_r = dr * r * (one - r);
                let da_z = dz * z * (one - z);
                d_in[j] = da_r;
                d_in[hsz + j] = da_z;
                d_in[2 * hsz + j] = da_n;
                d_hid[j] = da_r;
                d_hid[hsz + j] = da_z;
                d_hid[2 * hsz + j] = da_n * r;
                dh_direct[j] = dh[j] * z;
            }
            CellKind::Custom(_) => unreachable!("`validate` rejects custom cells"),
        }
    }
    if kind == CellKind::Lstm {
        d_hid.clone_from(&d_in);
    }
    StepGrad {
        d_in,
        d_hid,
        dc_prev,
        dh_direct,
    }
}

/// What the forward pass keeps for the backward pass.
struct Record<T> {
    /// Dropout mask of each layer's input, when one was applied.
    masks: Vec<Option<Vec<T>>>,
    /// `steps[layer][dir][b]`: the steps of row `b`, in the order they ran.
    steps: Vec<Vec<Vec<Vec<Step<T>>>>>,
}

/// Input checks are the fast path's own (they are not the mathematics under test); the reference
/// only adds that it implements the built-in cells.
fn validate<T: Scalar>(cfg: &RnnConfig, x: &Batch<T>, opts: &ForwardOptions) -> Result<()> {
    if let crate::config::CellKind::Custom(_) = cfg.cell {
        return Err(Error::Value {
            arg: "cell",
            expected: "'lstm' or 'gru' (the reference implements the built-in cells only)".into(),
            got: cfg.cell.name().into(),
        });
    }
    crate::network::validate_forward(cfg, x, opts)
}

fn run<T: Scalar>(
    params: &RnnWeights<T>,
    x: &Batch<T>,
    opts: &ForwardOptions,
) -> Result<(ForwardOutput<T>, Record<T>)> {
    let cfg = *params.config();
    validate(&cfg, x, opts)?;
    let specs = param_specs(&cfg);
    let (steps, batch, hsz, nd) = (x.seq_len, x.batch, cfg.hidden_size, cfg.num_directions());
    let ssz = cfg.state_size();
    let lstm = cfg.cell.has_cell_state();
    let mut h_n = vec![T::zero(); cfg.num_layers * nd * batch * ssz];
    let mut c_n = vec![T::zero(); cfg.num_layers * nd * batch * hsz];
    let mut record = Record {
        masks: Vec::new(),
        steps: Vec::new(),
    };

    // Layer 0's input, time-major: [T, B, I].
    let feat = cfg.input_size;
    let mut layer_in = vec![T::zero(); steps * batch * feat];
    for t in 0..steps {
        for b in 0..batch {
            let src = seq_index(x.layout, steps, batch, feat, t, b);
            let dst = (t * batch + b) * feat;
            layer_in[dst..dst + feat].copy_from_slice(&x.input[src..src + feat]);
        }
    }

    for layer in 0..cfg.num_layers {
        let feat = cfg.layer_input_size(layer);
        let mask = if layer > 0 && opts.training && opts.dropout > 0.0 {
            let m = dropout_mask::<T>(opts.seed, layer, layer_in.len(), opts.dropout);
            for (v, &k) in layer_in.iter_mut().zip(&m) {
                *v *= k;
            }
            Some(m)
        } else {
            None
        };
        let out_feat = nd * ssz;
        let mut layer_out = vec![T::zero(); steps * batch * out_feat];
        let mut layer_steps = Vec::new();
        for dir in 0..nd {
            let w = CellWeights::load(params, &specs, layer, dir);
            let mut dir_steps = Vec::new();
            for b in 0..batch {
                let len = x.lengths.map_or(steps, |l| l[b]);
                let s = ((layer * nd + dir) * batch + b) * ssz;
                let sc = ((layer * nd + dir) * batch + b) * hsz;
                let mut h =
                    x.h0.map_or(vec![T::zero(); ssz], |h0| h0[s..s + ssz].to_vec());
                let mut c = match x.c0 {
                    Some(c0) => c0[sc..sc + hsz].to_vec(),
                    None => vec![T::zero(); hsz],
                };
                // Each row sees only its own valid steps; the reverse direction starts at its last.
                let times: Vec<usize> = if dir == 0 {
                    (0..len).collect()
                } else {
                    (0..len).rev().collect()
                };
                let mut row_steps = Vec::new();
                for t in times {
                    let xi = (t * batch + b) * feat;
                    let st = cell_step(&w, t, &layer_in[xi..xi + feat], &h, &c);
                    h.clone_from(&st.h);
                    if lstm {
                        c.clone_from(&st.extra);
                    }
                    let o = (t * batch + b) * out_feat + dir * ssz;
                    layer_out[o..o + ssz].copy_from_slice(&h);
                    row_steps.push(st);
                }
                h_n[s..s + ssz].copy_from_slice(&h);
                c_n[sc..sc + hsz].copy_from_slice(&c);
                dir_steps.push(row_steps);
            }
            layer_steps.push(dir_steps);
        }
        record.steps.push(layer_steps);
        record.masks.push(mask);
        layer_in = layer_out;
    }

    // Back to the caller's layout.
    let out_feat = cfg.output_size();
    let mut output = vec![T::zero(); steps * batch * out_feat];
    for t in 0..steps {
        for b in 0..batch {
            let src = (t * batch + b) * out_feat;
            let dst = seq_index(x.layout, steps, batch, out_feat, t, b);
            output[dst..dst + out_feat].copy_from_slice(&layer_in[src..src + out_feat]);
        }
    }
    let out = ForwardOutput {
        output,
        h_n,
        c_n: lstm.then_some(c_n),
        tape: None,
    };
    Ok((out, record))
}

/// Runs the network over a batch of sequences (the returned `tape` is always `None`).
pub fn forward<'p, T: Scalar>(
    params: impl Into<RnnWeights<'p, T>>,
    x: &Batch<T>,
    opts: &ForwardOptions,
) -> Result<ForwardOutput<T>> {
    run(&params.into(), x, opts).map(|(out, _)| out)
}

/// Backpropagation through time: runs its own forward pass keeping every step, then walks the
/// steps backwards one at a time. Same inputs as [`forward`] plus the gradients of the outputs.
pub fn backward<'p, T: Scalar>(
    params: impl Into<RnnWeights<'p, T>>,
    x: &Batch<T>,
    opts: &ForwardOptions,
    grads: &GradOutputs<T>,
) -> Result<Gradients<T>> {
    let params = params.into();
    let cfg = *params.config();
    let specs = param_specs(&cfg);
    let (_, rec) = run(&params, x, opts)?;
    let (steps, batch, hsz, nd) = (x.seq_len, x.batch, cfg.hidden_size, cfg.num_directions());
    let ssz = cfg.state_size();
    let lstm = cfg.cell.has_cell_state();
    let out_feat = cfg.output_size();
    let out_shape = match x.layout {
        Layout::BatchFirst => [batch, steps, out_feat],
        Layout::TimeMajor => [steps, batch, out_feat],
    };
    if let Some(g) = grads.output {
        check_len("d_output", g.len(), &out_shape)?;
    }
    let state = [cfg.num_layers * nd, batch, hsz];
    if let Some(g) = grads.h_n {
        check_len("d_h_n", g.len(), &[state[0], batch, ssz])?;
    }
    if let Some(g) = grads.c_n {
        if !lstm {
            return Err(Error::Value {
                arg: "d_c_n",
                expected: "no cell-state gradient for a GRU".into(),
                got: "a cell-state gradient".into(),
            });
        }
        check_len("d_c_n", g.len(), &state)?;
    }

    // Gradient of the top layer's output, time-major.
    let mut d_above = vec![T::zero(); steps * batch * out_feat];
    if let Some(g) = grads.output {
        for t in 0..steps {
            for b in 0..batch {
                let src = seq_index(x.layout, steps, batch, out_feat, t, b);
                let dst = (t * batch + b) * out_feat;
                d_above[dst..dst + out_feat].copy_from_slice(&g[src..src + out_feat]);
            }
        }
    }

    let mut g_params = vec![T::zero(); params.len()];
    let mut dh0 = vec![T::zero(); cfg.num_layers * nd * batch * ssz];
    let mut dc0 = vec![T::zero(); cfg.num_layers * nd * batch * hsz];
    for layer in (0..cfg.num_layers).rev() {
        let feat = cfg.layer_input_size(layer);
        let gw = cfg.gate_width();
        let mut d_in = vec![T::zero(); steps * batch * feat];
        for dir in 0..nd {
            let w = CellWeights::load(&params, &specs, layer, dir);
            let mut g_w_ih = vec![T::zero(); gw * feat];
            let mut g_w_hh = vec![T::zero(); gw * ssz];
            let mut g_b_ih = vec![T::zero(); gw];
            let mut g_b_hh = vec![T::zero(); gw];
            let mut g_w_hr = vec![T::zero(); cfg.proj_size * hsz];
            for b in 0..batch {
                let s = ((layer * nd + dir) * batch + b) * ssz;
                let sc = ((layer * nd + dir) * batch + b) * hsz;
                let mut dh = grads
                    .h_n
                    .map_or(vec![T::zero(); ssz], |g| g[s..s + ssz].to_vec());
                let mut dc = grads
                    .c_n
                    .map_or(vec![T::zero(); hsz], |g| g[sc..sc + hsz].to_vec());
                for st in rec.steps[layer][dir][b].iter().rev() {
                    // The step's output feeds the layer above as well as the next step.
                    let o = (st.t * batch + b) * out_feat + dir * ssz;
                    for j in 0..ssz {
                        dh[j] += d_above[o + j];
                    }
                    // Through the projection `h = W_hr m`: `dm = W_hrᵀ dh`, `dW_hr += dh mᵀ`.
                    let dm = match &w.w_hr {
                        Some(w_hr) => {
                            let mut dm = vec![T::zero(); hsz];
                            for r in 0..ssz {
                                for j in 0..hsz {
                                    dm[j] += w_hr[r * hsz + j] * dh[r];
                                    g_w_hr[r * hsz + j] += dh[r] * st.m[j];
                                }
                            }
                            dm
                        }
                        None => dh.clone(),
                    };
                    let sg = cell_step_backward(cfg.cell, st, &dm, &dc);
                    for row in 0..gw {
                        for k in 0..feat {
                            g_w_ih[row * feat + k] += sg.d_in[row] * st.x[k];
                        }
                        for k in 0..ssz {
                            g_w_hh[row * ssz + k] += sg.d_hid[row] * st.h_prev[k];
                        }
                        g_b_ih[row] += sg.d_in[row];
                        g_b_hh[row] += sg.d_hid[row];
                    }
                    let xi = (st.t * batch + b) * feat;
                    for k in 0..feat {
                        let mut acc = T::zero();
                        for row in 0..gw {
                            acc += w.w_ih[row * feat + k] * sg.d_in[row];
                        }
                        d_in[xi + k] += acc;
                    }
                    for k in 0..ssz {
                        let mut acc = sg.dh_direct[k];
                        for row in 0..gw {
                            acc += w.w_hh[row * ssz + k] * sg.d_hid[row];
                        }
                        dh[k] = acc;
                    }
                    dc = sg.dc_prev;
                }
                dh0[s..s + ssz].copy_from_slice(&dh);
                dc0[sc..sc + hsz].copy_from_slice(&dc);
            }
            let [n_w_ih, n_w_hh, n_b_ih, n_b_hh] = names(layer, dir);
            let mut put = |name: &str, g: &[T]| {
                let s = spec(&specs, name);
                g_params[s.offset..s.offset + s.len].copy_from_slice(g);
            };
            put(&n_w_ih, &g_w_ih);
            put(&n_w_hh, &g_w_hh);
            if cfg.bias {
                put(&n_b_ih, &g_b_ih);
                put(&n_b_hh, &g_b_hh);
            }
            if cfg.proj_size > 0 {
                let suffix = if dir == 1 { "_reverse" } else { "" };
                put(&format!("weight_hr_l{layer}{suffix}"), &g_w_hr);
            }
        }
        // Dropout scaled the cells' input; its gradient is scaled the same way.
        if let Some(mask) = &rec.masks[layer] {
            for (g, &m) in d_in.iter_mut().zip(mask) {
                *g *= m;
            }
        }
        d_above = d_in;
    }

    let feat = cfg.input_size;
    let mut d_input = vec![T::zero(); steps * batch * feat];
    for t in 0..steps {
        for b in 0..batch {
            let src = (t * batch + b) * feat;
            let dst = seq_index(x.layout, steps, batch, feat, t, b);
            d_input[dst..dst + feat].copy_from_slice(&d_above[src..src + feat]);
        }
    }
    Ok(Gradients {
        params: g_params,
        input: d_input,
        h0: dh0,
        c0: lstm.then_some(dc0),
    })
}
