//! Sequence to sequence: an encoder–decoder with attention (Luong et al., 2015).
//!
//! Shapes: `B` batch rows, `S` source steps, `T` target steps, `E` embedding size, `He` encoder
//! hidden size, `D` encoder directions, `De = D*He` encoder output features, `H` decoder hidden
//! size, `A` additive attention size, `V` target vocabulary.
//!
//! - **Encoder**: the crate's recurrent network ([`crate::network`]) over the source embeddings:
//!   stacked, bidirectional, any built-in or plugin cell, `lengths` with packed semantics.
//! - **Bridge**: the top layer's final states of both directions, concatenated (`[B, De]`), go
//!   through a learned linear map and `tanh` to `L*H` values, the initial `h` of every decoder
//!   layer (layer `l` takes columns `l*H..(l+1)*H`), always, whatever the sizes, so one recipe
//!   covers every encoder. An LSTM decoder behind an encoder with a cell state bridges every
//!   layer's `c0` the same way (its own map); behind a GRU or plugin cell without one its cell
//!   states start at zero. A GRU decoder has no cell state: the bridge gives only `h`.
//! - **Decoder**: `L` stacked layers of an LSTM or GRU cell, Luong's stack: input feeding
//!   into the bottom layer, whose input at step `t` is `[embed(y_{t-1}); att_{t-1}]` (`E + H`),
//!   `att_{-1} = 0`; layer `l > 0` reads layer `l-1`'s new `h` (through inverted dropout in
//!   training when `dropout > 0`, the rate of the encoder's); the attention reads the top layer.
//!   With `L = 1` the parameter names and layout are those of the one-layer model before stacking.
//! - **Attention** over the encoder outputs, masked beyond each source length: `general`
//!   (`score = h · W_a e`) or `additive` (`score = v · tanh(W_q h + W_k e)`); the context
//!   `ctx = Σ α_s e_s` and the attentional vector `att = tanh(W_c [ctx; h] + b_c)`.
//! - **Output**: `logits = W_o att + b_o`, token cross-entropy with label smoothing, averaged over
//!   the target tokens inside their lengths.
//!
//! [`train::loss_and_grad`] is the fast path (batched products, the shared gate kernels);
//! [`reference`] computes the same loss with plain loops; [`decode`] is greedy and beam search.

pub mod attention;
pub mod decode;
pub mod reference;
pub mod train;

use crate::config::{CellKind, RnnConfig};
use crate::error::{check_len, Error, Result};
use crate::params::{param_specs as rnn_specs, RnnParams};
use crate::scalar::Scalar;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use decode::{decode, DecodeOptions, Hypothesis};
pub use train::{loss_and_grad, StepOutput, TrainOptions};

/// How decoder states score encoder outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// Luong's multiplicative "general" score `h · W_a e`.
    General,
    /// Bahdanau's additive score `v · tanh(W_q h + W_k e)`.
    Additive,
}

impl AttentionKind {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "general" | "luong" | "multiplicative" => Ok(AttentionKind::General),
            "additive" | "bahdanau" => Ok(AttentionKind::Additive),
            other => Err(Error::Name {
                arg: "attention",
                expected: "'general' (Luong) or 'additive' (Bahdanau)".into(),
                got: other.into(),
            }),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            AttentionKind::General => "general",
            AttentionKind::Additive => "additive",
        }
    }
}

/// Architecture of an encoder–decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seq2SeqConfig {
    /// The encoder; its `input_size` is `embed_size`.
    pub encoder: RnnConfig,
    pub src_vocab: usize,
    pub tgt_vocab: usize,
    /// `E`, both sides.
    pub embed_size: usize,
    /// `H`, the decoder LSTM's units.
    pub hidden_size: usize,
    pub attention: AttentionKind,
    /// `A`, additive attention only.
    pub attention_size: usize,
    /// `L`: stacked decoder layers (1: the single-layer model).
    pub decoder_layers: usize,
    /// The decoder's cell: [`CellKind::Lstm`] or [`CellKind::Gru`].
    pub decoder_cell: CellKind,
}

/// Where one named parameter lives in the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seq2SeqParam {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
}

