"""`backward` uses its tape up (PyTorch's `retain_graph=False`) unless `retain_tape=True`.

The consuming pass computes the gate gradients over the tape's activations in place and frees the
tape's buffers as it goes; the gradients must be those of the non-consuming pass bit for bit, for
every path of the core (LSTM and GRU, stacked, bidirectional, variable lengths, dropout between
layers, both layouts, float64, a projected LSTM and a compiled cell, which keep their own kernels).
"""

from __future__ import annotations

import lstmrs
import numpy as np
import pytest
from lstmrs.errors import InvalidArgumentError

CASES = {
    "lstm": {"cls": "LSTM"},
    "gru": {"cls": "GRU"},
    "lstm-2layer-bidir": {"cls": "LSTM", "num_layers": 2, "bidirectional": True},
    "gru-2layer-bidir": {"cls": "GRU", "num_layers": 2, "bidirectional": True},
    "lstm-dropout": {"cls": "LSTM", "num_layers": 3, "dropout": 0.3},
    "gru-time-major": {"cls": "GRU", "num_layers": 2, "batch_first": False},
    "lstm-float64": {"cls": "LSTM", "num_layers": 2, "dtype": "float64"},
    "lstm-proj": {"cls": "LSTM", "num_layers": 2, "proj_size": 3},
    "dsl-lstm": {"cls": "RNN", "cell": "dsl"},
}


def _layer(spec: dict):
    kw = {k: v for k, v in spec.items() if k != "cls"}
    if kw.get("cell") == "dsl":
        from lstmrs.plugins.builtin import LSTM_CELL  # the compiled-cell path of the core

        kw["cell"] = LSTM_CELL.to_json()
    return getattr(lstmrs, spec["cls"])(4, 6, seed=3, **kw)


def _grads_equal(a, b) -> None:
    np.testing.assert_array_equal(a.flat, b.flat)
    np.testing.assert_array_equal(a.input, b.input)
    sa = a.state if isinstance(a.state, tuple) else (a.state,)
    sb = b.state if isinstance(b.state, tuple) else (b.state,)
    for x, y in zip(sa, sb, strict=True):
        np.testing.assert_array_equal(x, y)


def _run(layer, rng, lengths=None):
    batch_first = layer.batch_first
    shape = (3, 7, 4) if batch_first else (7, 3, 4)
    x = rng.normal(size=shape).astype(layer.dtype)
    out, state, tape = layer.forward_train(x, lengths=lengths)
    d_out = rng.normal(size=out.shape).astype(layer.dtype)
    h_n = state[0] if isinstance(state, tuple) else state
    d_h = rng.normal(size=h_n.shape).astype(layer.dtype)
    d_state = (d_h, None) if isinstance(state, tuple) else d_h
    return tape, d_out, d_state


@pytest.mark.parametrize("name", list(CASES))
def test_consuming_backward_equals_retained_bit_for_bit(name, rng):
    layer = _layer(CASES[name])
    layer.train()
    lengths = np.array([7, 4, 1]) if name in ("lstm", "gru-2layer-bidir") else None
    tape, d_out, d_state = _run(layer, rng, lengths)
    kept = layer.backward(tape, d_out, d_state, retain_tape=True)
    again = layer.backward(tape, d_out, d_state, retain_tape=True)
    assert not tape.consumed
    consumed = layer.backward(tape, d_out, d_state)
    assert tape.consumed
    _grads_equal(kept, again)
    _grads_equal(kept, consumed)


def test_second_backward_on_a_consumed_tape_raises(rng):
    layer = lstmrs.LSTM(4, 6, seed=1)
    tape, d_out, _ = _run(layer, rng)
    layer.backward(tape, d_out)
    with pytest.raises(InvalidArgumentError, match=r"tape: .*retain_tape=True"):
        layer.backward(tape, d_out)
    with pytest.raises(InvalidArgumentError, match="tape"):
        layer.backward(tape, d_out, retain_tape=True)


def test_rejected_backward_leaves_the_tape_usable(rng):
    layer = lstmrs.GRU(4, 6, seed=1)
    tape, d_out, _ = _run(layer, rng)
    with pytest.raises(lstmrs.errors.ShapeError, match="d_out"):
        layer.backward(tape, d_out[:, :2])
    # A stale tape is refused before anything is consumed, too.
    assert not tape.consumed
    first = layer.backward(tape, d_out, retain_tape=True)
    _grads_equal(first, layer.backward(tape, d_out))


def test_stale_tape_is_not_consumed(rng):
    layer = lstmrs.LSTM(4, 6, seed=1)
    tape, d_out, _ = _run(layer, rng)
    layer.set_parameters_flat(layer.parameters_flat())
    with pytest.raises(InvalidArgumentError, match="current parameters"):
        layer.backward(tape, d_out)
    assert not tape.consumed


def test_core_backward_consumes_by_default(rng):
    core = lstmrs.LSTM(4, 6, seed=1)._core
    x = rng.normal(size=(2, 5, 4)).astype(np.float32)
    out, _, _, tape = core.forward(x, None, None, None, True, False, 0.0, 0, True)
    d_out = np.ones_like(out)
    kept = core.backward(tape, d_out, retain_tape=True)
    got = core.backward(tape, d_out)
    assert tape.consumed
    for a, b in zip(kept[:3], got[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InvalidArgumentError, match="retain_tape"):
        core.backward(tape, d_out)
