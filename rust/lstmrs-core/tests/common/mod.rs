//! Shared helpers of the integration tests: a tiny deterministic RNG, the test grid, random
//! networks and inputs, and closeness checks that report the worst element.
#![allow(dead_code)]

use lstmrs_core::{
    Batch, CellKind, ForwardOptions, ForwardOutput, GradOutputs, Layout, RnnConfig, RnnParams,
    Scalar,
};

/// A batch of whole sequences from zero states (`Batch { h0: .., ..plain_batch(..) }` adds
/// states); shared with the timing examples, so it lives in the crate's `bench` module.
#[allow(unused_imports)] // as `dead_code` above: not every test binary uses every helper
pub use lstmrs_core::bench::plain_batch;

/// SplitMix64: small, deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * u
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec<T: Scalar>(&mut self, n: usize, lo: f64, hi: f64) -> Vec<T> {
        (0..n).map(|_| T::from_f64(self.uniform(lo, hi))).collect()
    }
}

/// Sizes of one test problem.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub input: usize,
    pub hidden: usize,
    pub batch: usize,
    pub steps: usize,
    /// `proj_size` of the LSTM (0: none).
    pub proj: usize,
}

pub const fn shape(input: usize, hidden: usize, batch: usize, steps: usize) -> Shape {
    proj_shape(input, hidden, proj_none(), batch, steps)
}

const fn proj_none() -> usize {
    0
}

/// A shape whose LSTM projects its hidden state to `proj` features (PyTorch's `proj_size`).
pub const fn proj_shape(
    input: usize,
    hidden: usize,
    proj: usize,
    batch: usize,
    steps: usize,
) -> Shape {
    Shape {
        input,
        hidden,
        batch,
        steps,
        proj,
    }
}

/// Projected LSTM shapes: `P = 1`, `P` below and above one SIMD block, `H` odd, `T = B = 1`.
pub const PROJ_SHAPES: &[Shape] = &[
    proj_shape(3, 5, 2, 4, 6),
    proj_shape(1, 2, 1, 1, 1),
    proj_shape(4, 33, 7, 3, 5),
    proj_shape(2, 20, 19, 5, 7),
];

/// Small and odd sizes: `H = 1, 5, 33`, `B = 1`, `T = 1` and ordinary ones.
pub const SHAPES: &[Shape] = &[
    shape(3, 5, 4, 6),
    shape(1, 1, 1, 1),
    shape(4, 33, 3, 5),
    shape(2, 1, 5, 7),
    shape(5, 5, 1, 4),
    shape(3, 4, 3, 1),
];

/// One point of the test grid.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub cell: CellKind,
    pub layers: usize,
    pub bidirectional: bool,
    pub bias: bool,
    /// Ragged lengths (one full-length row, one of length 1) instead of none.
    pub ragged: bool,
    /// Random `h0` (and `c0` for the LSTM) instead of none.
    pub init_state: bool,
    pub layout: Layout,
    pub shape: Shape,
}

pub const CELLS: [CellKind; 2] = [CellKind::Lstm, CellKind::Gru];
pub const LAYOUTS: [Layout; 2] = [Layout::BatchFirst, Layout::TimeMajor];