/// Offsets of one decoder layer's blocks (`[G*H, in]`, `[G*H, H]`, `[G*H]`, `[G*H]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerOffsets {
    pub w_ih: usize,
    pub w_hh: usize,
    pub b_ih: usize,
    pub b_hh: usize,
    /// The layer's input width: `E + H` for the bottom layer, `H` above it.
    pub input: usize,
}

/// Offsets of every parameter block (each `[rows, cols]` row-major, PyTorch's `[out, in]`).
#[derive(Debug, Clone)]
pub(crate) struct Offsets {
    pub encoder: usize,
    pub src_emb: usize,
    pub tgt_emb: usize,
    pub bridge_h_w: usize,
    pub bridge_h_b: usize,
    /// Present when an LSTM decoder follows an encoder with a cell state.
    pub bridge_c: Option<(usize, usize)>,
    /// Bottom layer first.
    pub dec: Vec<LayerOffsets>,
    /// general: `W_a [H, De]`; additive: `W_q [A, H]`.
    pub attn_a: usize,
    /// additive only: `W_k [A, De]`, `v [A]`.
    pub attn_k: usize,
    pub attn_v: usize,
    pub comb_w: usize,
    pub comb_b: usize,
    pub out_w: usize,
    pub out_b: usize,
}

impl Seq2SeqConfig {
    /// Checks the sizes and that the encoder reads embeddings.
    pub fn validate(&self) -> Result<()> {
        for (arg, v) in [
            ("src_vocab", self.src_vocab),
            ("tgt_vocab", self.tgt_vocab),
            ("embed_size", self.embed_size),
            ("hidden_size", self.hidden_size),
            ("decoder_layers", self.decoder_layers),
        ] {
            if v == 0 {
                return Err(Error::Value {
                    arg,
                    expected: "an integer >= 1".into(),
                    got: "0".into(),
                });
            }
        }
        if self.attention == AttentionKind::Additive && self.attention_size == 0 {
            return Err(Error::Value {
                arg: "attention_size",
                expected: "an integer >= 1 for additive attention".into(),
                got: "0".into(),
            });
        }
        if !matches!(self.decoder_cell, CellKind::Lstm | CellKind::Gru) {
            return Err(Error::Name {
                arg: "decoder_cell",
                expected: "'lstm' or 'gru' (the decoder runs the built-in cells)".into(),
                got: self.decoder_cell.name().into(),
            });
        }
        if self.encoder.input_size != self.embed_size {
            return Err(Error::Value {
                arg: "encoder.input_size",
                expected: format!("embed_size ({})", self.embed_size),
                got: self.encoder.input_size.to_string(),
            });
        }
        Ok(())
    }

    /// `De`: features of each encoder output (and of the bridged final states).
    pub fn enc_size(&self) -> usize {
        self.encoder.output_size()
    }

    /// `G`: gate blocks of a decoder layer (4 LSTM, 3 GRU).
    pub(crate) fn dec_gates(&self) -> usize {
        self.decoder_cell.gate_count()
    }

    /// Whether the decoder carries a cell state (LSTM).
    pub(crate) fn dec_has_c(&self) -> bool {
        self.decoder_cell == CellKind::Lstm
    }

    /// Whether the bridge maps the encoder's cell states to the decoder's.
    fn bridges_c(&self) -> bool {
        self.dec_has_c() && self.encoder.cell.has_cell_state()
    }

    /// A decoder layer's parameter: `decoder.{base}` for a one-layer decoder (the names before
    /// stacking), PyTorch's `decoder.{base}_l{l}` for a stack.
    pub(crate) fn dec_name(&self, base: &str, l: usize) -> String {
        if self.decoder_layers == 1 {
            format!("decoder.{base}")
        } else {
            format!("decoder.{base}_l{l}")
        }
    }

    /// Width of the scoring space: `H` for general attention, `A` for additive.
    pub(crate) fn key_size(&self) -> usize {
        match self.attention {
            AttentionKind::General => self.hidden_size,
            AttentionKind::Additive => self.attention_size,
        }
    }

