//! The encoder–decoder: attention against PyTorch golden values and finite differences, the fast
//! loss against the plain reference, the whole model's gradient against finite differences, and
//! decoding (beam width 1 is greedy); for one-layer and stacked, LSTM and GRU decoders.

use lstmrs_core::seq2seq::attention::{self, AttnShape};
use lstmrs_core::seq2seq::{
    decode, loss_and_grad, reference, AttentionKind, DecodeOptions, PairBatch, Seq2SeqConfig,
    TrainOptions,
};
use lstmrs_core::{CellKind, Error, RnnConfig};

fn det(n: usize, f: f64) -> Vec<f64> {
    (0..n).map(|i| (i as f64 * f).cos()).collect()
}

fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Attention of `h [B,H]` over `enc [B,S,De]` with the keys projected by plain loops, and the
/// gradients of `loss = Σ ctx * w_out` with respect to `h`, `enc` and the attention weights.
struct AttnRun {
    alpha: Vec<f64>,
    ctx: Vec<f64>,
    dh: Vec<f64>,
    denc: Vec<f64>,
    dparams: Vec<Vec<f64>>,
}

const B: usize = 2;
const S: usize = 4;
const DE: usize = 3;
const H: usize = 3;
const A: usize = 2;
const LENGTHS: [usize; 2] = [4, 2];

fn matvec_t(x: &[f64], w: &[f64], n: usize, k: usize) -> Vec<f64> {
    // rows of x [*, k] times w [n, k]ᵀ
    x.chunks_exact(k)
        .flat_map(|row| (0..n).map(move |i| (0..k).map(|j| row[j] * w[i * k + j]).sum::<f64>()))
        .collect()
}

fn run_attention(kind: AttentionKind, h: &[f64], enc: &[f64], params: &[Vec<f64>]) -> AttnRun {
    let w_out = det(B * DE, 1.1);
    let (key, key_w) = match kind {
        AttentionKind::General => (H, &params[0]),
        AttentionKind::Additive => (A, &params[1]),
    };
    let keys = matvec_t(enc, key_w, key, DE);
    let query = match kind {
        AttentionKind::General => h.to_vec(),
        AttentionKind::Additive => matvec_t(h, &params[0], A, H),
    };
    let v: &[f64] = if kind == AttentionKind::Additive {
        &params[2]
    } else {
        &[]
    };
    let sh = AttnShape {
        kind,
        batch: B,
        src: S,
        enc: DE,
        key,
        lengths: &LENGTHS,
    };
    let mut alpha = vec![0.0; B * S];
    let mut ctx = vec![0.0; B * DE];
    let mut u = vec![0.0; B * S * key];
    attention::forward(sh, &query, &keys, enc, v, &mut alpha, &mut ctx, &mut u);
    let mut d_query = vec![0.0; B * key];
    let mut d_keys = vec![0.0; B * S * key];
    let mut denc = vec![0.0; B * S * DE];
    let mut d_v = vec![0.0; v.len()];
    attention::backward(
        sh,
        &query,
        &keys,
        enc,
        v,
        &alpha,
        &u,
        &w_out,
        &mut d_query,
        &mut d_keys,
        &mut denc,
        &mut d_v,
    );
    // keys = enc W_keyᵀ: dW_key = d_keysᵀ enc, denc += d_keys W_key.
    let mut d_wkey = vec![0.0; key * DE];
    for r in 0..B * S {
        for i in 0..key {
            for j in 0..DE {
                d_wkey[i * DE + j] += d_keys[r * key + i] * enc[r * DE + j];
                denc[r * DE + j] += d_keys[r * key + i] * key_w[i * DE + j];
            }
        }
    }
    let (dh, dparams) = match kind {
        AttentionKind::General => (d_query, vec![d_wkey]),
        AttentionKind::Additive => {
            // query = h W_qᵀ.
            let mut dh = vec![0.0; B * H];
            let mut d_wq = vec![0.0; A * H];
            for r in 0..B {
                for i in 0..A {
                    for j in 0..H {
                        d_wq[i * H + j] += d_query[r * A + i] * h[r * H + j];
                        dh[r * H + j] += d_query[r * A + i] * params[0][i * H + j];
                    }
                }
            }
            (dh, vec![d_wq, d_wkey, d_v])
        }
    };
    AttnRun {
        alpha,
        ctx,
        dh,
        denc,
        dparams,
    }
}

