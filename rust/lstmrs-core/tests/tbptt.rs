//! Running a long sequence in chunks, carrying the states forward (truncated backpropagation
//! through time).
//!
//! What holds exactly, and is tested: the chunked forward pass equals the full one; and the full
//! gradients are the sum of the chunks' gradients when each earlier chunk receives the next
//! chunk's initial-state gradient as its final-state gradient. What does *not* hold, and so is not
//! asserted: the last chunk's gradients alone equal the full gradients even when the upstream
//! gradient is zero outside that chunk — the parameters also act on the carried state through
//! the earlier steps, and the test below checks that this part is what makes up the difference.
//! (Only unidirectional networks without lengths chunk this way: a reverse direction reads the
//! future.)

mod common;

use common::*;
use lstmrs_core::{backward, forward, Batch, CellKind, GradOutputs, Layout};

const TOL: f64 = 1e-12;

#[test]
fn chunked_forward_and_backward_equal_the_full_sequence() {
    let s = shape(3, 5, 3, 12);
    let splits = [0, 5, 6, 12];
    for &cell in &CELLS {
        for layers in [1, 2, 3] {
            let variants = LAYOUTS.iter().flat_map(|&l| [(l, false), (l, true)]);
            for (layout, zero_early) in variants {
                let case = Case {
                    cell,
                    layers,
                    bidirectional: false,
                    bias: true,
                    ragged: false,
                    init_state: true,
                    layout,
                    shape: s,
                };
                let mut d = case.data::<f64>(40 + layers as u64);
                let cfg = case.config();
                let f_out = cfg.output_size();
                if zero_early {
                    // Upstream gradient only inside the last chunk.
                    let t_last = splits[splits.len() - 2];
                    for t in 0..t_last {
                        for b in 0..s.batch {
                            let i = at(layout, s.steps, s.batch, f_out, t, b);
                            d.d_output[i..i + f_out].fill(0.0);
                        }
                    }
                }
                let full = forward(&d.params, &d.batch(), &tape_opts()).expect("forward");
                let g_full = backward(
                    &d.params,
                    full.tape.as_ref().expect("tape"),
                    &d.grad_outputs(),
                )
                .expect("backward");
                let lstm = cell == CellKind::Lstm;

                // Steps t0..t1 of a `[B,T,F]`/`[T,B,F]` buffer, as a buffer of its own.
                let slice = |v: &[f64], f: usize, t0: usize, t1: usize| -> Vec<f64> {
                    match layout {
                        Layout::TimeMajor => v[t0 * s.batch * f..t1 * s.batch * f].to_vec(),
                        Layout::BatchFirst => (0..s.batch)
                            .flat_map(|b| {
                                v[(b * s.steps + t0) * f..(b * s.steps + t1) * f].to_vec()
                            })
                            .collect(),
                    }
                };

                // Forward, chunk by chunk, carrying (h, c).
                let mut h = d.h0.clone().expect("h0");
                let mut c = d.c0.clone();
                let mut chunks = Vec::new();
                for w in splits.windows(2) {
                    let (t0, t1) = (w[0], w[1]);
                    let input = slice(&d.input, s.input, t0, t1);
                    let x = Batch {
                        input: &input,
                        layout,
                        seq_len: t1 - t0,
                        batch: s.batch,
                        h0: Some(&h),
                        c0: c.as_deref(),
                        lengths: None,
                    };
                    let out = forward(&d.params, &x, &tape_opts()).expect("chunk forward");
                    assert_close(
                        "chunk output",
                        &out.output,
                        &slice(&full.output, f_out, t0, t1),
                        TOL,
                        TOL,
                        &(case, t0),
                    );
                    h.clone_from(&out.h_n);
                    c.clone_from(&out.c_n);
                    chunks.push((t0, t1, out));
                }
                assert_close("h_n", &h, &full.h_n, TOL, TOL, &case);
                if lstm {
                    assert_close(
                        "c_n",
                        c.as_ref().expect("c"),
                        full.c_n.as_ref().expect("c_n"),
                        TOL,
                        TOL,
                        &case,
                    );
                }

                // Backward, last chunk first, carrying the state gradients back.
                let mut dh = d.d_h_n.clone();
                let mut dc = d.d_c_n.clone();
                let mut param_sum = vec![0.0; d.params.len()];
                let mut last_chunk_params = None;
                for (t0, t1, out) in chunks.iter().rev() {
                    let d_out = slice(&d.d_output, f_out, *t0, *t1);
                    let g = backward(
                        &d.params,
                        out.tape.as_ref().expect("tape"),
                        &GradOutputs {
                            output: Some(&d_out),
                            h_n: Some(&dh),
                            c_n: dc.as_deref(),
                        },
                    )
                    .expect("chunk backward");
                    assert_close(
                        "chunk d_input",
                        &g.input,
                        &slice(&g_full.input, s.input, *t0, *t1),
                        TOL,
                        TOL,
                        &(case, t0),
                    );
                    param_sum
                        .iter_mut()
                        .zip(&g.params)
                        .for_each(|(a, &v)| *a += v);
                    last_chunk_params.get_or_insert_with(|| g.params.clone());
                    dh = g.h0;
                    dc = g.c0;
                }
                assert_close("d_params", &param_sum, &g_full.params, 1e-11, 1e-11, &case);
                assert_close("d_h0", &dh, &g_full.h0, TOL, TOL, &case);
                if lstm {
                    assert_close(
                        "d_c0",
                        dc.as_ref().expect("dc"),
                        g_full.c0.as_ref().expect("d_c0"),
                        TOL,
                        TOL,
                        &case,
                    );
                }
                // Truncation drops the earlier chunks' share, and that share is not zero, even
                // when no upstream gradient reaches the earlier chunks directly.
                let last = last_chunk_params.expect("chunks");
                let (r, _) = worst(&last, &g_full.params, 1e-6, 1e-6);
                assert!(
                    r > 1.0,
                    "truncated gradients equal full ones in {case:?} ({zero_early})"
                );
            }
        }
    }
}
