//! Stacked and bidirectional networks: runs the sweeps layer by layer, handles batch layout,
//! initial states, dropout between layers, and gathers the gradients in the flat layout.

use crate::config::RnnConfig;
use crate::dropout::{bernoulli_mask, dropout_mask, MaskKind};
use crate::error::{check_len, Error, Result};
use crate::memory;
use crate::params::{dir_offsets, RnnWeights};
use crate::scalar::Scalar;
use crate::sweep::{self, DirReg, DirTape, DirWeights, OutputGrad, Sweep, SweepTape, Zoneout};
use crate::threads;
use std::borrow::Cow;

/// How a sequence batch is laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[B, T, F]` (PyTorch's `batch_first=True`).
    BatchFirst,
    /// `[T, B, F]`.
    TimeMajor,
}

/// The inputs of one forward call.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a, T> {
    /// `[B, T, I]` or `[T, B, I]` as `layout` says.
    pub input: &'a [T],
    pub layout: Layout,
    pub seq_len: usize,
    pub batch: usize,
    /// `[L*D, B, S]` (`S`: `proj_size`, or `H` without projections); zeros when absent.
    pub h0: Option<&'a [T]>,
    /// `[L*D, B, H]`, LSTM only; zeros when absent.
    pub c0: Option<&'a [T]>,
    /// `[B]`, each in `1..=seq_len`: PyTorch's packed-sequence semantics.
    pub lengths: Option<&'a [usize]>,
}

/// Mode of one forward call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardOptions {
    /// Enables dropout between layers.
    pub training: bool,
    /// Probability of zeroing an element of each layer's output before the next layer.
    pub dropout: f64,
    /// Seed of the dropout masks.
    pub seed: u64,
    /// Keep what `backward` needs.
    pub keep_tape: bool,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        ForwardOptions {
            training: false,
            dropout: 0.0,
            seed: 0,
            keep_tape: false,
        }
    }
}

/// Regularisation of the recurrent layers beyond dropout between them. Masks are drawn from
/// `ForwardOptions::seed` in training mode; at inference only zoneout acts, as its expectation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Regularization {
    /// Variational dropout of each layer's input: one mask per sequence and feature, the same at
    /// every step (Gal & Ghahramani, 2016).
    pub input_dropout: f64,
    /// Variational dropout of the recurrent state entering `W_hh`, one mask per sequence and unit.
    pub state_dropout: f64,
    /// Zoneout probability of each unit keeping its previous hidden (and cell) value at a step
    /// (Krueger et al., 2017).
    pub zoneout: f64,
}

