// Small data-movement kernels around the recurrent sweeps. Element-wise entries loop with a grid
// stride so that any size fits in the capped number of workgroups the host dispatches.

struct Params {
    // permute: [a, b, f] -> [b, a, f]; scale: n = a; colsum: a rows, b columns, f row stride.
    a: u32,
    b: u32,
    f: u32,
    // colsum: 1 adds to dst's old value.
    flags: u32,
    src_off: u32,
    dst_off: u32,
    aux_off: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> aux: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

const WG: u32 = 256u;

fn stride(groups: vec3<u32>) -> u32 {
    return groups.x * WG;
}

// Swaps the two outer axes: batch-first <-> time-major.
@compute @workgroup_size(WG)
fn permute(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let n = p.a * p.b * p.f;
    for (var e = gid.x; e < n; e += stride(nw)) {
        let k = e % p.f;
        let ij = e / p.f;
        let j = ij % p.b;
        let i = ij / p.b;
        dst[p.dst_off + (j * p.a + i) * p.f + k] = src[p.src_off + e];
    }
}

// dst *= aux (the dropout mask), in place.
@compute @workgroup_size(WG)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    for (var e = gid.x; e < p.a; e += stride(nw)) {
        dst[p.dst_off + e] *= aux[p.aux_off + e];
    }
}

const CS_COLS: u32 = 64u;
const CS_ROWS: u32 = 4u;
var<workgroup> partial: array<f32, 256>;

// dst[c] (+)= sum over rows of src[r, c]: bias gradients. A workgroup owns 64 columns; its four
// thread rows sum interleaved rows, then combine through workgroup memory.
@compute @workgroup_size(CS_COLS, CS_ROWS)
fn colsum(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let col = wid.x * CS_COLS + lid.x;
    var s = 0.0;
    if col < p.b {
        for (var r = lid.y; r < p.a; r += CS_ROWS) {
            s += src[p.src_off + r * p.f + col];
        }
    }
    partial[lid.y * CS_COLS + lid.x] = s;
    workgroupBarrier();
    if lid.y == 0u && col < p.b {
        var t = 0.0;
        for (var r = 0u; r < CS_ROWS; r++) {
            t += partial[r * CS_COLS + lid.x];
        }
        if (p.flags & 1u) != 0u {
            t += dst[p.dst_off + col];
        }
        dst[p.dst_off + col] = t;
    }
}
