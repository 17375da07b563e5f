"""Helpers for testing lstmrs plugins.

* :func:`isolated_plugins` / the ``lstmrs_plugins`` pytest fixture: a fresh plugin manager that
  loads no installed plugins (``LSTMRS_PLUGINS=""``), so a test never depends on what happens
  to be installed on the machine. Use it from a ``conftest.py``::

      from lstmrs.testing import lstmrs_plugins  # noqa: F401  (the fixture)

* :func:`register_temporarily`: registers a plugin object for the duration of a ``with``.
* :func:`check_cell_gradients`: finite-difference check of a cell's NumPy reference (float64),
  one step and through time, and optionally (``rust=True``) of the Rust core's compiled cell.
"""

from __future__ import annotations

import os
import unittest
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import numpy as np

from . import _lstmrs
from .cells import CellSpec
from .plugins import manager as _manager

__all__ = [
    "check_cell_gradients",
    "check_rust_cell",
    "isolated_plugins",
    "register_temporarily",
]


@contextmanager
def isolated_plugins(
    load: str | None = "", block: str | None = None
) -> Iterator[_manager.LstmrsPluginManager]:
    """A fresh process-wide plugin manager for the ``with`` block; the previous manager and
    environment come back afterwards.

    ``load``: ``LSTMRS_PLUGINS`` inside the block (``""`` = no installed plugins, only the
    built-ins; a comma list = those plugins; None = unset, every installed plugin).
    ``block``: ``LSTMRS_BLOCK_PLUGINS`` inside the block (None = unset).
    """
    saved = {k: os.environ.get(k) for k in ("LSTMRS_PLUGINS", "LSTMRS_BLOCK_PLUGINS")}
    for key, value in (("LSTMRS_PLUGINS", load), ("LSTMRS_BLOCK_PLUGINS", block)):
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    old = _manager.reset_manager(None)
    try:
        yield _manager.get_manager()
    finally:
        _manager.reset_manager(old)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


try:  # The fixture needs pytest; the rest of this module does not.
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:

    @pytest.fixture
    def lstmrs_plugins() -> Iterator[_manager.LstmrsPluginManager]:
        """A fresh plugin manager with only lstmrs' built-ins (no installed plugins)."""
        with isolated_plugins() as pm:
            yield pm


@contextmanager
def register_temporarily(
    plugin: Any, name: str | None = None, manager: _manager.LstmrsPluginManager | None = None
) -> Iterator[str]:
    """Registers ``plugin`` (a module or object with ``lstmrs_*`` hooks) with ``manager``
    (default: the process-wide one) for the ``with`` block and unregisters it afterwards, even
    when the block raises. Yields the plugin's name. A misspelt hook raises
    :class:`lstmrs.plugins.PluginError` on entry."""
    pm = manager if manager is not None else _manager.get_manager()
    pname = pm.register(plugin, name=name)
    if pname is None:
        raise _manager.PluginError(f"plugin {name or plugin!r} is blocked (LSTMRS_BLOCK_PLUGINS)")
    try:
        pm.check_pending()
        yield pname
    finally:
        pm.unregister(plugin)


# --------------------------------------------------------------------------------------------
# Gradient checks


def _fd_compare(
    what: str,
    f: Callable[[], float],
    arrays: dict[str, np.ndarray],
    analytic: dict[str, np.ndarray],
    eps: float,
    rtol: float,
    atol: float,
) -> tuple[float, int]:
    """Central differences of ``f`` w.r.t. every element of every array (perturbed in place),
    compared with ``analytic``. Returns (worst |error| / tolerance, elements checked)."""
    worst, count = 0.0, 0
    for key, a in arrays.items():
        g = analytic[key]
        flat, gflat = a.reshape(-1), np.asarray(g, dtype=np.float64).reshape(-1)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + eps
            up = f()
            flat[j] = old - eps
            down = f()
            flat[j] = old
            num = (up - down) / (2 * eps)
            tol = atol + rtol * max(abs(num), abs(gflat[j]))
            err = abs(num - gflat[j])
            if err > tol:
                at = ", ".join(str(int(i)) for i in np.unravel_index(j, a.shape))
                raise AssertionError(
                    f"{what}: d loss / d {key}[{at}] = {float(gflat[j])!r} (analytic) but "
                    f"{float(num)!r} (finite differences); |error| {err:.3g} > tolerance {tol:.3g}"
                )
            worst = max(worst, err / tol)
            count += 1
    return worst, count