fn attention_inputs(kind: AttentionKind) -> (Vec<f64>, Vec<f64>, Vec<Vec<f64>>) {
    let h = det(B * H, 0.7);
    let enc = det(B * S * DE, 0.3);
    let half = |v: Vec<f64>| v.into_iter().map(|x| x * 0.5).collect::<Vec<f64>>();
    let params = match kind {
        AttentionKind::General => vec![half(det(H * DE, 0.5))],
        AttentionKind::Additive => {
            vec![half(det(A * H, 0.9)), half(det(A * DE, 0.4)), det(A, 1.3)]
        }
    };
    (h, enc, params)
}

// Golden values from PyTorch 2 (float64):
//
// B, S, De, H, A = 2, 4, 3, 3, 2
// def det(n, f): return torch.arange(n, dtype=torch.float64).mul(f).cos()
// h = det(B*H, 0.7).reshape(B, H).requires_grad_()
// enc = det(B*S*De, 0.3).reshape(B, S, De).requires_grad_()
// mask = torch.arange(S)[None, :] < torch.tensor([4, 2])[:, None]
// w_out = det(B*De, 1.1).reshape(B, De)
// general:  Wa = det(H*De, 0.5).reshape(H, De) * 0.5;  score = einsum("bh,bsh->bs", h, enc @ Wa.T)
// additive: Wq = det(A*H, 0.9).reshape(A, H) * 0.5; Wk = det(A*De, 0.4).reshape(A, De) * 0.5
//           v = det(A, 1.3);  score = tanh(enc @ Wk.T + (h @ Wq.T)[:, None, :]) @ v
// alpha = softmax(score.masked_fill(~mask, -inf), 1); ctx = einsum("bs,bsd->bd", alpha, enc)
// grads = torch.autograd.grad((ctx * w_out).sum(), [h, enc, *params])
const GENERAL_ALPHA: [f64; 8] = [
    0.377399632706,
    0.303786701762,
    0.188866141022,
    0.129947524510,
    0.282332175389,
    0.717667824611,
    0.0,
    0.0,
];
const GENERAL_CTX: [f64; 6] = [
    0.405843755059,
    0.246627697394,
    0.065381122041,
    -0.404465117297,
    -0.142158841530,
    0.132846060167,
];
const GENERAL_DH: [f64; 6] = [
    0.479387409349,
    -0.223684392593,
    -0.511033025326,
    -0.059088602719,
    0.031160023546,
    0.063496948458,
];
const GENERAL_DENC: [f64; 24] = [
    0.455694351223,
    0.206552437483,
    -0.238322658449,
    0.339457811802,
    0.153908974982,
    -0.186169816036,
    0.146916404484,
    0.066720411901,
    -0.102456009991,
    0.057931432492,
    0.026414297059,
    -0.061552632780,
    -0.267554900278,
    -0.060654563043,
    0.234674697678,
    -0.719924869630,
    -0.246678306935,
    0.473995076613,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
];
const GENERAL_DWA: [f64; 9] = [
    0.417246229694,
    0.432807364885,
    0.409707107181,
    0.343248257885,
    0.359632295180,
    0.343891450622,
    0.107815266991,
    0.117316537642,
    0.116338271383,
];
const ADDITIVE_ALPHA: [f64; 8] = [
    0.388260389713,
    0.349561641452,
    0.170083213369,
    0.092094755466,
    0.373882525443,
    0.626117474557,
    0.0,
    0.0,
];
const ADDITIVE_CTX: [f64; 6] = [
    0.483647825373,
    0.320546724408,
    0.128812139221,
    -0.467265234998,
    -0.216628760658,
    0.053358515697,
];
const ADDITIVE_DH: [f64; 6] = [
    -0.077748807512,
    -0.047889725867,
    0.018211345559,
    -0.023430970487,
    -0.014393207688,
    0.005537047738,
];
const ADDITIVE_DENC: [f64; 24] = [
    0.398316687590,
    0.181315750836,
    -0.228964618814,
    0.361407089440,
    0.167462124210,
    -0.201163706132,
    0.118754095545,
    0.032912451328,
    -0.130254320498,
    0.042109952045,
    -0.000760948384,
    -0.082567302313,
    -0.358949908138,
    -0.107716483537,
    0.267952406870,
    -0.652610419765,
    -0.221609880264,
    0.424283226852,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
];
const ADDITIVE_DWQ: [f64; 6] = [
    -0.133746200292,
    -0.075719308423,
    0.017919557344,
    -0.002108961812,
    -0.001042549703,
    0.000514189821,
];
const ADDITIVE_DWK: [f64; 6] = [
    0.129332954127,
    0.142203783274,
    0.142371971980,
    0.042217616298,
    0.042772640522,
    0.039506912157,
];
const ADDITIVE_DV: [f64; 2] = [0.212876047494, -0.004333562612];

