//! The fast path (`forward`, `backward`) against the plain reference implementation across the
//! whole grid: cell × layers × directions × bias × lengths × initial states × layout × sizes.

mod common;

use common::*;
use lstmrs_core::{backward, forward, reference, ForwardOptions, Scalar};

/// Tolerances `(atol, rtol)` per element type: f64 differs only in summation order; f32 also uses
/// the fast polynomial activations against libm's.
fn tol<T: Scalar>(f64_tol: (f64, f64), f32_tol: (f64, f64)) -> (f64, f64) {
    match T::DTYPE {
        lstmrs_core::DType::F64 => f64_tol,
        lstmrs_core::DType::F32 => f32_tol,
    }
}

const FWD_F64: (f64, f64) = (1e-12, 1e-12);
const FWD_F32: (f64, f64) = (1e-5, 1e-5);
/// Gradients sum over steps and rows, so they carry more rounding than the forward values.
const BWD_F64: (f64, f64) = (1e-11, 1e-11);
const BWD_F32: (f64, f64) = (5e-5, 5e-5);

fn check_forward<T: Scalar>(case: &Case, seed: u64, opts: &ForwardOptions) {
    let d = case.data::<T>(seed);
    let (atol, rtol) = tol::<T>(FWD_F64, FWD_F32);
    let fast = forward(&d.params, &d.batch(), opts).expect("fast forward");
    let want = reference::forward(&d.params, &d.batch(), opts).expect("reference forward");
    assert_close("output", &fast.output, &want.output, atol, rtol, case);
    assert_close("h_n", &fast.h_n, &want.h_n, atol, rtol, case);
    assert_eq!(fast.c_n.is_some(), case.cell.has_cell_state(), "{case:?}");
    if let (Some(c), Some(w)) = (&fast.c_n, &want.c_n) {
        assert_close("c_n", c, w, atol, rtol, case);
    }
}

fn check_backward<T: Scalar>(case: &Case, seed: u64, opts: &ForwardOptions) {
    let d = case.data::<T>(seed);
    let (atol, rtol) = tol::<T>(BWD_F64, BWD_F32);
    let fwd_opts = ForwardOptions {
        keep_tape: true,
        ..*opts
    };
    let out = forward(&d.params, &d.batch(), &fwd_opts).expect("fast forward");
    let tape = out.tape.as_ref().expect("tape kept");
    let fast = backward(&d.params, tape, &d.grad_outputs()).expect("fast backward");
    let want = reference::backward(&d.params, &d.batch(), opts, &d.grad_outputs())
        .expect("reference backward");
    // Per tensor, so a failure names the parameter.
    for spec in d.params.specs() {
        let r = spec.offset..spec.offset + spec.len;
        assert_close(
            &spec.name,
            &fast.params[r.clone()],
            &want.params[r],
            atol,
            rtol,
            case,
        );
    }
    assert_close("d_input", &fast.input, &want.input, atol, rtol, case);
    assert_close("d_h0", &fast.h0, &want.h0, atol, rtol, case);
    assert_eq!(fast.c0.is_some(), case.cell.has_cell_state(), "{case:?}");
    if let (Some(c), Some(w)) = (&fast.c0, &want.c0) {
        assert_close("d_c0", c, w, atol, rtol, case);
    }
}

#[test]
fn forward_matches_reference_f64() {
    for (k, case) in grid(SHAPES).iter().enumerate() {
        check_forward::<f64>(case, k as u64, &eval_opts());
    }
}

#[test]
fn forward_matches_reference_f32() {
    for (k, case) in grid(SHAPES).iter().enumerate() {
        check_forward::<f32>(case, k as u64, &eval_opts());
    }
}

#[test]
fn backward_matches_reference_f64() {
    for (k, case) in grid(SHAPES).iter().enumerate() {
        check_backward::<f64>(case, 1000 + k as u64, &eval_opts());
    }
}

#[test]
fn backward_matches_reference_f32() {
    for (k, case) in grid(SHAPES).iter().enumerate() {
        check_backward::<f32>(case, 1000 + k as u64, &eval_opts());
    }
}

/// Dropout between layers in training mode: both paths draw the mask from `(seed, layer)`.
#[test]
fn training_dropout_matches_reference() {
    let opts = ForwardOptions {
        training: true,
        dropout: 0.35,
        seed: 77,
        keep_tape: false,
    };
    let cases: Vec<Case> = grid(&[SHAPES[0], SHAPES[2]])
        .into_iter()
        .filter(|c| c.layers > 1)
        .collect();
    for (k, case) in cases.iter().enumerate() {
        let seed = 5000 + k as u64;
        check_forward::<f64>(case, seed, &opts);
        check_forward::<f32>(case, seed, &opts);
        check_backward::<f64>(case, seed, &opts);
        check_backward::<f32>(case, seed, &opts);
        // The mask must matter, or this test would not test dropout.
        let d = case.data::<f64>(seed);
        let dropped = forward(&d.params, &d.batch(), &opts).expect("forward");
        let plain = forward(&d.params, &d.batch(), &eval_opts()).expect("forward");
        assert!(
            dropped.h_n != plain.h_n,
            "dropout changed nothing in {case:?}"
        );
    }
}

