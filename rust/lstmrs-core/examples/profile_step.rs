//! Times the phases of a training step of one LSTM layer, for profiling:
//! `cargo run --release -p lstmrs-core --example profile_step -- B T I H [threads]`.
//! `REPS=n` times n repeats (default 10). `CELL=gru` times the GRU; `CELL=dsl_lstm` /
//! `CELL=dsl_gru` the same cells compiled from the cell language (`notes/cell_dsl.md`), through
//! the same sweep. `ONLY=inference` runs only the inference forward, `REPS` times (default 2000),
//! for `perf record` of the inference step alone. `TAPE=consume` times the backward pass that
//! uses its tape up (`backward_consuming`, what the Python package's `backward` runs by
//! default: the gate gradients overwrite the tape's activations instead of a copy of them).
//!
//! After the means, one line per phase gives the call-to-call spread (median, fastest, slowest
//! call), the page faults per call (a buffer allocated afresh faults every page in) and the CPU
//! time of all threads per call against its wall time (2.0 on two threads: both busy
//! throughout; less: a thread waited, or another process had its core).

use lstmrs_core::cellexpr::register_cell;
use lstmrs_core::{
    backward, backward_consuming, forward, threads, Batch, CellKind, ForwardOptions, GradOutputs,
    Layout, RnnConfig, RnnParams,
};
use std::time::Instant;

/// PyTorch's LSTM in the cell language: `c' = f*c + i*g`, `h' = o*tanh(c')`.
const DSL_LSTM: &str = r#"{"name": "dsl_lstm", "states": ["h", "c"], "x_gates": 4, "h_gates": 4,
 "unit_params": [], "nodes": [
 {"op": "xg", "index": 0}, {"op": "hg", "index": 0}, {"op": "add", "args": [0, 1]},
 {"op": "sigmoid", "args": [2]},
 {"op": "xg", "index": 1}, {"op": "hg", "index": 1}, {"op": "add", "args": [4, 5]},
 {"op": "sigmoid", "args": [6]},
 {"op": "xg", "index": 2}, {"op": "hg", "index": 2}, {"op": "add", "args": [8, 9]},
 {"op": "tanh", "args": [10]},
 {"op": "xg", "index": 3}, {"op": "hg", "index": 3}, {"op": "add", "args": [12, 13]},
 {"op": "sigmoid", "args": [14]},
 {"op": "state", "name": "c"}, {"op": "mul", "args": [7, 16]}, {"op": "mul", "args": [3, 11]},
 {"op": "add", "args": [17, 18]}, {"op": "tanh", "args": [19]}, {"op": "mul", "args": [15, 20]}],
 "outputs": {"h": 21, "c": 19}}"#;