#[test]
fn attention_matches_pytorch_golden_values() {
    let (h, enc, p) = attention_inputs(AttentionKind::General);
    let r = run_attention(AttentionKind::General, &h, &enc, &p);
    close(&r.alpha, &GENERAL_ALPHA, 1e-10, "general alpha");
    close(&r.ctx, &GENERAL_CTX, 1e-10, "general ctx");
    close(&r.dh, &GENERAL_DH, 1e-10, "general dh");
    close(&r.denc, &GENERAL_DENC, 1e-10, "general denc");
    close(&r.dparams[0], &GENERAL_DWA, 1e-10, "general dW_a");

    let (h, enc, p) = attention_inputs(AttentionKind::Additive);
    let r = run_attention(AttentionKind::Additive, &h, &enc, &p);
    close(&r.alpha, &ADDITIVE_ALPHA, 1e-10, "additive alpha");
    close(&r.ctx, &ADDITIVE_CTX, 1e-10, "additive ctx");
    close(&r.dh, &ADDITIVE_DH, 1e-10, "additive dh");
    close(&r.denc, &ADDITIVE_DENC, 1e-10, "additive denc");
    close(&r.dparams[0], &ADDITIVE_DWQ, 1e-10, "additive dW_q");
    close(&r.dparams[1], &ADDITIVE_DWK, 1e-10, "additive dW_k");
    close(&r.dparams[2], &ADDITIVE_DV, 1e-10, "additive dv");
}

#[test]
fn attention_gradients_match_finite_differences() {
    for kind in [AttentionKind::General, AttentionKind::Additive] {
        let (h, enc, p) = attention_inputs(kind);
        let r = run_attention(kind, &h, &enc, &p);
        let w_out = det(B * DE, 1.1);
        let loss = |h: &[f64], enc: &[f64], p: &[Vec<f64>]| -> f64 {
            let ctx = run_attention(kind, h, enc, p).ctx;
            ctx.iter().zip(&w_out).map(|(a, b)| a * b).sum()
        };
        let eps = 1e-6;
        let fd = |f: &dyn Fn(f64) -> f64| (f(eps) - f(-eps)) / (2.0 * eps);
        for i in 0..h.len() {
            let g = fd(&|d| {
                let mut x = h.clone();
                x[i] += d;
                loss(&x, &enc, &p)
            });
            assert!(
                (g - r.dh[i]).abs() < 1e-7,
                "{kind:?} dh[{i}]: fd {g}, got {}",
                r.dh[i]
            );
        }
        for i in 0..enc.len() {
            let g = fd(&|d| {
                let mut x = enc.clone();
                x[i] += d;
                loss(&h, &x, &p)
            });
            assert!(
                (g - r.denc[i]).abs() < 1e-7,
                "{kind:?} denc[{i}]: fd {g}, got {}",
                r.denc[i]
            );
        }
        for (k, block) in p.iter().enumerate() {
            for i in 0..block.len() {
                let g = fd(&|d| {
                    let mut q = p.clone();
                    q[k][i] += d;
                    loss(&h, &enc, &q)
                });
                let got = r.dparams[k][i];
                assert!(
                    (g - got).abs() < 1e-7,
                    "{kind:?} param {k}[{i}]: fd {g}, got {got}"
                );
            }
        }
    }
}

