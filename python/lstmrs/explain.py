"""Seeing inside a model: input attributions, gate and state traces, attention weights.

Everything here takes a :class:`lstmrs.Model` as an argument (``Model.explain`` and
``Model.trace`` delegate to :func:`explain` and :func:`trace`); the arithmetic runs in the Rust
core: ``ModelCore.input_gradient`` is one forward and one backward pass over a batch, with the
rows split over the thread pool, and ``ModelCore.trace`` reads the forward pass's tape.

Attribution methods, for one scalar output per sequence (the *target*, see :func:`explain`):

* ``"integrated_gradients"`` (Sundararajan et al., 2017): ``(x - x') * ∫₀¹ ∂F(x' + a(x - x'))/∂x
  da``, the integral by Gauss-Legendre quadrature with ``steps`` nodes. All nodes of many
  sequences go through the core in large batches. Completeness: the attributions sum to
  ``F(x) - F(x')``; ``delta`` reports the gap.
* ``"gradient_x_input"``: ``x * ∂F/∂x`` (one backward pass).
* ``"occlusion"``: the drop ``F(x) - F(x with a window of steps replaced by the baseline)``,
  windows of ``window`` steps sliding by one, each step scored by the mean drop of the windows
  covering it; one feature at a time for float inputs. Model-agnostic: a check on the others.

Token models are attributed through their embedded vectors (the baseline is the zero vector,
or given token ids), and the attributions are summed over the embedding to ``[B, T]``.

The summaries answer questions about the memory (:meth:`Trace.memory_span`), about what units
track (:meth:`Trace.correlated_units`, Karpathy et al., 2015) and about the gates' regime
(:meth:`Trace.gate_saturation`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidArgumentError, ShapeError
from .fit_inputs import prepare_x

if TYPE_CHECKING:
    from .models import Model

__all__ = ["METHODS", "Explanation", "LayerTrace", "Trace", "explain", "trace"]

METHODS = ("integrated_gradients", "gradient_x_input", "occlusion")
# Rows (sequences x interpolation points) per core call: large enough to keep every thread
# busy, small enough that the tape of a call stays within about 256 MiB.
_ROWS_PER_CALL = 2048
_CALL_BYTES = 256 << 20


def _rows_per_call(model: Model, t: int) -> int:
    """Rows per core call for sequences of ``t`` steps: the tape keeps about ``8 H`` values
    per step, layer and direction (gates, states, pre-activations)."""
    k = model._kwargs
    width = k["num_layers"] * (2 if k["bidirectional"] else 1) * k["hidden_size"] * 8
    per_row = t * (width + model._features) * np.dtype(model.dtype).itemsize
    return int(max(1, min(_ROWS_PER_CALL, _CALL_BYTES // max(per_row, 1))))


@dataclass
class Explanation:
    """Attributions of one output per sequence.

    ``attributions``: ``[B, T, F]`` (token models: ``[B, T]``, summed over the embedding), zero
    past each length. ``target``: ``[B]`` output index explained, ``step``: ``[B]`` its time
    step for per-step models (else None). ``output`` / ``baseline_output``: ``[B]`` that output
    at ``x`` and at the baseline. ``delta`` (integrated gradients): ``sum(attributions) -
    (output - baseline_output)`` per sequence, the completeness gap. ``attention``: ``[B, T]``
    attention-pooling weights at ``x`` when the model pools by attention.
    """

    method: str
    attributions: np.ndarray
    target: np.ndarray
    output: np.ndarray
    baseline_output: np.ndarray | None = None
    delta: np.ndarray | None = None
    step: np.ndarray | None = None
    attention: np.ndarray | None = None
    lengths: np.ndarray | None = None

    def step_scores(self) -> np.ndarray:
        """``[B, T]``: the attributions summed over the features of each step."""
        a = self.attributions
        return a if a.ndim == 2 else a.sum(axis=2)

    def top_steps(self, k: int = 1, absolute: bool = True) -> np.ndarray:
        """``[B, k]`` the steps with the largest (absolute) attribution, largest first; padded
        steps never appear unless a sequence has fewer than ``k`` steps."""
        s = self.step_scores()
        s = np.abs(s) if absolute else s.astype(np.float64)
        s = np.where(_valid(s.shape[0], s.shape[1], self.lengths), s, -np.inf)
        return np.argsort(-s, axis=1, kind="stable")[:, :k]


@dataclass
class LayerTrace:
    """One layer and direction: ``gates`` and ``states`` map names to ``[B, T, H]`` arrays
    (zeros past each length). Built-in cells: gates ``i, f, g, o`` (LSTM) or ``r, z, n`` (GRU),
    states ``h`` (and ``c``). Custom cells: one gate per activation node of the description,
    ``sigmoid_7`` for node 7 (``formulas`` gives each as an expression), their own state names.
    """

    layer: int
    direction: int
    gates: dict[str, np.ndarray]
    states: dict[str, np.ndarray]
    formulas: dict[str, str] = field(default_factory=dict)


@dataclass
class Trace:
    """What the recurrent layers computed for a batch, from :func:`trace`."""

    output: np.ndarray
    layers: list[LayerTrace]
    attention: np.ndarray | None
    lengths: np.ndarray | None
    cell: str

    def __getitem__(self, key: tuple[int, int]) -> LayerTrace:
        """``trace[layer, direction]``."""
        for t in self.layers:
            if (t.layer, t.direction) == tuple(key):
                return t
        raise InvalidArgumentError(
            f"key: expected (layer, direction) among {[(t.layer, t.direction) for t in self.layers]}"
            f", got {key!r}"
        )

    def _mask(self) -> np.ndarray:
        b, t = self.layers[0].states[next(iter(self.layers[0].states))].shape[:2]
        return _valid(b, t, self.lengths)

    def _keep_gate(self, gate: str | None) -> str:
        if gate is not None:
            return gate
        if self.cell in ("lstm", "gru"):
            return "f" if self.cell == "lstm" else "z"
        raise InvalidArgumentError(
            f"gate: the {self.cell!r} cell has no gate known to keep the state; name one of "
            f"{list(self.layers[0].gates)}"
        )

    def memory_span(self, gate: str | None = None) -> dict[tuple[int, int], np.ndarray]:
        """Per unit, how many steps it keeps information: the mean over valid steps of
        ``1 / (1 - f)``, the expected number of steps a value survives when each step keeps
        the fraction ``f`` (a leaky integrator's time constant, ``Σ_k f^k``). ``f``: the LSTM's
        forget gate, the GRU's update gate ``z`` (``h' = (1-z) n + z h``); for custom cells
        name the gate. Returns ``{(layer, direction): [H]}``."""
        gate = self._keep_gate(gate)
        mask = self._mask()
        out = {}
        for t in self.layers:
            if gate not in t.gates:
                raise InvalidArgumentError(f"gate: expected one of {list(t.gates)}, got {gate!r}")
            f = np.clip(t.gates[gate][mask].astype(np.float64), 0.0, 1.0 - 1e-6)
            out[(t.layer, t.direction)] = (1.0 / (1.0 - f)).mean(axis=0)
        return out

    def correlated_units(
        self, signal: Any, *, state: str | None = None, top: int = 10
    ) -> list[tuple[int, int, int, float]]:
        """The units whose activation follows ``signal`` (``[B, T]``, e.g. "inside quotes" per
        character) most closely: Pearson correlation over the valid steps of every unit of
        every layer and direction, ``state`` (default the hidden state) or a gate name.
        Returns ``(layer, direction, unit, r)`` sorted by ``|r|``, the ``top`` first."""
        mask = self._mask()
        sig = np.asarray(signal, dtype=np.float64)
        if sig.shape != mask.shape:
            raise ShapeError(f"signal: expected shape {mask.shape} ([B, T]), got {sig.shape}")
        s = sig[mask]
        s = s - s.mean()
        rows = []
        for t in self.layers:
            name = state or next(iter(t.states))
            src = t.states.get(name, t.gates.get(name))
            if src is None:
                raise InvalidArgumentError(
                    f"state: expected one of {list(t.states) + list(t.gates)}, got {name!r}"
                )
            a = src[mask].astype(np.float64)
            a = a - a.mean(axis=0)
            den = np.sqrt((a * a).sum(axis=0) * (s * s).sum())
            r = np.divide(a.T @ s, den, out=np.zeros(a.shape[1]), where=den > 0)
            rows += [(t.layer, t.direction, u, float(r[u])) for u in range(a.shape[1])]
        rows.sort(key=lambda row: -abs(row[3]))
        return rows[:top]

    def gate_saturation(self, low: float = 0.1, high: float = 0.9) -> dict[tuple, tuple]:
        """For each ``(layer, direction, gate)`` whose values lie in ``[0, 1]`` (the sigmoid
        gates): the fractions of valid activations ``< low`` (left-saturated: closed) and
        ``> high`` (right-saturated: open)."""
        mask = self._mask()
        out = {}
        for t in self.layers:
            for name, g in t.gates.items():
                v = g[mask]
                if v.size and (v.min() < 0.0 or v.max() > 1.0 or name.startswith("tanh")):
                    continue
                if name in ("g", "n") or name.startswith("relu"):
                    continue
                out[(t.layer, t.direction, name)] = (
                    float((v < low).mean()) if v.size else 0.0,
                    float((v > high).mean()) if v.size else 0.0,
                )
        return out


# --------------------------------------------------------------------------------------------
# Inputs


def _valid(b: int, t: int, lengths: np.ndarray | None) -> np.ndarray:
    if lengths is None:
        return np.ones((b, t), dtype=bool)
    return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


def _inputs(model: Model, x: Any, lengths: Any) -> tuple[np.ndarray, np.ndarray | None]:
    xa, lens = prepare_x(model, x, lengths)
    if lens is not None and np.all(lens == xa.shape[1]):
        lens = None
    return xa, lens


def _vectors(model: Model, xa: np.ndarray) -> np.ndarray:
    """The recurrent layers' input: the features, or the embedded tokens ``[B, T, E]``."""
    return model.core.embed(xa) if model.tokens else xa


