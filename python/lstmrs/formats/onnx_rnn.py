"""A recurrent stack (torch-layout weights) as ONNX nodes.

The built-in cells become ONNX's own ``LSTM`` and ``GRU`` operators, one node per layer (both
directions in one node, ``direction="bidirectional"``), with torch's gate blocks reordered
(LSTM i,f,g,o -> ONNX i,o,f,c; GRU r,z,n -> ONNX z,r,h with ``linear_before_reset=1``, torch's
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``) and ``sequence_lens`` for variable lengths.

A cell written in the cell language (:mod:`lstmrs.cells`) becomes, per layer and direction, one
``MatMul`` for the input projection of all steps and a ``Scan`` whose body is the recurrent
product plus the cell's element-wise program as ONNX operators. Lengths act as in the Rust
core: a step past a sequence's length leaves its states unchanged and outputs zeros, so the
forward direction ends at the last valid step and the reverse direction starts there.

Everything here is time-major: ``x`` ``[T, B, I]`` in, ``y`` ``[T, B, D*H]`` and the final
states ``[L*D, B, H]`` out, D*H laid out as torch does (forward block, then reverse block).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cells import DIV_EPS, LOG_FLOOR
from ..errors import ExportError
from .onnx_graph import GraphBuilder

__all__ = ["StackSpec", "emit_stack", "onnx_gate_order", "onnx_layer_tensors", "torch_gate_order"]

# ONNX gate blocks in terms of torch's: LSTM torch i,f,g,o -> ONNX i,o,f,c; GRU r,z,n -> z,r,h.
_ONNX_BLOCKS = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}


def _block_rows(blocks: tuple[int, ...], h: int) -> np.ndarray:
    return np.concatenate([np.arange(k * h, (k + 1) * h) for k in blocks])


def onnx_gate_order(cell: str, h: int) -> np.ndarray:
    """Rows of a torch ``weight_ih``/``weight_hh``/bias in ONNX's gate order."""
    return _block_rows(_ONNX_BLOCKS[cell], h)


def torch_gate_order(cell: str, h: int) -> np.ndarray:
    """Rows of an ONNX ``W``/``R``/bias block in torch's gate order (inverse of
    :func:`onnx_gate_order`)."""
    return np.argsort(onnx_gate_order(cell, h))