impl Regularization {
    fn validate(&self) -> Result<()> {
        for (arg, p) in [
            ("input_dropout", self.input_dropout),
            ("state_dropout", self.state_dropout),
            ("zoneout", self.zoneout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::Value {
                    arg,
                    expected: "a probability in [0, 1)".into(),
                    got: p.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Owned regularisation state of one sweep, kept on the tape for the backward pass.
#[derive(Debug, Clone, Default)]
struct DirMasks<T> {
    state: Option<Vec<T>>,
    zone_h: Option<Vec<T>>,
    zone_c: Option<Vec<T>>,
    /// Inference-mode zoneout probability.
    zone_p: Option<T>,
}

impl<T: Scalar> DirMasks<T> {
    #[allow(clippy::too_many_arguments)]
    fn draw(
        reg: &Regularization,
        training: bool,
        seed: u64,
        layer: usize,
        dir: usize,
        t: usize,
        bh: usize,
        lstm: bool,
    ) -> Self {
        let one = T::one();
        let mut m = DirMasks::default();
        if training && reg.state_dropout > 0.0 {
            let keep = T::from_f64(1.0 / (1.0 - reg.state_dropout));
            m.state = Some(bernoulli_mask(
                seed,
                MaskKind::VariationalState,
                layer,
                dir,
                bh,
                reg.state_dropout,
                T::zero(),
                keep,
            ));
        }
        if reg.zoneout > 0.0 {
            if training {
                let draw = |kind| {
                    bernoulli_mask(seed, kind, layer, dir, t * bh, reg.zoneout, one, T::zero())
                };
                m.zone_h = Some(draw(MaskKind::ZoneoutHidden));
                m.zone_c = lstm.then(|| draw(MaskKind::ZoneoutCell));
            } else {
                m.zone_p = Some(T::from_f64(reg.zoneout));
            }
        }
        m
    }

    fn as_reg(&self) -> DirReg<'_, T> {
        let zoneout = match (&self.zone_h, self.zone_p) {
            (Some(h), _) => Some(Zoneout::Masks {
                h,
                c: self.zone_c.as_deref().unwrap_or(&[]),
            }),
            (None, Some(p)) => Some(Zoneout::Expected(p)),
            (None, None) => None,
        };
        DirReg {
            state_mask: self.state.as_deref(),
            zoneout,
        }
    }
}

/// Everything `backward` needs from a forward call, so it never recomputes the forward pass.
#[derive(Debug, Clone)]
pub struct Tape<T> {
    config: RnnConfig,
    layout: Layout,
    seq_len: usize,
    batch: usize,
    lengths: Option<Vec<usize>>,
    /// Time-major input of each layer, after dropout.
    layer_inputs: Vec<Vec<T>>,
    /// Dropout mask applied to the input of each layer (`None` for layer 0 or without dropout).
    masks: Vec<Option<Vec<T>>>,
    /// `[L*D]` sweep tapes.
    dirs: Vec<DirTape<T>>,
    /// `[L*D]` regularisation masks of each sweep.
    dir_masks: Vec<DirMasks<T>>,
    /// Set by [`backward_consuming`]: the buffers above were used up.
    consumed: bool,
}

impl<T> Tape<T> {
    pub fn config(&self) -> &RnnConfig {
        &self.config
    }
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Whether a [`backward_consuming`] call used this tape up.
    pub fn is_consumed(&self) -> bool {
        self.consumed
    }
    pub(crate) fn lengths(&self) -> Option<&[usize]> {
        self.lengths.as_deref()
    }
    /// Time-major input `[T, B, I]` of layer `layer`, after dropout.
    pub(crate) fn layer_input(&self, layer: usize) -> &[T] {
        &self.layer_inputs[layer]
    }
    /// The sweep tape of one layer and direction.
    pub(crate) fn dir_tape(&self, layer: usize, dir: usize) -> &DirTape<T> {
        &self.dirs[layer * self.config.num_directions() + dir]
    }
}

/// Results of a forward call.
#[derive(Debug, Clone)]
pub struct ForwardOutput<T> {
    /// `[B, T, D*S]` or `[T, B, D*S]`, the input's layout.
    pub output: Vec<T>,
    /// `[L*D, B, S]`.
    pub h_n: Vec<T>,
    /// `[L*D, B, H]`, LSTM only.
    pub c_n: Option<Vec<T>>,
    pub tape: Option<Tape<T>>,
}

/// Gradients flowing into a backward call; absent ones are zero.
#[derive(Debug, Clone, Copy, Default)]
pub struct GradOutputs<'a, T> {
    /// Same shape and layout as `ForwardOutput::output`.
    pub output: Option<&'a [T]>,
    /// `[L*D, B, S]`.
    pub h_n: Option<&'a [T]>,
    /// `[L*D, B, H]`, LSTM only.
    pub c_n: Option<&'a [T]>,
}

/// Results of a backward call.
#[derive(Debug, Clone)]
pub struct Gradients<T> {
    /// Same layout as `RnnParams::as_slice`.
    pub params: Vec<T>,
    /// Same shape and layout as the input.
    pub input: Vec<T>,
    /// `[L*D, B, S]`.
    pub h0: Vec<T>,
    /// `[L*D, B, H]`, LSTM only.
    pub c0: Option<Vec<T>>,
}

/// `[a, b, f] -> [b, a, f]`.
pub(crate) fn swap_outer<T: Copy>(src: &[T], a: usize, b: usize, f: usize) -> Vec<T> {
    let mut dst = Vec::with_capacity(src.len());
    for j in 0..b {
        for i in 0..a {
            dst.extend_from_slice(&src[(i * b + j) * f..][..f]);
        }
    }
    dst
}

fn to_time_major<T: Copy>(x: &[T], layout: Layout, t: usize, b: usize, f: usize) -> Vec<T> {
    match layout {
        Layout::TimeMajor => x.to_vec(),
        Layout::BatchFirst => swap_outer(x, b, t, f),
    }
}

/// `[a, b, f] -> [b, a, f]` in place, following the permutation's cycles with one `f`-element
/// buffer: the outputs and input gradients handed back are as large as a layer's activations, and
/// a second buffer for the transposed copy would raise the peak of a call by that much.
fn swap_outer_in_place<T: Copy>(x: &mut [T], a: usize, b: usize, f: usize) {
    let n = a * b;
    debug_assert_eq!(x.len(), n * f);
    if a == 1 || b == 1 || f == 0 {
        return;
    }
    // Block `k = i*b + j` (row i of a, column j of b) goes to `j*a + i`.
    let dest = |k: usize| (k % b) * a + k / b;
    let mut done = vec![false; n];
    let mut carried = vec![x[0]; f];
    for start in 0..n {
        if done[start] {
            continue;
        }
        done[start] = true;
        if dest(start) == start {
            continue;
        }
        carried.copy_from_slice(&x[start * f..][..f]);
        let mut at = dest(start);
        loop {
            x[at * f..][..f].swap_with_slice(&mut carried);
            done[at] = true;
            if at == start {
                break;
            }
            at = dest(at);
        }
    }
}

fn from_time_major<T: Copy>(mut x: Vec<T>, layout: Layout, t: usize, b: usize, f: usize) -> Vec<T> {
    if layout == Layout::BatchFirst {
        swap_outer_in_place(&mut x, t, b, f);
    }
    x
}

pub(crate) fn dir_weights<'p, T: Scalar>(
    p: RnnWeights<'p, T>,
    layer: usize,
    dir: usize,
) -> DirWeights<'p, T> {
    let cfg = p.config();
    let (xw, hw, s) = (cfg.x_gate_width(), cfg.h_gate_width(), cfg.state_size());
    let o = dir_offsets(cfg, layer, dir);
    let data = p.as_slice();
    DirWeights {
        w_ih: &data[o.w_ih..][..xw * cfg.layer_input_size(layer)],
        w_hh: &data[o.w_hh..][..hw * s],
        bias: o
            .bias
            .map(|(bi, bh)| (&data[bi..][..xw], &data[bh..][..hw])),
        w_hr: &data[o.w_hr..][..cfg.proj_size * cfg.hidden_size],
        units: &data[o.units..][..cfg.unit_width()],
        packed: p.pack_cache().map(|c| (c, layer, dir)),
    }
}

pub(crate) fn validate_forward<T: Scalar>(
    cfg: &RnnConfig,
    x: &Batch<T>,
    opts: &ForwardOptions,
) -> Result<()> {
    let (t, b) = (x.seq_len, x.batch);
    for (arg, v) in [("seq_len", t), ("batch", b)] {
        if v == 0 {
            return Err(Error::Value {
                arg,
                expected: "at least 1".into(),
                got: "0".into(),
            });
        }
    }
    let shape = match x.layout {
        Layout::BatchFirst => [b, t, cfg.input_size],
        Layout::TimeMajor => [t, b, cfg.input_size],
    };
    check_len("input", x.input.len(), &shape)?;
    let state = [cfg.num_layers * cfg.num_directions(), b, cfg.hidden_size];
    if let Some(h0) = x.h0 {
        check_len("h0", h0.len(), &[state[0], b, cfg.state_size()])?;
    }
    if let Some(c0) = x.c0 {
        if !cfg.cell.has_cell_state() {
            return Err(Error::Value {
                arg: "c0",
                expected: format!("no cell state for a {} cell", cfg.cell.name()),
                got: "a cell state".into(),
            });
        }
        check_len("c0", c0.len(), &state)?;
    }
    if let Some(lengths) = x.lengths {
        check_len("lengths", lengths.len(), &[b])?;
        if let Some(&bad) = lengths.iter().find(|&&l| l == 0 || l > t) {
            return Err(Error::Value {
                arg: "lengths",
                expected: format!("every length in 1..={t}"),
                got: bad.to_string(),
            });
        }
    }
    if !(0.0..1.0).contains(&opts.dropout) {
        return Err(Error::Value {
            arg: "dropout",
            expected: "a probability in [0, 1)".into(),
            got: opts.dropout.to_string(),
        });
    }
    Ok(())
}

/// Threads each sweep of a layer may occupy: the two directions run at once, so each gets half.
fn sweep_team(directions: usize) -> usize {
    let capacity = threads::team_capacity();
    if directions == 2 && capacity > 1 {
        capacity / 2
    } else {
        capacity
    }
}

/// Multiply-adds of a forward pass (the matrix products), to decide whether threads pay off.
pub fn forward_work(cfg: &RnnConfig, seq_len: usize, batch: usize) -> usize {
    (0..cfg.num_layers)
        .map(|l| {
            cfg.layer_input_size(l) * cfg.x_gate_width()
                + cfg.state_size() * cfg.h_gate_width()
                + cfg.proj_size * cfg.hidden_size
        })
        .sum::<usize>()
        * cfg.num_directions()
        * seq_len
        * batch
}

/// Bytes of the buffers a forward pass over `[T, B]` allocates (an upper estimate): per layer the
/// input pre-activations, outputs and cell states of each direction; with a tape every layer's
/// stay alive, without one only two consecutive layers' at a time. None when the size overflows.
pub fn forward_bytes(
    cfg: &RnnConfig,
    seq_len: usize,
    batch: usize,
    elem: usize,
    keep_tape: bool,
) -> Option<u128> {
    let h = cfg.hidden_size as u128;
    let nd = cfg.num_directions() as u128;
    let layers = (0..cfg.num_layers)
        .map(|l| {
            let gates = cfg.cell.gate_count() as u128 + 3;
            nd.checked_mul(h)?
                .checked_mul(gates)?
                .checked_add(cfg.layer_input_size(l) as u128)
        })
        .collect::<Option<Vec<u128>>>()?;
    let per_step = if keep_tape {
        layers
            .iter()
            .try_fold(0u128, |acc, &l| acc.checked_add(l))?
    } else {
        // A layer's buffers live until the next layer's are made.
        let pairs = layers.windows(2).map(|w| w[0].checked_add(w[1]));
        pairs
            .chain([layers.first().copied()])
            .try_fold(0u128, |m, p| Some(m.max(p?)))?
    };
    memory::bytes_of(elem, &[seq_len, batch])?.checked_mul(per_step)
}

/// Bytes of the buffers [`backward`] allocates on top of the tape (an upper estimate).
pub fn backward_bytes(cfg: &RnnConfig, seq_len: usize, batch: usize, elem: usize) -> Option<u128> {
    let layer = forward_bytes(cfg, seq_len, batch, elem, false)?;
    let params = (crate::params::param_count(cfg) as u128).checked_mul(elem as u128)?;
    layer.checked_add(params)
}

/// Runs the network over a batch of sequences.
pub fn forward<'p, T: Scalar>(
    params: impl Into<RnnWeights<'p, T>>,
    x: &Batch<T>,
    opts: &ForwardOptions,
) -> Result<ForwardOutput<T>> {
    forward_regularized(params, x, opts, &Regularization::default())
}