def _baseline(model: Model, baseline: Any, v: np.ndarray) -> np.ndarray:
    """The baseline as recurrent-layer input of ``v``'s shape: zeros by default; for float
    inputs an array broadcastable to ``[B, T, F]``; for token models token ids (``[T]`` or
    ``[B, T]``, e.g. a padding token) or vectors broadcastable to ``[B, T, E]``."""
    if baseline is None:
        return np.zeros_like(v)
    a = np.asarray(baseline)
    if model.tokens and a.dtype.kind in "iu":
        ids = np.broadcast_to(a, v.shape[:2]) if a.ndim <= 2 else a
        if ids.shape != v.shape[:2]:
            raise ShapeError(f"baseline: expected token ids [B, T] = {v.shape[:2]}, got {a.shape}")
        return model.core.embed(np.ascontiguousarray(ids, dtype=np.int64))
    if a.dtype.kind not in "fiu":
        raise InvalidArgumentError(f"baseline: expected numbers, got dtype {a.dtype}")
    try:
        out = np.broadcast_to(a.astype(v.dtype), v.shape)
    except ValueError:
        raise ShapeError(
            f"baseline: expected an array broadcastable to {v.shape}, got {a.shape}"
        ) from None
    if not np.isfinite(out).all():
        raise InvalidArgumentError("baseline: holds NaN or infinity")
    return np.ascontiguousarray(out)