    /// Every parameter with its shape, in flat-buffer order.
    pub fn param_specs(&self) -> Vec<Seq2SeqParam> {
        let (e, h, de, a) = (
            self.embed_size,
            self.hidden_size,
            self.enc_size(),
            self.attention_size,
        );
        let mut specs: Vec<(String, Vec<usize>)> = rnn_specs(&self.encoder)
            .into_iter()
            .map(|s| (format!("encoder.{}", s.name), s.shape.to_vec()))
            .collect();
        specs.push(("src_embedding".into(), vec![self.src_vocab, e]));
        specs.push(("tgt_embedding".into(), vec![self.tgt_vocab, e]));
        let (nl, g) = (self.decoder_layers, self.dec_gates() * h);
        specs.push(("bridge_h.weight".into(), vec![nl * h, de]));
        specs.push(("bridge_h.bias".into(), vec![nl * h]));
        if self.bridges_c() {
            specs.push(("bridge_c.weight".into(), vec![nl * h, de]));
            specs.push(("bridge_c.bias".into(), vec![nl * h]));
        }
        for l in 0..nl {
            let input = if l == 0 { e + h } else { h };
            specs.push((self.dec_name("weight_ih", l), vec![g, input]));
            specs.push((self.dec_name("weight_hh", l), vec![g, h]));
            specs.push((self.dec_name("bias_ih", l), vec![g]));
            specs.push((self.dec_name("bias_hh", l), vec![g]));
        }
        match self.attention {
            AttentionKind::General => specs.push(("attention.weight".into(), vec![h, de])),
            AttentionKind::Additive => {
                specs.push(("attention.query".into(), vec![a, h]));
                specs.push(("attention.key".into(), vec![a, de]));
                specs.push(("attention.v".into(), vec![a]));
            }
        }
        specs.push(("combine.weight".into(), vec![h, de + h]));
        specs.push(("combine.bias".into(), vec![h]));
        specs.push(("out.weight".into(), vec![self.tgt_vocab, h]));
        specs.push(("out.bias".into(), vec![self.tgt_vocab]));
        let mut offset = 0;
        specs
            .into_iter()
            .map(|(name, shape)| {
                let len = shape.iter().product();
                let p = Seq2SeqParam {
                    name,
                    shape,
                    offset,
                    len,
                };
                offset += len;
                p
            })
            .collect()
    }

    pub fn num_params(&self) -> usize {
        self.param_specs().last().map_or(0, |p| p.offset + p.len)
    }

    pub(crate) fn offsets(&self) -> Offsets {
        let specs = self.param_specs();
        let at = |name: &str| {
            specs
                .iter()
                .find(|p| p.name == name)
                .map_or(usize::MAX, |p| p.offset)
        };
        let (e, h) = (self.embed_size, self.hidden_size);
        let dec = (0..self.decoder_layers)
            .map(|l| LayerOffsets {
                w_ih: at(&self.dec_name("weight_ih", l)),
                w_hh: at(&self.dec_name("weight_hh", l)),
                b_ih: at(&self.dec_name("bias_ih", l)),
                b_hh: at(&self.dec_name("bias_hh", l)),
                input: if l == 0 { e + h } else { h },
            })
            .collect();
        let general = self.attention == AttentionKind::General;
        Offsets {
            encoder: 0,
            src_emb: at("src_embedding"),
            tgt_emb: at("tgt_embedding"),
            bridge_h_w: at("bridge_h.weight"),
            bridge_h_b: at("bridge_h.bias"),
            bridge_c: self
                .bridges_c()
                .then(|| (at("bridge_c.weight"), at("bridge_c.bias"))),
            dec,
            attn_a: if general {
                at("attention.weight")
            } else {
                at("attention.query")
            },
            attn_k: if general { 0 } else { at("attention.key") },
            attn_v: if general { 0 } else { at("attention.v") },
            comb_w: at("combine.weight"),
            comb_b: at("combine.bias"),
            out_w: at("out.weight"),
            out_b: at("out.bias"),
        }
    }

