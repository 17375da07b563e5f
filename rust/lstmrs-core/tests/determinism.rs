//! Same input at the same thread count gives the same bits, forward and backward.
//!
//! The thread count is process-global and test functions run in parallel threads of one process,
//! so everything that sets it lives in this one test binary and one test function.

mod common;

use common::*;
use lstmrs_core::bench::{set_team_override, teams_formed};
use lstmrs_core::{backward, forward, threads, CellKind, ForwardOptions, Layout, Scalar};

/// Large enough that the matrix products split across threads and both directions run at once.
fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for cell in [CellKind::Lstm, CellKind::Gru] {
        v.push(Case {
            cell,
            layers: 2,
            bidirectional: true,
            bias: true,
            ragged: true,
            init_state: true,
            layout: Layout::BatchFirst,
            shape: shape(48, 64, 16, 24),
        });
    }
    // The projected LSTM, one direction, so its team holds every thread.
    v.push(Case {
        cell: CellKind::Lstm,
        layers: 2,
        bidirectional: false,
        bias: true,
        ragged: true,
        init_state: true,
        layout: Layout::BatchFirst,
        shape: proj_shape(48, 96, 20, 32, 12),
    });
    v
}

struct Run<T> {
    out: Vec<T>,
    h_n: Vec<T>,
    params: Vec<T>,
    input: Vec<T>,
    h0: Vec<T>,
}

fn run<T: Scalar>(d: &Data<T>) -> Run<T> {
    let opts = ForwardOptions {
        training: true,
        dropout: 0.25,
        seed: 11,
        keep_tape: true,
    };
    let f = forward(&d.params, &d.batch(), &opts).expect("forward");
    let g =
        backward(&d.params, f.tape.as_ref().expect("tape"), &d.grad_outputs()).expect("backward");
    Run {
        out: f.output,
        h_n: f.h_n,
        params: g.params,
        input: g.input,
        h0: g.h0,
    }
}

fn same_bits<T: Scalar>(a: &Run<T>, b: &Run<T>, ctx: &str) {
    assert_bitwise(&format!("output ({ctx})"), &a.out, &b.out);
    assert_bitwise(&format!("h_n ({ctx})"), &a.h_n, &b.h_n);
    assert_bitwise(&format!("d_params ({ctx})"), &a.params, &b.params);
    assert_bitwise(&format!("d_input ({ctx})"), &a.input, &b.input);
    assert_bitwise(&format!("d_h0 ({ctx})"), &a.h0, &b.h0);
}

/// Runs `f` with every sweep's team forced to `n` threads, until a run formed a team of `want`
/// threads and none larger (`teams_formed`), and returns that run: the override is an upper
/// bound, and on a loaded machine a pool thread that does not pick up its job in time is left
/// out of the team. Fails when 20 runs in a row never formed it.
fn on_team<R>(n: usize, want: usize, f: impl Fn() -> R) -> R {
    set_team_override(n);
    for _ in 0..20 {
        let before = teams_formed();
        let r = f();
        let after = teams_formed();
        if after[want] > before[want] && after[want + 1..] == before[want + 1..] {
            set_team_override(0);
            return r;
        }
    }
    set_team_override(0);
    panic!("no run formed a team of {want} threads (override {n})");
}

fn check<T: Scalar>(tol: f64) {
    for case in cases() {
        let d = case.data::<T>(3);
        let mut per_count = Vec::new();
        for n in [1, 2, 4] {
            threads::set_num_threads(n).expect("thread count");
            assert_eq!(threads::num_threads(), n);
            let first = run(&d);
            for _ in 0..3 {
                same_bits(&run(&d), &first, &format!("{:?}, {n} threads", case.cell));
            }
            // The cost model runs these small sweeps on one thread; a team of `n` (every sweep
            // split by units, a barrier per step) must give the same bits. The two directions
            // of a bidirectional layer run at once, each on half the pool.
            let want = if case.bidirectional {
                (n / 2).max(1)
            } else {
                n
            };
            let team = on_team(n, want, || run(&d));
            same_bits(&team, &first, &format!("{:?}, team of {want}", case.cell));
            // Inference without a tape projects the input into a buffer of one chunk of steps
            // instead of all of them: the same bits, alone and on a team.
            let eval = |keep_tape| {
                let opts = ForwardOptions {
                    training: false,
                    dropout: 0.0,
                    seed: 0,
                    keep_tape,
                };
                forward(&d.params, &d.batch(), &opts).expect("forward")
            };
            let taped = eval(true);
            let team_eval = on_team(n, want, || eval(false));
            for (what, got) in [("inference", eval(false)), ("team inference", team_eval)] {
                let ctx = format!("{what}, {:?}, {n} threads", case.cell);
                assert_bitwise(&format!("output ({ctx})"), &got.output, &taped.output);
                assert_bitwise(&format!("h_n ({ctx})"), &got.h_n, &taped.h_n);
            }
            per_count.push(first);
        }
        // Across thread counts only the summation order may change.
        let a = &per_count[0];
        for b in &per_count[1..] {
            for (what, x, y) in [
                ("output", &a.out, &b.out),
                ("d_params", &a.params, &b.params),
                ("d_input", &a.input, &b.input),
            ] {
                assert_close(what, x, y, tol, tol, &case);
            }
        }
    }
}

#[test]
fn same_thread_count_gives_identical_bits() {
    check::<f32>(1e-4);
    check::<f64>(1e-11);
    assert!(threads::set_num_threads(0).is_err());
}
