//! Measures the sweep team's barrier (`threads::Barrier`) alone: a team of two pool threads that
//! only wait at the barrier, `steps` times per call, back to back. Per call it prints the
//! fastest and median time of calls with 0 steps (forming the team and leaving it) and the
//! fastest and median extra time per step of calls with `steps` steps; only calls where both
//! threads joined count (the number left out is printed).
//!
//! With `gap_us`, the calls are `gap_us` microseconds apart (the pool's threads fall asleep in
//! gaps of more than a few tens of microseconds, as between a program's calls).
//!
//!     cargo run --release -p lstmrs-core --example barrier_cost [calls] [steps] [gap_us]

use lstmrs_core::bench::team_barrier_cost;
use lstmrs_core::threads;

/// `(fastest, median)` of `v`.
fn fastest_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .map_or(default, |s| s.parse().expect("a whole number"))
    };
    let (calls, steps, gap) = (arg(1, 201), arg(2, 1000), arg(3, 0));
    let pause = || {
        if gap > 0 {
            std::thread::sleep(std::time::Duration::from_micros(gap as u64));
        }
    };
    threads::set_num_threads(2).unwrap();
    let (mut empty, mut full, mut alone) = (Vec::new(), Vec::new(), 0);
    for c in 0..calls + 10 {
        pause();
        let (n0, t0) = team_barrier_cost(2, 0);
        pause();
        let (n1, t1) = team_barrier_cost(2, steps);
        if c < 10 {
            continue;
        }
        if n0 == 2 && n1 == 2 {
            empty.push(t0);
            full.push(t1);
        } else {
            alone += 1;
        }
    }
    if empty.is_empty() {
        println!("no call formed a team of two ({alone} calls)");
        return;
    }
    let per_step: Vec<f64> = full
        .iter()
        .zip(&empty)
        .map(|(f, e)| (f - e) / steps as f64)
        .collect();
    let (ef, em) = fastest_median(empty);
    let (sf, sm) = fastest_median(per_step);
    println!(
        "team of 2: forming + leaving {:.2} us fastest, {:.2} us median; barrier {:.3} us per \
         step fastest, {:.3} us median ({} calls of {steps} steps; {alone} calls without a team of two)",
        ef * 1e6,
        em * 1e6,
        sf * 1e6,
        sm * 1e6,
        calls
    );
}
