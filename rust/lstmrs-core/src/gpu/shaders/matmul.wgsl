// Tiled matrix product C[M,N] = op(A)[M,K] · op(B)[K,N] (+ bias) (+ C).
//
// Each workgroup computes a (WG_Y*4) x (WG_X*4) tile of C; each thread a 4x4 register tile. The
// K loop stages a BK-deep slice of A and B in workgroup memory as vec4s (four rows of A, four
// columns of B), so the inner loop does 16 FMAs per two shared loads. TRANS_A / TRANS_B pick the
// storage order of A and B; VEC_A / VEC_B turn on vec4 global loads (the host sets them only when
// the operand's offset, leading dimension and contiguous extent are multiples of 4, so a vec4 is
// either wholly inside the matrix or wholly outside).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // 1: add C's old value, 2: add bias1[col], 4: add bias2[col] for col < bias2_cols.
    flags: u32,
    a_off: u32,
    lda: u32,
    b_off: u32,
    ldb: u32,
    c_off: u32,
    ldc: u32,
    bias1: u32,
    bias2: u32,
    bias2_cols: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
// The same buffers as `a` and `b`, seen as vec4s for the aligned loads.
@group(0) @binding(5) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> b4: array<vec4<f32>>;

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override VEC_A: bool = false;
override VEC_B: bool = false;
// Threads along N and M; the tile is (WG_Y*4) x (WG_X*4).
override WG_X: u32 = 16u;
override WG_Y: u32 = 16u;
// Depth of the K slice held in workgroup memory (a multiple of 4).
override BK: u32 = 16u;
override A_TILE: u32 = BK * WG_Y;
override B_TILE: u32 = BK * WG_X;

// a_s[kk * WG_Y + i] holds A rows 4i..4i+3 of the tile at depth kk; b_s likewise for B's columns.
var<workgroup> a_s: array<vec4<f32>, A_TILE>;
var<workgroup> b_s: array<vec4<f32>, B_TILE>;

fn load_a(m0: u32, k0: u32, li: u32, threads: u32) {
    let bm = WG_Y * 4u;
    if TRANS_A {
        // A stored [K, M]: contiguous along m.
        for (var e = li; e < BK * WG_Y; e += threads) {
            let kk = e / WG_Y;
            let mq = e % WG_Y;
            let k = k0 + kk;
            let m = m0 + 4u * mq;
            var v = vec4<f32>(0.0);
            if k < p.k {
                let base = p.a_off + k * p.lda + m;
                if VEC_A {
                    if m < p.m {
                        v = a4[base / 4u];
                    }
                } else {
                    for (var i = 0u; i < 4u; i++) {
                        if m + i < p.m {
                            v[i] = a[base + i];
                        }
                    }
                }
            }
            a_s[kk * WG_Y + mq] = v;
        }
    } else {
        // A stored [M, K]: contiguous along k; each load spreads over four depths.
        if VEC_A {
            let kq_n = BK / 4u;
            for (var e = li; e < bm * kq_n; e += threads) {
                let kq = e % kq_n;
                let mm = e / kq_n;
                let k = k0 + 4u * kq;
                let m = m0 + mm;
                var v = vec4<f32>(0.0);
                if m < p.m && k < p.k {
                    v = a4[(p.a_off + m * p.lda + k) / 4u];
                }
                for (var i = 0u; i < 4u; i++) {
                    a_s[(4u * kq + i) * WG_Y + mm / 4u][mm % 4u] = v[i];
                }
            }
        } else {
            for (var e = li; e < bm * BK; e += threads) {
                let kk = e % BK;
                let mm = e / BK;
                let k = k0 + kk;
                let m = m0 + mm;
                var v = 0.0;
                if m < p.m && k < p.k {
                    v = a[p.a_off + m * p.lda + k];
                }
                a_s[kk * WG_Y + mm / 4u][mm % 4u] = v;
            }
        }
    }
}

fn load_b(n0: u32, k0: u32, li: u32, threads: u32) {
    let bn = WG_X * 4u;
    if !TRANS_B {
        // B stored [K, N]: contiguous along n.
        for (var e = li; e < BK * WG_X; e += threads) {
            let kk = e / WG_X;
            let nq = e % WG_X;
            let k = k0 + kk;
            let n = n0 + 4u * nq;
            var v = vec4<f32>(0.0);
            if k < p.k {
                let base = p.b_off + k * p.ldb + n;
                if VEC_B {
                    if n < p.n {
                        v = b4[base / 4u];
                    }
                } else {
                    for (var i = 0u; i < 4u; i++) {
                        if n + i < p.n {
                            v[i] = b[base + i];
                        }
                    }
                }
            }
            b_s[kk * WG_X + nq] = v;
        }
    } else {
        // B stored [N, K]: contiguous along k.
        if VEC_B {
            let kq_n = BK / 4u;
            for (var e = li; e < bn * kq_n; e += threads) {
                let kq = e % kq_n;
                let nn = e / kq_n;
                let k = k0 + 4u * kq;
                let n = n0 + nn;
                var v = vec4<f32>(0.0);
                if n < p.n && k < p.k {
                    v = b4[(p.b_off + n * p.ldb + k) / 4u];
                }
                for (var i = 0u; i < 4u; i++) {
                    b_s[(4u * kq + i) * WG_X + nn / 4u][nn % 4u] = v[i];
                }
            }
        } else {
            for (var e = li; e < bn * BK; e += threads) {
                let kk = e % BK;
                let nn = e / BK;
                let k = k0 + kk;
                let n = n0 + nn;
                var v = 0.0;
                if n < p.n && k < p.k {
                    v = b[p.b_off + n * p.ldb + k];
                }
                b_s[kk * WG_X + nn / 4u][nn % 4u] = v;
            }
        }
    }
}

@compute @workgroup_size(WG_X, WG_Y)
fn main(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let threads = WG_X * WG_Y;
    let m0 = wid.y * WG_Y * 4u;
    let n0 = wid.x * WG_X * 4u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        load_a(m0, k0, li, threads);
        load_b(n0, k0, li, threads);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let av = a_s[kk * WG_Y + lid.y];
            let bv = b_s[kk * WG_X + lid.x];
            acc[0] = fma(vec4<f32>(av.x), bv, acc[0]);
            acc[1] = fma(vec4<f32>(av.y), bv, acc[1]);
            acc[2] = fma(vec4<f32>(av.z), bv, acc[2]);
            acc[3] = fma(vec4<f32>(av.w), bv, acc[3]);
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = m0 + lid.y * 4u + i;
        if row >= p.m {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let col = n0 + lid.x * 4u + j;
            if col >= p.n {
                break;
            }
            var v = acc[i][j];
            if (p.flags & 2u) != 0u {
                v += bias[p.bias1 + col];
            }
            if (p.flags & 4u) != 0u && col < p.bias2_cols {
                v += bias[p.bias2 + col];
            }
            let idx = p.c_off + row * p.ldc + col;
            if (p.flags & 1u) != 0u {
                v += c[idx];
            }
            c[idx] = v;
        }
    }
}
