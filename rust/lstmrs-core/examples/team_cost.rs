//! Measures the table behind the sweep's team-size cost model (`packed_gemm::team_size`): for
//! each hidden size and batch of a grid, the time of a step of one LSTM / GRU layer when its sweep
//! runs on one thread and on a team of two (the pool has two threads either way; the input
//! projection and weight gradients run the same in both), forward (inference) and backward
//! (the backward sweep of a training step, from a kept tape). The variants take turns inside
//! every repeat. The fastest of the repeats is compared (on a machine that other work shares,
//! the fastest run is the one the others disturbed least, closest to the idle machine; the
//! median is printed beside it), then per hidden size the smallest batch from which the team of
//! two is faster at every larger batch of the grid, as the table's rows.
//!
//! Calls are short (about `macs` multiply-adds of steps, default 1e7: a tenth of a millisecond
//! and up), so that on a shared machine some repeats find both cores free.
//!
//!     cargo run --release -p lstmrs-core --example team_cost [repeats] [macs] [cell:B,T,I,H ...]
//!
//! With shapes named (`lstm:32,100,8,64`), times those instead of the grid (`macs` unused), and
//! beside the two sizes the library's own choice (`team_choice`; `LSTMRS_TEAM_CHOICE=static`:
//! the cost model alone), with how many of its sweeps ran on one thread and on two.

use lstmrs_core::bench::{plain_batch, set_team_override, teams_formed};
use lstmrs_core::{
    backward, forward, threads, CellKind, ForwardOptions, GradOutputs, Layout, RnnConfig, RnnParams,
};
use std::time::Instant;

const HIDDEN: [usize; 6] = [32, 64, 128, 256, 512, 1024];
const BATCH: [usize; 8] = [1, 2, 4, 8, 16, 32, 64, 128];
const INPUT: usize = 16;

/// Seconds per step `[(fastest, median) forward, (fastest, median) backward]`.
type PerStep = [(f64, f64); 2];

/// `(fastest, median)` of `v`.
fn fastest_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

/// Seconds per step `(fastest, median)` of (inference forward, backward sweep) for teams of 1
/// and 2: `[[fwd1, fwd2], [bwd1, bwd2]]`.
fn time_case(
    cell: CellKind,
    b: usize,
    h: usize,
    repeats: usize,
    macs: f64,
) -> [[(f64, f64); 2]; 2] {
    let gates = cell.gate_count();
    // About `macs` multiply-adds of steps per call, 8..2000 steps.
    let t = (macs / (b * gates * h * (h + INPUT)) as f64).clamp(8.0, 2000.0) as usize;
    let m = time_shape(cell, b, t, INPUT, h, repeats, &[1, 2]).0;
    [[m[0][0], m[1][0]], [m[0][1], m[1][1]]]
}

/// For each team size of `variants` (0: the library's own choice), seconds per step
/// `[(fastest, median) forward, (fastest, median) backward]` of one shape `(B, T, I, H)`, and for
/// the own choice the teams of one and of two that formed `[forward, backward]`.
fn time_shape(
    cell: CellKind,
    b: usize,
    t: usize,
    input: usize,
    h: usize,
    repeats: usize,
    variants: &[usize],
) -> (Vec<PerStep>, [[usize; 2]; 2]) {
    let cfg = RnnConfig::new(cell, input, h, 1, false, true).unwrap();
    let p = RnnParams::<f32>::init_uniform(cfg, 0);
    let x: Vec<f32> = (0..b * t * input)
        .map(|k| ((k % 97) as f32 * 0.01).sin())
        .collect();
    let batch = plain_batch(&x, Layout::TimeMajor, t, b);
    let d_out = vec![1.0f32; b * t * h];
    let keep = ForwardOptions {
        keep_tape: true,
        ..Default::default()
    };
    let mut times = vec![[Vec::new(), Vec::new()]; variants.len()];
    let mut own = [[0; 2]; 2];
    // Teams of one and of two formed since `before`.
    let formed = |before: &[usize]| {
        let now = teams_formed();
        [now[1] - before[1], now[2] - before[2]]
    };
    for r in 0..repeats + 1 {
        for (v, &team) in variants.iter().enumerate() {
            set_team_override(team);
            let before = teams_formed();
            let s = Instant::now();
            std::hint::black_box(forward(&p, &batch, &ForwardOptions::default()).unwrap());
            let f = s.elapsed().as_secs_f64();
            let fwd_teams = formed(&before);
            let o = forward(&p, &batch, &keep).unwrap();
            let before = teams_formed();
            let s = Instant::now();
            let g = backward(
                &p,
                o.tape.as_ref().unwrap(),
                &GradOutputs {
                    output: Some(&d_out),
                    h_n: None,
                    c_n: None,
                },
            )
            .unwrap();
            let bw = s.elapsed().as_secs_f64();
            let bwd_teams = formed(&before);
            std::hint::black_box(g);
            if r > 0 {
                times[v][0].push(f / t as f64);
                times[v][1].push(bw / t as f64);
                if team == 0 {
                    for k in 0..2 {
                        own[0][k] += fwd_teams[k];
                        own[1][k] += bwd_teams[k];
                    }
                }
            }
        }
    }
    set_team_override(0);
    (
        times.into_iter().map(|d| d.map(fastest_median)).collect(),
        own,
    )
}

