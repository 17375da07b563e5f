//! Finite-difference checks of the gradients, in f64: the scalar loss
//! `L = sum(d_output*output) + sum(d_h_n*h_n) + sum(d_c_n*c_n)` is differentiated by central
//! differences with respect to a sample of parameters, inputs and initial states, and compared
//! with both the fast `backward` and `reference::backward`.

mod common;

use common::*;
use lstmrs_core::{backward, forward, reference, ForwardOptions, Gradients, Layout};

const EPS: f64 = 1e-6;
/// Central differences at `EPS = 1e-6` carry about `1e-10` of truncation and rounding error.
const ATOL: f64 = 1e-7;
const RTOL: f64 = 1e-6;

/// Which buffer a sampled coordinate lives in.
#[derive(Debug, Clone, Copy)]
enum Wrt {
    Param,
    Input,
    H0,
    C0,
}

fn loss_at(d: &Data<f64>, opts: &ForwardOptions) -> f64 {
    let out = forward(&d.params, &d.batch(), opts).expect("forward");
    d.loss(&out)
}

fn coord(d: &mut Data<f64>, wrt: Wrt, i: usize) -> &mut f64 {
    match wrt {
        Wrt::Param => &mut d.params.as_mut_slice()[i],
        Wrt::Input => &mut d.input[i],
        Wrt::H0 => &mut d.h0.as_mut().expect("h0")[i],
        Wrt::C0 => &mut d.c0.as_mut().expect("c0")[i],
    }
}

/// Central difference of the loss along one coordinate.
fn numeric(d: &mut Data<f64>, wrt: Wrt, i: usize, opts: &ForwardOptions) -> f64 {
    let orig = *coord(d, wrt, i);
    *coord(d, wrt, i) = orig + EPS;
    let plus = loss_at(d, opts);
    *coord(d, wrt, i) = orig - EPS;
    let minus = loss_at(d, opts);
    *coord(d, wrt, i) = orig;
    (plus - minus) / (2.0 * EPS)
}

fn analytic(g: &Gradients<f64>, wrt: Wrt, i: usize) -> f64 {
    match wrt {
        Wrt::Param => g.params[i],
        Wrt::Input => g.input[i],
        Wrt::H0 => g.h0[i],
        Wrt::C0 => g.c0.as_ref().expect("d_c0")[i],
    }
}

/// Checks the gradients of `case` along a sample of coordinates: for every parameter tensor its
/// first, last and two random elements, plus random inputs and initial-state elements.
fn check(case: &Case, seed: u64, opts: &ForwardOptions) {
    let mut d = case.data::<f64>(seed);
    let mut rng = Rng::new(seed ^ 0xABCD);
    let fwd = forward(
        &d.params,
        &d.batch(),
        &ForwardOptions {
            keep_tape: true,
            ..*opts
        },
    )
    .expect("forward");
    let fast = backward(
        &d.params,
        fwd.tape.as_ref().expect("tape"),
        &d.grad_outputs(),
    )
    .expect("backward");
    let refg = reference::backward(&d.params, &d.batch(), opts, &d.grad_outputs())
        .expect("reference backward");

    let mut coords = Vec::new();
    for s in d.params.specs() {
        for k in [0, s.len - 1, rng.below(s.len), rng.below(s.len)] {
            coords.push((Wrt::Param, s.offset + k));
        }
    }
    for _ in 0..8 {
        coords.push((Wrt::Input, rng.below(d.input.len())));
    }
    if d.h0.is_some() {
        for _ in 0..6 {
            coords.push((Wrt::H0, rng.below(case.state_len())));
        }
    }
    if d.c0.is_some() {
        for _ in 0..6 {
            coords.push((Wrt::C0, rng.below(case.cell_state_len())));
        }
    }
    for (wrt, i) in coords {
        let num = numeric(&mut d, wrt, i, opts);
        for (who, g) in [("fast", &fast), ("reference", &refg)] {
            let an = analytic(g, wrt, i);
            assert!(
                (an - num).abs() <= ATOL + RTOL * num.abs(),
                "{who} d/d{wrt:?}[{i}] = {an}, finite difference {num}, in {case:?}"
            );
        }
    }
}

fn cases(layers: &[usize], shape: Shape) -> Vec<Case> {
    let mut v = Vec::new();
    for &cell in &CELLS {
        for &l in layers {
            for bidirectional in [false, true] {
                for ragged in [false, true] {
                    for init_state in [false, true] {
                        v.push(Case {
                            cell,
                            layers: l,
                            bidirectional,
                            bias: true,
                            ragged,
                            init_state,
                            // Alternate layouts so both are covered without doubling the grid.
                            layout: LAYOUTS[(l + ragged as usize) % 2],
                            shape,
                        });
                    }
                }
            }
        }
    }
    v
}

#[test]
fn gradients_match_finite_differences() {
    for (k, case) in cases(&[1, 2], shape(3, 4, 3, 5)).iter().enumerate() {
        check(case, 100 + k as u64, &eval_opts());
    }
}

#[test]
fn gradients_match_finite_differences_deep_and_odd_sizes() {
    let mut all = cases(&[3], shape(2, 3, 2, 4));
    all.extend(cases(&[1], shape(1, 1, 1, 3)));
    for c in all.iter_mut().step_by(3) {
        c.bias = false;
    }
    for (k, case) in all.iter().enumerate() {
        check(case, 300 + k as u64, &eval_opts());
    }
}

/// Dropout in training mode: the same seed gives the same mask on every call, so the loss is a
/// smooth function of the inputs and the mask is a constant factor.
#[test]
fn gradients_with_training_dropout_match_finite_differences() {
    let opts = ForwardOptions {
        training: true,
        dropout: 0.4,
        seed: 2024,
        keep_tape: false,
    };
    for (k, case) in cases(&[2, 3], shape(3, 4, 3, 4)).iter().enumerate() {
        check(case, 700 + k as u64, &opts);
    }
}

/// The time-major layout with ragged lengths on a long sequence: gradients flow back through
/// every step, including the long stretch a short row skips.
#[test]
fn gradients_over_long_sequences_match_finite_differences() {
    for &cell in &CELLS {
        let case = Case {
            cell,
            layers: 2,
            bidirectional: true,
            bias: true,
            ragged: true,
            init_state: true,
            layout: Layout::TimeMajor,
            shape: shape(2, 3, 3, 25),
        };
        check(&case, 900, &eval_opts());
    }
}

/// The projected LSTM (`proj_size`): `W_hr` and every other gradient through the projection,
/// stacked, bidirectional, with ragged lengths and initial states, with and without biases.
#[test]
fn projected_lstm_gradients_match_finite_differences() {
    let mut all: Vec<Case> = cases(&[1, 2], proj_shape(3, 5, 3, 3, 5))
        .into_iter()
        .chain(cases(&[3], proj_shape(2, 4, 1, 2, 4)))
        .filter(|c| c.cell == lstmrs_core::CellKind::Lstm)
        .collect();
    for c in all.iter_mut().step_by(3) {
        c.bias = false;
    }
    let train = ForwardOptions {
        training: true,
        dropout: 0.4,
        seed: 7,
        keep_tape: false,
    };
    for (k, case) in all.iter().enumerate() {
        let opts = if case.layers > 1 && k % 2 == 0 {
            train
        } else {
            eval_opts()
        };
        check(case, 1100 + k as u64, &opts);
    }
}