/// The full grid: cell × layers {1,2,3} × directions × bias × lengths × initial states × layout
/// × the shapes given.
pub fn grid(shapes: &[Shape]) -> Vec<Case> {
    let mut cases = Vec::new();
    for &cell in &CELLS {
        for layers in 1..=3 {
            for bidirectional in [false, true] {
                for bias in [true, false] {
                    for ragged in [false, true] {
                        for init_state in [false, true] {
                            for &layout in &LAYOUTS {
                                for &shape in shapes {
                                    cases.push(Case {
                                        cell,
                                        layers,
                                        bidirectional,
                                        bias,
                                        ragged,
                                        init_state,
                                        layout,
                                        shape,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    cases
}

/// Lengths with a full-length row first, a length-1 row last (when `B > 1`) and random ones
/// between; a single row gets a length short of `T` where `T > 1`.
pub fn ragged_lengths(rng: &mut Rng, batch: usize, steps: usize) -> Vec<usize> {
    if batch == 1 {
        return vec![steps.saturating_sub(1).max(1)];
    }
    let mut l: Vec<usize> = (0..batch).map(|_| 1 + rng.below(steps)).collect();
    l[0] = steps;
    l[batch - 1] = 1;
    l
}

/// A network, its inputs and upstream gradients for one case.
pub struct Data<T> {
    pub case: Case,
    pub params: RnnParams<T>,
    pub input: Vec<T>,
    pub h0: Option<Vec<T>>,
    pub c0: Option<Vec<T>>,
    pub lengths: Option<Vec<usize>>,
    pub d_output: Vec<T>,
    pub d_h_n: Vec<T>,
    pub d_c_n: Option<Vec<T>>,
}

impl Case {
    pub fn config(&self) -> RnnConfig {
        RnnConfig::new(
            self.cell,
            self.shape.input,
            self.shape.hidden,
            self.layers,
            self.bidirectional,
            self.bias,
        )
        .and_then(|c| c.with_proj_size(self.shape.proj))
        .expect("valid sizes")
    }

    /// Elements of `h0`/`h_n`: `[L*D, B, S]` (`S` is `proj_size` when there is one).
    pub fn state_len(&self) -> usize {
        self.config().num_layers
            * self.config().num_directions()
            * self.shape.batch
            * self.config().state_size()
    }

    /// Elements of `c0`/`c_n`: `[L*D, B, H]`.
    pub fn cell_state_len(&self) -> usize {
        self.config().num_layers
            * self.config().num_directions()
            * self.shape.batch
            * self.shape.hidden
    }

    /// Random data; the same seed gives the same values in f32 and f64 (up to rounding).
    pub fn data<T: Scalar>(&self, seed: u64) -> Data<T> {
        let cfg = self.config();
        let mut rng = Rng::new(seed);
        let s = self.shape;
        // Wider than PyTorch's init so the gates leave their linear range.
        let bound = 1.5 / (s.hidden as f64).sqrt();
        let mut params = RnnParams::<T>::zeros(cfg);
        let n = params.len();
        params
            .as_mut_slice()
            .copy_from_slice(&rng.vec::<T>(n, -bound, bound));
        let input = rng.vec(s.batch * s.steps * s.input, -1.0, 1.0);
        let state = self.state_len();
        let lstm = self.cell == CellKind::Lstm;
        let cells = self.cell_state_len();
        let h0 = self.init_state.then(|| rng.vec(state, -0.8, 0.8));
        let c0 = (self.init_state && lstm).then(|| rng.vec(cells, -1.5, 1.5));
        let lengths = self
            .ragged
            .then(|| ragged_lengths(&mut rng, s.batch, s.steps));
        let d_output = rng.vec(s.batch * s.steps * cfg.output_size(), -1.0, 1.0);
        let d_h_n = rng.vec(state, -1.0, 1.0);
        let d_c_n = lstm.then(|| rng.vec(cells, -1.0, 1.0));
        Data {
            case: *self,
            params,
            input,
            h0,
            c0,
            lengths,
            d_output,
            d_h_n,
            d_c_n,
        }
    }
}

impl<T: Scalar> Data<T> {
    pub fn batch(&self) -> Batch<'_, T> {
        Batch {
            input: &self.input,
            layout: self.case.layout,
            seq_len: self.case.shape.steps,
            batch: self.case.shape.batch,
            h0: self.h0.as_deref(),
            c0: self.c0.as_deref(),
            lengths: self.lengths.as_deref(),
        }
    }

    pub fn grad_outputs(&self) -> GradOutputs<'_, T> {
        GradOutputs {
            output: Some(&self.d_output),
            h_n: Some(&self.d_h_n),
            c_n: self.d_c_n.as_deref(),
        }
    }

    /// `sum(d_output*output) + sum(d_h_n*h_n) + sum(d_c_n*c_n)`, in f64.
    pub fn loss(&self, out: &ForwardOutput<T>) -> f64 {
        let dot = |a: &[T], b: &[T]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| x.to_f64() * y.to_f64())
                .sum()
        };
        let mut l = dot(&self.d_output, &out.output) + dot(&self.d_h_n, &out.h_n);
        if let (Some(d), Some(c)) = (&self.d_c_n, &out.c_n) {
            l += dot(d, c);
        }
        l
    }
}

pub fn eval_opts() -> ForwardOptions {
    ForwardOptions::default()
}

pub fn tape_opts() -> ForwardOptions {
    ForwardOptions {
        keep_tape: true,
        ..ForwardOptions::default()
    }
}

/// Largest `|got - want| / (atol + rtol*|want|)` and where; `<= 1` means close.
pub fn worst<T: Scalar>(got: &[T], want: &[T], atol: f64, rtol: f64) -> (f64, usize) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let mut w = (0.0, 0);
    for (i, (&g, &e)) in got.iter().zip(want).enumerate() {
        let (g, e) = (g.to_f64(), e.to_f64());
        let r = if g.is_nan() || e.is_nan() {
            f64::INFINITY
        } else {
            (g - e).abs() / (atol + rtol * e.abs())
        };
        if r > w.0 {
            w = (r, i);
        }
    }
    w
}

/// Asserts `|got - want| <= atol + rtol*|want|` element-wise.
pub fn assert_close<T: Scalar>(
    what: &str,
    got: &[T],
    want: &[T],
    atol: f64,
    rtol: f64,
    ctx: &dyn std::fmt::Debug,
) {
    let (r, i) = worst(got, want, atol, rtol);
    assert!(
        r <= 1.0,
        "{what}: element {i} is {:?}, want {:?} (error {r:.3} x tolerance) in {ctx:?}",
        got[i],
        want[i]
    );
}

/// Bitwise equality of two float slices (`-0.0 != 0.0`, NaN equal to itself).
pub fn assert_bitwise<T: Scalar>(what: &str, a: &[T], b: &[T]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(
            x.to_f64().to_bits() == y.to_f64().to_bits(),
            "{what}: element {i} differs: {x:?} vs {y:?}"
        );
    }
}

/// Start of the `feat` elements of step `t`, row `b` in a `[B,T,F]` or `[T,B,F]` buffer.
pub fn at(layout: Layout, steps: usize, batch: usize, feat: usize, t: usize, b: usize) -> usize {
    match layout {
        Layout::BatchFirst => (b * steps + t) * feat,
        Layout::TimeMajor => (t * batch + b) * feat,
    }
}

/// Rows `b` of a `[L*D, B, H]` state buffer: `[L*D, 1, H]`.
pub fn state_row<T: Copy>(state: &[T], batch: usize, hidden: usize, b: usize) -> Vec<T> {
    state
        .chunks_exact(batch * hidden)
        .flat_map(|ld| ld[b * hidden..(b + 1) * hidden].iter().copied())
        .collect()
}

/// Copies layer `src_layer`'s tensors of `src` into a network of config `dst` (whose layer 0 has
/// the same shapes), by PyTorch name.
pub fn copy_layer<T: Scalar>(src: &RnnParams<T>, src_layer: usize, dst: RnnConfig) -> RnnParams<T> {
    let mut p = RnnParams::zeros(dst);
    for spec in dst_specs(&dst) {
        let from = spec.replacen("_l0", &format!("_l{src_layer}"), 1);
        p.set(&spec, src.get(&from).expect("source tensor"))
            .expect("same shape");
    }
    p
}

fn dst_specs(cfg: &RnnConfig) -> Vec<String> {
    lstmrs_core::param_specs(cfg)
        .into_iter()
        .map(|s| s.name)
        .collect()
}
