// LSTM gate backward for one (row, unit): from dh and the carried dc, the gradients of the four
// gate pre-activations (input and recurrent side are equal), and dc for the previous step.

const G: u32 = 4u;

fn cell_backward(b: u32, j: u32, dh: f32) {
    let hh = p.hidden;
    let k = b * hh + j;
    let a = p.act_off + b * G * hh + j;
    let i = tape[a];
    let f = tape[a + hh];
    let gg = tape[a + 2u * hh];
    let o = tape[a + 3u * hh];
    let tc = tape[p.aux_off + k];
    let c_prev = tape[p.state_off + k];
    let dct = carry[p.carry_c + k] + dh * o * (1.0 - tc * tc);
    let d = p.dg_off + b * G * hh + j;
    dg[d] = dct * gg * i * (1.0 - i);
    dg[d + hh] = dct * c_prev * f * (1.0 - f);
    dg[d + 2u * hh] = dct * i * (1.0 - gg * gg);
    dg[d + 3u * hh] = dh * tc * o * (1.0 - o);
    carry[p.carry_c + k] = dct * f;
    carry[k] = 0.0;
}
