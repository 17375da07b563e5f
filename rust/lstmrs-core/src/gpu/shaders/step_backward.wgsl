// One reverse (BPTT) time step of one direction of one layer, for all batch rows. The cell file
// appended to this one defines G and `cell_backward`.
//
// The gradient reaching h at this step is
//     dh = carry_h + dg_rec(previous backward step) · W_hh + d_out[t]   (d_out on active rows),
// where carry_h is the part that skips the recurrent product (zero for the LSTM, dh*z for the
// GRU) and dg_rec the gate gradients on the recurrent side. The product is the fused part: a
// workgroup owns WG_J units and WG_B*RB rows and reduces over the G*H gate columns through
// workgroup memory, then each thread runs the cell's gate backward for its (row, unit) pairs and
// writes this step's gate gradients. With FINAL set, only the product runs and dh is left in
// carry_h: that is the gradient of the initial state.
//
// `dg` holds dgx [T,B,G*H] (and, GRU, dgh after it at dgh_base); `carry` holds [dh | dc] for
// [B,H] each. Each thread reads and writes only its own carry elements, so they update in place.
//
// The projected LSTM runs this kernel twice a step (see gpu/step.rs): first with G = 1 over the
// P features of h (proj_backward.wgsl), where the product is dg(previous step) · W_hh[4H,P] and
// the "gate gradient" it writes is d_proj[t] = dh; then with the LSTM cell over the H units, where
// the product is dm = d_proj[t] · W_hr[P,H] (K = P) and carry_h is a scratch row that stays zero.

struct Params {
    batch: u32,
    hidden: u32,
    t: u32,
    // 1: dg of a previous backward step exists (at dg_prev), 2: d_out is bound,
    // 4: FINAL (product only).
    flags: u32,
    w_hh: u32,
    act_off: u32,
    aux_off: u32,
    // LSTM: c entering step t; GRU: h entering step t.
    state_off: u32,
    dout_off: u32,
    dout_ld: u32,
    dg_off: u32,
    dg_prev: u32,
    dgh_base: u32,
    // Where the recurrent-side gradients start in `dg`: 0 (LSTM) or dgh_base (GRU).
    rec_base: u32,
    carry_c: u32,
    // The product's depth K (G*H; the projected LSTM's P when its gate kernel reads d_proj).
    k_len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> lengths: array<u32>;
@group(0) @binding(3) var<storage, read> tape: array<f32>;
@group(0) @binding(4) var<storage, read> d_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> dg: array<f32>;
@group(0) @binding(6) var<storage, read_write> carry: array<f32>;

override D_TILE: u32 = BK * ROWS;
override W_TILE: u32 = BK * WG_J;

var<workgroup> d_s: array<f32, D_TILE>;
var<workgroup> w_s: array<f32, W_TILE>;

@compute @workgroup_size(WG_J, WG_B)
fn main(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let hh = p.hidden;
    let gh = G * hh;
    let j0 = wid.x * WG_J;
    let row0 = wid.y * ROWS;
    let threads = WG_J * WG_B;
    var acc: array<f32, RB>;
    let kl = p.k_len;
    if (p.flags & 1u) != 0u {
        for (var k0 = 0u; k0 < kl; k0 += BK) {
            // dg_rec[b, k0..k0+BK], contiguous along k.
            for (var e = li; e < ROWS * BK; e += threads) {
                let kk = e % BK;
                let r = e / BK;
                let b = row0 + r;
                let k = k0 + kk;
                var v = 0.0;
                if b < p.batch && k < kl {
                    v = dg[p.rec_base + p.dg_prev + b * kl + k];
                }
                d_s[kk * ROWS + r] = v;
            }
            // W_hh[k0..k0+BK, j0..j0+WG_J], contiguous along j.
            for (var e = li; e < BK * WG_J; e += threads) {
                let jj = e % WG_J;
                let kk = e / WG_J;
                let j = j0 + jj;
                let k = k0 + kk;
                var v = 0.0;
                if j < hh && k < kl {
                    v = weights[p.w_hh + k * hh + j];
                }
                w_s[kk * WG_J + jj] = v;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < BK; kk++) {
                let w = w_s[kk * WG_J + lid.x];
                for (var r = 0u; r < RB; r++) {
                    acc[r] = fma(d_s[kk * ROWS + r * WG_B + lid.y], w, acc[r]);
                }
            }
            workgroupBarrier();
        }
    }
    let j = j0 + lid.x;
    for (var r = 0u; r < RB; r++) {
        let b = row0 + r * WG_B + lid.y;
        if b >= p.batch || j >= hh {
            continue;
        }
        let k = b * hh + j;
        var dh = carry[k] + acc[r];
        if (p.flags & 4u) != 0u {
            carry[k] = dh;
            continue;
        }
        if !in_sequence(b) {
            // Past the row's length: no gate gradients, dh and dc flow through unchanged.
            for (var g = 0u; g < G; g++) {
                dg[p.dg_off + b * gh + g * hh + j] = 0.0;
                if p.rec_base != 0u {
                    dg[p.dgh_base + p.dg_off + b * gh + g * hh + j] = 0.0;
                }
            }
            carry[k] = dh;
            continue;
        }
        if (p.flags & 2u) != 0u {
            dh += d_out[p.dout_off + b * p.dout_ld + j];
        }
        cell_backward(b, j, dh);
    }
}
