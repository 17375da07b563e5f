// One forward time step of one direction of one layer, for all batch rows: the recurrent product
// h_prev[B,K] · W_hh[G*H,K]ᵀ fused with the gate nonlinearities and the state update (K is H, or
// the projected LSTM's P). The cell file appended to this one defines G and `cell_forward`; the
// projected LSTM's second kernel of a step (proj_forward.wgsl) is this product with G = 1, the
// cell's m[B,H] as input and W_hr[P,H] as weights.
//
// A workgroup owns WG_J hidden units and WG_B*RB batch rows, and computes all G gate columns of
// its units (j, H+j, 2H+j, ...), so the nonlinearities need no second pass. Each thread holds
// RB rows x G gates of accumulators; h and W_hh are staged through workgroup memory BK columns
// at a time.
//
// `tape` holds this direction's [act | aux | h slots | c slots] (offsets in `p`); the step reads
// state slot h_in/c_in and writes slot h_out/c_out, which never coincide.

struct Params {
    batch: u32,
    hidden: u32,
    t: u32,
    // 1: the network has biases (GRU adds b_hn here), 2: write act/aux to the tape,
    // 4: projected LSTM (the gate kernel writes m instead of h and the output).
    flags: u32,
    w_hh: u32,
    b_hn: u32,
    x_off: u32,
    act_off: u32,
    aux_off: u32,
    h_in: u32,
    h_out: u32,
    c_in: u32,
    c_out: u32,
    out_off: u32,
    out_ld: u32,
    // The product's depth K, and the row stride of the state it reads at h_in.
    k_len: u32,
    // Projected LSTM (flag 4): where the gate kernel writes m = o*tanh(c') [B,H], and the state
    // slot the projection kernel carries on rows past their length.
    m_off: u32,
    h_prev: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
// [T*B, G*H]: W_ih x + the biases outside the recurrence, for all steps.
@group(0) @binding(2) var<storage, read> x_pre: array<f32>;
@group(0) @binding(3) var<storage, read> lengths: array<u32>;
@group(0) @binding(4) var<storage, read_write> tape: array<f32>;
// The layer's [T, B, D*H] output; this direction's columns start at out_off.
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

override H_TILE: u32 = BK * ROWS;
// An odd row stride: the loads write consecutive depths kk from consecutive threads, which would
// all hit one bank with a power-of-two stride.
override W_STRIDE: u32 = G * WG_J + 1u;
override W_TILE: u32 = BK * W_STRIDE;

var<workgroup> h_s: array<f32, H_TILE>;
var<workgroup> w_s: array<f32, W_TILE>;

@compute @workgroup_size(WG_J, WG_B)
fn main(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let hh = p.hidden;
    let j0 = wid.x * WG_J;
    let row0 = wid.y * ROWS;
    let threads = WG_J * WG_B;
    var acc: array<array<f32, G>, RB>;
    let kl = p.k_len;
    for (var k0 = 0u; k0 < kl; k0 += BK) {
        for (var e = li; e < ROWS * BK; e += threads) {
            let kk = e % BK;
            let r = e / BK;
            let b = row0 + r;
            let k = k0 + kk;
            var v = 0.0;
            if b < p.batch && k < kl {
                v = tape[p.h_in + b * kl + k];
            }
            h_s[kk * ROWS + r] = v;
        }
        for (var e = li; e < G * WG_J * BK; e += threads) {
            let kk = e % BK;
            let gj = e / BK;
            let j = j0 + gj % WG_J;
            let k = k0 + kk;
            var v = 0.0;
            if j < hh && k < kl {
                v = weights[p.w_hh + ((gj / WG_J) * hh + j) * kl + k];
            }
            w_s[kk * W_STRIDE + gj] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var w: array<f32, G>;
            for (var g = 0u; g < G; g++) {
                w[g] = w_s[kk * W_STRIDE + g * WG_J + lid.x];
            }
            for (var r = 0u; r < RB; r++) {
                let hv = h_s[kk * ROWS + r * WG_B + lid.y];
                for (var g = 0u; g < G; g++) {
                    acc[r][g] = fma(hv, w[g], acc[r][g]);
                }
            }
        }
        workgroupBarrier();
    }
    let j = j0 + lid.x;
    for (var r = 0u; r < RB; r++) {
        let b = row0 + r * WG_B + lid.y;
        if b < p.batch && j < hh {
            cell_forward(b, j, acc[r]);
        }
    }
}