/// A tiny model and a batch of mixed lengths.
struct Fixture {
    cfg: Seq2SeqConfig,
    src: Vec<u32>,
    src_len: Vec<usize>,
    tgt: Vec<u32>,
    tgt_len: Vec<usize>,
}

const BS: usize = 3;
const SRC_T: usize = 5;
const TGT_T: usize = 4;

fn fixture(cell: CellKind, layers: usize, bidir: bool, kind: AttentionKind) -> Fixture {
    decoder_fixture(cell, layers, bidir, kind, (1, CellKind::Lstm))
}

/// A fixture whose decoder has `decoder.0` layers of cell `decoder.1`.
fn decoder_fixture(
    cell: CellKind,
    layers: usize,
    bidir: bool,
    kind: AttentionKind,
    decoder: (usize, CellKind),
) -> Fixture {
    let encoder = RnnConfig::new(cell, 4, 3, layers, bidir, true).unwrap();
    let cfg = Seq2SeqConfig {
        encoder,
        src_vocab: 7,
        tgt_vocab: 6,
        embed_size: 4,
        hidden_size: 5,
        attention: kind,
        attention_size: 3,
        decoder_layers: decoder.0,
        decoder_cell: decoder.1,
    };
    let src: Vec<u32> = (0..BS * SRC_T).map(|i| ((i * 5 + 1) % 7) as u32).collect();
    let tgt: Vec<u32> = (0..BS * TGT_T).map(|i| ((i * 7 + 2) % 6) as u32).collect();
    Fixture {
        cfg,
        src,
        src_len: vec![5, 2, 3],
        tgt,
        tgt_len: vec![4, 1, 3],
    }
}

impl Fixture {
    fn batch(&self) -> PairBatch<'_> {
        PairBatch {
            batch: BS,
            src_len_max: SRC_T,
            src: &self.src,
            src_lengths: &self.src_len,
            tgt_len_max: TGT_T,
            tgt: &self.tgt,
            tgt_lengths: &self.tgt_len,
            bos: 0,
        }
    }
}

/// One-layer LSTM decoders behind every kind of encoder, then stacked and GRU decoders (a GRU
/// decoder behind an LSTM encoder drops the cell-state bridge; an LSTM decoder behind a GRU
/// encoder starts its cell states at zero).
fn configs() -> Vec<Fixture> {
    use AttentionKind::{Additive, General};
    use CellKind::{Gru, Lstm};
    vec![
        fixture(Lstm, 2, true, General),
        fixture(Lstm, 1, false, Additive),
        fixture(Gru, 1, true, Additive),
        fixture(Gru, 2, false, General),
        decoder_fixture(Lstm, 2, true, General, (2, Lstm)),
        decoder_fixture(Lstm, 1, false, Additive, (3, Lstm)),
        decoder_fixture(Gru, 1, true, Additive, (1, Gru)),
        decoder_fixture(Lstm, 1, true, General, (2, Gru)),
        decoder_fixture(Gru, 2, false, Additive, (2, Lstm)),
    ]
}