/// [`forward`] with variational dropout and zoneout.
pub fn forward_regularized<'p, T: Scalar>(
    params: impl Into<RnnWeights<'p, T>>,
    x: &Batch<T>,
    opts: &ForwardOptions,
    reg: &Regularization,
) -> Result<ForwardOutput<T>> {
    let params = params.into();
    let cfg = *params.config();
    validate_forward(&cfg, x, opts)?;
    reg.validate()?;
    if cfg.proj_size > 0 && (reg.state_dropout > 0.0 || reg.zoneout > 0.0) {
        return Err(Error::Value {
            arg: "proj_size",
            expected: "proj_size=0 with state_dropout or zoneout (a projected LSTM supports \
                       dropout between layers and input_dropout)"
                .into(),
            got: cfg.proj_size.to_string(),
        });
    }
    let elem = std::mem::size_of::<T>();
    memory::check(
        "x",
        forward_bytes(&cfg, x.seq_len, x.batch, elem, opts.keep_tape),
    )?;
    let work = forward_work(&cfg, x.seq_len, x.batch);
    Ok(threads::install_for(work, || {
        forward_checked(params, x, opts, reg)
    }))
}

/// The mask on layer `layer`'s time-major input `[T, B, I]` in training mode: dropout between
/// layers (fresh at every step) times variational input dropout (one mask per sequence).
fn input_mask<T: Scalar>(
    opts: &ForwardOptions,
    reg: &Regularization,
    layer: usize,
    t: usize,
    b: usize,
    i: usize,
) -> Option<Vec<T>> {
    if !opts.training {
        return None;
    }
    let mut mask = (layer > 0 && opts.dropout > 0.0)
        .then(|| dropout_mask::<T>(opts.seed, layer, t * b * i, opts.dropout));
    if reg.input_dropout > 0.0 {
        let keep = T::from_f64(1.0 / (1.0 - reg.input_dropout));
        let per_seq = bernoulli_mask(
            opts.seed,
            MaskKind::VariationalInput,
            layer,
            0,
            b * i,
            reg.input_dropout,
            T::zero(),
            keep,
        );
        let m = mask.get_or_insert_with(|| vec![T::one(); t * b * i]);
        for step in m.chunks_exact_mut(b * i) {
            step.iter_mut().zip(&per_seq).for_each(|(v, &k)| *v *= k);
        }
    }
    mask
}

