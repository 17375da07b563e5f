// The projected LSTM's first kernel of a backward step (appended to step_backward.wgsl, which
// has added dg(previous step) · W_hh[4H,P], the carried gradient and d_out into dh over the P
// features): on rows in their sequence all of dh goes into h_t = W_hr m_t, so it is this step's
// d_proj (written where the gate gradients of a G = 1 cell go) and the carry empties. Rows past
// their length get d_proj = 0 and keep dh in the carry (step_backward.wgsl).

const G: u32 = 1u;

fn cell_backward(b: u32, j: u32, dh: f32) {
    dg[p.dg_off + b * p.hidden + j] = dh;
    carry[b * p.hidden + j] = 0.0;
}
