//! `Seq2SeqCore`: an encoder–decoder's architecture; the weights stay in a flat NumPy array that
//! Python owns (so the existing `OptimizerCore` updates them in place). Conversion and validation
//! only: every computation is one core call with the GIL released.

use crate::errors::{core_error, error, guarded, lift, Kind};
use crate::rnn::{readonly, shape_str, slice, to_array, Float};
use lstmrs_core::seq2seq::{
    self as core, AttentionKind, DecodeOptions, PairBatch, Seq2SeqConfig, TrainOptions,
};
use lstmrs_core::{CellKind, RnnConfig};
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

fn bad(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    error(py, Kind::InvalidArgument, msg)
}

/// An int64 array of `dims.len()` dimensions (named in the message) converted to `U` (`what`
/// says which values convert), with its shape.
fn int64s<U: TryFrom<i64>>(
    arg: &str,
    obj: &Bound<'_, PyAny>,
    dims: &[&str],
    what: &str,
) -> PyResult<(Vec<U>, Vec<usize>)> {
    let py = obj.py();
    let arr = obj.cast::<PyArrayDyn<i64>>().map_err(|_| {
        error(
            py,
            Kind::DType,
            format!("{arg}: expected a numpy.ndarray of int64 {what}"),
        )
    })?;
    let ro = arr
        .try_readonly()
        .map_err(|e| bad(py, format!("{arg}: the array cannot be borrowed ({e})")))?;
    let shape = ro.shape().to_vec();
    if shape.len() != dims.len() {
        return Err(error(
            py,
            Kind::Shape,
            format!(
                "{arg}: expected shape ({}), got {}",
                dims.join(", "),
                shape_str(&shape)
            ),
        ));
    }
    let data = ro
        .as_array()
        .iter()
        .map(|&v| U::try_from(v))
        .collect::<Result<_, _>>()
        .map_err(|_| bad(py, format!("{arg}: expected {what}")))?;
    Ok((data, shape))
}

/// A padded batch of token sequences `[B, steps]` with their lengths `[B]`: what every call
/// reads, converted once (the core checks the values against the model).
struct Sequences {
    tokens: Vec<u32>,
    batch: usize,
    steps: usize,
    lengths: Vec<usize>,
}

impl Sequences {
    fn read(
        arg: &str,
        tokens: &Bound<'_, PyAny>,
        lengths_arg: &str,
        lengths: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let (tokens, shape) = int64s(arg, tokens, &["batch", "steps"], "token ids >= 0")?;
        let (lengths, _) = int64s(lengths_arg, lengths, &["batch"], "lengths >= 1")?;
        Ok(Sequences {
            tokens,
            batch: shape[0],
            steps: shape[1],
            lengths,
        })
    }
}

/// An encoder–decoder with attention (see `lstmrs_core::seq2seq`).
#[pyclass(frozen, module = "lstmrs._lstmrs")]
pub struct Seq2SeqCore {
    config: Seq2SeqConfig,
}