fn forward_checked<T: Scalar>(
    params: RnnWeights<T>,
    x: &Batch<T>,
    opts: &ForwardOptions,
    reg: &Regularization,
) -> ForwardOutput<T> {
    let cfg = *params.config();
    let (t, b, h, nd) = (x.seq_len, x.batch, cfg.hidden_size, cfg.num_directions());
    // `bh` sizes the cell state, `bs` the hidden state and each direction's output (they differ
    // with projections).
    let (bh, hs) = (b * h, cfg.state_size());
    let bs = b * hs;
    let lstm = cfg.cell.has_cell_state();
    let zeros = vec![T::zero(); cfg.num_layers * nd * bh];
    let h0 = x.h0.unwrap_or(&zeros[..cfg.num_layers * nd * bs]);
    let c0 = x.c0.unwrap_or(&zeros);
    let mut h_n = vec![T::zero(); cfg.num_layers * nd * bs];
    let mut c_n = vec![T::zero(); if lstm { zeros.len() } else { 0 }];
    let mut layer_inputs = Vec::new();
    let mut masks = Vec::new();
    let mut dir_tapes = Vec::new();
    let mut all_masks = Vec::new();

    // A one-direction sweep of the first layer reads a batch-first input where it is, unless
    // a tape keeps it or a mask scales it (both want a time-major copy): no transposed copy.
    let x_in_place = nd == 1
        && x.layout == Layout::BatchFirst
        && !opts.keep_tape
        && !(opts.training && reg.input_dropout > 0.0);
    let mut layer_in: Cow<[T]> = if x_in_place {
        Cow::Borrowed(x.input)
    } else {
        Cow::Owned(to_time_major(x.input, x.layout, t, b, cfg.input_size))
    };
    for layer in 0..cfg.num_layers {
        let mask = input_mask::<T>(opts, reg, layer, t, b, cfg.layer_input_size(layer));
        if let Some(m) = &mask {
            debug_assert!(
                matches!(layer_in, Cow::Owned(_)),
                "masks scale a time-major copy"
            );
            layer_in
                .to_mut()
                .iter_mut()
                .zip(m)
                .for_each(|(v, &k)| *v *= k);
        }
        let dir_masks: Vec<DirMasks<T>> = (0..nd)
            .map(|dir| DirMasks::draw(reg, opts.training, opts.seed, layer, dir, t, bh, lstm))
            .collect();
        // The last layer writes the caller's layout itself: no transposing pass over the output.
        let last_batch_first = layer + 1 == cfg.num_layers && x.layout == Layout::BatchFirst;
        let team = sweep_team(nd);
        let run = |dir: usize| {
            let sw = Sweep {
                cell: cfg.cell,
                steps: t,
                batch: b,
                input: cfg.layer_input_size(layer),
                hidden: h,
                proj: cfg.proj_size,
                lengths: x.lengths,
                reverse: dir == 1,
                team,
                out_batch_first: last_batch_first && nd == 1,
                x_batch_first: layer == 0 && x_in_place,
            };
            let (s, sc) = ((layer * nd + dir) * bs, (layer * nd + dir) * bh);
            sweep::forward(
                sw,
                &layer_in,
                dir_weights(params, layer, dir),
                &h0[s..s + bs],
                lstm.then(|| &c0[sc..sc + bh]),
                dir_masks[dir].as_reg(),
                opts.keep_tape,
            )
        };
        let outs = if nd == 2 {
            let (f, r) = threads::join(|| run(0), || run(1));
            vec![f, r]
        } else {
            vec![run(0)]
        };
        let mut layer_out = if nd == 1 {
            Vec::new()
        } else {
            vec![T::zero(); t * b * nd * hs]
        };
        for (dir, o) in outs.into_iter().enumerate() {
            let (s, sc) = ((layer * nd + dir) * bs, (layer * nd + dir) * bh);
            h_n[s..s + bs].copy_from_slice(&o.h_last);
            if let Some(c) = &o.c_last {
                c_n[sc..sc + bh].copy_from_slice(c);
            }
            if nd == 1 {
                layer_out = o.out;
            } else {
                // Source row `k = step*B + r`; batch-first, its row in the output is `r*T + step`.
                for (k, src) in o.out.chunks_exact(hs).enumerate() {
                    let row = if last_batch_first {
                        (k % b) * t + k / b
                    } else {
                        k
                    };
                    layer_out[(row * nd + dir) * hs..][..hs].copy_from_slice(src);
                }
            }
            dir_tapes.extend(o.tape);
        }
        if opts.keep_tape {
            let input = std::mem::replace(&mut layer_in, Cow::Owned(layer_out));
            layer_inputs.push(input.into_owned());
            masks.push(mask);
            all_masks.extend(dir_masks);
        } else {
            layer_in = Cow::Owned(layer_out);
        }
    }

    // The last layer wrote it in the caller's layout.
    let output = layer_in.into_owned();
    let tape = opts.keep_tape.then(|| Tape {
        config: cfg,
        layout: x.layout,
        seq_len: t,
        batch: b,
        lengths: x.lengths.map(<[usize]>::to_vec),
        layer_inputs,
        masks,
        dirs: dir_tapes,
        dir_masks: all_masks,
        consumed: false,
    });
    ForwardOutput {
        output,
        h_n,
        c_n: lstm.then_some(c_n),
        tape,
    }
}

