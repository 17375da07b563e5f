// Shared by the step shaders (prepended to each, since WGSL has no include): the tile shape and
// the sequence-length test. Each step shader defines the uniform `p` (with the step `t`) and the
// `lengths` binding this refers to.

override WG_J: u32 = 32u;
override WG_B: u32 = 4u;
override BK: u32 = 16u;
const RB: u32 = 4u;
override ROWS: u32 = WG_B * RB;

fn in_sequence(b: u32) -> bool {
    return p.t < lengths[b];
}
