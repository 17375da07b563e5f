//! The ConvLSTM's fast path against its plain reference (forward, f32 and f64), its gradients
//! against central finite differences in f64 (of the fast forward pass and of the reference), and
//! its refusal of bad sizes.
//!
//! The finite-difference loss is `L = Σ d_out·output + Σ d_h_n·h_n + Σ d_c_n·c_n` with fixed random
//! weights `d_*`, so every output of the network reaches the gradient.

mod common;

use common::Rng;
use lstmrs_core::convlstm::{
    backward, forward, reference, ConvBatch, ConvForward, ConvLstmConfig, ConvLstmParams,
};
use lstmrs_core::{Error, Scalar};

/// One test problem: a network and an input for it.
struct Case<T> {
    params: ConvLstmParams<T>,
    x: Vec<T>,
    h0: Option<Vec<T>>,
    c0: Option<Vec<T>>,
    batch: usize,
    steps: usize,
    height: usize,
    width: usize,
}

impl<T: Scalar> Case<T> {
    fn new(cfg: ConvLstmConfig, dims: [usize; 4], with_state: bool, seed: u64) -> Self {
        let [batch, steps, height, width] = dims;
        let mut rng = Rng::new(seed);
        let mut params = ConvLstmParams::<T>::try_init(cfg, seed).expect("params");
        // Random biases too (the initialisation's zeros and ones would hide a bias bug).
        let n = params.as_slice().len();
        params
            .as_mut_slice()
            .copy_from_slice(&rng.vec::<T>(n, -0.5, 0.5));
        let x = rng.vec(batch * steps * cfg.in_channels * height * width, -1.0, 1.0);
        let (ho, wo) = cfg.state_size(height, width).expect("frame size");
        let state = cfg.num_layers * batch * cfg.hidden_channels * ho * wo;
        let (h0, c0) = if with_state {
            (
                Some(rng.vec(state, -0.8, 0.8)),
                Some(rng.vec(state, -0.8, 0.8)),
            )
        } else {
            (None, None)
        };
        Case {
            params,
            x,
            h0,
            c0,
            batch,
            steps,
            height,
            width,
        }
    }

    fn batch(&self) -> ConvBatch<'_, T> {
        ConvBatch {
            input: &self.x,
            batch: self.batch,
            seq_len: self.steps,
            height: self.height,
            width: self.width,
            h0: self.h0.as_deref(),
            c0: self.c0.as_deref(),
        }
    }
}

fn config(
    c: usize,
    k: usize,
    kernel: [usize; 2],
    pad: [usize; 2],
    layers: usize,
) -> ConvLstmConfig {
    ConvLstmConfig::new(c, k, kernel, pad, layers, true).expect("config")
}

/// Stacked with 'same' padding, a non-square kernel with 'valid'-like padding, one without bias.
fn cases() -> Vec<(ConvLstmConfig, [usize; 4], bool)> {
    vec![
        (config(2, 3, [3, 3], [1, 1], 2), [3, 4, 5, 6], true),
        (config(1, 2, [3, 5], [0, 1], 1), [2, 3, 6, 7], false),
        (
            ConvLstmConfig::new(3, 2, [1, 3], [0, 1], 3, false).expect("config"),
            [2, 2, 3, 4],
            true,
        ),
        (config(1, 1, [5, 5], [2, 2], 1), [1, 2, 2, 3], true),
    ]
}

fn max_diff<T: Scalar>(a: &[T], b: &[T]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (Scalar::to_f64(x) - Scalar::to_f64(y)).abs())
        .fold(0.0, f64::max)
}

fn assert_outputs_close<T: Scalar>(got: &ConvForward<T>, want: &ConvForward<T>, tol: f64) {
    for (name, g, w) in [
        ("output", &got.output, &want.output),
        ("h_n", &got.h_n, &want.h_n),
        ("c_n", &got.c_n, &want.c_n),
    ] {
        let d = max_diff(g, w);
        assert!(d <= tol, "{name}: max difference {d:e} above {tol:e}");
    }
}

