//! Golden values from PyTorch: the reference and the fast path agree with `torch.nn.LSTM` (also
//! with `proj_size`) and `torch.nn.GRU` (2 layers, bidirectional, packed ragged batch, given
//! initial states), forward and backward. To keep the file short, each tensor is compared
//! through a weighted checksum `chk(t) = sum_k t.flat[k] * cos(0.17k + 0.2)`, which a wrong
//! element would change.
//!
//! Produced with torch 2.x (CPU, float64) by:
//! ```python
//! import math, torch
//! torch.set_default_dtype(torch.float64)
//! fill = lambda n, f: torch.tensor([f(k) for k in range(n)])
//! chk = lambda t: float((t.reshape(-1) * fill(t.numel(), lambda k: math.cos(0.17 * k + 0.2))).sum())
//! I, H, L, B, T, lengths = 3, 4, 2, 3, 4, [4, 1, 3]
//! for cls in [torch.nn.LSTM, torch.nn.GRU]:
//!     rnn = cls(I, H, L, batch_first=True, bidirectional=True)
//!     flat = torch.nn.utils.parameters_to_vector(rnn.parameters())
//!     flat = fill(flat.numel(), lambda k: 0.5 * math.sin(0.7 * k + 0.3))
//!     torch.nn.utils.vector_to_parameters(flat, rnn.parameters())
//!     x = fill(B * T * I, lambda k: 0.9 * math.cos(0.37 * k + 0.1)).view(B, T, I).requires_grad_()
//!     h0 = fill(2 * L * B * H, lambda k: 0.5 * math.sin(0.23 * k - 0.4)).view(2 * L, B, H).requires_grad_()
//!     c0 = fill(2 * L * B * H, lambda k: 0.8 * math.cos(0.41 * k + 0.2)).view(2 * L, B, H).requires_grad_()
//!     packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
//!     out, hn = rnn(packed, (h0, c0) if cls is torch.nn.LSTM else h0)
//!     hn, cn = hn if cls is torch.nn.LSTM else (hn, None)
//!     out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
//!     loss = (out * fill(out.numel(), lambda k: math.sin(0.13 * k + 0.5)).view_as(out)).sum()
//!     loss = loss + (hn * fill(hn.numel(), lambda k: math.cos(0.29 * k)).view_as(hn)).sum()
//!     if cn is not None:
//!         loss = loss + (cn * fill(cn.numel(), lambda k: math.sin(0.31 * k + 1.0)).view_as(cn)).sum()
//!     loss.backward()
//!     vals = [out, hn] + ([cn] if cn is not None else [])
//!     grads = [x.grad, h0.grad] + ([c0.grad] if cn is not None else []) + [p.grad for p in rnn.parameters()]
//!     print(cls.__name__, [repr(chk(v.detach())) for v in vals], [repr(chk(g)) for g in grads])
//! ```
//!
//! The projected LSTM (`proj_size`): the same with `H = 5`, `P = 2`, `h0` of shape
//! `[2 * L, B, P]` and `c0` of `[2 * L, B, H]` (`weight_hr` follows `bias_hh` in the order):
//! ```python
//! I, H, P = 3, 5, 2
//! rnn = torch.nn.LSTM(I, H, L, batch_first=True, bidirectional=True, proj_size=P)
//! flat = fill(sum(p.numel() for p in rnn.parameters()), lambda k: 0.5 * math.sin(0.7 * k + 0.3))
//! torch.nn.utils.vector_to_parameters(flat, rnn.parameters())
//! x = fill(B * T * I, lambda k: 0.9 * math.cos(0.37 * k + 0.1)).view(B, T, I).requires_grad_()
//! h0 = fill(2 * L * B * P, lambda k: 0.5 * math.sin(0.23 * k - 0.4)).view(2 * L, B, P).requires_grad_()
//! c0 = fill(2 * L * B * H, lambda k: 0.8 * math.cos(0.41 * k + 0.2)).view(2 * L, B, H).requires_grad_()
//! # ... then packed, out, hn, cn, loss and the printed checksums exactly as above.
//! ```

mod common;

use common::assert_close;
use lstmrs_core::{
    backward, forward, reference, Batch, CellKind, GradOutputs, Layout, RnnConfig, RnnParams,
    Scalar,
};

const I: usize = 3;
const H: usize = 4;
const L: usize = 2;
const B: usize = 3;
const T: usize = 4;
const LENGTHS: [usize; 3] = [4, 1, 3];

/// `chk(out), chk(h_n)[, chk(c_n)]`.
const LSTM_VALUES: [f64; 3] = [1.4467671057296998, 1.0690811877786555, 2.7312306489270437];
/// `chk(d_x), chk(d_h0), chk(d_c0)`, then `chk` of each parameter gradient in PyTorch's order.
const LSTM_GRADS: [f64; 19] = [
    0.8899030198542449,
    -0.25522041815887986,
    -1.0853890186622888,
    -0.9776845092724821,
    1.326703145113636,
    0.5827345187328652,
    0.5827345187328652,
    -1.7563595314246423,
    -2.741032012932236,
    -0.24707379976587945,
    -0.2470737997658794,
    0.3092520098323724,
    -1.7261669721276476,
    1.1870274544471882,
    1.187027454447188,
    -0.5315779024815639,
    0.33590128143266873,
    -0.4051429743823596,
    -0.4051429743823595,
];
const PROJ_H: usize = 5;
const PROJ_P: usize = 2;
const PROJ_VALUES: [f64; 3] = [0.3619828255422068, 0.10061214835996597, -0.8906294115938781];
const PROJ_GRADS: [f64; 23] = [
    0.14473816398128894,
    0.09912566078413487,
    1.555841460744545,
    -2.961615243616588,
    0.1097528883719644,
    0.46152191960110833,
    0.4615219196011083,
    -1.4831190045599667,
    0.27956073234888795,
    0.20341208199109745,
    -0.7825472277950253,
    -0.7825472277950253,
    -0.08857349970731027,
    -0.17433151215702902,
    0.20842128307504526,
    -0.47711852695979984,
    -0.47711852695979995,
    0.5254373743100746,
    0.2918673661006641,
    0.34038291537090143,
    0.8600666246899823,
    0.8600666246899823,
    2.306119771332478,
];
const GRU_VALUES: [f64; 2] = [3.564836315190194, 4.801470342639046];
const GRU_GRADS: [f64; 18] = [
    1.6882245616314775,
    -4.170702634486997,
    -0.03960975072233543,
    -1.1640156489275721,
    0.04019989210692754,
    -0.26344134679823117,
    1.3907396299103614,
    -1.6429490819865973,
    -0.3802435187771304,
    -0.4795994702505968,
    1.7419193781883622,
    -5.074741595399875,
    1.2167012544658926,
    0.7707136177002709,
    1.4733296422003153,
    0.4442415598261541,
    0.00560120831877511,
    0.003966587168609183,
];