fn main() {
    let arg = |i: usize, default: f64| {
        std::env::args()
            .nth(i)
            .map_or(default, |s| s.parse().expect("a number"))
    };
    let (repeats, macs) = (arg(1, 31.0) as usize, arg(2, 1e7));
    threads::set_num_threads(2).unwrap();
    println!("us per step, sweep on 1 thread / on 2, fastest of {repeats} [median]; x = 2 faster");
    // Named shapes `cell:B,T,I,H` instead of the grid.
    let shapes: Vec<String> = std::env::args().skip(3).collect();
    if !shapes.is_empty() {
        for text in shapes {
            let (cell, dims) = text.split_once(':').expect("cell:B,T,I,H");
            let cell = if cell == "gru" {
                CellKind::Gru
            } else {
                CellKind::Lstm
            };
            let d: Vec<usize> = dims
                .split(',')
                .map(|v| v.parse().expect("a size"))
                .collect();
            let (m, own) = time_shape(cell, d[0], d[1], d[2], d[3], repeats, &[1, 2, 0]);
            let mut line = format!("{text}:");
            for (k, name) in [(0, "fwd"), (1, "bwd")] {
                let us = |v: usize| (m[v][k].0 * 1e6, m[v][k].1 * 1e6);
                let ((f1, m1), (f2, m2), (f0, m0)) = (us(0), us(1), us(2));
                line += &format!(
                    "\n  {name}: 1 thread {f1:8.2} [{m1:8.2}]  team of 2 {f2:8.2} [{m2:8.2}]  \
                     own choice {f0:8.2} [{m0:8.2}] (sweeps on 1 / 2 threads: {} / {})",
                    own[k][0], own[k][1]
                );
            }
            println!("{line}");
        }
        return;
    }
    for cell in [CellKind::Lstm, CellKind::Gru] {
        let mut table = [Vec::new(), Vec::new()];
        for h in HIDDEN {
            let mut wins = [Vec::new(), Vec::new()];
            let mut line = format!("{} H={h:5}:", cell.name());
            for b in BATCH {
                let m = time_case(cell, b, h, repeats, macs);
                line += &format!("\n  B={b:3}:");
                for (d, name) in [(0, "fwd"), (1, "bwd")] {
                    let ([f1, m1], [f2, m2]) = (m[d][0].into(), m[d][1].into());
                    wins[d].push(f2 < f1);
                    line += &format!(
                        " {name} {:8.2}/{:8.2}{} [{:8.2}/{:8.2}]",
                        f1 * 1e6,
                        f2 * 1e6,
                        if f2 < f1 { "x" } else { " " },
                        m1 * 1e6,
                        m2 * 1e6
                    );
                }
            }
            println!("{line}");
            for d in 0..2 {
                // The smallest batch from which two threads win at every larger batch.
                let from = (0..BATCH.len())
                    .rev()
                    .take_while(|&i| wins[d][i])
                    .last()
                    .map_or(usize::MAX, |i| BATCH[i]);
                table[d].push((h, from));
            }
        }
        println!(
            "{} forward (H, min batch for 2 threads): {:?}",
            cell.name(),
            table[0]
        );
        println!(
            "{} backward (H, min batch for 2 threads): {:?}",
            cell.name(),
            table[1]
        );
    }
}
