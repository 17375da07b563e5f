//! What the device costs before any RNN runs: a submit's round trip, one more dispatch inside a
//! submit, and the tiled matrix product's speed. The benchmark's GPU section reports these next to
//! the RNN timings, because a sequence pass is one dispatch per time step and a few large
//! products, so these three numbers bound what any RNN shape can reach.

use super::context::{gpu, GBuf, Gpu, Recorder};
use super::matmul::{matmul, Operand, Out};
use crate::error::{Error, Result};
use std::time::Instant;

use super::GpuProbe;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `count` dependent products `C += A·B` of size `n` recorded into one submit.
fn products(g: &Gpu, bufs: &[GBuf; 3], n: usize, count: usize) -> Result<f64> {
    let [a, b, c] = bufs;
    let op = |buf| Operand {
        buf,
        off: 0,
        ld: n,
        trans: false,
    };
    let t0 = Instant::now();
    let mut rec = Recorder::new(g);
    for _ in 0..count {
        let out = Out {
            buf: c,
            off: 0,
            ld: n,
        };
        matmul(&mut rec, (n, n, n), op(a), op(b), out, None, true)?;
    }
    rec.submit::<f32>(&[(c, 0, 1)])?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Times the device: `repeats` (at least 1) runs of each measurement after one warm-up, medians
/// reported. `dispatches` (at least 2) tiny products go into the per-dispatch submit.
pub fn probe(matmul_n: usize, dispatches: usize, repeats: usize) -> Result<GpuProbe> {
    if matmul_n == 0 {
        return Err(Error::Value {
            arg: "n",
            expected: "a matrix size of at least 1".into(),
            got: "0".into(),
        });
    }
    let g = gpu()?;
    g.scoped(|| {
        let (repeats, dispatches) = (repeats.max(1), dispatches.max(2));
        let tiny: [GBuf; 3] = [
            g.upload(&[1.0f32; 16], "probe a")?,
            g.upload(&[1.0f32; 16], "probe b")?,
            g.zeros(16, "probe c")?,
        ];
        let data: Vec<f32> = (0..matmul_n * matmul_n)
            .map(|i| ((i % 7) as f32 - 3.0) * 0.01)
            .collect();
        let large: [GBuf; 3] = [
            g.upload(&data, "probe A")?,
            g.upload(&data, "probe B")?,
            g.zeros(matmul_n * matmul_n, "probe C")?,
        ];
        let run = |bufs: &[GBuf; 3], n: usize, count: usize| -> Result<f64> {
            products(g, bufs, n, count)?; // warm-up: pipeline creation, first-touch
            let times = (0..repeats)
                .map(|_| products(g, bufs, n, count))
                .collect::<Result<Vec<_>>>()?;
            Ok(median(times))
        };
        let one = run(&tiny, 4, 1)?;
        let many = run(&tiny, 4, dispatches)?;
        let large_s = run(&large, matmul_n, 1)?;
        Ok(GpuProbe {
            submit_roundtrip_s: one,
            per_dispatch_s: ((many - one) / (dispatches - 1) as f64).max(0.0),
            matmul_s: large_s,
            matmul_n,
            dispatches,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe runs and its numbers are ordered as physics demands, wherever an adapter exists.
    #[test]
    fn probe_measures_positive_times() {
        if gpu().is_err() {
            return; // gpu_parity.rs enforces LSTMRS_REQUIRE_GPU; this is only a smoke check
        }
        let p = probe(64, 8, 2).unwrap();
        assert!(p.submit_roundtrip_s > 0.0 && p.matmul_s > 0.0);
        assert!(p.per_dispatch_s.is_finite() && p.matmul_tflops() > 0.0);
        assert_eq!((p.matmul_n, p.dispatches), (64, 8));
    }
}
