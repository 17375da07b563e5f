//! Times one streamed step of a one-layer network through every product path, to place the
//! stepper's thresholds (`SMALL_BATCH_MAX`, `SPLIT_MIN_WORK`):
//! `cargo run --release -p lstmrs-core --example stepper_speed -- [threads] [B,B,..] [H,H,..]`.
//! Prints the median µs per step of 9 runs of `max(200, 2e8 / work)` steps for each path: each
//! `matvec` kernel on one thread and split among the pool's threads, and the general GEMM.

use lstmrs_core::stepper::{Kernel, Stepper};
use lstmrs_core::{threads, CellKind, RnnConfig, RnnParams};
use std::time::Instant;

const INPUT: usize = 32;

fn list(arg: Option<String>, default: &[usize]) -> Vec<usize> {
    arg.map(|a| a.split(',').map(|v| v.parse().expect("a size")).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// Median µs per step of `stepper` over `steps` steps, 9 runs.
fn time(stepper: &mut Stepper<f32>, p: &RnnParams<f32>, b: usize, h: usize, work: usize) -> f64 {
    let x: Vec<f32> = (0..b * INPUT).map(|k| (k as f32 * 0.37).sin()).collect();
    let mut out = vec![0f32; b * h];
    let steps = (200_000_000 / work).max(200);
    let mut runs: Vec<f64> = (0..10)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..steps {
                stepper.step(p.view(), &x, &mut out).unwrap();
            }
            t.elapsed().as_secs_f64() * 1e6 / steps as f64
        })
        .skip(1) // warm-up
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    if let Some(n) = args.next() {
        threads::set_num_threads(n.parse().expect("a thread count")).unwrap();
    }
    let batches = list(args.next(), &[1, 2, 4, 8, 16, 32, 64]);
    let hiddens = list(args.next(), &[64, 128, 256, 512]);
    println!(
        "threads {}; µs per step, input {INPUT}",
        threads::num_threads()
    );
    println!("cell  B     H     work      path            µs");
    for cell in [CellKind::Lstm, CellKind::Gru] {
        for &h in &hiddens {
            for &b in &batches {
                let cfg = RnnConfig::new(cell, INPUT, h, 1, false, true).unwrap();
                let p = RnnParams::<f32>::init_uniform(cfg, 0);
                let work = lstmrs_core::network::forward_work(&cfg, 1, b);
                let mut paths: Vec<(String, Stepper<f32>)> = Vec::new();
                for k in Kernel::available::<f32>() {
                    let mut s = Stepper::with_path(p.view(), b, true, k).unwrap();
                    s.set_split_min_work(usize::MAX);
                    paths.push((format!("{k:?}"), s));
                    let mut s = Stepper::with_path(p.view(), b, true, k).unwrap();
                    s.set_split_min_work(0);
                    paths.push((format!("{k:?}-split"), s));
                }
                paths.push((
                    "gemm".into(),
                    Stepper::with_path(p.view(), b, false, Kernel::Auto).unwrap(),
                ));
                paths.push(("auto".into(), Stepper::new(p.view(), b).unwrap()));
                let c = format!("{cell:?}").to_lowercase();
                for (path, mut s) in paths {
                    let us = time(&mut s, &p, b, h, work);
                    println!("{c:<5} {b:<5} {h:<5} {work:<9} {path:<15} {us:.2}");
                }
            }
        }
    }
}
