"""Export of lstmrs layers and models to ONNX, checked on the spot.

Opset: 17 by default (any of 15 to the installed ``onnx``'s newest may be asked for; 15 is the
first with ``Shape(start, end)``); opset 17 came with ONNX 1.12 (2022) and ONNX Runtime
1.12. The file's IR version is the oldest that carries the opset. Graphs are float32 (a float64 layer or model is exported with its weights
rounded to float32); batch and time are dynamic axes.

Each export is run through ``onnx.checker`` (full check) and, unless ``verify=False``, in ONNX
Runtime on random inputs with mixed lengths (one full-length and one single-step sequence among
them); its outputs must equal lstmrs' to ``tolerance * (1 + |value|)`` or
:class:`~lstmrs.errors.ExportMismatchError` is raised and nothing is written.

A model (:class:`lstmrs.Model`) becomes: inputs ``x`` (float ``[batch, time, F]``, or int64
token ids ``[batch, time]`` for a model with an embedding, looked up with ``Gather``) and
``lengths`` (int64 ``[batch]``, each in 1..time); output ``y`` as :meth:`Model.predict` gives it
(``output="raw"``: the head's values, the default; ``"probabilities"``: softmax for
cross-entropy, sigmoid for bce_with_logits; ``"labels"``: class ids), ``[batch, O]`` or, per
step, ``[batch, time, O]`` with zeros past each length.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from .._lstmrs import __version__
from ..errors import ExportError, InvalidArgumentError
from .onnx_graph import GraphBuilder
from .onnx_rnn import StackSpec, emit_stack
from .onnx_verify import check_model, compare, mixed_lengths, run_onnxruntime
from .optional import require

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "layer_to_onnx", "model_to_onnx"]

DEFAULT_OPSET = 17
MIN_OPSET = 15

# Model config keys the exporter understands; any other key set to a non-default value (a
# feature added after this exporter, e.g. proj_size) is refused instead of silently dropped.
_MODEL_KEYS = {
    "input_size",
    "vocab_size",
    "embedding_dim",
    "cell",
    "hidden_size",
    "num_layers",
    "bidirectional",
    "bias",
    "dropout",  # training only
    "pooling",
    "attention_units",
    "head_hidden",
    "activation",
    "output_size",
    "loss",
    "dtype",
    "seed",
}
_OUTPUTS = ("raw", "probabilities", "labels")


def _opset_arg(onnx: Any, opset: Any) -> int:
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise InvalidArgumentError(
            f"opset: expected an integer in {MIN_OPSET}..{newest}, got {opset!r}"
        )
    if not MIN_OPSET <= int(opset) <= newest:
        raise InvalidArgumentError(
            f"opset: expected {MIN_OPSET}..{newest} (the installed onnx {onnx.__version__} "
            f"knows up to {newest}), got {opset}"
        )
    return int(opset)


def _finish(onnx: Any, g: GraphBuilder, name: str, inputs, outputs, opset: int, doc: str, meta):
    graph = g.graph(name, inputs, outputs)
    ops = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(
        graph,
        opset_imports=ops,
        producer_name="lstmrs",
        producer_version=__version__,
        doc_string=doc,
    )
    # The oldest IR version that carries this opset, so older runtimes load the file.
    model.ir_version = onnx.helper.find_min_ir_version_for(ops)
    onnx.helper.set_model_props(model, {k: str(v) for k, v in meta.items()})
    check_model(model)
    return model


def _save(onnx: Any, model: Any, path: Any) -> None:
    if path is None:
        return
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InvalidArgumentError(f"path: the folder {folder!r} does not exist")
    onnx.save(model, path)


def _masks(g: GraphBuilder, x: str, lengths: str, time_axis: int) -> tuple[str, str]:
    """From int64 ``lengths`` [B] and ``x``'s time axis: ``mask_bt`` bool [B, T] (step valid)
    and ``mask_tm`` bool [T, B, 1]."""
    t = g.op("Squeeze", [g.op("Shape", [x], start=time_axis, end=time_axis + 1), g.i64([0])])
    steps = g.op("Range", [g.i64(0), t, g.i64(1)])
    mask_bt = g.op(
        "Less",
        [g.op("Unsqueeze", [steps, g.i64([0])]), g.op("Unsqueeze", [lengths, g.i64([1])])],
    )
    mask_tm = g.op("Unsqueeze", [g.op("Transpose", [mask_bt], perm=[1, 0]), g.i64([2])])
    return mask_bt, mask_tm


def _emit_recurrent(g, spec, weights, x_tm, lengths, mask_tm, h0=None, c0=None):
    seq_lens = None
    if lengths is not None and spec.builtin:
        seq_lens = g.op("Cast", [lengths], to=g.onnx.TensorProto.INT32)
    return emit_stack(
        g,
        spec,
        weights,
        x_tm,
        seq_lens=seq_lens,
        mask_tm=None if spec.builtin else mask_tm,
        h0=h0,
        c0=c0,
    )


# ------------------------------------------------------------------------------------------------
# Layers


def _layer_spec(layer: Any) -> StackSpec:
    proj = getattr(layer, "proj_size", 0)
    if proj:
        raise ExportError(
            f"layer: proj_size={proj}: ONNX's LSTM operator has no projection (weight_hr), so "
            "a projected LSTM cannot be exported; layers with proj_size=0 export"
        )
    desc = getattr(layer, "cell_description", None)
    return StackSpec(
        cell=layer._cell if desc is None else desc,
        input_size=layer.input_size,
        hidden_size=layer.hidden_size,
        num_layers=layer.num_layers,
        bidirectional=layer.bidirectional,
        bias=layer.bias,
    )


def layer_to_onnx(
    layer: Any,
    path: Any = None,
    *,
    opset: int = DEFAULT_OPSET,
    lengths: bool = True,
    initial_state: bool = False,
    verify: bool = True,
    tolerance: float = 1e-5,
) -> Any:
    """An :class:`~lstmrs.LSTM` / :class:`~lstmrs.GRU` / :class:`~lstmrs.RNN` as an ONNX
    ``ModelProto`` (written to ``path`` when given).

    Inputs: ``x`` (``[batch, time, I]`` when the layer is ``batch_first``, else
    ``[time, batch, I]``), ``lengths`` (int64 ``[batch]``; left out with ``lengths=False``),
    and with ``initial_state=True`` ``h0`` (and ``c0`` for two-state cells) ``[L*D, batch,
    H]``. Outputs: ``output`` (the layer's output layout), ``h_n`` (and ``c_n``). Inference
    semantics: no dropout. Unbatched ``[T, I]`` inputs are not part of the graph.
    """
    onnx = require("onnx", "ONNX export")
    opset = _opset_arg(onnx, opset)
    spec = _layer_spec(layer)
    tp = onnx.TensorProto
    g = GraphBuilder(onnx)
    bf = layer.batch_first
    x = g.reserve("x")
    x_shape = ["batch", "time", spec.input_size] if bf else ["time", "batch", spec.input_size]
    inputs = [g.value_info(x, tp.FLOAT, x_shape)]
    lens = None
    if lengths:
        lens = g.reserve("lengths")
        inputs.append(g.value_info(lens, tp.INT64, ["batch"]))
    ld = spec.num_layers * spec.directions
    state_shape = [ld, "batch", spec.hidden_size]
    h0 = c0 = None
    if initial_state:
        h0 = g.reserve("h0")
        inputs.append(g.value_info(h0, tp.FLOAT, state_shape))
        if spec.num_states == 2:
            c0 = g.reserve("c0")
            inputs.append(g.value_info(c0, tp.FLOAT, state_shape))
    x_tm = g.op("Transpose", [x], perm=[1, 0, 2]) if bf else x
    mask_tm = None
    if lens is not None and not spec.builtin:
        mask_tm = _masks(g, x, lens, 1 if bf else 0)[1]
    y, h_n, c_n = _emit_recurrent(g, spec, layer.state_dict(), x_tm, lens, mask_tm, h0, c0)
    out_width = spec.directions * spec.hidden_size
    names = ["output", "h_n"] + (["c_n"] if c_n is not None else [])
    sources = [g.op("Transpose", [y], perm=[1, 0, 2]) if bf else y, h_n, c_n]
    shapes = [
        ["batch", "time", out_width] if bf else ["time", "batch", out_width],
        state_shape,
        state_shape,
    ]
    outputs = []
    for name, src, shape in zip(names, sources, shapes):
        g.output(src, name)
        outputs.append(g.value_info(name, tp.FLOAT, shape))
    meta = {"lstmrs.layer": repr(layer), "lstmrs.opset": opset}
    model = _finish(
        onnx,
        g,
        f"lstmrs_{type(layer).__name__.lower()}",
        inputs,
        outputs,
        opset,
        f"lstmrs {layer!r} exported for inference (no dropout)",
        meta,
    )
    if verify:
        _verify_layer(layer, model, spec, lengths, initial_state, tolerance)
    _save(onnx, model, path)
    return model


def _verify_layer(layer, model, spec, lengths, initial_state, tolerance, batch=5, steps=7):
    rng = np.random.default_rng(0)
    shape = (
        (batch, steps, spec.input_size) if layer.batch_first else (steps, batch, spec.input_size)
    )
    x = rng.standard_normal(shape).astype(np.float32)
    feeds: dict[str, np.ndarray] = {"x": x}
    lens = None
    if lengths:
        lens = feeds["lengths"] = mixed_lengths(batch, steps, rng)
    state = None
    if initial_state:
        ld = spec.num_layers * spec.directions
        h0 = rng.standard_normal((ld, batch, spec.hidden_size)).astype(np.float32)
        feeds["h0"] = h0
        state = h0
        if spec.num_states == 2:
            c0 = rng.standard_normal((ld, batch, spec.hidden_size)).astype(np.float32)
            feeds["c0"] = c0
            state = (h0, c0)
    was_training = layer.training
    layer.training = False  # inference: no dropout, as in the graph
    try:
        out, new_state = layer(x, state, lens)
    finally:
        layer.training = was_training
    want = [out, *(new_state if isinstance(new_state, tuple) else (new_state,))]
    got = run_onnxruntime(model, feeds)
    for name, a, b in zip(("output", "h_n", "c_n"), got, want):
        compare(f"{type(layer).__name__} export, {name}", a, b, tolerance)


# ------------------------------------------------------------------------------------------------
# Models


def _model_spec(model: Any) -> StackSpec:
    k = model.get_config()
    if k.get("proj_size"):
        raise ExportError(
            f"model: proj_size={k['proj_size']}: ONNX's LSTM operator has no projection "
            "(weight_hr), so a projected LSTM cannot be exported; models with proj_size=0 export"
        )
    unknown = {
        key: v
        for key, v in k.items()
        if key not in _MODEL_KEYS and v not in (None, 0, 0.0, False, [], ())
    }
    if unknown:
        raise ExportError(
            f"model: the ONNX exporter does not know the option(s) {unknown} (expected them "
            "unset); export is not possible for this model yet"
        )
    features = k["embedding_dim"] if k["vocab_size"] is not None else k["input_size"]
    return StackSpec(
        cell=k["cell"],
        input_size=features,
        hidden_size=k["hidden_size"],
        num_layers=k["num_layers"],
        bidirectional=k["bidirectional"],
        bias=k["bias"],
    )


def _dense(g: GraphBuilder, x: str, sd: dict, prefix: str) -> str:
    w = np.asarray(sd[f"{prefix}.weight"], dtype=np.float32)
    y = g.op("MatMul", [x, g.init(f"{prefix}.weight_t", w.T)])
    return g.op("Add", [y, g.init(f"{prefix}.bias", np.asarray(sd[f"{prefix}.bias"], np.float32))])


def model_to_onnx(
    model: Any,
    path: Any = None,
    *,
    opset: int = DEFAULT_OPSET,
    output: str = "raw",
    lengths: bool = True,
    verify: bool = True,
    tolerance: float = 1e-5,
) -> Any:
    """An :class:`lstmrs.Model` as an ONNX ``ModelProto`` (written to ``path`` when given); see
    the module docstring for inputs and outputs. ``lengths=False`` leaves the ``lengths``
    input out (every sequence is ``time`` steps long)."""
    onnx = require("onnx", "ONNX export")
    opset = _opset_arg(onnx, opset)
    if output not in _OUTPUTS:
        raise InvalidArgumentError(f"output: expected one of {_OUTPUTS}, got {output!r}")
    spec = _model_spec(model)
    cfg = model.get_config()
    loss = model.loss.name
    if output != "raw" and loss not in ("cross_entropy", "bce_with_logits"):
        raise InvalidArgumentError(
            f"output: {output!r} needs a classification loss, the model uses {loss!r}"
        )
    sd = {k: np.asarray(v, dtype=np.float32) for k, v in model.state_dict().items()}
    tp = onnx.TensorProto
    g = GraphBuilder(onnx)
    tokens = cfg["vocab_size"] is not None
    x = g.reserve("x")
    if tokens:
        inputs = [g.value_info(x, tp.INT64, ["batch", "time"])]
        feats = g.op("Gather", [g.init("embedding.weight", sd["embedding.weight"]), x], axis=0)
    else:
        inputs = [g.value_info(x, tp.FLOAT, ["batch", "time", cfg["input_size"]])]
        feats = x
    lens = mask_bt = mask_tm = None
    if lengths:
        lens = g.reserve("lengths")
        inputs.append(g.value_info(lens, tp.INT64, ["batch"]))
        mask_bt, mask_tm = _masks(g, x, lens, 1)
    rnn = {k[len("rnn.") :]: v for k, v in sd.items() if k.startswith("rnn.")}
    x_tm = g.op("Transpose", [feats], perm=[1, 0, 2])
    y_tm, h_n, _ = _emit_recurrent(g, spec, rnn, x_tm, lens, mask_tm)
    d, h, layers = spec.directions, spec.hidden_size, spec.num_layers
    pooling = cfg["pooling"]
    y_bt = None if pooling == "last" else g.op("Transpose", [y_tm], perm=[1, 0, 2])
    if pooling == "last":
        # Top layer's final states, directions side by side: the forward one at the last valid
        # step, the reverse one at step 0 (torch's h_n, what the core pools).
        top = g.op("Slice", [h_n, g.i64([(layers - 1) * d]), g.i64([layers * d]), g.i64([0])])
        rows = g.op("Reshape", [g.op("Transpose", [top], perm=[1, 0, 2]), g.i64([0, d * h])])
    elif pooling == "mean":
        if mask_bt is None:
            rows = g.op("ReduceMean", [y_bt], axes=[1], keepdims=0)
        else:
            valid = g.op("Cast", [g.op("Unsqueeze", [mask_bt, g.i64([2])])], to=tp.FLOAT)
            total = g.op("ReduceSum", [g.op("Mul", [y_bt, valid]), g.i64([1])], keepdims=0)
            count = g.op("Cast", [g.op("Unsqueeze", [lens, g.i64([1])])], to=tp.FLOAT)
            rows = g.op("Div", [total, count])
    elif pooling == "attention":
        # alpha = softmax_t(v . tanh(W o_t + b)) over the valid steps; pooled = sum_t alpha_t o_t.
        u = g.op("Tanh", [_dense(g, y_bt, sd, "attention")])
        v = sd["attention.vector"].reshape(-1, 1)
        scores = g.op("Squeeze", [g.op("MatMul", [u, g.init("attention.vector", v)]), g.i64([2])])
        if mask_bt is not None:
            scores = g.op("Where", [mask_bt, scores, g.f32(-np.inf)])
        alpha = g.op("Softmax", [scores], axis=1)
        pooled = g.op("MatMul", [g.op("Unsqueeze", [alpha, g.i64([1])]), y_bt])
        rows = g.op("Squeeze", [pooled, g.i64([1])])
    elif pooling == "per_step":
        rows = y_bt
    else:
        raise ExportError(f"model: pooling {pooling!r} has no ONNX translation")
    n_dense = len(cfg["head_hidden"]) + 1
    act = {"tanh": "Tanh", "relu": "Relu"}[cfg["activation"]]
    for k in range(n_dense):
        rows = _dense(g, rows, sd, f"head.{k}")
        if k + 1 < n_dense:
            rows = g.op(act, [rows])
    elem = tp.FLOAT
    if output == "probabilities":
        if loss == "bce_with_logits":
            rows = g.op("Sigmoid", [rows])
        else:
            rows = g.op("Softmax", [rows], axis=-1)
    elif output == "labels":
        elem = tp.INT64
        if loss == "bce_with_logits":
            rows = g.op("Cast", [g.op("Greater", [rows, g.f32(0.0)])], to=tp.INT64)
        else:
            rows = g.op("ArgMax", [rows], axis=-1, keepdims=0)
    per_step = pooling == "per_step"
    if per_step and mask_bt is not None:
        # predict() leaves the outputs past each length at 0.
        m = mask_bt
        if not (output == "labels" and loss != "bce_with_logits"):
            m = g.op("Unsqueeze", [mask_bt, g.i64([2])])
        zero = g.i64(0) if elem == tp.INT64 else g.f32(0.0)
        rows = g.op("Where", [m, rows, zero])
    g.output(rows, "y")
    o = cfg["output_size"]
    y_shape = ["batch", "time"] if per_step else ["batch"]
    if not (output == "labels" and loss != "bce_with_logits"):
        y_shape.append(o)
    outputs = [g.value_info("y", elem, y_shape)]
    meta = {
        "lstmrs.config": json.dumps(cfg),
        "lstmrs.output": output,
        "lstmrs.opset": opset,
    }
    onnx_model = _finish(
        onnx,
        g,
        "lstmrs_model",
        inputs,
        outputs,
        opset,
        f"lstmrs {model!r}, output={output!r}, for inference (no dropout)",
        meta,
    )
    if verify:
        _verify_model(model, onnx_model, output, lengths, tolerance)
    _save(onnx, onnx_model, path)
    return onnx_model


def _verify_model(model, onnx_model, output, lengths, tolerance, batch=5, steps=7):
    cfg = model.get_config()
    rng = np.random.default_rng(0)
    if cfg["vocab_size"] is not None:
        x = rng.integers(0, cfg["vocab_size"], size=(batch, steps)).astype(np.int64)
    else:
        x = rng.standard_normal((batch, steps, cfg["input_size"])).astype(np.float32)
    feeds = {"x": x}
    lens = None
    if lengths:
        lens = feeds["lengths"] = mixed_lengths(batch, steps, rng)
    want = model.predict(x, lengths=lens, output=output)
    (got,) = run_onnxruntime(onnx_model, feeds)
    compare(f"model export (output={output!r})", got, want, tolerance)