def check_cell_gradients(
    spec: CellSpec,
    *,
    hidden_size: int = 3,
    input_size: int = 2,
    batch: int = 2,
    seq_len: int = 3,
    seed: int = 0,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    rust: bool = False,
) -> dict[str, Any]:
    """Checks :meth:`CellSpec.reference_step_backward` and the backpropagation through time of
    :meth:`CellSpec.reference_sequence_backward` against central finite differences (float64)
    on random inputs, for every input, state, unit parameter and weight element.

    ``rust=True`` then runs :func:`check_rust_cell` (the compiled cell through the Rust core's
    sweep; ``unittest.SkipTest`` only for a build without custom cells). Raises ``AssertionError`` naming the
    first element that disagrees; returns ``{"elements": n, "worst": max error / tolerance}``.
    """
    rng = np.random.default_rng(seed)
    h, b = hidden_size, batch
    # One step: loss = sum over states of <w_s, new_s>, with random weights w_s.
    x_pre = rng.normal(size=(b, spec.x_gates * h))
    h_pre = rng.normal(size=(b, spec.h_gates * h)) if spec.h_gates else None
    params = {p.name: rng.normal(size=h) for p in spec.unit_params}
    states = {s: rng.normal(size=(b, h)) for s in spec.states}
    w = {s: rng.normal(size=(b, h)) for s in spec.states}

    def step_loss() -> float:
        new = spec.reference_step(x_pre, h_pre, params, states)
        return float(sum(np.sum(w[s] * new[s]) for s in spec.states))

    r = spec.reference_step_backward(x_pre, h_pre, params, states, w)
    arrays: dict[str, np.ndarray] = {"x_pre": x_pre}
    analytic: dict[str, Any] = {"x_pre": r["x_pre"]}
    if h_pre is not None:
        arrays["h_pre"], analytic["h_pre"] = h_pre, r["h_pre"]
    for k, v in params.items():
        arrays[f"param {k}"], analytic[f"param {k}"] = v, r["params"][k]
    for k, v in states.items():
        arrays[f"state {k}"], analytic[f"state {k}"] = v, r["states"][k]
    worst1, n1 = _fd_compare(
        f"cell {spec.name!r}, one step", step_loss, arrays, analytic, eps, rtol, atol
    )

    # Through time: one layer over seq_len steps, loss on every output and the final states.
    weights = {k: v * 2.0 for k, v in spec.init_params(input_size, h, seed=seed + 1).items()}
    x = rng.normal(size=(b, seq_len, input_size))
    init = {s: rng.normal(size=(b, h)) * 0.5 for s in spec.states}
    g_out = rng.normal(size=(b, seq_len, h))
    g_fin = {s: rng.normal(size=(b, h)) for s in spec.states}

    def seq_loss() -> float:
        out, fin = spec.reference_sequence(x, weights, init)
        return float(np.sum(g_out * out) + sum(np.sum(g_fin[s] * fin[s]) for s in spec.states))

    dw, dx, dinit = spec.reference_sequence_backward(x, weights, g_out, g_fin, init)
    arrays = {**weights, "x": x, **{f"initial {s}": v for s, v in init.items()}}
    analytic = {**dw, "x": dx, **{f"initial {s}": v for s, v in dinit.items()}}
    worst2, n2 = _fd_compare(
        f"cell {spec.name!r}, {seq_len} steps", seq_loss, arrays, analytic, eps, rtol, atol
    )
    report = {"elements": n1 + n2, "worst": float(max(worst1, worst2))}
    if rust:
        report["rust"] = check_rust_cell(
            spec,
            hidden_size=hidden_size,
            input_size=input_size,
            batch=batch,
            seq_len=seq_len,
            seed=seed,
        )
    return report


def _rust_layer(spec: CellSpec, input_size: int, hidden_size: int, dtype: str, seed: int):
    """A one-layer Rust network running ``spec``. The single place that knows how the binding
    spells custom cells: ``compile_cell(json)`` validates and compiles the description, and
    ``RnnCore`` accepts the same JSON where it takes a cell name."""
    compile_cell = getattr(_lstmrs, "compile_cell", None)
    if compile_cell is None:
        raise unittest.SkipTest(
            f"Rust path of cell {spec.name!r} not checked: this build of lstmrs._lstmrs has no "
            "compile_cell() (the Rust core does not take custom cells yet); only the NumPy "
            "reference was checked"
        )
    compile_cell(spec.to_json())
    return _lstmrs.RnnCore(spec.to_json(), input_size, hidden_size, 1, True, False, dtype, seed)