/// Backpropagation through time for the forward call that made `tape`: the gradients of every
/// parameter, of the input and of the initial states, given the gradients of the outputs and the
/// final states. `params` must be the parameters that forward call used.
pub fn backward<'p, T: Scalar>(
    params: impl Into<RnnWeights<'p, T>>,
    tape: &Tape<T>,
    grads: &GradOutputs<T>,
) -> Result<Gradients<T>> {
    backward_with(params.into(), TapeArg::Kept(tape), grads, true)
}

/// [`backward`] that uses the tape up, as PyTorch's `backward()` frees its graph by default
/// (`retain_graph=False`): the gate gradients overwrite the tape's activations and each buffer
/// is freed once read for the last time, so the pass allocates no `[T, B, G*H]` gradient buffer
/// and the tape shrinks as it goes. The gradients are bit for bit [`backward`]'s. Everything is
/// checked before anything is consumed (on an error the tape is intact); afterwards the tape is
/// empty and [`Tape::is_consumed`], and another backward call on it is an error.
pub fn backward_consuming<'p, T: Scalar>(
    params: impl Into<RnnWeights<'p, T>>,
    tape: &mut Tape<T>,
    grads: &GradOutputs<T>,
) -> Result<Gradients<T>> {
    backward_with(params.into(), TapeArg::Consumed(tape), grads, true)
}

