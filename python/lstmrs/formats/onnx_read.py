"""Reading the ``LSTM`` and ``GRU`` nodes of an ONNX model into layer recipes.

Each node becomes the recipe of one single-layer lstmrs layer: ``W`` [D, G*H, I], ``R`` [D, G*H, H] and ``B``
[D, 2*G*H] are read (initializers, ``Constant`` nodes, or subgraphs of constants evaluated with
``onnx.reference``), their gate blocks reordered from ONNX's (LSTM i,o,f,c; GRU z,r,h) to
torch's, ``direction="bidirectional"`` becomes ``bidirectional=True`` and ``layout=1``
``batch_first=True``. The node's output ``Y`` [T, D, B, H] is the layer's output ``[T, B, D*H]``
with the directions side by side; ``Y_h`` / ``Y_c`` are its ``h_n`` / ``c_n``.

Refused (:class:`~lstmrs.errors.UnsupportedModelError`): ``direction="reverse"`` alone,
non-default ``activations``, ``clip``, ``input_forget=1``, peepholes (a non-zero ``P``), and a
GRU with ``linear_before_reset=0`` (the reset gate before the recurrent product).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, UnsupportedModelError
from .onnx_rnn import torch_gate_order
from .optional import require
from .recipe import LayerRecipe

__all__ = ["pick_onnx_node", "read_onnx"]

_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


def _load(onnx: Any, source: Any) -> Any:
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray)):
        return onnx.load_from_string(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise InvalidArgumentError(f"source: {path!r} is not a file")
        try:
            return onnx.load(path)
        except Exception as e:  # noqa: BLE001 - a file onnx cannot parse
            raise InvalidArgumentError(f"source: {path!r} is not an ONNX model ({e})") from None
    raise InvalidArgumentError(
        f"source: expected a path, bytes or an onnx.ModelProto, got {type(source).__name__}"
    )


class _Constants:
    """Values of tensors that do not depend on the graph's inputs."""

    def __init__(self, onnx: Any, model: Any) -> None:
        self.onnx = onnx
        self.model = model
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producers = {o: n for n in g.node for o in n.output}
        self.inputs = {i.name for i in g.input} - set(self.inits)

    def value(self, name: str, what: str) -> np.ndarray:
        nh = self.onnx.numpy_helper
        if name in self.inits:
            return nh.to_array(self.inits[name])
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return nh.to_array(a.t)
        if name in self.inputs or node is None:
            raise UnsupportedModelError(
                f"{what}: tensor {name!r} is a graph input, not a stored weight"
            )
        # Computed from constants (e.g. a Transpose or Slice of an initializer): evaluate the
        # nodes that produce it.
        nodes, used, stack = [], set(), [name]
        while stack:
            n = stack.pop()
            if not n or n in used:
                continue
            used.add(n)
            if n in self.inits:
                continue
            producer = self.producers.get(n)
            if producer is None or n in self.inputs:
                raise UnsupportedModelError(
                    f"{what}: tensor {name!r} depends on the graph input {n!r}, it is not a "
                    "stored weight"
                )
            nodes.append(producer)
            stack.extend(producer.input)
        helper = self.onnx.helper
        order = [n for n in self.model.graph.node if any(n is m for m in nodes)]
        graph = helper.make_graph(
            order,
            "constant",
            [],
            [self.onnx.ValueInfoProto(name=name)],
            [self.inits[n] for n in used if n in self.inits],
        )
        sub = helper.make_model(graph, opset_imports=self.model.opset_import)
        sub.ir_version = self.model.ir_version
        try:
            from onnx.reference import ReferenceEvaluator  # part of onnx; loaded only here

            return np.asarray(ReferenceEvaluator(sub).run(None, {})[0])
        except Exception as e:  # noqa: BLE001 - whatever keeps it from being evaluated
            raise UnsupportedModelError(
                f"{what}: tensor {name!r} is not a constant the importer can evaluate ({e})"
            ) from None


