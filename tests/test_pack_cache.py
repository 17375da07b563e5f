"""Inference keeps its packed weights between calls (``pack_cache.rs``): every way of changing a
layer's parameters must reach the next call, and repeated calls keep their bits."""

from __future__ import annotations

import lstmrs
import numpy as np
import pytest

# (cell, input, hidden, layers, bidirectional): an input narrow enough to ride in the step
# product, one wide enough for the team's own projection, two layers, both directions.
NETS = [
    ("lstm", 8, 64, 1, False),
    ("gru", 8, 64, 1, False),
    ("lstm", 40, 48, 2, False),
    ("gru", 40, 130, 1, False),
    ("lstm", 5, 32, 2, True),
]


def make(cell: str, i: int, h: int, layers: int, bidir: bool, seed: int = 0):
    cls = lstmrs.LSTM if cell == "lstm" else lstmrs.GRU
    return cls(i, h, num_layers=layers, bidirectional=bidir, batch_first=True, seed=seed)


def outputs(layer, x) -> list[np.ndarray]:
    out, state = layer(x)
    return [out, *(state if isinstance(state, tuple) else (state,))]


def fresh(layer, net, x) -> list[np.ndarray]:
    """The outputs of a new layer holding ``layer``'s parameters (nothing packed yet)."""
    other = make(*net, seed=99)
    other.load_state_dict(layer.state_dict())
    return outputs(other, x)


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("net", NETS)
def test_repeated_calls_keep_their_bits(net):
    layer = make(*net)
    for b, t in [(32, 1), (32, 10), (3, 2), (32, 1)]:
        x = np.random.default_rng(b + t).standard_normal((b, t, net[1])).astype(np.float32)
        first = outputs(layer, x)
        assert same(outputs(layer, x), first)
        assert same(fresh(layer, net, x), first)


@pytest.mark.parametrize("net", NETS)
def test_a_changed_parameter_is_never_served_stale(net):
    layer = make(*net)
    # T = 3: from the zero state a single step would not read `weight_hh`.
    x = np.random.default_rng(1).standard_normal((32, 3, net[1])).astype(np.float32)
    before = outputs(layer, x)
    outputs(layer, x)  # packed and kept

    # load_state_dict with the recurrent weight scaled.
    sd = layer.state_dict()
    sd["weight_hh_l0"] = sd["weight_hh_l0"] * 1.5
    layer.load_state_dict(sd)
    after = outputs(layer, x)
    assert not same(after, before)
    assert same(after, fresh(layer, net, x))

    # The flat buffer, as a gradient step writes it (the input weight moves too).
    outputs(layer, x)
    layer.set_parameters_flat(layer.parameters_flat() * 0.75)
    after = outputs(layer, x)
    assert same(after, fresh(layer, net, x))

    # One named tensor through the core.
    outputs(layer, x)
    w_ih = layer.state_dict()["weight_ih_l0"]
    layer._core.set_param("weight_ih_l0", np.ascontiguousarray(w_ih + 0.125))
    after = outputs(layer, x)
    assert same(after, fresh(layer, net, x))

    # The arrays handed out are copies: writing one changes nothing.
    kept = outputs(layer, x)
    flat = layer.parameters_flat()
    flat[:] = 0.0
    layer.state_dict()["weight_hh_l0"][:] = 0.0
    assert same(outputs(layer, x), kept)
