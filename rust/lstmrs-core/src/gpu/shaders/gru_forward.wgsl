// GRU gates r, z, n (PyTorch): n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1-z)*n + z*h.
// The reset gate multiplies the recurrent product *after* it is taken, so b_hn is added here and
// not folded into x_pre. act = [r, z, n], aux = W_hn h + b_hn.
// Rows past their length carry h unchanged and output zero (packed-sequence semantics).

const G: u32 = 3u;

fn cell_forward(b: u32, j: u32, rec: array<f32, G>) {
    let hh = p.hidden;
    let gh = G * hh;
    let k = b * hh + j;
    let tape_on = (p.flags & 2u) != 0u;
    let a = p.act_off + b * gh + j;
    let h_prev = tape[p.h_in + k];
    if !in_sequence(b) {
        if tape_on {
            for (var g = 0u; g < G; g++) {
                tape[a + g * hh] = 0.0;
            }
            tape[p.aux_off + k] = 0.0;
        }
        tape[p.h_out + k] = h_prev;
        out[p.out_off + b * p.out_ld + j] = 0.0;
        return;
    }
    let x = p.x_off + b * gh + j;
    let r = sigmoid(x_pre[x] + rec[0]);
    let z = sigmoid(x_pre[x + hh] + rec[1]);
    var lin = rec[2];
    if (p.flags & 1u) != 0u {
        lin += weights[p.b_hn + j];
    }
    let n = tanh_act(x_pre[x + 2u * hh] + r * lin);
    let h = n + z * (h_prev - n);
    if tape_on {
        tape[a] = r;
        tape[a + hh] = z;
        tape[a + 2u * hh] = n;
        tape[p.aux_off + k] = lin;
    }
    tape[p.h_out + k] = h;
    out[p.out_off + b * p.out_ld + j] = h;
}