#[test]
fn fast_loss_matches_the_reference() {
    for f in configs() {
        let p: Vec<f64> = f.cfg.init(3).unwrap();
        for eps in [0.0, 0.1] {
            let opts = TrainOptions {
                label_smoothing: eps,
                grad: false,
                ..Default::default()
            };
            let fast = loss_and_grad(&f.cfg, &p, &f.batch(), &opts).unwrap();
            let slow = reference::loss(&f.cfg, &p, &f.batch(), eps).unwrap();
            assert!(
                (fast.loss - slow).abs() < 1e-12,
                "{:?}: {} vs {}",
                f.cfg,
                fast.loss,
                slow
            );
            assert_eq!(fast.tokens, 8);
        }
        // f32 agrees with f64 to single precision.
        let p32: Vec<f32> = p.iter().map(|&x| x as f32).collect();
        let opts = TrainOptions::default();
        let l32 = loss_and_grad(&f.cfg, &p32, &f.batch(), &opts).unwrap().loss;
        let l64 = loss_and_grad(&f.cfg, &p, &f.batch(), &opts).unwrap().loss;
        assert!((l32 - l64).abs() < 1e-5, "f32 {l32} vs f64 {l64}");
    }
}

#[test]
fn whole_model_gradient_matches_finite_differences() {
    for f in configs() {
        let p: Vec<f64> = f.cfg.init(5).unwrap();
        let opts = TrainOptions {
            label_smoothing: 0.1,
            ..Default::default()
        };
        let got = loss_and_grad(&f.cfg, &p, &f.batch(), &opts).unwrap().grads;
        let eval = TrainOptions {
            grad: false,
            ..opts
        };
        let loss = |q: &[f64]| loss_and_grad(&f.cfg, q, &f.batch(), &eval).unwrap().loss;
        let eps = 1e-6;
        let mut worst: f64 = 0.0;
        for i in 0..p.len() {
            let mut q = p.clone();
            q[i] += eps;
            let up = loss(&q);
            q[i] -= 2.0 * eps;
            let down = loss(&q);
            let fd = (up - down) / (2.0 * eps);
            let err = (fd - got[i]).abs() / (1.0 + fd.abs());
            worst = worst.max(err);
            assert!(err < 1e-6, "{:?} param {i}: fd {fd}, got {}", f.cfg, got[i]);
        }
        assert!(worst < 1e-6);
    }
}

#[test]
fn dropout_between_decoder_layers_has_exact_gradients() {
    // With a fixed seed the masks are fixed: the gradient is that of the masked loss.
    for dec in [(2, CellKind::Lstm), (3, CellKind::Gru)] {
        let f = decoder_fixture(CellKind::Lstm, 1, true, AttentionKind::General, dec);
        let p: Vec<f64> = f.cfg.init(2).unwrap();
        let opts = TrainOptions {
            dropout: 0.4,
            seed: 9,
            ..Default::default()
        };
        let out = loss_and_grad(&f.cfg, &p, &f.batch(), &opts).unwrap();
        let plain = loss_and_grad(&f.cfg, &p, &f.batch(), &TrainOptions::default()).unwrap();
        assert!(
            (out.loss - plain.loss).abs() > 1e-6,
            "{dec:?}: dropout had no effect"
        );
        let loss = |q: &[f64]| loss_and_grad(&f.cfg, q, &f.batch(), &opts).unwrap().loss;
        let eps = 1e-6;
        let o = f.cfg.param_specs();
        // The upper decoder layers' weights (the masked inputs) and the bottom layer's.
        for spec in o.iter().filter(|s| s.name.starts_with("decoder.")) {
            for i in spec.offset..spec.offset + spec.len {
                let mut q = p.clone();
                q[i] += eps;
                let up = loss(&q);
                q[i] -= 2.0 * eps;
                let fd = (up - loss(&q)) / (2.0 * eps);
                let err = (fd - out.grads[i]).abs() / (1.0 + fd.abs());
                assert!(
                    err < 1e-6,
                    "{dec:?} {} [{i}]: fd {fd}, got {}",
                    spec.name,
                    out.grads[i]
                );
            }
        }
    }
}