impl Seq2SeqCore {
    fn loss_t<'py, T: Float>(
        &self,
        py: Python<'py>,
        params: &Bound<'py, PyAny>,
        pairs: (
            &Bound<'py, PyAny>,
            &Bound<'py, PyAny>,
            &Bound<'py, PyAny>,
            &Bound<'py, PyAny>,
        ),
        bos: u32,
        opts: TrainOptions,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let p = readonly::<T>("params", params)?;
        let ps = slice("params", &p)?;
        let src = Sequences::read("src", pairs.0, "src_lengths", pairs.1)?;
        let tgt = Sequences::read("tgt", pairs.2, "tgt_lengths", pairs.3)?;
        if tgt.batch != src.batch {
            return Err(error(
                py,
                Kind::Shape,
                format!(
                    "tgt: expected {} rows (one per source), got {}",
                    src.batch, tgt.batch
                ),
            ));
        }
        let batch = PairBatch {
            batch: src.batch,
            src_len_max: src.steps,
            src: &src.tokens,
            src_lengths: &src.lengths,
            tgt_len_max: tgt.steps,
            tgt: &tgt.tokens,
            tgt_lengths: &tgt.lengths,
            bos,
        };
        let cfg = self.config;
        let r = py.detach(|| guarded(|| core::loss_and_grad(&cfg, ps, &batch, &opts)));
        let out = lift(py, r)?;
        let n = out.grads.len();
        let grads = if opts.grad {
            to_array(py, out.grads, &[n])?
        } else {
            py.None().into_bound(py)
        };
        PyTuple::new(
            py,
            [
                out.loss.into_pyobject(py)?.into_any(),
                out.tokens.into_pyobject(py)?.into_any(),
                out.correct.into_pyobject(py)?.into_any(),
                grads,
            ],
        )
    }

    fn decode_t<'py, T: Float>(
        &self,
        py: Python<'py>,
        params: &Bound<'py, PyAny>,
        src: &Bound<'py, PyAny>,
        src_lengths: &Bound<'py, PyAny>,
        opts: DecodeOptions,
        force_beam: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let p = readonly::<T>("params", params)?;
        let ps = slice("params", &p)?;
        let Sequences {
            tokens,
            batch: b,
            steps: s,
            lengths,
        } = Sequences::read("src", src, "src_lengths", src_lengths)?;
        let cfg = self.config;
        let r = py.detach(|| {
            guarded(|| {
                if force_beam {
                    core::decode::beam_search(&cfg, ps, b, s, &tokens, &lengths, &opts)
                } else {
                    core::decode(&cfg, ps, b, s, &tokens, &lengths, &opts)
                }
            })
        });
        let hyps = lift(py, r)?;
        let out = PyList::empty(py);
        for hyp in hyps {
            let steps = hyp.attention.len() / s;
            let att = if opts.attention {
                to_array(py, hyp.attention, &[steps, s])?
            } else {
                py.None().into_bound(py)
            };
            out.append((hyp.tokens, hyp.log_prob, hyp.finished, att))?;
        }
        Ok(out)
    }
}

/// Which element type `params` holds: float32 or float64.
fn is_f64(py: Python<'_>, params: &Bound<'_, PyAny>) -> PyResult<bool> {
    if params.cast::<PyArrayDyn<f32>>().is_ok() {
        Ok(false)
    } else if params.cast::<PyArrayDyn<f64>>().is_ok() {
        Ok(true)
    } else {
        Err(error(
            py,
            Kind::DType,
            "params: expected a numpy.ndarray of float32 or float64",
        ))
    }
}