def onnx_layer_tensors(
    cell: str, weights: Mapping[str, np.ndarray], layer: int, h: int, directions: int, bias: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ONNX ``W`` [D, G*H, I], ``R`` [D, G*H, H], ``B`` [D, 2*G*H] (None without bias) of layer
    ``layer`` from torch-named ``weights`` (``weight_ih_l{k}[_reverse]``, ...), float32."""
    order = onnx_gate_order(cell, h)
    suffixes = [f"_l{layer}", f"_l{layer}_reverse"][:directions]
    w = np.stack([np.asarray(weights[f"weight_ih{s}"])[order] for s in suffixes])
    r = np.stack([np.asarray(weights[f"weight_hh{s}"])[order] for s in suffixes])
    b = None
    if bias:
        b = np.stack(
            [
                np.concatenate(
                    [
                        np.asarray(weights[f"bias_ih{s}"])[order],
                        np.asarray(weights[f"bias_hh{s}"])[order],
                    ]
                )
                for s in suffixes
            ]
        )
    as32 = [None if a is None else np.ascontiguousarray(a, dtype=np.float32) for a in (w, r, b)]
    return as32[0], as32[1], as32[2]


@dataclass(frozen=True)
class StackSpec:
    """What the exporter needs of a recurrent stack. ``cell``: ``"lstm"``, ``"gru"`` or a cell
    description (the dict of :meth:`lstmrs.cells.CellSpec.to_dict`).

    Where later options slot in: ONNX's LSTM operator has no projection, so a ``proj_size``
    stack (once the layers have one) takes the Scan path, the projection one more product in
    the body after the cell's program; a seq2seq decoder reuses :func:`emit_stack` for its
    encoder and a ``Loop`` around one Scan-body step for greedy decoding."""

    cell: Any
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    bias: bool

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def builtin(self) -> bool:
        return isinstance(self.cell, str)

    @property
    def num_states(self) -> int:
        if self.builtin:
            return 2 if self.cell == "lstm" else 1
        return len(self.cell["states"])


def _state_row(g: GraphBuilder, state: str, row: int, count: int = 1) -> str:
    """Rows ``row:row+count`` of a ``[L*D, B, H]`` state input (kept 3-D)."""
    return g.op("Slice", [state, g.i64([row]), g.i64([row + count]), g.i64([0])])


def emit_stack(
    g: GraphBuilder,
    spec: StackSpec,
    weights: Mapping[str, np.ndarray],
    x_tm: str,
    *,
    seq_lens: str | None = None,
    mask_tm: str | None = None,
    h0: str | None = None,
    c0: str | None = None,
) -> tuple[str, str, str | None]:
    """Nodes computing the stack over ``x_tm`` [T, B, I] (float32). ``seq_lens``: int32 [B]
    (built-in cells); ``mask_tm``: bool [T, B, 1], step valid (custom cells); both None for
    full-length inputs. ``h0``/``c0``: [L*D, B, H] initial states (zeros when None). Returns
    ``(y [T, B, D*H], h_n [L*D, B, H], c_n or None)``."""
    layer_in = x_tm
    h_parts: list[str] = []
    c_parts: list[str] = []
    for layer in range(spec.num_layers):
        if spec.builtin:
            y, hs, cs = _builtin_layer(g, spec, weights, layer, layer_in, seq_lens, h0, c0)
        else:
            y, hs, cs = _custom_layer(g, spec, weights, layer, layer_in, mask_tm, h0, c0)
        h_parts.append(hs)
        if cs is not None:
            c_parts.append(cs)
        layer_in = y
    h_n = h_parts[0] if len(h_parts) == 1 else g.op("Concat", h_parts, axis=0)
    c_n = None
    if c_parts:
        c_n = c_parts[0] if len(c_parts) == 1 else g.op("Concat", c_parts, axis=0)
    return layer_in, h_n, c_n


def _builtin_layer(g, spec, weights, layer, x, seq_lens, h0, c0):
    d, h = spec.directions, spec.hidden_size
    w, r, b = onnx_layer_tensors(spec.cell, weights, layer, h, d, spec.bias)
    inputs = [
        x,
        g.init(f"W_l{layer}", w),
        g.init(f"R_l{layer}", r),
        "" if b is None else g.init(f"B_l{layer}", b),
        seq_lens or "",
        "" if h0 is None else _state_row(g, h0, layer * d, d),
    ]
    attrs: dict[str, Any] = {"hidden_size": h}
    if spec.bidirectional:
        attrs["direction"] = "bidirectional"
    if spec.cell == "lstm":
        inputs.append("" if c0 is None else _state_row(g, c0, layer * d, d))
    # Optional trailing inputs are left out rather than given as "".
    while inputs[-1] == "":
        inputs.pop()
    if spec.cell == "lstm":
        y, y_h, y_c = g.op("LSTM", inputs, 3, **attrs)
    else:
        attrs["linear_before_reset"] = 1
        y, y_h = g.op("GRU", inputs, 2, **attrs)
        y_c = None
    # Y is [T, D, B, H]; torch's [T, B, D*H] puts the directions side by side.
    if d == 1:
        y = g.op("Squeeze", [y, g.i64([1])])
    else:
        y = g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]), g.i64([0, 0, -1])])
    return y, y_h, y_c


# Cell-language ops -> ONNX ops on the node's arguments.
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "max": "Max", "min": "Min"}
_UNARY = {
    "neg": "Neg",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "relu": "Relu",
    "exp": "Exp",
    "softplus": "Softplus",
}


def _custom_layer(g, spec, weights, layer, x, mask_tm, h0, c0):
    desc, d, h = spec.cell, spec.directions, spec.hidden_size
    states = list(desc["states"])
    ys, hs, cs = [], [], []
    for direction in range(d):
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        w_ih = np.asarray(weights[f"weight_ih{sfx}"], dtype=np.float32)
        # The input projection of every step in one product, as the Rust sweep does.
        xp = g.op("MatMul", [x, g.init(f"W_ih{sfx}_t", w_ih.T)])
        if spec.bias:
            xp = g.op("Add", [xp, g.init(f"b_ih{sfx}", np.asarray(weights[f"bias_ih{sfx}"]))])
        row = layer * d + direction
        initial = []
        # States past h and c (internal to the core's forward) start at zero, as there.
        for k in range(len(states)):
            given = (h0, c0)[k] if k < 2 else None
            if given is not None:
                initial.append(g.op("Squeeze", [_state_row(g, given, row), g.i64([0])]))
            else:
                initial.append(_zeros_bh(g, x, h))
        body = _scan_body(g, spec, weights, sfx, states, mask_tm is not None)
        scan_inputs = [xp] + ([mask_tm] if mask_tm is not None else [])
        n_in = len(scan_inputs)
        outs = g.op(
            "Scan",
            initial + scan_inputs,
            len(states) + 1,
            body=body,
            num_scan_inputs=n_in,
            scan_input_directions=[direction] * n_in,
            scan_output_directions=[direction],
        )
        finals, y = outs[: len(states)], outs[-1]
        ys.append(y)
        hs.append(g.op("Unsqueeze", [finals[0], g.i64([0])]))
        if len(states) >= 2:
            cs.append(g.op("Unsqueeze", [finals[1], g.i64([0])]))
    y = ys[0] if d == 1 else g.op("Concat", ys, axis=2)
    h_n = hs[0] if d == 1 else g.op("Concat", hs, axis=0)
    c_n = None
    if cs:
        c_n = cs[0] if d == 1 else g.op("Concat", cs, axis=0)
    return y, h_n, c_n


def _zeros_bh(g: GraphBuilder, x_tm: str, h: int) -> str:
    """Zeros [B, H] with B read from ``x_tm``'s shape (dynamic batch)."""
    batch = g.op("Shape", [x_tm], start=1, end=2)
    shape = g.op("Concat", [batch, g.i64([h])], axis=0)
    zero = g.helper.make_tensor("zero", g.onnx.TensorProto.FLOAT, [1], [0.0])
    return g.op("ConstantOfShape", [shape], value=zero)


def _scan_body(g, spec, weights, sfx, states, masked):
    """The Scan body of one layer direction: inputs the states [B, H], x_pre [B, Gx*H] (and the
    step's mask [B, 1]); outputs the new states and the step's output h [B, H]."""
    desc, h = spec.cell, spec.hidden_size
    f32 = g.onnx.TensorProto.FLOAT
    b = g.subgraph()
    state_in = {s: b.name(f"{s}_prev") for s in states}
    xp = b.name("x_pre")
    mask = b.name("valid") if masked else None
    gx, gh = int(desc["x_gates"]), int(desc["h_gates"])

    def split(src: str, n: int) -> list[str]:
        if n == 1:
            return [src]
        return b.op("Split", [src, b.i64([h] * n)], n, axis=1)

    xg = split(xp, gx)
    hg: list[str] = []
    if gh:
        w_hh = np.asarray(weights[f"weight_hh{sfx}"], dtype=np.float32)
        hp = b.op("MatMul", [state_in[states[0]], b.init(f"W_hh{sfx}_t", w_hh.T)])
        if spec.bias:
            hp = b.op("Add", [hp, b.init(f"b_hh{sfx}", np.asarray(weights[f"bias_hh{sfx}"]))])
        hg = split(hp, gh)
    vals: list[str] = []
    # Whether a node varies over the batch ([B, H]) or is a constant / [H] parameter.
    batched: list[bool] = []
    for n in desc["nodes"]:
        op = n["op"]
        batched.append(op in ("xg", "hg", "state") or any(batched[a] for a in n.get("args", ())))
        if op == "xg":
            v = xg[n["index"]]
        elif op == "hg":
            v = hg[n["index"]]
        elif op == "state":
            v = state_in[n["name"]]
        elif op == "param":
            arr = np.asarray(weights[f"{n['name']}{sfx}"], dtype=np.float32)
            v = b.init(f"{n['name']}{sfx}", arr)
        elif op == "const":
            v = b.f32(float(n["value"]))
        elif op in _BINARY:
            a0, a1 = n["args"]
            v = b.op(_BINARY[op], [vals[a0], vals[a1]])
        elif op in _UNARY:
            v = b.op(_UNARY[op], [vals[n["args"][0]]])
        elif op == "one_minus":
            v = b.op("Sub", [b.f32(1.0), vals[n["args"][0]]])
        elif op == "square":
            a = vals[n["args"][0]]
            v = b.op("Mul", [a, a])
        elif op == "log":
            v = b.op("Log", [b.op("Max", [vals[n["args"][0]], b.f32(LOG_FLOOR)])])
        elif op == "sqrt":
            v = b.op("Sqrt", [b.op("Max", [vals[n["args"][0]], b.f32(0.0)])])
        elif op == "div":
            # The core's safe division: |denominator| kept >= DIV_EPS (+ at 0).
            num, den = (vals[a] for a in n["args"])
            away = b.op("Where", [b.op("Less", [den, b.f32(0.0)]), b.f32(-DIV_EPS), b.f32(DIV_EPS)])
            inside = b.op("GreaterOrEqual", [b.op("Abs", [den]), b.f32(DIV_EPS)])
            v = b.op("Div", [num, b.op("Where", [inside, den, away])])
        elif op in ("sum", "mean"):
            # A product with a column of ones (1/H for the mean) reduces the last axis in every
            # opset (ReduceSum/ReduceMean changed their axes argument across opsets); Expand
            # broadcasts the row's value back to its units.
            a = vals[n["args"][0]]
            ones = np.full((h, 1), 1.0 if op == "sum" else 1.0 / h, dtype=np.float32)
            red = b.op("MatMul", [a, b.const(ones, np.float32)])
            v = b.op("Expand", [red, b.op("Shape", [a])])
        else:
            raise ExportError(f"cell {desc.get('name')!r}: op {op!r} has no ONNX translation")
        vals.append(v)

    prev_h = state_in[states[0]]
    new_states = []
    for s in states:
        i = desc["outputs"][s]
        v = vals[i]
        if not batched[i]:
            # A constant or [H] parameter as a state: broadcast it to [B, H] like the core.
            v = b.op("Expand", [v, b.op("Shape", [prev_h])])
        if mask is not None:
            v = b.op("Where", [mask, v, state_in[s]])
        new_states.append(v)
    y = new_states[0]
    if mask is not None:
        y = b.op("Where", [mask, y, b.f32(0.0)])
    # Body outputs need names of their own: not a body input, not another output.
    outs: list[str] = []
    for v in [*new_states, y]:
        if v in outs or v in state_in.values():
            v = b.op("Identity", [v])
        outs.append(v)
    inputs = [b.value_info(state_in[s], f32, ["B", h]) for s in states]
    inputs.append(b.value_info(xp, f32, ["B", gx * h]))
    if mask is not None:
        inputs.append(b.value_info(mask, g.onnx.TensorProto.BOOL, ["B", 1]))
    outputs = [b.value_info(o, f32, ["B", h]) for o in outs]
    return b.graph(f"{desc.get('name', 'cell')}{sfx}_step", inputs, outputs)