def _attrs(onnx: Any, node: Any) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def _node_recipe(consts: _Constants, node: Any, label: str, dtype: Any) -> LayerRecipe:
    op = node.op_type
    where = f"{op} node {label!r}"
    a = _attrs(consts.onnx, node)
    direction = a.get("direction", "forward")
    if direction == "reverse":
        raise UnsupportedModelError(
            f'{where}: direction="reverse" alone (lstmrs layers run forward, or both ways)'
        )
    d = 2 if direction == "bidirectional" else 1
    acts = a.get("activations")
    if acts is not None and [s.lower() for s in acts] != [
        s.lower() for s in _DEFAULT_ACTIVATIONS[op] * d
    ]:
        raise UnsupportedModelError(f"{where}: activations={acts} (only ONNX's defaults import)")
    if "clip" in a:
        raise UnsupportedModelError(f"{where}: clip={a['clip']} (cell clipping)")
    if a.get("input_forget", 0):
        raise UnsupportedModelError(f"{where}: input_forget=1 (coupled input and forget gates)")
    if op == "GRU" and a.get("linear_before_reset", 0) != 1:
        raise UnsupportedModelError(
            f"{where}: linear_before_reset=0 applies the reset gate before the recurrent "
            "product, which torch's GRU and lstmrs do not compute (torch exports use 1)"
        )
    inputs = list(node.input) + [""] * 8
    w = consts.value(inputs[1], f"{where}, W")
    r = consts.value(inputs[2], f"{where}, R")
    b = consts.value(inputs[3], f"{where}, B") if inputs[3] else None
    if op == "LSTM" and inputs[7]:
        p = consts.value(inputs[7], f"{where}, P")
        if np.any(p != 0):
            raise UnsupportedModelError(f"{where}: peephole weights P (non-zero)")
    gates = 4 if op == "LSTM" else 3
    if w.ndim != 3 or r.ndim != 3 or w.shape[0] != d or r.shape[0] != d:
        raise UnsupportedModelError(
            f"{where}: W {w.shape} and R {r.shape} do not have {d} direction(s) first"
        )
    h = r.shape[2]
    if int(a.get("hidden_size", h)) != h or r.shape[1] != gates * h or w.shape[1] != gates * h:
        raise UnsupportedModelError(
            f"{where}: expected W [{d}, {gates}*H, I] and R [{d}, {gates}*H, H], got {w.shape} "
            f"and {r.shape} (hidden_size={a.get('hidden_size')})"
        )
    order = torch_gate_order(op.lower(), h)
    sd = {}
    for k in range(d):
        sfx = "_l0" + ("_reverse" if k else "")
        sd[f"weight_ih{sfx}"] = w[k][order]
        sd[f"weight_hh{sfx}"] = r[k][order]
        if b is not None:
            sd[f"bias_ih{sfx}"] = b[k][: gates * h][order]
            sd[f"bias_hh{sfx}"] = b[k][gates * h :][order]
    kwargs = {
        "input_size": int(w.shape[2]),
        "hidden_size": h,
        "bias": b is not None,
        "batch_first": a.get("layout", 0) == 1,
        "bidirectional": d == 2,
        "dtype": dtype,
        "seed": 0,
    }
    return LayerRecipe(op, op.lower(), kwargs, sd, training=False)


def read_onnx(source: Any, *, dtype: Any = "float32") -> list[tuple[str, LayerRecipe]]:
    """Every ``LSTM`` / ``GRU`` node of ``source`` (a path, bytes or ``onnx.ModelProto``), in
    graph order: its name (``#k`` when it has none) and the recipe of its layer."""
    onnx = require("onnx", "importing from ONNX")
    model = _load(onnx, source)
    consts = _Constants(onnx, model)
    found = []
    for k, node in enumerate(model.graph.node):
        if node.op_type in ("LSTM", "GRU") and node.domain in ("", "ai.onnx"):
            label = node.name or f"#{k}"
            found.append((label, _node_recipe(consts, node, label, dtype)))
    return found


def pick_onnx_node(
    found: list[tuple[str, LayerRecipe]], node: Any = None, want: str | None = None
) -> LayerRecipe:
    """One of :func:`read_onnx`'s nodes: the only one (the only ``want`` node, ``"LSTM"`` or
    ``"GRU"``, when given), or ``node``: its name or its index in ``found``."""
    if want is not None and node is None:
        found = [f for f in found if f[1].source == want]
    if node is None:
        if len(found) != 1:
            names = [f[0] for f in found]
            raise InvalidArgumentError(
                f"node: the model has {len(found)} {want or 'LSTM/GRU'} nodes {names}; "
                "name one (node=NAME or node=INDEX)"
            )
        label, pick = found[0]
    elif isinstance(node, (int, np.integer)) and not isinstance(node, bool):
        if not 0 <= node < len(found):
            raise InvalidArgumentError(f"node: index {node} out of range 0..{len(found) - 1}")
        label, pick = found[node]
    else:
        matches = [f for f in found if f[0] == node]
        if not matches:
            raise InvalidArgumentError(
                f"node: no LSTM/GRU node named {node!r}; have {[f[0] for f in found]}"
            )
        label, pick = matches[0]
    if want is not None and pick.source != want:
        raise InvalidArgumentError(f"node: {label!r} is a {pick.source}, not a {want}")
    return pick