#[test]
fn decoder_parameters_are_named_per_layer() {
    let names = |dec| {
        let f = decoder_fixture(CellKind::Lstm, 1, true, AttentionKind::General, dec);
        f.cfg
            .param_specs()
            .into_iter()
            .filter(|s| s.name.starts_with("decoder.") || s.name.starts_with("bridge"))
            .map(|s| (s.name, s.shape))
            .collect::<Vec<_>>()
    };
    // One layer: the names and shapes of the model before stacking (H = 5, E = 4, De = 6).
    assert_eq!(
        names((1, CellKind::Lstm)),
        [
            ("bridge_h.weight", vec![5, 6]),
            ("bridge_h.bias", vec![5]),
            ("bridge_c.weight", vec![5, 6]),
            ("bridge_c.bias", vec![5]),
            ("decoder.weight_ih", vec![20, 9]),
            ("decoder.weight_hh", vec![20, 5]),
            ("decoder.bias_ih", vec![20]),
            ("decoder.bias_hh", vec![20]),
        ]
        .map(|(n, s)| (n.to_string(), s))
    );
    // Two GRU layers: PyTorch's suffixes, one bridge for both layers' h, no cell state.
    assert_eq!(
        names((2, CellKind::Gru)),
        [
            ("bridge_h.weight", vec![10, 6]),
            ("bridge_h.bias", vec![10]),
            ("decoder.weight_ih_l0", vec![15, 9]),
            ("decoder.weight_hh_l0", vec![15, 5]),
            ("decoder.bias_ih_l0", vec![15]),
            ("decoder.bias_hh_l0", vec![15]),
            ("decoder.weight_ih_l1", vec![15, 5]),
            ("decoder.weight_hh_l1", vec![15, 5]),
            ("decoder.bias_ih_l1", vec![15]),
            ("decoder.bias_hh_l1", vec![15]),
        ]
        .map(|(n, s)| (n.to_string(), s))
    );
    // Stacking adds blocks after the bottom layer's and widens the bridge, so the encoder,
    // embeddings and attention are initialised as for one layer.
    let one = decoder_fixture(
        CellKind::Lstm,
        1,
        true,
        AttentionKind::General,
        (1, CellKind::Lstm),
    );
    let p1: Vec<f64> = one.cfg.init(4).unwrap();
    let spec1 = one.cfg.param_specs();
    let enc_end = spec1
        .iter()
        .find(|s| s.name == "bridge_h.weight")
        .unwrap()
        .offset;
    let two = decoder_fixture(
        CellKind::Lstm,
        1,
        true,
        AttentionKind::General,
        (2, CellKind::Lstm),
    );
    let p2: Vec<f64> = two.cfg.init(4).unwrap();
    assert_eq!(p1[..enc_end], p2[..enc_end]);
}

#[test]
fn padding_never_changes_the_loss() {
    let f = fixture(CellKind::Lstm, 1, true, AttentionKind::General);
    let p: Vec<f64> = f.cfg.init(1).unwrap();
    let opts = TrainOptions::default();
    let base = loss_and_grad(&f.cfg, &p, &f.batch(), &opts).unwrap();
    let mut g = Fixture {
        ..fixture(CellKind::Lstm, 1, true, AttentionKind::General)
    };
    // Row 1 has source length 2 and target length 1: rewrite everything past them.
    for t in 2..SRC_T {
        g.src[SRC_T + t] = 6;
    }
    for t in 1..TGT_T {
        g.tgt[TGT_T + t] = 5;
    }
    let moved = loss_and_grad(&g.cfg, &p, &g.batch(), &opts).unwrap();
    assert_eq!(base.loss, moved.loss);
    assert_eq!(base.grads, moved.grads);
}