/// Sizes large enough that the matrix products split across threads.
#[test]
fn large_sizes_match_reference() {
    let big = shape(48, 64, 16, 12);
    for (k, case) in grid(&[big])
        .iter()
        .filter(|c| c.layers == 2 && c.bias && c.init_state && c.ragged)
        .enumerate()
    {
        check_forward::<f64>(case, 9000 + k as u64, &eval_opts());
        check_forward::<f32>(case, 9000 + k as u64, &eval_opts());
        check_backward::<f64>(case, 9100 + k as u64, &eval_opts());
        check_backward::<f32>(case, 9100 + k as u64, &eval_opts());
    }
}

/// The sweep's team projects the input `PROJECTION_ROWS` (64) rows at a time (`sweep.rs`): a
/// batch of 16 in chunks of 4 steps, so 9 steps take two whole chunks and a short one, in either
/// direction (a batch-first input gathered per chunk); a batch of 64 one step at a time (a
/// batch-first input read in place).
#[test]
fn chunked_input_projection_matches_reference() {
    let chunked = [shape(5, 20, 16, 9), shape(5, 20, 64, 9)];
    for (k, case) in grid(&chunked).iter().enumerate() {
        check_forward::<f32>(case, 30_000 + k as u64, &eval_opts());
        if case.layers == 2 && case.init_state {
            check_backward::<f32>(case, 31_000 + k as u64, &eval_opts());
        }
    }
}

/// The projected LSTM (`proj_size`) over its grid: layers × directions × bias × lengths × initial
/// states × layout × `PROJ_SHAPES`, both element types, forward and backward.
fn proj_grid(shapes: &[Shape]) -> Vec<Case> {
    grid(shapes)
        .into_iter()
        .filter(|c| c.cell == lstmrs_core::CellKind::Lstm)
        .collect()
}

#[test]
fn projected_lstm_matches_reference() {
    for (k, case) in proj_grid(PROJ_SHAPES).iter().enumerate() {
        check_forward::<f64>(case, 20_000 + k as u64, &eval_opts());
        check_forward::<f32>(case, 20_000 + k as u64, &eval_opts());
        check_backward::<f64>(case, 21_000 + k as u64, &eval_opts());
        check_backward::<f32>(case, 21_000 + k as u64, &eval_opts());
    }
}

/// Sizes where both step products of the projected LSTM split across threads, with dropout
/// between layers in training mode.
#[test]
fn projected_lstm_large_sizes_and_dropout_match_reference() {
    let big = proj_shape(48, 64, 24, 16, 12);
    let train = ForwardOptions {
        training: true,
        dropout: 0.3,
        seed: 5,
        keep_tape: false,
    };
    for (k, case) in proj_grid(&[big])
        .iter()
        .filter(|c| c.layers == 2 && c.bias && c.init_state)
        .enumerate()
    {
        for opts in [eval_opts(), train] {
            check_forward::<f64>(case, 22_000 + k as u64, &opts);
            check_forward::<f32>(case, 22_000 + k as u64, &opts);
            check_backward::<f64>(case, 22_100 + k as u64, &opts);
            check_backward::<f32>(case, 22_100 + k as u64, &opts);
        }
    }
}

/// One direction with a step large enough for a team of threads: the hidden units and the
/// projected features are split between members, including a `P` of one SIMD block that leaves
/// later members without features (they still take their share of the gate pass).
#[test]
fn projected_lstm_split_between_threads_matches_reference() {
    for (k, shape) in [proj_shape(48, 96, 20, 32, 8), proj_shape(16, 256, 6, 32, 6)]
        .into_iter()
        .enumerate()
    {
        for init_state in [false, true] {
            let case = Case {
                cell: lstmrs_core::CellKind::Lstm,
                layers: 1,
                bidirectional: false,
                bias: true,
                ragged: true,
                init_state,
                layout: lstmrs_core::Layout::TimeMajor,
                shape,
            };
            let seed = 23_000 + k as u64;
            check_forward::<f64>(&case, seed, &eval_opts());
            check_forward::<f32>(&case, seed, &eval_opts());
            check_backward::<f64>(&case, seed, &eval_opts());
            check_backward::<f32>(&case, seed, &eval_opts());
        }
    }
}

