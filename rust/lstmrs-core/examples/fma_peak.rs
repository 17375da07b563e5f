//! This machine's f32 multiply-add peak (issue 16): the ceiling every product's rate is a
//! fraction of. Each thread runs 12 independent AVX-512 FMA chains (more than latency × issue
//! width: 4 cycles × 2 pipes) over registers only, so nothing but the FMA units limits it; the
//! implied clock is GFLOP/s ÷ (2 pipes × 16 lanes × 2 flops). Threads 1..=N run at once, each
//! timing its own loop by wall clock and by its own CPU time: on a loaded machine the wall rate
//! is the share of the cores this process got, the CPU-time rate what a core does while it runs.
//!
//!     cargo run --release -p lstmrs-core --example fma_peak [max_threads] [repeats]
//!
//! The machine must support AVX-512F (the example says so and exits otherwise).

mod common;

use std::time::Instant;

/// Iterations of the 12-chain loop per timed call: about 0.2 s at 4 GHz.
const ITERS: u64 = 200_000_000;

/// [`common::fma_chains`] on 8-lane AVX2 registers: whether the core runs a 16-lane FMA in one
/// pass (then this reaches half of its rate) or in two halves (then both rates are equal).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains_256(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut lanes = [0f32; 8];
    let mut sum = _mm256_setzero_ps();
    for v in acc {
        sum = _mm256_add_ps(sum, v);
    }
    // SAFETY: `lanes` holds one 8-lane vector.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}

/// This thread's CPU time in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// GFLOP/s of one timed call of [`common::fma_chains`] (or, `wide == false`, [`chains_256`]) on this
/// thread: per wall second, per CPU second.
fn one_call(wide: bool) -> (f64, f64) {
    let (t0, c0) = (Instant::now(), thread_cpu());
    // SAFETY: main checked that the CPU supports AVX-512F (and with it AVX2 and FMA).
    let r = unsafe {
        if wide {
            common::fma_chains(ITERS)
        } else {
            chains_256(ITERS)
        }
    };
    let (s, c) = (t0.elapsed().as_secs_f64(), thread_cpu() - c0);
    std::hint::black_box(r);
    let lanes = if wide { 16 } else { 8 };
    let flops = (ITERS * 12 * lanes * 2) as f64;
    (flops / s / 1e9, flops / c / 1e9)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if !is_x86_feature_detected!("avx512f") {
        println!("no AVX-512F on this machine");
        return;
    }
    let mut args = std::env::args().skip(1);
    let max_threads: usize = args.next().map_or(2, |s| s.parse().expect("threads"));
    let repeats: usize = args.next().map_or(5, |s| s.parse().expect("repeats"));
    println!("f32 AVX-512 FMA peak, {repeats} repeats (GFLOP/s; the clock each implies at two FMA pipes of the width)");
    for (threads, wide) in (1..=max_threads).map(|t| (t, true)).chain([(1, false)]) {
        let (mut walls, mut cpus) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            let rates: Vec<(f64, f64)> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|_| s.spawn(move || one_call(wide)))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            walls.push(rates.iter().map(|r| r.0).sum::<f64>());
            // Per CPU second of one thread: the core's own rate.
            cpus.extend(rates.iter().map(|r| r.1));
        }
        let best_wall = walls.iter().fold(0.0f64, |a, &b| a.max(b));
        let best_cpu = cpus.iter().fold(0.0f64, |a, &b| a.max(b));
        println!(
            "{} threads={threads}: wall median {:.1} GFLOP/s (best {best_wall:.1}); per CPU second \
             of a thread median {:.1} (best {best_cpu:.1}, {:.2} GHz)",
            if wide { "16-lane" } else { " 8-lane" },
            median(walls),
            median(cpus),
            best_cpu / if wide { 64.0 } else { 32.0 }
        );
    }
}