#[test]
fn beam_width_one_is_greedy_and_attention_is_masked() {
    for f in configs() {
        let p: Vec<f32> = f.cfg.init(11).unwrap();
        let opts = DecodeOptions {
            beam: 1,
            alpha: 0.0,
            max_len: 6,
            bos: 0,
            eos: 1,
            attention: true,
        };
        let greedy = decode(&f.cfg, &p, BS, SRC_T, &f.src, &f.src_len, &opts).unwrap();
        // The beam search itself with width 1 (decode() sends width 1 to the greedy loop).
        let beam1 = lstmrs_core::seq2seq::decode::beam_search(
            &f.cfg, &p, BS, SRC_T, &f.src, &f.src_len, &opts,
        )
        .unwrap();
        assert_eq!(greedy, beam1);
        for (hyp, &len) in greedy.iter().zip(&f.src_len) {
            let steps = hyp.tokens.len() + usize::from(hyp.finished);
            assert_eq!(hyp.attention.len(), steps * SRC_T);
            for row in hyp.attention.chunks_exact(SRC_T) {
                assert!(row[len..].iter().all(|&a| a == 0.0));
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
        let wide = DecodeOptions { beam: 4, ..opts };
        let beams = decode(&f.cfg, &p, BS, SRC_T, &f.src, &f.src_len, &wide).unwrap();
        assert_eq!(beams.len(), BS);
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let f = fixture(CellKind::Lstm, 1, false, AttentionKind::General);
    let p: Vec<f64> = f.cfg.init(0).unwrap();
    let opts = TrainOptions::default();
    let mut bad_tok = f.tgt.clone();
    bad_tok[0] = 6;
    let b = PairBatch {
        tgt: &bad_tok,
        ..f.batch()
    };
    assert!(matches!(
        loss_and_grad(&f.cfg, &p, &b, &opts),
        Err(Error::Value { arg: "tgt", .. })
    ));
    let lens = [5, 0, 3];
    let b = PairBatch {
        src_lengths: &lens,
        ..f.batch()
    };
    assert!(matches!(
        loss_and_grad(&f.cfg, &p, &b, &opts),
        Err(Error::Value {
            arg: "src_lengths",
            ..
        })
    ));
    assert!(matches!(
        loss_and_grad(&f.cfg, &p[1..], &f.batch(), &opts),
        Err(Error::Shape { arg: "params", .. })
    ));
    let smooth = TrainOptions {
        label_smoothing: 1.0,
        ..opts
    };
    assert!(matches!(
        loss_and_grad(&f.cfg, &p, &f.batch(), &smooth),
        Err(Error::Value {
            arg: "label_smoothing",
            ..
        })
    ));
    // A plain tanh RNN as a custom cell: an encoder may run it, the decoder may not.
    let tanh_rnn = lstmrs_core::cellexpr::register_cell(
        r#"{"name": "s2s_tanh_rnn", "states": ["h"], "x_gates": 1, "h_gates": 1,
            "nodes": [{"op": "xg", "index": 0}, {"op": "hg", "index": 0},
                      {"op": "add", "args": [0, 1]}, {"op": "tanh", "args": [2]}],
            "outputs": {"h": 3}}"#,
    )
    .unwrap();
    for (layers, cell, arg) in [
        (0, CellKind::Lstm, "decoder_layers"),
        (1, tanh_rnn, "decoder_cell"),
    ] {
        let cfg = Seq2SeqConfig {
            decoder_layers: layers,
            decoder_cell: cell,
            ..f.cfg
        };
        let err = cfg.validate().unwrap_err();
        assert!(
            matches!(err, Error::Value { arg: a, .. } | Error::Name { arg: a, .. } if a == arg),
            "{err:?}"
        );
    }
    let d = DecodeOptions {
        beam: 0,
        alpha: 0.0,
        max_len: 3,
        bos: 0,
        eos: 1,
        attention: false,
    };
    assert!(matches!(
        decode(&f.cfg, &p, BS, SRC_T, &f.src, &f.src_len, &d),
        Err(Error::Value { arg: "beam", .. })
    ));
}
