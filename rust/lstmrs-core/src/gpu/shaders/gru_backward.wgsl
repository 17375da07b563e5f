// GRU gate backward for one (row, unit). Input-side and recurrent-side gradients differ on the n
// gate only: d(W_in x) = da_n, d(W_hn h + b_hn) = da_n * r. dh*z flows straight to h_prev.

const G: u32 = 3u;

fn cell_backward(b: u32, j: u32, dh: f32) {
    let hh = p.hidden;
    let k = b * hh + j;
    let a = p.act_off + b * G * hh + j;
    let r = tape[a];
    let z = tape[a + hh];
    let n = tape[a + 2u * hh];
    let lin = tape[p.aux_off + k];
    let h_prev = tape[p.state_off + k];
    let da_n = dh * (1.0 - z) * (1.0 - n * n);
    let da_r = da_n * lin * r * (1.0 - r);
    let da_z = dh * (h_prev - n) * z * (1.0 - z);
    let d = p.dg_off + b * G * hh + j;
    dg[d] = da_r;
    dg[d + hh] = da_z;
    dg[d + 2u * hh] = da_n;
    let e = p.dgh_base + d;
    dg[e] = da_r;
    dg[e + hh] = da_z;
    dg[e + 2u * hh] = da_n * r;
    carry[k] = dh * z;
}