    /// Initial weights: the encoder as [`RnnParams::init_uniform`]; embeddings `N(0, 1)` as
    /// `torch.nn.Embedding`; every other block uniform in `±1/sqrt(fan_in)` as `torch.nn.Linear`
    /// and `torch.nn.LSTM`/`GRU` (decoder layers: `±1/sqrt(H)`). Reproducible from `seed` (ChaCha8).
    pub fn init<T: Scalar>(&self, seed: u64) -> Result<Vec<T>> {
        self.validate()?;
        let enc = RnnParams::<T>::try_init_uniform(self.encoder, seed)?;
        let mut data = enc.as_slice().to_vec();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5e9_25e9);
        let mut uniform = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        for p in self.param_specs() {
            if p.name.starts_with("encoder.") {
                continue;
            }
            let fan_in = match p.name.as_str() {
                n if n.starts_with("decoder.") => self.hidden_size,
                n if n.ends_with("embedding") => 0,
                _ => *p.shape.last().expect("a shape"),
            };
            if p.name == "attention.v" {
                // v's fan-in is A (it reduces an A-vector).
                let bound = 1.0 / (self.attention_size as f64).sqrt();
                data.extend((0..p.len).map(|_| T::from_f64((2.0 * uniform() - 1.0) * bound)));
            } else if fan_in == 0 {
                // Box–Muller from two uniforms.
                data.extend((0..p.len).map(|_| {
                    let (u1, u2) = (uniform().max(1e-300), uniform());
                    T::from_f64((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos())
                }));
            } else {
                let bound = 1.0 / (fan_in as f64).sqrt();
                data.extend((0..p.len).map(|_| T::from_f64((2.0 * uniform() - 1.0) * bound)));
            }
        }
        debug_assert_eq!(data.len(), self.num_params());
        Ok(data)
    }
}

/// A batch of token sequences, row-major `[B, S]` / `[B, T]`, padded with any valid token.
#[derive(Debug, Clone, Copy)]
pub struct PairBatch<'a> {
    pub batch: usize,
    pub src_len_max: usize,
    /// `[B, S]`.
    pub src: &'a [u32],
    /// `[B]`, each in `1..=S`.
    pub src_lengths: &'a [usize],
    pub tgt_len_max: usize,
    /// `[B, T]`: the tokens the decoder must emit, end-of-sequence token included.
    pub tgt: &'a [u32],
    /// `[B]`, each in `1..=T`.
    pub tgt_lengths: &'a [usize],
    /// The decoder's first input token.
    pub bos: u32,
}

pub(crate) fn check_tokens(arg: &'static str, tokens: &[u32], vocab: usize) -> Result<()> {
    if let Some(&bad) = tokens.iter().find(|&&v| v as usize >= vocab) {
        return Err(Error::Value {
            arg,
            expected: format!("token ids in 0..{vocab}"),
            got: bad.to_string(),
        });
    }
    Ok(())
}

pub(crate) fn check_lengths(
    arg: &'static str,
    lengths: &[usize],
    b: usize,
    max: usize,
) -> Result<()> {
    check_len(arg, lengths.len(), &[b])?;
    if let Some(&bad) = lengths.iter().find(|&&l| l == 0 || l > max) {
        return Err(Error::Value {
            arg,
            expected: format!("every length in 1..={max}"),
            got: bad.to_string(),
        });
    }
    Ok(())
}

/// Checks the source side of a batch (shared by training and decoding).
pub(crate) fn check_source(
    cfg: &Seq2SeqConfig,
    params_len: usize,
    b: usize,
    s: usize,
    src: &[u32],
    src_lengths: &[usize],
) -> Result<()> {
    cfg.validate()?;
    check_len("params", params_len, &[cfg.num_params()])?;
    for (arg, v) in [("batch", b), ("src_len_max", s)] {
        if v == 0 {
            return Err(Error::Value {
                arg,
                expected: "at least 1".into(),
                got: "0".into(),
            });
        }
    }
    check_len("src", src.len(), &[b, s])?;
    check_tokens("src", src, cfg.src_vocab)?;
    check_lengths("src_lengths", src_lengths, b, s)
}

impl PairBatch<'_> {
    pub(crate) fn validate(&self, cfg: &Seq2SeqConfig, params_len: usize) -> Result<()> {
        check_source(
            cfg,
            params_len,
            self.batch,
            self.src_len_max,
            self.src,
            self.src_lengths,
        )?;
        if self.tgt_len_max == 0 {
            return Err(Error::Value {
                arg: "tgt_len_max",
                expected: "at least 1".into(),
                got: "0".into(),
            });
        }
        check_len("tgt", self.tgt.len(), &[self.batch, self.tgt_len_max])?;
        check_tokens("tgt", self.tgt, cfg.tgt_vocab)?;
        check_tokens("bos", &[self.bos], cfg.tgt_vocab)?;
        check_lengths(
            "tgt_lengths",
            self.tgt_lengths,
            self.batch,
            self.tgt_len_max,
        )
    }
}