def check_rust_cell(
    spec: CellSpec,
    *,
    hidden_size: int = 3,
    input_size: int = 2,
    batch: int = 2,
    seq_len: int = 3,
    seed: int = 0,
    rtol: float = 1e-9,
    atol: float = 1e-10,
) -> dict[str, Any]:
    """Compares the Rust core's compiled cell with the NumPy reference: parameter names and
    shapes, float64 forward (outputs, final states) and backward (every weight, the input, the
    initial states), and the float32 forward to float32 accuracy. Raises
    ``unittest.SkipTest`` when the binding has no custom cells."""
    core = _rust_layer(spec, input_size, hidden_size, "float64", seed)
    expected = spec.param_specs(input_size, hidden_size)
    got = [(n, tuple(s)) for n, s in core.param_specs()]
    if got != expected:
        raise AssertionError(f"cell {spec.name!r}: Rust parameters {got} != expected {expected}")
    rng = np.random.default_rng(seed)
    weights = spec.init_params(input_size, hidden_size, seed=seed + 1)
    for name, v in weights.items():
        core.set_param(name, np.ascontiguousarray(v))
    x = rng.normal(size=(batch, seq_len, input_size))
    init = {s: rng.normal(size=(batch, hidden_size)) * 0.5 for s in spec.states}
    if len(spec.states) > 2:  # the binding takes h0 and c0 only: start the others at zero
        for s in spec.states[2:]:
            init[s] = np.zeros((batch, hidden_size))
    h0 = init[spec.states[0]][None]
    c0 = init[spec.states[1]][None] if len(spec.states) > 1 else None
    out, h_n, c_n, tape = core.forward(x, h0, c0, None, True, False, 0.0, 0, True)
    ref_out, ref_fin = spec.reference_sequence(x, weights, init)

    def close(what: str, a: Any, e: np.ndarray, rt: float = rtol, at: float = atol) -> None:
        a = np.asarray(a, dtype=np.float64)
        if a.shape != e.shape or not np.allclose(a, e, rtol=rt, atol=at):
            diff = np.max(np.abs(a - e)) if a.shape == e.shape else f"shape {a.shape}"
            raise AssertionError(
                f"cell {spec.name!r}: Rust {what} differs from the reference ({diff})"
            )

    close("outputs", out, ref_out)
    close("final h", h_n[0], ref_fin[spec.states[0]])
    if c0 is not None:
        close(f"final {spec.states[1]}", c_n[0], ref_fin[spec.states[1]])
    g_out = rng.normal(size=out.shape)
    g_h = rng.normal(size=h_n.shape)
    g_c = rng.normal(size=h_n.shape) if c0 is not None else None
    g_fin = {spec.states[0]: g_h[0]}
    if g_c is not None:
        g_fin[spec.states[1]] = g_c[0]
    flat, dx, dh0, dc0 = core.backward(tape, g_out, g_h, g_c)
    dw, ref_dx, ref_dinit = spec.reference_sequence_backward(x, weights, g_out, g_fin, init)
    close("weight gradients", flat, np.concatenate([dw[n].reshape(-1) for n, _ in expected]))
    close("input gradient", dx, ref_dx)
    close("initial h gradient", dh0[0], ref_dinit[spec.states[0]])
    if c0 is not None:
        close(f"initial {spec.states[1]} gradient", dc0[0], ref_dinit[spec.states[1]])
    core32 = _rust_layer(spec, input_size, hidden_size, "float32", seed)
    for name, v in weights.items():
        core32.set_param(name, np.ascontiguousarray(v, dtype=np.float32))
    out32 = core32.forward(
        x.astype(np.float32),
        h0.astype(np.float32),
        None if c0 is None else c0.astype(np.float32),
        None,
        True,
        False,
        0.0,
        0,
        False,
    )[0]
    close("float32 outputs", out32, ref_out, 1e-4, 1e-5)
    return {"checked": True}
