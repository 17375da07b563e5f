//! The measured choice of a sweep's team (`team_choice`): sweeps below the cost model's threshold
//! try a team of two beside one thread and keep the faster; every call gives the same bits.
//!
//! `teams_formed` counts process-wide, so this binary holds one test function.

use lstmrs_core::bench::{teams_formed, teams_short};
use lstmrs_core::{
    forward, threads, Batch, CellKind, ForwardOptions, Layout, RnnConfig, RnnParams,
};

/// Inference outputs of `calls` calls of an LSTM layer `(B, T, I, H)` on a pool of two, and how
/// many teams of two were asked for meanwhile (formed, or left short by a partner busy
/// elsewhere); stops early once one formed after at least 8 calls.
fn calls(b: usize, t: usize, i: usize, h: usize, calls: usize) -> (Vec<Vec<f32>>, usize) {
    let cfg = RnnConfig::new(CellKind::Lstm, i, h, 1, false, true).unwrap();
    let p = RnnParams::<f32>::init_uniform(cfg, 7);
    let x: Vec<f32> = (0..b * t * i)
        .map(|k| ((k % 89) as f32 * 0.03).sin())
        .collect();
    let batch = Batch {
        input: &x,
        layout: Layout::TimeMajor,
        seq_len: t,
        batch: b,
        h0: None,
        c0: None,
        lengths: None,
    };
    let asked = || teams_formed()[2] + teams_short();
    let (before, formed_before) = (asked(), teams_formed()[2]);
    let mut outs = Vec::new();
    for c in 0..calls {
        outs.push(
            forward(&p, &batch, &ForwardOptions::default())
                .unwrap()
                .output,
        );
        if c >= 8 && teams_formed()[2] > formed_before {
            break;
        }
    }
    (outs, asked() - before)
}

#[test]
fn sweeps_in_the_band_try_a_team_and_keep_their_bits() {
    threads::set_num_threads(2).unwrap();
    // 2^24 multiply-adds of step products (B=16, H=64, T=64): in the band. Its first calls probe
    // a team of two (and every 32nd call after); on a loaded machine the partner may miss the
    // probes and leave the team short: the bits must be the same either way.
    let (outs, teams) = calls(16, 64, 8, 64, 100);
    assert!(
        teams > 0,
        "no team of two asked for in {} calls",
        outs.len()
    );
    for o in &outs[1..] {
        assert!(o
            .iter()
            .zip(&outs[0])
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    // Below the band (2^20: B=4, H=64, T=16, steps of 2^16, one thread's minimum): never a team.
    let (outs, teams) = calls(4, 16, 8, 64, 40);
    assert_eq!(teams, 0, "a sweep below the band asked for a team");
    assert_eq!(outs.len(), 40);
}