/// The tape a backward call reads, or uses up.
enum TapeArg<'a, T> {
    Kept(&'a Tape<T>),
    Consumed(&'a mut Tape<T>),
}

impl<T> TapeArg<'_, T> {
    fn get(&self) -> &Tape<T> {
        match self {
            TapeArg::Kept(t) => t,
            TapeArg::Consumed(t) => t,
        }
    }
}

/// [`backward`] without the parameters' gradient (`Gradients::params` is empty): the input and
/// initial-state gradients only, for attributions. Built-in cells skip the weight products,
/// about a third of the work.
pub fn backward_input<'p, T: Scalar>(
    params: impl Into<RnnWeights<'p, T>>,
    tape: &Tape<T>,
    grads: &GradOutputs<T>,
) -> Result<Gradients<T>> {
    backward_with(params.into(), TapeArg::Kept(tape), grads, false)
}

fn backward_with<T: Scalar>(
    params: RnnWeights<'_, T>,
    tape: TapeArg<'_, T>,
    grads: &GradOutputs<T>,
    want_params: bool,
) -> Result<Gradients<T>> {
    let cfg = *params.config();
    if tape.get().consumed {
        return Err(Error::Value {
            arg: "tape",
            expected: "a tape not yet used up by a consuming backward call (keep it for \
                       another backward with the non-consuming one)"
                .into(),
            got: "a consumed tape".into(),
        });
    }
    let t_ref = tape.get();
    validate_backward(
        &cfg,
        &t_ref.config,
        t_ref.layout,
        t_ref.seq_len,
        t_ref.batch,
        grads,
    )?;
    let (t, b) = (t_ref.seq_len, t_ref.batch);
    memory::check("tape", backward_bytes(&cfg, t, b, std::mem::size_of::<T>()))?;
    let work = 2 * forward_work(&cfg, t, b);
    Ok(threads::install_for(work, || {
        backward_checked(params, tape, grads, want_params)
    }))
}