#[pymethods]
impl Seq2SeqCore {
    #[new]
    #[pyo3(signature = (*, cell, src_vocab, tgt_vocab, embed_size, encoder_hidden, num_layers,
                        bidirectional, hidden_size, attention, attention_size, decoder_layers=1,
                        decoder_cell="lstm"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        cell: &str,
        src_vocab: usize,
        tgt_vocab: usize,
        embed_size: usize,
        encoder_hidden: usize,
        num_layers: usize,
        bidirectional: bool,
        hidden_size: usize,
        attention: &str,
        attention_size: usize,
        decoder_layers: usize,
        decoder_cell: &str,
    ) -> PyResult<Self> {
        let cell = CellKind::parse(cell).map_err(|e| core_error(py, e))?;
        let decoder_cell = CellKind::parse(decoder_cell).map_err(|e| core_error(py, e))?;
        let encoder = RnnConfig::new(
            cell,
            embed_size,
            encoder_hidden,
            num_layers,
            bidirectional,
            true,
        )
        .map_err(|e| core_error(py, e))?;
        let config = Seq2SeqConfig {
            encoder,
            src_vocab,
            tgt_vocab,
            embed_size,
            hidden_size,
            attention: AttentionKind::from_name(attention).map_err(|e| core_error(py, e))?,
            attention_size,
            decoder_layers,
            decoder_cell,
        };
        config.validate().map_err(|e| core_error(py, e))?;
        Ok(Seq2SeqCore { config })
    }

    #[getter]
    fn num_params(&self) -> usize {
        self.config.num_params()
    }

    fn param_specs(&self) -> Vec<(String, Vec<usize>)> {
        self.config
            .param_specs()
            .into_iter()
            .map(|p| (p.name, p.shape))
            .collect()
    }

    /// Initial weights as a flat array of `dtype`.
    #[pyo3(signature = (seed, dtype="float32"))]
    fn init<'py>(&self, py: Python<'py>, seed: u64, dtype: &str) -> PyResult<Bound<'py, PyAny>> {
        let n = self.config.num_params();
        match dtype {
            "float32" => to_array(
                py,
                self.config
                    .init::<f32>(seed)
                    .map_err(|e| core_error(py, e))?,
                &[n],
            ),
            "float64" => to_array(
                py,
                self.config
                    .init::<f64>(seed)
                    .map_err(|e| core_error(py, e))?,
                &[n],
            ),
            other => Err(bad(
                py,
                format!("dtype: expected 'float32' or 'float64', got {other:?}"),
            )),
        }
    }

    /// `(mean loss, tokens, correct argmax tokens, grads or None)` of a batch of pairs.
    #[pyo3(signature = (params, src, src_lengths, tgt, tgt_lengths, *, bos, label_smoothing=0.0,
                        sampling_rate=0.0, dropout=0.0, seed=0, grad=true))]
    #[allow(clippy::too_many_arguments)]
    fn loss_and_grad<'py>(
        &self,
        py: Python<'py>,
        params: &Bound<'py, PyAny>,
        src: &Bound<'py, PyAny>,
        src_lengths: &Bound<'py, PyAny>,
        tgt: &Bound<'py, PyAny>,
        tgt_lengths: &Bound<'py, PyAny>,
        bos: u32,
        label_smoothing: f64,
        sampling_rate: f64,
        dropout: f64,
        seed: u64,
        grad: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let opts = TrainOptions {
            label_smoothing,
            sampling_rate,
            dropout,
            seed,
            grad,
        };
        let pairs = (src, src_lengths, tgt, tgt_lengths);
        if is_f64(py, params)? {
            self.loss_t::<f64>(py, params, pairs, bos, opts)
        } else {
            self.loss_t::<f32>(py, params, pairs, bos, opts)
        }
    }

    /// `[(tokens, log_prob, finished, attention [steps, S] or None)]`, one per source.
    #[pyo3(signature = (params, src, src_lengths, *, bos, eos, beam=1, alpha=0.0, max_len=50,
                        attention=false, force_beam=false))]
    #[allow(clippy::too_many_arguments)]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        params: &Bound<'py, PyAny>,
        src: &Bound<'py, PyAny>,
        src_lengths: &Bound<'py, PyAny>,
        bos: u32,
        eos: u32,
        beam: usize,
        alpha: f64,
        max_len: usize,
        attention: bool,
        force_beam: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let opts = DecodeOptions {
            beam,
            alpha,
            max_len,
            bos,
            eos,
            attention,
        };
        if is_f64(py, params)? {
            self.decode_t::<f64>(py, params, src, src_lengths, opts, force_beam)
        } else {
            self.decode_t::<f32>(py, params, src, src_lengths, opts, force_beam)
        }
    }

    fn __repr__(&self) -> String {
        let c = &self.config;
        format!(
            "Seq2SeqCore({} encoder {}x{}{}, {} decoder {}x{}, {} attention, vocab {}->{})",
            c.encoder.cell.name(),
            c.encoder.num_layers,
            c.encoder.hidden_size,
            if c.encoder.bidirectional { " bi" } else { "" },
            c.decoder_cell.name(),
            c.decoder_layers,
            c.hidden_size,
            c.attention.name(),
            c.src_vocab,
            c.tgt_vocab
        )
    }
}