/// PyTorch's GRU: `n = tanh(xg2 + r*hg2)`, `h' = (1-z)*n + z*h`.
const DSL_GRU: &str = r#"{"name": "dsl_gru", "states": ["h"], "x_gates": 3, "h_gates": 3,
 "unit_params": [], "nodes": [
 {"op": "xg", "index": 0}, {"op": "hg", "index": 0}, {"op": "add", "args": [0, 1]},
 {"op": "sigmoid", "args": [2]},
 {"op": "xg", "index": 1}, {"op": "hg", "index": 1}, {"op": "add", "args": [4, 5]},
 {"op": "sigmoid", "args": [6]},
 {"op": "xg", "index": 2}, {"op": "hg", "index": 2}, {"op": "mul", "args": [3, 9]},
 {"op": "add", "args": [8, 10]}, {"op": "tanh", "args": [11]},
 {"op": "state", "name": "h"}, {"op": "one_minus", "args": [7]}, {"op": "mul", "args": [14, 12]},
 {"op": "mul", "args": [7, 13]}, {"op": "add", "args": [15, 16]}],
 "outputs": {"h": 17}}"#;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("integer"))
        .collect();
    let (b, t, i, h) = (a[0], a[1], a[2], a[3]);
    if let Some(&n) = a.get(4) {
        threads::set_num_threads(n).unwrap();
    }
    let cell = match std::env::var("CELL").as_deref() {
        Ok("gru") => CellKind::Gru,
        Ok("dsl_lstm") => register_cell(DSL_LSTM).unwrap(),
        Ok("dsl_gru") => register_cell(DSL_GRU).unwrap(),
        _ => CellKind::Lstm,
    };
    let cfg = RnnConfig::new(cell, i, h, 1, false, true).unwrap();
    let p = RnnParams::<f32>::init_uniform(cfg, 0);
    let x: Vec<f32> = (0..b * t * i)
        .map(|k| ((k % 97) as f32 * 0.01).sin())
        .collect();
    let batch = Batch {
        input: &x,
        layout: Layout::BatchFirst,
        seq_len: t,
        batch: b,
        h0: None,
        c0: None,
        lengths: None,
    };
    let d_out = vec![1.0f32; b * t * h];
    let opts = ForwardOptions {
        keep_tape: true,
        ..Default::default()
    };
    let only_inference = std::env::var("ONLY").as_deref() == Ok("inference");
    let consume = std::env::var("TAPE").as_deref() == Ok("consume");
    // `REPS` sets the timed repeats (more for a `perf record` of a small case).
    let reps: usize = std::env::var("REPS").map_or(if only_inference { 2000 } else { 10 }, |v| {
        v.parse().expect("REPS: an integer")
    });
    if only_inference {
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let s = Instant::now();
            let o = forward(&p, &batch, &ForwardOptions::default()).unwrap();
            times.push(s.elapsed().as_secs_f64());
            std::hint::black_box(o);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{} B={b} T={t} I={i} H={h} threads={}: inference median {:.3} ms, fastest {:.3} ms ({:.2} us/step)",
            cell.name(),
            threads::num_threads(),
            times[reps / 2] * 1e3,
            times[0] * 1e3,
            times[reps / 2] / t as f64 * 1e6
        );
        return;
    }
    let (mut tf, mut tb, mut ti) = (0.0, 0.0, 0.0);
    // Per call of each phase (inference, forward+tape, backward): (wall s, CPU s, faults).
    let mut calls: [Vec<(f64, f64, i64)>; 3] = Default::default();
    for r in 0..reps + 2 {
        let u = usage();
        let s = Instant::now();
        let o = forward(&p, &batch, &ForwardOptions::default()).unwrap();
        let e1 = s.elapsed().as_secs_f64();
        std::hint::black_box(o);
        let u1 = usage();
        let s = Instant::now();
        let mut o = forward(&p, &batch, &opts).unwrap();
        let e2 = s.elapsed().as_secs_f64();
        let u2 = usage();
        let s = Instant::now();
        let grads = GradOutputs {
            output: Some(&d_out),
            h_n: None,
            c_n: None,
        };
        let tape = o.tape.as_mut().unwrap();
        let g = if consume {
            backward_consuming(&p, tape, &grads)
        } else {
            backward(&p, tape, &grads)
        }
        .unwrap();
        let e3 = s.elapsed().as_secs_f64();
        let u3 = usage();
        std::hint::black_box(g);
        if r >= 2 {
            ti += e1;
            tf += e2;
            tb += e3;
            for (k, (e, (a, b))) in [(e1, (u, u1)), (e2, (u1, u2)), (e3, (u2, u3))]
                .into_iter()
                .enumerate()
            {
                calls[k].push((e, b.0 - a.0, b.1 - a.1));
            }
        }
    }
    let n = reps as f64;
    let flops = 2.0 * (b * t * cfg.gate_width() * (i + h)) as f64;
    println!(
        "{} B={b} T={t} I={i} H={h} threads={}: inference {:.2} ms ({:.1} GFLOP/s), forward+tape {:.2} ms, backward {:.2} ms (train {:.1} GFLOP/s)",
        cell.name(),
        threads::num_threads(),
        ti / n * 1e3,
        flops / (ti / n) / 1e9,
        tf / n * 1e3,
        tb / n * 1e3,
        3.0 * flops / ((tf + tb) / n) / 1e9
    );
    let names = ["inference", "forward+tape", "backward"];
    for (name, mut c) in names.into_iter().zip(calls) {
        c.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mid = c[c.len() / 2];
        let cpu: f64 = c.iter().map(|v| v.1).sum::<f64>() / c.iter().map(|v| v.0).sum::<f64>();
        let faults = c.iter().map(|v| v.2).sum::<i64>() / c.len() as i64;
        println!(
            "  {name:13} median {:8.2} ms, fastest {:8.2}, slowest {:8.2}; {faults} page faults per call; CPU/wall {cpu:.2}",
            mid.0 * 1e3,
            c[0].0 * 1e3,
            c[c.len() - 1].0 * 1e3,
        );
    }
}

/// (CPU seconds of all the process's threads, minor page faults) so far.
fn usage() -> (f64, i64) {
    // SAFETY: getrusage writes only into the zeroed struct it is given.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (secs(u.ru_utime) + secs(u.ru_stime), u.ru_minflt as i64)
}