fn backward_checked<T: Scalar>(
    params: RnnWeights<T>,
    mut arg: TapeArg<T>,
    grads: &GradOutputs<T>,
    want_params: bool,
) -> Gradients<T> {
    let cfg = *params.config();
    let (t, b, layout) = (arg.get().seq_len, arg.get().batch, arg.get().layout);
    let (h, nd) = (cfg.hidden_size, cfg.num_directions());
    let (bh, hs) = (b * h, cfg.state_size());
    let bs = b * hs;
    let lstm = cfg.cell.has_cell_state();
    let mut g_params = vec![T::zero(); if want_params { params.len() } else { 0 }];
    let mut dh0 = vec![T::zero(); cfg.num_layers * nd * bs];
    let mut dc0 = vec![T::zero(); if lstm { cfg.num_layers * nd * bh } else { 0 }];
    // The output gradient is read where it lies (batch-first rows included); the layers below
    // get the time-major input gradient of the layer above.
    let mut d_out: Option<Cow<[T]>> = grads.output.map(Cow::Borrowed);
    let mut d_out_batch_first = (layout == Layout::BatchFirst).then_some(t);
    if let TapeArg::Consumed(tape) = &mut arg {
        // Marked before the first buffer is taken: a panic part-way leaves a tape that refuses
        // another backward instead of one that looks whole with empty buffers.
        tape.consumed = true;
    }

    for layer in (0..cfg.num_layers).rev() {
        let inp = cfg.layer_input_size(layer);
        // This layer's sweep tapes, taken out of a consumed tape so each sweep frees its buffers.
        let mut sweep_tapes: Vec<Option<SweepTape<T>>> = match &mut arg {
            TapeArg::Kept(tape) => (0..nd)
                .map(|dir| Some(SweepTape::Kept(&tape.dirs[layer * nd + dir])))
                .collect(),
            TapeArg::Consumed(tape) => (0..nd)
                .map(|dir| {
                    let taken = std::mem::take(&mut tape.dirs[layer * nd + dir]);
                    Some(SweepTape::Consumed(taken))
                })
                .collect(),
        };
        let tape = arg.get();
        let x = &tape.layer_inputs[layer];
        // This layer's gradient regions: each direction's four tensors are contiguous.
        let first = dir_offsets(&cfg, layer, 0).w_ih;
        let end = if layer + 1 < cfg.num_layers {
            dir_offsets(&cfg, layer + 1, 0).w_ih
        } else {
            params.len()
        };
        let mid = if nd == 2 {
            dir_offsets(&cfg, layer, 1).w_ih
        } else {
            end
        };
        // Without parameter gradients a built-in cell's sweep gets an empty region (it skips
        // the weight products); a custom cell's writes its unit gradients during the sweep,
        // into scratch here.
        let mut scratch = Vec::new();
        let region: &mut [T] = if want_params {
            &mut g_params[first..end]
        } else if cfg.cell.compiled().is_some() {
            scratch.resize(end - first, T::zero());
            &mut scratch
        } else {
            &mut []
        };
        let split = if region.is_empty() { 0 } else { mid - first };
        let (g_fwd, g_rev) = region.split_at_mut(split);
        let team = sweep_team(nd);
        let run = |dir: usize, grad: &mut [T], dir_tape: SweepTape<T>| {
            let sw = Sweep {
                cell: cfg.cell,
                steps: t,
                batch: b,
                input: inp,
                hidden: h,
                proj: cfg.proj_size,
                lengths: tape.lengths.as_deref(),
                reverse: dir == 1,
                team,
                out_batch_first: false,
                x_batch_first: false,
            };
            let (s, sc) = ((layer * nd + dir) * bs, (layer * nd + dir) * bh);
            let mut dx = vec![T::zero(); t * b * inp];
            let d_output = d_out.as_deref().map(|data| OutputGrad {
                data,
                ld: nd * hs,
                col: dir * hs,
                batch_first: d_out_batch_first,
            });
            let (dh, dc) = sweep::backward(
                sw,
                x,
                dir_weights(params, layer, dir),
                dir_tape,
                d_output,
                grads.h_n.map(|g| &g[s..s + bs]),
                grads.c_n.map(|g| &g[sc..sc + bh]),
                tape.dir_masks[layer * nd + dir].as_reg(),
                grad,
                &mut dx,
            );
            (dx, dh, dc)
        };
        let mut take = |dir: usize| {
            sweep_tapes[dir]
                .take()
                .expect("one sweep tape per direction")
        };
        let (tape_f, tape_r) = (take(0), (nd == 2).then(|| take(1)));
        let results = match tape_r {
            Some(tape_r) => {
                let (f, r) = threads::join(|| run(0, g_fwd, tape_f), || run(1, g_rev, tape_r));
                vec![f, r]
            }
            None => vec![run(0, g_fwd, tape_f)],
        };
        let mut dx_sum: Option<Vec<T>> = None;
        for (dir, (dx, dh, dc)) in results.into_iter().enumerate() {
            let (s, sc) = ((layer * nd + dir) * bs, (layer * nd + dir) * bh);
            dh0[s..s + bs].copy_from_slice(&dh);
            if let Some(dc) = dc {
                dc0[sc..sc + bh].copy_from_slice(&dc);
            }
            match &mut dx_sum {
                None => dx_sum = Some(dx),
                Some(acc) => acc.iter_mut().zip(&dx).for_each(|(a, &v)| *a += v),
            }
        }
        let mut dx = dx_sum.expect("at least one direction");
        if let Some(mask) = &tape.masks[layer] {
            dx.iter_mut().zip(mask).for_each(|(g, &m)| *g *= m);
        }
        d_out = Some(Cow::Owned(dx));
        d_out_batch_first = None;
        if let TapeArg::Consumed(tape) = &mut arg {
            // This layer's input and masks have had their last reader.
            tape.layer_inputs[layer] = Vec::new();
            tape.masks[layer] = None;
            tape.dir_masks[layer * nd..(layer + 1) * nd].fill_with(DirMasks::default);
        }
    }

    let d_input = d_out.expect("at least one layer").into_owned();
    Gradients {
        params: g_params,
        input: from_time_major(d_input, layout, t, b, cfg.input_size),
        h0: dh0,
        c0: lstm.then_some(dc0),
    }
}

