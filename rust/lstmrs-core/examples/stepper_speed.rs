//! Times one streamed step of a one-layer network through every product path, to place the
//! stepper's thresholds (`SMALL_BATCH_MAX`, `SPLIT_MIN_WORK`):
//! `cargo run --release -p lstmrs-core --example stepper_speed -- [threads] [B,B,..] [H,H,..]`.
//! Prints µs per step (the fastest of 15 runs of `max(100, 5e7 / work)` steps, the median and
//! the least CPU time of the calling thread; `RUNS`, `STEPS` change the counts) for each path:
//! each `matvec` kernel on one thread and split among the pool's threads, the general GEMM, and
//! the stepper's own choice (`KERNELS=Avx512,Avx512Lanes` keeps only those kernels).

use lstmrs_core::stepper::{Kernel, Stepper};
use lstmrs_core::{threads, CellKind, RnnConfig, RnnParams, RnnWeights};
use std::time::Instant;

const INPUT: usize = 32;

fn list(arg: Option<String>, default: &[usize]) -> Vec<usize> {
    arg.map(|a| a.split(',').map(|v| v.parse().expect("a size")).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// This thread's CPU time in seconds: on a shared machine it leaves out the time the thread
/// waited for a core (a split step's other thread is not counted).
fn thread_cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// A positive count from the environment variable `name`, else `default`.
fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| v.parse().expect("a count"))
}

/// (min wall, median thread-CPU, min thread-CPU) µs per step of `stepper`, `RUNS` (15) runs of
/// `STEPS` (`max(100, 5e7 / work)`) steps after one warm-up run. On a loaded machine, many short
/// runs (`RUNS=200 STEPS=5`) and their minima come closest to the idle time.
fn time(
    stepper: &mut Stepper<f32>,
    w: RnnWeights<f32>,
    b: usize,
    h: usize,
    work: usize,
) -> (f64, f64, f64) {
    let x: Vec<f32> = (0..b * INPUT).map(|k| (k as f32 * 0.37).sin()).collect();
    let mut out = vec![0f32; b * h];
    let steps = env_count("STEPS", (50_000_000 / work).max(100));
    let (mut wall, mut cpu): (Vec<f64>, Vec<f64>) = (0..env_count("RUNS", 15) + 1)
        .map(|_| {
            let (t, c) = (Instant::now(), thread_cpu());
            for _ in 0..steps {
                stepper.step(w, &x, &mut out).unwrap();
            }
            let per = 1e6 / steps as f64;
            (t.elapsed().as_secs_f64() * per, (thread_cpu() - c) * per)
        })
        .skip(1) // warm-up
        .unzip();
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    (wall[0], cpu[cpu.len() / 2], cpu[0])
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
    println!("cell  B     H     work      path               wall-min  thread-cpu thread-cpu-min");
    for cell in [CellKind::Lstm, CellKind::Gru] {
        for &h in &hiddens {
            for &b in &batches {
                let cfg = RnnConfig::new(cell, INPUT, h, 1, false, true).unwrap();
                let p = RnnParams::<f32>::init_uniform(cfg, 0);
                // The weights at a 64-byte boundary, as a model's parameters are (a page-aligned
                // allocation), or `ALIGN` floats past one.
                let skew: usize = std::env::var("ALIGN").map_or(0, |v| v.parse().unwrap());
                let src = p.view().as_slice();
                let mut buf = vec![0f32; src.len() + 32];
                let at = (64 - buf.as_ptr() as usize % 64) % 64 / 4 + skew;
                buf[at..at + src.len()].copy_from_slice(src);
                let p = RnnWeights::new(cfg, &buf[at..at + src.len()]).unwrap();
                let work = lstmrs_core::network::forward_work(&cfg, 1, b);
                let mut paths: Vec<(String, Stepper<f32>)> = Vec::new();
                let kernels = std::env::var("KERNELS").unwrap_or_default();
                for k in Kernel::available::<f32>() {
                    if !kernels.is_empty() && !kernels.contains(&format!("{k:?}")) {
                        continue;
                    }
                    let mut s = Stepper::with_path(p, b, true, k).unwrap();
                    s.set_split_min_work(usize::MAX);
                    paths.push((format!("{k:?}"), s));
                    let mut s = Stepper::with_path(p, b, true, k).unwrap();
                    s.set_split_min_work(0);
                    paths.push((format!("{k:?}-split"), s));
                }
                paths.push((
                    "gemm".into(),
                    Stepper::with_path(p, b, false, Kernel::Auto).unwrap(),
                ));
                paths.push(("auto".into(), Stepper::new(p, b).unwrap()));
                let c = format!("{cell:?}").to_lowercase();
                for (path, mut s) in paths {
                    let (wall, cpu, cpu_min) = time(&mut s, p, b, h, work);
                    println!(
                        "{c:<5} {b:<5} {h:<5} {work:<9} {path:<18} {wall:<9.2} {cpu:<10.2} {cpu_min:.2}"
                    );
                }
            }
        }
    }
}
