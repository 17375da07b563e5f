// LSTM gates i, f, g, o; c' = f*c + i*g, h' = o*tanh(c'). act = [i, f, g, o], aux = tanh(c').
// Rows past their length carry h and c unchanged and output zero (packed-sequence semantics).
// Projected (flag 4): o*tanh(c') is m, written at m_off (zero past the length); h, its carry and
// the output are the projection kernel's (proj_forward.wgsl).

const G: u32 = 4u;

fn cell_forward(b: u32, j: u32, rec: array<f32, G>) {
    let hh = p.hidden;
    let gh = G * hh;
    let k = b * hh + j;
    let tape_on = (p.flags & 2u) != 0u;
    let projected = (p.flags & 4u) != 0u;
    let a = p.act_off + b * gh + j;
    if !in_sequence(b) {
        if tape_on {
            for (var g = 0u; g < G; g++) {
                tape[a + g * hh] = 0.0;
            }
            tape[p.aux_off + k] = 0.0;
        }
        tape[p.c_out + k] = tape[p.c_in + k];
        if projected {
            tape[p.m_off + k] = 0.0;
        } else {
            tape[p.h_out + k] = tape[p.h_in + k];
            out[p.out_off + b * p.out_ld + j] = 0.0;
        }
        return;
    }
    let x = p.x_off + b * gh + j;
    let i = sigmoid(x_pre[x] + rec[0]);
    let f = sigmoid(x_pre[x + hh] + rec[1]);
    let gg = tanh_act(x_pre[x + 2u * hh] + rec[2]);
    let o = sigmoid(x_pre[x + 3u * hh] + rec[3]);
    let c = f * tape[p.c_in + k] + i * gg;
    let tc = tanh_act(c);
    let h = o * tc;
    if tape_on {
        tape[a] = i;
        tape[a + hh] = f;
        tape[a + 2u * hh] = gg;
        tape[a + 3u * hh] = o;
        tape[p.aux_off + k] = tc;
    }
    tape[p.c_out + k] = c;
    if projected {
        tape[p.m_off + k] = h;
    } else {
        tape[p.h_out + k] = h;
        out[p.out_off + b * p.out_ld + j] = h;
    }
}