def _targets(
    model: Model, target: Any, out: np.ndarray, lengths: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(output index [B], step [B] or None)``. Default: the predicted class for
    classification losses, output 0 otherwise; per-step models: at the last valid step."""
    b = out.shape[0]
    o = model.output_size
    per_step = model.pooling == "per_step"
    t = out.shape[1] if per_step else 0
    last = (np.full(b, t - 1) if lengths is None else np.asarray(lengths) - 1) if per_step else None
    step = last
    if target is None:
        rows = out[np.arange(b), step] if per_step else out
        idx = rows.argmax(axis=1) if model.loss.name == "cross_entropy" else np.zeros(b, int)
        return idx.astype(np.int64), step
    a = np.asarray(target)
    if a.dtype.kind not in "iu":
        raise InvalidArgumentError(f"target: expected integer indices, got {target!r}")
    if per_step and a.shape in ((2,), (b, 2)):
        # (step, output) pairs, one for all sequences or one each.
        pairs = np.broadcast_to(a, (b, 2)).astype(np.int64)
        step, a = pairs[:, 0], pairs[:, 1]
        lim = t if lengths is None else np.asarray(lengths)
        if np.any(step < 0) or np.any(step >= lim):
            raise InvalidArgumentError(
                f"target: expected (step, output) pairs with 0 <= step < length, got {target!r}"
            )
    elif a.shape not in ((), (b,)):
        want = "an index, [B] indices or (step, output) pairs" if per_step else "[B] indices"
        raise ShapeError(f"target: expected {want}, got shape {a.shape}")
    idx = np.broadcast_to(a, (b,)).astype(np.int64)
    if np.any(idx < 0) or np.any(idx >= o):
        raise InvalidArgumentError(f"target: expected output indices in 0..{o}, got {target!r}")
    return idx, step


def _one_hot(model: Model, b: int, t: int, idx: np.ndarray, step: np.ndarray | None):
    o = model.output_size
    if model.pooling == "per_step":
        d = np.zeros((b, t, o), dtype=model.dtype)
        d[np.arange(b), step, idx] = 1
    else:
        d = np.zeros((b, o), dtype=model.dtype)
        d[np.arange(b), idx] = 1
    return d


def _pick(out: np.ndarray, idx: np.ndarray, step: np.ndarray | None) -> np.ndarray:
    b = np.arange(out.shape[0])
    v = out[b, step, idx] if step is not None else out[b, idx]
    return v.astype(np.float64)


def _grad(model: Model, v: np.ndarray, d: np.ndarray, lengths: np.ndarray | None):
    """``(output, input_grad, attention)`` of the core, in calls of a bounded size."""
    rows = _rows_per_call(model, v.shape[1])
    parts = []
    for s in range(0, v.shape[0], rows):
        sl = slice(s, s + rows)
        parts.append(
            model.core.input_gradient(
                np.ascontiguousarray(v[sl], dtype=model.dtype),
                np.ascontiguousarray(d[sl]),
                lengths=None if lengths is None else np.ascontiguousarray(lengths[sl]),
                embedded=model.tokens,
            )
        )
    if len(parts) == 1:
        return parts[0]
    out, grad, att = zip(*parts)
    return (
        np.concatenate(out),
        np.concatenate(grad),
        None if att[0] is None else np.concatenate(att),
    )


# --------------------------------------------------------------------------------------------
# Methods


def _integrated(model, v, base, d, lengths, steps):
    """``(x - x') * Σ_k w_k ∂F(x' + a_k (x - x'))/∂x`` with Gauss-Legendre nodes on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, weights = (nodes + 1) / 2, weights / 2
    b = v.shape[0]
    total = np.zeros(v.shape, dtype=np.float64)
    per_call = max(1, _rows_per_call(model, v.shape[1]) // steps)
    diff = v.astype(np.float64) - base
    for s in range(0, b, per_call):
        sl = slice(s, s + per_call)
        n = v[sl].shape[0]
        # Rows: sequence-major, the interpolation points of one sequence together.
        pts = base[sl][:, None] + alphas[None, :, None, None] * diff[sl][:, None]
        pts = pts.reshape((n * steps,) + v.shape[1:])
        dd = np.repeat(d[sl], steps, axis=0)
        lens = None if lengths is None else np.repeat(lengths[sl], steps)
        g = _grad(model, pts, dd, lens)[1].astype(np.float64)
        g = g.reshape((n, steps) + v.shape[1:])
        total[sl] = np.einsum("k,nk...->n...", weights, g)
    return diff * total


def _occlusion(model, v, base, idx, step, lengths, window, f_x):
    b, t = v.shape[:2]
    per_feature = not model.tokens
    feats = v.shape[2] if per_feature else 1
    valid = _valid(b, t, lengths)
    scores = np.zeros((b, t, feats), dtype=np.float64)
    counts = np.zeros((b, t, feats), dtype=np.float64)
    starts = list(range(max(1, t - window + 1)))
    jobs = [(w0, k) for w0 in starts for k in range(feats)]
    per_call = max(1, _rows_per_call(model, t) // b)
    for j in range(0, len(jobs), per_call):
        chunk = jobs[j : j + per_call]
        xs = np.repeat(v[None], len(chunk), axis=0)
        for c, (w0, k) in enumerate(chunk):
            cols = slice(k, k + 1) if per_feature else slice(None)
            xs[c, :, w0 : w0 + window, cols] = base[:, w0 : w0 + window, cols]
        xs = xs.reshape((len(chunk) * b,) + v.shape[1:])
        lens = None if lengths is None else np.tile(lengths, len(chunk))
        out = model.core.predict(np.ascontiguousarray(xs, dtype=model.dtype), lens)[0]
        out = out.reshape((len(chunk), b) + out.shape[1:])
        for c, (w0, k) in enumerate(chunk):
            drop = f_x - _pick(out[c], idx, step)
            span = np.zeros((b, t), dtype=bool)
            span[:, w0 : w0 + window] = True
            span &= valid
            scores[:, :, k] += np.where(span, drop[:, None], 0.0)
            counts[:, :, k] += span
    return np.divide(scores, counts, out=np.zeros_like(scores), where=counts > 0)


def _occlusion_tokens(model, v, base, idx, step, lengths, window, f_x):
    """Occlusion of a token model: windows of embedded vectors replaced by the baseline's,
    scored through the core's embedded-input path."""
    b, t = v.shape[:2]
    valid = _valid(b, t, lengths)
    scores = np.zeros((b, t), dtype=np.float64)
    counts = np.zeros((b, t), dtype=np.float64)
    starts = list(range(max(1, t - window + 1)))
    per_call = max(1, _rows_per_call(model, t) // b)
    for j in range(0, len(starts), per_call):
        chunk = starts[j : j + per_call]
        xs = np.repeat(v[None], len(chunk), axis=0)
        for c, w0 in enumerate(chunk):
            xs[c, :, w0 : w0 + window] = base[:, w0 : w0 + window]
        xs = xs.reshape((len(chunk) * b,) + v.shape[1:])
        lens = None if lengths is None else np.tile(lengths, len(chunk))
        zeros = np.zeros((xs.shape[0],) + _out_shape(model, t), dtype=model.dtype)
        out = _grad(model, xs, zeros, lens)[0]
        out = out.reshape((len(chunk), b) + out.shape[1:])
        for c, w0 in enumerate(chunk):
            drop = f_x - _pick(out[c], idx, step)
            span = np.zeros((b, t), dtype=bool)
            span[:, w0 : w0 + window] = True
            span &= valid
            scores += np.where(span, drop[:, None], 0.0)
            counts += span
    return np.divide(scores, counts, out=np.zeros_like(scores), where=counts > 0)


def _out_shape(model: Model, t: int) -> tuple[int, ...]:
    o = model.output_size
    return (t, o) if model.pooling == "per_step" else (o,)


def explain(
    model: Model,
    x: Any,
    lengths: Any = None,
    method: str = "integrated_gradients",
    target: Any = None,
    baseline: Any = None,
    steps: int = 50,
    window: int = 1,
) -> Explanation:
    """Attributes one output per sequence of ``x`` to its input steps and features.

    ``target``: which output. ``None``: the predicted class (cross-entropy models) or output
    0 (regression: the first forecast step), at the last valid step for per-step models. An
    index (or ``[B]`` indices) chooses the output: a class, a forecast step; per-step models
    take ``(step, output)`` pairs (the next character predicted at position ``step``).
    ``baseline``: the reference input (default zeros; see :func:`_baseline`). ``steps``:
    integration nodes of integrated gradients. ``window``: occlusion window in steps.
    The explained value is the head's raw output (the logit for classifiers).
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"method: expected one of {list(METHODS)}, got {method!r}")
    for name, val in (("steps", steps), ("window", window)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise InvalidArgumentError(f"{name}: expected an integer >= 1, got {val!r}")
    xa, lens = _inputs(model, x, lengths)
    b, t = xa.shape[:2]
    v = _vectors(model, xa)
    base = _baseline(model, baseline, v).astype(np.float64)
    # The output at x, the attention weights and the plain gradient in one call.
    zeros = np.zeros((b,) + _out_shape(model, t), dtype=model.dtype)
    out_x, _, attention = _grad(model, v, zeros, lens)
    idx, step = _targets(model, target, out_x, lens)
    f_x = _pick(out_x, idx, step)
    d = _one_hot(model, b, t, idx, step)
    zero_b = np.zeros_like(zeros)
    f_base = _pick(_grad(model, base, zero_b, lens)[0], idx, step)
    delta = None
    if method == "gradient_x_input":
        g = _grad(model, v, d, lens)[1].astype(np.float64)
        attr = g * v.astype(np.float64)
    elif method == "integrated_gradients":
        attr = _integrated(model, v, base, d, lens, int(steps))
    elif model.tokens:
        attr = _occlusion_tokens(model, v, base, idx, step, lens, int(window), f_x)
    else:
        attr = _occlusion(model, v, base, idx, step, lens, int(window), f_x)
    if model.tokens and attr.ndim == 3:
        attr = attr.sum(axis=2)
    attr = np.where(_valid(b, t, lens).reshape((b, t) + (1,) * (attr.ndim - 2)), attr, 0.0)
    if method == "integrated_gradients":
        delta = attr.reshape(b, -1).sum(axis=1) - (f_x - f_base)
    return Explanation(
        method=method,
        attributions=attr,
        target=idx,
        output=f_x,
        baseline_output=f_base,
        delta=delta,
        step=step,
        attention=attention,
        lengths=lens,
    )


# --------------------------------------------------------------------------------------------
# Traces


def _formulas(description: Any) -> dict[str, str]:
    """``{"sigmoid_7": "sigmoid((xg1 + hg1))", ...}`` from a custom cell's description (JSON
    text or its parsed dict)."""
    desc = json.loads(description) if isinstance(description, str) else description
    nodes = desc["nodes"]
    text: list[str] = []
    for n in nodes:
        op, args = n["op"], [text[a] for a in n.get("args", [])]
        if op in ("xg", "hg"):
            s = f"{op}{n['index']}"
        elif op in ("state", "param"):
            s = n["name"]
        elif op == "const":
            s = repr(n["value"])
        elif op in ("add", "sub", "mul"):
            sym = {"add": "+", "sub": "-", "mul": "*"}[op]
            s = f"({args[0]} {sym} {args[1]})"
        elif op == "neg":
            s = f"-{args[0]}"
        elif op == "one_minus":
            s = f"(1 - {args[0]})"
        else:
            s = f"{op}({args[0]})"
        text.append(s)
    return {
        f"{n['op']}_{k}": text[k]
        for k, n in enumerate(nodes)
        if n["op"] in ("sigmoid", "tanh", "relu")
    }


def trace(model: Model, x: Any, lengths: Any = None) -> Trace:
    """The gate activations and states of every layer and direction over time, the output and
    the attention weights, for a batch; see :class:`Trace`."""
    xa, lens = _inputs(model, x, lengths)
    out, layers, attention = model.core.trace(xa, lengths=lens)
    description = model._kwargs["cell"]
    formulas = _formulas(description) if model.cell not in ("lstm", "gru") else {}
    return Trace(
        output=out,
        layers=[
            LayerTrace(
                layer=int(layer),
                direction=int(direction),
                gates=dict(gates),
                states=dict(states),
                formulas=dict(formulas),
            )
            for layer, direction, gates, states in layers
        ],
        attention=attention,
        lengths=lens,
        cell=model.cell,
    )