#[test]
fn fast_forward_matches_the_reference() {
    for (i, (cfg, dims, state)) in cases().into_iter().enumerate() {
        let c64 = Case::<f64>::new(cfg, dims, state, 10 + i as u64);
        let fast = forward(&c64.params, &c64.batch(), true).expect("forward");
        let slow = reference::forward(&c64.params, &c64.batch()).expect("reference");
        assert_outputs_close(&fast, &slow, 1e-12);

        let c32 = Case::<f32>::new(cfg, dims, state, 10 + i as u64);
        let fast = forward(&c32.params, &c32.batch(), false).expect("forward");
        let slow = reference::forward(&c32.params, &c32.batch()).expect("reference");
        assert_outputs_close(&fast, &slow, 2e-6);
        assert!(fast.tape.is_none());
    }
}

/// Fixed random weights of the loss.
struct LossWeights {
    out: Vec<f64>,
    h_n: Vec<f64>,
    c_n: Vec<f64>,
}

fn loss(out: &ConvForward<f64>, w: &LossWeights) -> f64 {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    dot(&out.output, &w.out) + dot(&out.h_n, &w.h_n) + dot(&out.c_n, &w.c_n)
}

#[derive(Clone, Copy, Debug)]
enum Wrt {
    Param,
    Input,
    H0,
    C0,
}

fn coord(c: &mut Case<f64>, wrt: Wrt, i: usize) -> &mut f64 {
    match wrt {
        Wrt::Param => &mut c.params.as_mut_slice()[i],
        Wrt::Input => &mut c.x[i],
        Wrt::H0 => &mut c.h0.as_mut().expect("h0")[i],
        Wrt::C0 => &mut c.c0.as_mut().expect("c0")[i],
    }
}

const EPS: f64 = 1e-6;

fn numeric(
    c: &mut Case<f64>,
    wrt: Wrt,
    i: usize,
    w: &LossWeights,
    run: &dyn Fn(&Case<f64>) -> ConvForward<f64>,
) -> f64 {
    let orig = *coord(c, wrt, i);
    *coord(c, wrt, i) = orig + EPS;
    let plus = loss(&run(c), w);
    *coord(c, wrt, i) = orig - EPS;
    let minus = loss(&run(c), w);
    *coord(c, wrt, i) = orig;
    (plus - minus) / (2.0 * EPS)
}

/// Every coordinate of parameters, input and initial states against central differences of the
/// fast forward pass, and a sample of them against differences of the reference.
#[test]
fn gradients_match_finite_differences() {
    for (ci, (cfg, dims, state)) in cases().into_iter().enumerate() {
        let mut c = Case::<f64>::new(cfg, dims, state, 20 + ci as u64);
        let out = forward(&c.params, &c.batch(), true).expect("forward");
        let mut rng = Rng::new(99 + ci as u64);
        let w = LossWeights {
            out: rng.vec(out.output.len(), -1.0, 1.0),
            h_n: rng.vec(out.h_n.len(), -1.0, 1.0),
            c_n: rng.vec(out.c_n.len(), -1.0, 1.0),
        };
        let tape = out.tape.expect("tape");
        let g =
            backward(&c.params, &tape, Some(&w.out), Some(&w.h_n), Some(&w.c_n)).expect("backward");
        assert_eq!(g.params.len(), c.params.as_slice().len());
        assert_eq!(g.input.len(), c.x.len());

        let fast = |c: &Case<f64>| forward(&c.params, &c.batch(), false).expect("forward");
        let slow = |c: &Case<f64>| reference::forward(&c.params, &c.batch()).expect("reference");
        let mut targets = vec![
            (Wrt::Param, g.params.clone()),
            (Wrt::Input, g.input.clone()),
        ];
        if state {
            targets.push((Wrt::H0, g.h0.clone()));
            targets.push((Wrt::C0, g.c0.clone()));
        }
        for (wrt, analytic) in targets {
            for (i, &a) in analytic.iter().enumerate() {
                // The reference is slow: every 7th coordinate of it, all of the fast path's.
                let run: &dyn Fn(&Case<f64>) -> ConvForward<f64> =
                    if i % 7 == 3 { &slow } else { &fast };
                let n = numeric(&mut c, wrt, i, &w, run);
                assert!(
                    (a - n).abs() <= 1e-7 + 1e-6 * n.abs(),
                    "case {ci} {wrt:?}[{i}]: backward {a:e}, finite difference {n:e}"
                );
            }
        }
    }
}

