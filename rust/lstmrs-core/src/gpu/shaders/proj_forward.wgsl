// The projected LSTM's second kernel of a forward step (appended to step_forward.wgsl, which
// computes rec = m[b,:] · W_hr[j,:] with K = H): h'[b,j] = rec on rows in their sequence, which
// is also the output; rows past their length carry h and output zero, as the plain LSTM does.
// Here `hidden` is P, h_in is the step's m, h_out the state slot written and h_prev the one read.

const G: u32 = 1u;

fn cell_forward(b: u32, j: u32, rec: array<f32, G>) {
    let k = b * p.hidden + j;
    let o = p.out_off + b * p.out_ld + j;
    if !in_sequence(b) {
        tape[p.h_out + k] = tape[p.h_prev + k];
        out[o] = 0.0;
        return;
    }
    tape[p.h_out + k] = rec[0];
    out[o] = rec[0];
}