/// Checks a backward call against the forward call its tape recorded (network, layout, sizes):
/// the parameters' network must be the tape's, and each output gradient must have its output's
/// shape. Shared by the CPU and GPU backward passes.
pub(crate) fn validate_backward<T>(
    cfg: &RnnConfig,
    recorded: &RnnConfig,
    layout: Layout,
    seq_len: usize,
    batch: usize,
    grads: &GradOutputs<T>,
) -> Result<()> {
    if cfg != recorded {
        return Err(Error::Value {
            arg: "tape",
            expected: format!("a tape recorded by a network with {cfg:?}"),
            got: format!("{recorded:?}"),
        });
    }
    let out_shape = match layout {
        Layout::BatchFirst => [batch, seq_len, cfg.output_size()],
        Layout::TimeMajor => [seq_len, batch, cfg.output_size()],
    };
    if let Some(g) = grads.output {
        check_len("d_output", g.len(), &out_shape)?;
    }
    let state = [
        cfg.num_layers * cfg.num_directions(),
        batch,
        cfg.hidden_size,
    ];
    if let Some(g) = grads.h_n {
        check_len("d_h_n", g.len(), &[state[0], batch, cfg.state_size()])?;
    }
    if let Some(g) = grads.c_n {
        if !cfg.cell.has_cell_state() {
            return Err(Error::Value {
                arg: "d_c_n",
                expected: format!("no cell-state gradient for a {} cell", cfg.cell.name()),
                got: "a cell-state gradient".into(),
            });
        }
        check_len("d_c_n", g.len(), &state)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{swap_outer, swap_outer_in_place};

    #[test]
    fn in_place_swap_equals_the_copying_one() {
        for (a, b, f) in [
            (1, 5, 3),
            (5, 1, 2),
            (2, 3, 1),
            (7, 4, 3),
            (6, 6, 2),
            (13, 8, 5),
        ] {
            let src: Vec<u32> = (0..(a * b * f) as u32).collect();
            let mut got = src.clone();
            swap_outer_in_place(&mut got, a, b, f);
            assert_eq!(got, swap_outer(&src, a, b, f), "a={a} b={b} f={f}");
        }
    }
}