/// Only `d_out` given (the others zero), in f32, against the f64 gradients of the same network.
#[test]
fn f32_gradients_follow_f64() {
    let (cfg, dims, state) = cases()[0];
    let c64 = Case::<f64>::new(cfg, dims, state, 5);
    let c32 = Case::<f32>::new(cfg, dims, state, 5);
    let o64 = forward(&c64.params, &c64.batch(), true).expect("forward");
    let o32 = forward(&c32.params, &c32.batch(), true).expect("forward");
    let d64: Vec<f64> = Rng::new(3).vec(o64.output.len(), -1.0, 1.0);
    let d32: Vec<f32> = d64.iter().map(|&v| v as f32).collect();
    let g64 = backward(
        &c64.params,
        o64.tape.as_ref().expect("tape"),
        Some(&d64),
        None,
        None,
    )
    .expect("backward");
    let g32 = backward(
        &c32.params,
        o32.tape.as_ref().expect("tape"),
        Some(&d32),
        None,
        None,
    )
    .expect("backward");
    for (name, a, b) in [
        ("params", &g32.params, &g64.params),
        ("input", &g32.input, &g64.input),
        ("h0", &g32.h0, &g64.h0),
        ("c0", &g32.c0, &g64.c0),
    ] {
        let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
        let d = max_diff(a, &b32);
        assert!(d < 1e-4, "{name}: f32 and f64 gradients differ by {d:e}");
    }
}

#[test]
fn bad_sizes_are_typed_errors() {
    let bad = |r: Result<ConvLstmConfig, Error>, arg: &str| match r {
        Err(Error::Value { arg: a, .. }) => assert_eq!(a, arg),
        other => panic!("expected a Value error on {arg}, got {other:?}"),
    };
    bad(
        ConvLstmConfig::new(0, 2, [3, 3], [1, 1], 1, true),
        "in_channels",
    );
    bad(
        ConvLstmConfig::new(1, 0, [3, 3], [1, 1], 1, true),
        "hidden_channels",
    );
    bad(
        ConvLstmConfig::new(1, 2, [3, 3], [1, 1], 0, true),
        "num_layers",
    );
    bad(
        ConvLstmConfig::new(1, 2, [2, 3], [1, 1], 1, true),
        "kernel_size",
    );
    bad(
        ConvLstmConfig::new(1, 2, [3, 3], [2, 1], 1, true),
        "padding",
    );
    // Stacking needs every layer's state at one frame size.
    bad(
        ConvLstmConfig::new(1, 2, [3, 3], [0, 0], 2, true),
        "padding",
    );

    let cfg = config(2, 3, [3, 3], [0, 0], 1);
    let p = ConvLstmParams::<f64>::try_init(cfg, 0).expect("params");
    let x = vec![0.0; 2 * 3 * 2 * 4 * 4];
    let batch = ConvBatch {
        input: &x,
        batch: 2,
        seq_len: 3,
        height: 4,
        width: 4,
        h0: None,
        c0: None,
    };
    // Too many elements for the stated sizes.
    let wrong = ConvBatch { height: 3, ..batch };
    assert!(matches!(
        forward(&p, &wrong, false),
        Err(Error::Shape { arg: "x", .. })
    ));
    // Frames smaller than the kernel without padding.
    let x_small = vec![0.0; 2 * 3 * 2 * 2 * 4];
    let small = ConvBatch {
        input: &x_small,
        height: 2,
        ..batch
    };
    let e = forward(&p, &small, false).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "x", .. }), "{e}");
    assert!(e.to_string().contains("H >= 3 and W >= 3"), "{e}");
    let h0 = vec![0.0; 5];
    let with_h0 = ConvBatch {
        h0: Some(&h0),
        ..batch
    };
    assert!(matches!(
        forward(&p, &with_h0, false),
        Err(Error::Shape { arg: "h0", .. })
    ));

    // A kernel 200,001 wide over a frame as wide: each column matrix would hold 4e10 values.
    let wide = ConvLstmConfig::new(1, 1, [1, 200_001], [0, 100_000], 1, true).expect("config");
    let wide_p = ConvLstmParams::<f32>::try_init(wide, 0).expect("params");
    let row = vec![0.0f32; 200_000];
    let wide_batch = ConvBatch {
        input: &row,
        batch: 1,
        seq_len: 1,
        height: 1,
        width: 200_000,
        h0: None,
        c0: None,
    };
    assert!(matches!(
        forward(&wide_p, &wide_batch, false),
        Err(Error::Memory {
            arg: "kernel_size",
            ..
        })
    ));

    let out = forward(&p, &batch, true).expect("forward");
    let tape = out.tape.expect("tape");
    assert!(matches!(
        backward(&p, &tape, Some(&[0.0; 3]), None, None),
        Err(Error::Shape { arg: "d_out", .. })
    ));
    let other = ConvLstmParams::<f64>::try_init(config(2, 4, [3, 3], [0, 0], 1), 0).expect("p");
    assert!(matches!(
        backward(&other, &tape, None, None, None),
        Err(Error::Value { arg: "tape", .. })
    ));
}