/// The built-in cells' backward sweep run by a forced team (each member's units of the gate
/// pass, the bias sums gathered per step, the GRU's recurrent product split in two along `k`),
/// against the reference: teams of 2 and 3 (uneven unit splits), with and without biases.
#[test]
fn builtin_backward_split_between_threads_matches_reference() {
    use lstmrs_core::bench::set_team_override;
    use lstmrs_core::threads;
    // Enough pool threads for a team of 3 in each of two directions at once.
    let before = threads::num_threads();
    threads::set_num_threads(6).expect("thread count");
    for (k, team) in [2, 3].into_iter().enumerate() {
        for cell in [lstmrs_core::CellKind::Lstm, lstmrs_core::CellKind::Gru] {
            for bias in [true, false] {
                let case = Case {
                    cell,
                    layers: 2,
                    bidirectional: k == 1,
                    bias,
                    ragged: true,
                    init_state: true,
                    layout: lstmrs_core::Layout::BatchFirst,
                    shape: shape(12, 40, 5, 9),
                };
                let seed = 24_000 + k as u64;
                // Process-wide: other tests of this binary running meanwhile also get teams,
                // which they must tolerate as well.
                set_team_override(team);
                check_backward::<f64>(&case, seed, &eval_opts());
                check_backward::<f32>(&case, seed, &eval_opts());
                set_team_override(0);
            }
        }
    }
    threads::set_num_threads(before).expect("thread count");
}

/// An LSTM with a narrow input (`I <= 32`, `sweep.rs` `FUSED_INPUT_MAX`) adds the input side and
/// the bias inside each step's recurrent product (`[h | x_t | 1]`); a wider one projects apart.
/// Both sides of the threshold, one row and 33 rows, a hidden size that is not a multiple of the
/// kernels' 16 lanes, with and without biases, ragged and reversed (bidirectional), one thread
/// and a forced team of 2, inference (one step of pre-activations reused) and training.
#[test]
fn narrow_input_fused_into_the_step_product_matches_reference() {
    use lstmrs_core::bench::set_team_override;
    use lstmrs_core::threads;
    let before = threads::num_threads();
    threads::set_num_threads(4).expect("thread count");
    for (k, input) in [1, 32, 33].into_iter().enumerate() {
        for batch in [1, 33] {
            for bias in [true, false] {
                let case = Case {
                    cell: lstmrs_core::CellKind::Lstm,
                    layers: 2,
                    bidirectional: true,
                    bias,
                    ragged: batch > 1,
                    init_state: true,
                    layout: lstmrs_core::Layout::BatchFirst,
                    shape: shape(input, 37, batch, 6),
                };
                let seed = 25_000 + k as u64;
                for team in [0, 2] {
                    // Process-wide, as in the test above.
                    set_team_override(team);
                    check_forward::<f32>(&case, seed, &eval_opts());
                    check_forward::<f64>(&case, seed, &eval_opts());
                    check_backward::<f32>(&case, seed, &eval_opts());
                    set_team_override(0);
                }
            }
        }
    }
    threads::set_num_threads(before).expect("thread count");
}

/// A one-direction inference of a batch-first call reads the input where the caller has it (the
/// team's projection gathering each chunk's rows, the fused product one step's rows; the other
/// paths from a time-major copy) and writes the last layer's output batch-first in place. Against the
/// reference: LSTM (fused and projected input sides, and with `proj_size`) and GRU, one and two
/// layers, ragged, steps enough for several projection chunks, one thread and a forced team of 2.
#[test]
fn batch_first_input_and_output_in_place_match_reference() {
    use lstmrs_core::bench::set_team_override;
    use lstmrs_core::threads;
    let before = threads::num_threads();
    threads::set_num_threads(4).expect("thread count");
    let shapes = [
        (lstmrs_core::CellKind::Lstm, shape(5, 40, 7, 50)),
        (lstmrs_core::CellKind::Lstm, shape(48, 40, 7, 50)),
        (lstmrs_core::CellKind::Lstm, proj_shape(48, 40, 24, 7, 50)),
        (lstmrs_core::CellKind::Gru, shape(48, 40, 7, 50)),
    ];
    for (k, (cell, shape)) in shapes.into_iter().enumerate() {
        for layers in [1, 2] {
            let case = Case {
                cell,
                layers,
                bidirectional: false,
                bias: true,
                ragged: true,
                init_state: true,
                layout: lstmrs_core::Layout::BatchFirst,
                shape,
            };
            let seed = 26_000 + k as u64;
            for team in [0, 2] {
                // Process-wide, as in the tests above.
                set_team_override(team);
                check_forward::<f32>(&case, seed, &eval_opts());
                check_forward::<f64>(&case, seed, &eval_opts());
                set_team_override(0);
            }
        }
    }
    threads::set_num_threads(before).expect("thread count");
}