fn fill<T: Scalar>(n: usize, f: impl Fn(f64) -> f64) -> Vec<T> {
    (0..n).map(|k| T::from_f64(f(k as f64))).collect()
}

fn chk<T: Scalar>(t: &[T]) -> f64 {
    t.iter()
        .enumerate()
        .map(|(k, &v)| v.to_f64() * (0.17 * k as f64 + 0.2).cos())
        .sum()
}

/// Checksums of the forward values and of the gradients, from the fast path and the reference.
fn checksums<T: Scalar>(cell: CellKind, h: usize, proj: usize) -> [(Vec<f64>, Vec<f64>); 2] {
    let cfg = RnnConfig::new(cell, I, h, L, true, true)
        .and_then(|c| c.with_proj_size(proj))
        .expect("config");
    let n = RnnParams::<T>::zeros(cfg).len();
    let params = RnnParams::from_flat(cfg, fill(n, |k| 0.5 * (0.7 * k + 0.3).sin())).expect("p");
    let input = fill(B * T * I, |k| 0.9 * (0.37 * k + 0.1).cos());
    // `h` has `S` features (`P` with projections), `c` has `H`.
    let (state, cells) = (2 * L * B * cfg.state_size(), 2 * L * B * h);
    let h0 = fill(state, |k| 0.5 * (0.23 * k - 0.4).sin());
    let c0: Vec<T> = fill(cells, |k| 0.8 * (0.41 * k + 0.2).cos());
    let lstm = cell == CellKind::Lstm;
    let x = Batch {
        input: &input,
        layout: Layout::BatchFirst,
        seq_len: T,
        batch: B,
        h0: Some(&h0),
        c0: lstm.then_some(&c0[..]),
        lengths: Some(&LENGTHS),
    };
    let d_out = fill(B * T * cfg.output_size(), |k| (0.13 * k + 0.5).sin());
    let d_h = fill(state, |k| (0.29 * k).cos());
    let d_c: Vec<T> = fill(cells, |k| (0.31 * k + 1.0).sin());
    let g = GradOutputs {
        output: Some(&d_out),
        h_n: Some(&d_h),
        c_n: lstm.then_some(&d_c[..]),
    };
    let opts = common::tape_opts();
    let fast = forward(&params, &x, &opts).expect("forward");
    let fast_g = backward(&params, fast.tape.as_ref().expect("tape"), &g).expect("backward");
    let refv = reference::forward(&params, &x, &opts).expect("reference forward");
    let ref_g = reference::backward(&params, &x, &opts, &g).expect("reference backward");
    [(fast, fast_g), (refv, ref_g)].map(|(v, gr)| {
        let mut vals = vec![chk(&v.output), chk(&v.h_n)];
        vals.extend(v.c_n.as_deref().map(chk));
        let mut grads = vec![chk(&gr.input), chk(&gr.h0)];
        grads.extend(gr.c0.as_deref().map(chk));
        for s in params.specs() {
            grads.push(chk(&gr.params[s.offset..s.offset + s.len]));
        }
        (vals, grads)
    })
}

#[test]
fn lstm_gru_and_projected_lstm_match_pytorch() {
    assert_eq!(
        PROJ_GRADS.len(),
        3 + 4 * 5,
        "d_x, d_h0, d_c0, then 5 tensors per layer-dir"
    );
    for (cell, h, proj, values, grads) in [
        (CellKind::Lstm, H, 0, &LSTM_VALUES[..], &LSTM_GRADS[..]),
        (CellKind::Gru, H, 0, &GRU_VALUES[..], &GRU_GRADS[..]),
        (
            CellKind::Lstm,
            PROJ_H,
            PROJ_P,
            &PROJ_VALUES[..],
            &PROJ_GRADS[..],
        ),
    ] {
        let cell = (cell, proj);
        for (who, (v, g)) in ["fast", "reference"]
            .iter()
            .zip(checksums::<f64>(cell.0, h, proj))
        {
            assert_close("values", &v, values, 1e-12, 1e-12, &(cell, who, "f64"));
            assert_close("gradients", &g, grads, 1e-12, 1e-12, &(cell, who, "f64"));
        }
        for (who, (v, g)) in ["fast", "reference"]
            .iter()
            .zip(checksums::<f32>(cell.0, h, proj))
        {
            assert_close("values", &v, values, 1e-5, 1e-5, &(cell, who, "f32"));
            assert_close("gradients", &g, grads, 1e-5, 1e-5, &(cell, who, "f32"));
        }
    }
}