/// Layout and initialisation: PyTorch's `Conv2d` weight shapes, forget-gate biases at 1.
#[test]
fn parameter_layout_and_initialisation() {
    let cfg = config(2, 3, [3, 5], [1, 2], 2);
    let p = ConvLstmParams::<f64>::try_init(cfg, 7).expect("params");
    let names: Vec<(String, Vec<usize>)> = p
        .specs()
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("weight_ih_l0".into(), vec![12, 2, 3, 5]),
            ("weight_hh_l0".into(), vec![12, 3, 3, 5]),
            ("bias_l0".into(), vec![12]),
            ("weight_ih_l1".into(), vec![12, 3, 3, 5]),
            ("weight_hh_l1".into(), vec![12, 3, 3, 5]),
            ("bias_l1".into(), vec![12]),
        ]
    );
    assert_eq!(Some(p.as_slice().len()), cfg.num_parameters());
    let b = p.get("bias_l1").expect("bias");
    assert_eq!(b, &[0., 0., 0., 1., 1., 1., 0., 0., 0., 0., 0., 0.]);
    let bound = 1.0 / (((3 + 3) * 15) as f64).sqrt();
    let w = p.get("weight_hh_l1").expect("w");
    assert!(w.iter().all(|v| v.abs() <= bound));
    assert!(w.iter().any(|v| v.abs() > 0.8 * bound));
    assert_eq!(ConvLstmParams::<f64>::try_init(cfg, 7).expect("params"), p);
}

/// One thread or several: the forward pass gives the same bits (rows are independent), the
/// backward pass the same values up to the order of the weight-gradient sums.
#[test]
fn thread_count_does_not_change_results() {
    let (cfg, _, _) = cases()[0];
    let c = Case::<f32>::new(cfg, [6, 4, 12, 12], true, 1);
    let run = |n: usize| {
        lstmrs_core::threads::set_num_threads(n).expect("threads");
        let out = forward(&c.params, &c.batch(), true).expect("forward");
        let d = vec![1.0f32; out.output.len()];
        let g = backward(
            &c.params,
            out.tape.as_ref().expect("tape"),
            Some(&d),
            None,
            None,
        )
        .expect("backward");
        (out.output, g.params, g.input)
    };
    let (o1, p1, i1) = run(1);
    let (o3, p3, i3) = run(3);
    assert_eq!(o1, o3);
    assert_eq!(i1, i3);
    let scale = p1.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
    let d = max_diff(&p1, &p3);
    assert!(d <= 1e-5 * scale, "{d:e} apart, largest gradient {scale:e}");
}
