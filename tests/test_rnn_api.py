"""Behaviour of the public LSTM/GRU API seen from Python: shapes, layouts, states, lengths,
parameters, training (forward_train/backward), reproducibility, threads, GIL and fork safety.

No torch here: the expected parameter names are PyTorch's naming scheme written out by hand, and
gradients are checked against finite differences of the layer's own forward pass.
"""

from __future__ import annotations

import copy
import doctest
import itertools
import os
import pickle
import signal
import threading
import time
import warnings

import lstmrs
import numpy as np
import pytest
from lstmrs import GRU, LSTM, RnnGradients

CELLS = [LSTM, GRU]


def _x(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _states(layer, out_state):
    """(h, c) of an LSTM, (h, None) of a GRU."""
    return out_state if isinstance(layer, LSTM) else (out_state, None)


# -- shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize(
    "num_layers,bidirectional,batch_first,bias,dtype",
    list(
        itertools.product(
            [1, 3], [False, True], [True, False], [True, False], ["float32", "float64"]
        )
    ),
)
def test_output_and_state_shapes(rng, cls, num_layers, bidirectional, batch_first, bias, dtype):
    b, t, i, h = 3, 5, 4, 6
    d = 2 if bidirectional else 1
    layer = cls(i, h, num_layers, bias, batch_first, 0.0, bidirectional, dtype, seed=1)
    x = _x(rng, (b, t, i) if batch_first else (t, b, i), dtype)
    out, state = layer(x)
    h_n, c_n = _states(layer, state)
    assert out.shape == ((b, t, d * h) if batch_first else (t, b, d * h))
    assert h_n.shape == (num_layers * d, b, h)
    assert out.dtype == np.dtype(dtype) and h_n.dtype == np.dtype(dtype)
    assert out.flags.c_contiguous and out.flags.writeable
    if cls is LSTM:
        assert c_n.shape == (num_layers * d, b, h)
    # The outputs are bounded by tanh and must not be all zero.
    assert np.all(np.abs(out) < 1) and np.any(out != 0)


@pytest.mark.parametrize("cls", CELLS)
def test_attributes_mirror_torch(cls):
    layer = cls(
        4,
        6,
        num_layers=2,
        bias=False,
        batch_first=False,
        dropout=0.25,
        bidirectional=True,
        dtype=np.float64,
        seed=3,
    )
    assert (layer.input_size, layer.hidden_size, layer.num_layers) == (4, 6, 2)
    assert (layer.bias, layer.batch_first, layer.bidirectional) == (False, False, True)
    assert layer.dropout == 0.25 and layer.dtype == np.float64 and layer.seed == 3
    assert layer.training is True  # torch's default
    assert layer.eval() is layer and layer.training is False
    assert layer.train() is layer and layer.training is True
    assert repr(layer) == (
        f"{cls.__name__}(4, 6, num_layers=2, bias=False, batch_first=False, dropout=0.25, "
        "bidirectional=True, dtype=float64)"
    )


@pytest.mark.parametrize("cls", CELLS)
def test_batch_first_equals_time_major(rng, cls):
    layer = cls(4, 5, num_layers=2, bidirectional=True, dtype="float64", seed=2)
    x = _x(rng, (3, 7, 4), np.float64)
    lengths = [7, 2, 5]
    out_bf, st_bf = layer(x, lengths=lengths)
    layer.batch_first = False
    out_tm, st_tm = layer(x.transpose(1, 0, 2), lengths=lengths)
    np.testing.assert_array_equal(out_tm.transpose(1, 0, 2), out_bf)
    for a, b in zip(_states(layer, st_bf), _states(layer, st_tm)):
        if a is not None:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_unbatched_input_matches_batch_of_one(rng, cls, batch_first):
    layer = cls(
        4, 5, num_layers=2, bidirectional=True, batch_first=batch_first, dtype="float64", seed=4
    )
    x = _x(rng, (6, 4), np.float64)  # [T, I] whatever batch_first says, as in torch
    h0 = _x(rng, (4, 5), np.float64)
    c0 = _x(rng, (4, 5), np.float64)
    state = (h0, c0) if cls is LSTM else h0
    out, st = layer(x, state)
    assert out.shape == (6, 10)
    xb = x[None] if batch_first else x[:, None]
    state_b = (h0[:, None], c0[:, None]) if cls is LSTM else h0[:, None]
    out_b, st_b = layer(xb, state_b)
    np.testing.assert_array_equal(out, out_b[0] if batch_first else out_b[:, 0])
    for a, b in zip(_states(layer, st), _states(layer, st_b)):
        if a is not None:
            assert a.shape == (4, 5)
            np.testing.assert_array_equal(a, b[:, 0])


@pytest.mark.parametrize("cls", CELLS)
def test_unbatched_input_with_a_length(rng, cls):
    layer = cls(4, 5, bidirectional=True, dtype="float64", seed=4)
    x = _x(rng, (6, 4), np.float64)
    short, st_short = layer(x[:3])
    for lengths in [3, [3], np.array([3])]:
        out, st = layer(x, lengths=lengths)
        np.testing.assert_allclose(out[:3], short, rtol=0, atol=1e-14)
        assert np.all(out[3:] == 0)
        for a, b in zip(_states(layer, st), _states(layer, st_short)):
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


# -- states --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_state_round_trip_splits_a_sequence(rng, cls, batch_first):
    """Running the first steps, then the rest from the returned state, equals one run."""
    layer = cls(3, 5, num_layers=2, batch_first=batch_first, dtype="float64", seed=5)
    x = _x(rng, (2, 9, 3), np.float64)
    if not batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    axis = 1 if batch_first else 0
    first, rest = np.split(x, [4], axis=axis)
    full_out, full_state = layer(x)
    out1, st1 = layer(first)
    out2, st2 = layer(rest, st1)
    np.testing.assert_allclose(
        np.concatenate([out1, out2], axis=axis), full_out, rtol=0, atol=1e-14
    )
    for a, b in zip(_states(layer, st2), _states(layer, full_state)):
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("cls", CELLS)
def test_zero_state_equals_no_state_and_state_matters(rng, cls):
    layer = cls(3, 4, num_layers=2, bidirectional=True, seed=6)
    x = _x(rng, (2, 5, 3))
    zeros = np.zeros((4, 2, 4), np.float32)
    out, _ = layer(x)
    out_z, _ = layer(x, (zeros, zeros) if cls is LSTM else zeros)
    np.testing.assert_array_equal(out, out_z)
    ones = np.ones_like(zeros)
    out_1, _ = layer(x, (ones, ones) if cls is LSTM else ones)
    assert np.abs(out_1 - out).max() > 1e-3


# -- lengths -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_are_packed_sequence_semantics(rng, cls, bidirectional):
    """Each sequence behaves as if run alone on its first lengths[b] steps; outputs past its
    length are zero and its final state is the state at its last valid step (for the reverse
    direction: the state after reading back from its last valid step to step 0)."""
    layer = cls(3, 4, num_layers=2, bidirectional=bidirectional, dtype="float64", seed=7)
    x = _x(rng, (4, 6, 3), np.float64)
    lengths = [6, 1, 4, 2]  # unsorted, as torch allows with enforce_sorted=False
    out, st = layer(x, lengths=lengths)
    h_n, c_n = _states(layer, st)
    for b, n in enumerate(lengths):
        out_b, st_b = layer(x[b : b + 1, :n])
        np.testing.assert_allclose(out[b, :n], out_b[0], rtol=0, atol=1e-14)
        assert np.all(out[b, n:] == 0)
        hb, cb = _states(layer, st_b)
        np.testing.assert_allclose(h_n[:, b], hb[:, 0], rtol=0, atol=1e-14)
        if c_n is not None:
            np.testing.assert_allclose(c_n[:, b], cb[:, 0], rtol=0, atol=1e-14)


@pytest.mark.parametrize("cls", CELLS)
def test_lengths_accept_list_tuple_and_integer_arrays(rng, cls):
    layer = cls(3, 4, seed=8)
    x = _x(rng, (3, 5, 3))
    ref, _ = layer(x, lengths=[5, 2, 3])
    for lengths in [
        (5, 2, 3),
        np.array([5, 2, 3], np.int32),
        np.array([5, 2, 3], np.uint8),
        np.array([5, 2, 3], np.int64)[::-1][::-1],
    ]:
        out, _ = layer(x, lengths=lengths)
        np.testing.assert_array_equal(out, ref)
    full, _ = layer(x)
    out_full, _ = layer(x, lengths=[5, 5, 5])
    np.testing.assert_array_equal(out_full, full)
    assert not np.array_equal(ref, full)


# -- parameters ----------------------------------------------------------------------------------


def test_state_dict_names_order_and_shapes_follow_torch():
    # torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True).state_dict() keys and shapes.
    h = 5
    expected = [
        ("weight_ih_l0", (4 * h, 3)),
        ("weight_hh_l0", (4 * h, h)),
        ("bias_ih_l0", (4 * h,)),
        ("bias_hh_l0", (4 * h,)),
        ("weight_ih_l0_reverse", (4 * h, 3)),
        ("weight_hh_l0_reverse", (4 * h, h)),
        ("bias_ih_l0_reverse", (4 * h,)),
        ("bias_hh_l0_reverse", (4 * h,)),
        ("weight_ih_l1", (4 * h, 2 * h)),
        ("weight_hh_l1", (4 * h, h)),
        ("bias_ih_l1", (4 * h,)),
        ("bias_hh_l1", (4 * h,)),
        ("weight_ih_l1_reverse", (4 * h, 2 * h)),
        ("weight_hh_l1_reverse", (4 * h, h)),
        ("bias_ih_l1_reverse", (4 * h,)),
        ("bias_hh_l1_reverse", (4 * h,)),
    ]
    sd = LSTM(3, h, num_layers=2, bidirectional=True, seed=0).state_dict()
    assert [(k, v.shape) for k, v in sd.items()] == expected
    # torch.nn.GRU(3, 5, num_layers=2, bias=False).state_dict(): 3 gates, no biases.
    sd = GRU(3, h, num_layers=2, bias=False, dtype="float64", seed=0).state_dict()
    assert [(k, v.shape) for k, v in sd.items()] == [
        ("weight_ih_l0", (3 * h, 3)),
        ("weight_hh_l0", (3 * h, h)),
        ("weight_ih_l1", (3 * h, h)),
        ("weight_hh_l1", (3 * h, h)),
    ]
    assert all(v.dtype == np.float64 for v in sd.values())


@pytest.mark.parametrize("cls", CELLS)
def test_init_is_uniform_in_torch_bounds(cls):
    h = 16
    flat = cls(8, h, num_layers=2, seed=9).parameters_flat()
    bound = 1 / np.sqrt(h)
    assert np.all(np.abs(flat) <= bound)
    # Uniform: spread over the whole interval, mean near 0.
    assert flat.max() > 0.95 * bound and flat.min() < -0.95 * bound
    assert abs(flat.mean()) < 0.05 * bound
    assert np.std(flat) == pytest.approx(bound / np.sqrt(3), rel=0.05)


@pytest.mark.parametrize("cls", CELLS)
def test_state_dict_round_trip_and_copies(rng, cls):
    a = cls(3, 4, num_layers=2, bidirectional=True, seed=10)
    b = cls(3, 4, num_layers=2, bidirectional=True, seed=11)
    x = _x(rng, (2, 5, 3))
    assert not np.array_equal(a(x)[0], b(x)[0])
    sd = a.state_dict()
    assert b.load_state_dict(sd) == ([], [])
    np.testing.assert_array_equal(a(x)[0], b(x)[0])
    # state_dict returns copies: writing to them changes nothing.
    sd["weight_ih_l0"][:] = 0
    assert np.any(a.state_dict()["weight_ih_l0"] != 0)


def test_load_state_dict_converts_array_likes_and_reports_keys_when_not_strict(rng):
    layer = GRU(2, 3, dtype="float64", seed=12)
    src = GRU(2, 3, dtype="float32", seed=13).state_dict()
    nested = {k: v.tolist() for k, v in src.items()}  # plain lists are array-likes too
    layer.load_state_dict(nested)
    for k, v in layer.state_dict().items():
        assert v.dtype == np.float64
        np.testing.assert_array_equal(v, src[k].astype(np.float64))

    partial = {"weight_ih_l0": np.ones((9, 2)), "weight_hr_l0": np.zeros(3)}
    keys = layer.load_state_dict(partial, strict=False)
    assert keys.missing_keys == ["weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert keys.unexpected_keys == ["weight_hr_l0"]
    sd = layer.state_dict()
    assert np.all(sd["weight_ih_l0"] == 1)
    np.testing.assert_array_equal(sd["weight_hh_l0"], src["weight_hh_l0"].astype(np.float64))


def test_failed_load_changes_nothing():
    layer = LSTM(2, 3, seed=14)
    before = layer.parameters_flat()
    sd = {k: np.zeros_like(v) for k, v in layer.state_dict().items()}
    sd["bias_hh_l0"] = np.zeros(5, np.float32)  # the last key has a wrong shape
    with pytest.raises(lstmrs.ShapeError):
        layer.load_state_dict(sd)
    np.testing.assert_array_equal(layer.parameters_flat(), before)


@pytest.mark.parametrize("cls,gates", [(LSTM, 4), (GRU, 3)])
def test_parameters_flat_is_the_state_dict_concatenated(cls, gates):
    layer = cls(3, 4, num_layers=2, bidirectional=True, seed=15)
    flat = layer.parameters_flat()
    np.testing.assert_array_equal(
        flat, np.concatenate([v.reshape(-1) for v in layer.state_dict().values()])
    )
    h = 4
    per_layer0 = gates * h * (3 + h + 2)
    per_layer1 = gates * h * (2 * h + h + 2)
    assert layer.num_parameters == flat.size == 2 * (per_layer0 + per_layer1)
    layer.set_parameters_flat(flat * 2)
    np.testing.assert_array_equal(layer.parameters_flat(), flat * 2)


# -- forward_train / backward --------------------------------------------------------------------


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("bidirectional,batch_first", [(False, True), (True, False)])
def test_backward_shapes_and_names(rng, cls, bidirectional, batch_first):
    layer = cls(3, 4, num_layers=2, bidirectional=bidirectional, batch_first=batch_first, seed=16)
    x = _x(rng, (2, 5, 3) if batch_first else (5, 2, 3))
    out, _state, tape = layer.forward_train(x)
    np.testing.assert_array_equal(out, layer(x)[0])  # keeping the tape changes nothing
    assert (tape.seq_len, tape.batch, tape.batch_first, tape.dtype) == (
        5,
        2,
        batch_first,
        np.float32,
    )
    grads = layer.backward(tape, d_out=np.ones_like(out), retain_tape=True)
    assert isinstance(grads, RnnGradients)
    assert [(k, v.shape) for k, v in grads.params.items()] == [
        (k, v.shape) for k, v in layer.state_dict().items()
    ]
    assert grads.input.shape == x.shape and grads.flat.shape == (layer.num_parameters,)
    d = 2 if bidirectional else 1
    if cls is LSTM:
        assert grads.state[0].shape == grads.state[1].shape == (2 * d, 2, 4)
    else:
        assert grads.state.shape == (2 * d, 2, 4)
    assert all(np.any(v != 0) for v in grads.params.values())
    # Reusing a retained tape gives the same gradients; the last call uses it up.
    again = layer.backward(tape, d_out=np.ones_like(out))
    np.testing.assert_array_equal(again.flat, grads.flat)
    assert tape.consumed


@pytest.mark.parametrize("cls", CELLS)
def test_backward_unbatched_shapes_match_the_inputs(rng, cls):
    layer = cls(3, 4, num_layers=2, seed=17, dtype="float64")
    x = _x(rng, (5, 3), np.float64)
    out, _state, tape = layer.forward_train(x)
    assert tape.unbatched
    d_state = (np.ones((2, 4)), None) if cls is LSTM else np.ones((2, 4))
    grads = layer.backward(tape, d_out=np.ones_like(out), d_state=d_state)
    assert grads.input.shape == (5, 3)
    gh = grads.state[0] if cls is LSTM else grads.state
    assert gh.shape == (2, 4)
    # The same numbers as the batch-of-one call.
    out_b, _, tape_b = layer.forward_train(x[None])
    d_state_b = (np.ones((2, 1, 4)), None) if cls is LSTM else np.ones((2, 1, 4))
    grads_b = layer.backward(tape_b, d_out=np.ones_like(out_b), d_state=d_state_b)
    np.testing.assert_array_equal(grads.flat, grads_b.flat)
    np.testing.assert_array_equal(grads.input, grads_b.input[0])


def _loss_terms(rng, layer, x, lengths):
    """Random weights of a loss linear in every output: sum(out*R) + sum(h_n*S) [+ sum(c_n*U)]."""
    out, state = layer(x, lengths=lengths)
    h_n, c_n = _states(layer, state)
    r = rng.standard_normal(out.shape)
    s = rng.standard_normal(h_n.shape)
    u = None if c_n is None else rng.standard_normal(c_n.shape)
    return r, s, u


@pytest.mark.parametrize("cls", CELLS)
def test_gradients_match_finite_differences(rng, cls):
    layer = cls(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=18)
    layer.eval()
    x = _x(rng, (3, 5, 3), np.float64)
    lengths = [5, 3, 1]
    h0 = 0.5 * _x(rng, (4, 3, 4), np.float64)
    c0 = 0.5 * _x(rng, (4, 3, 4), np.float64)
    lstm = cls is LSTM
    r, s, u = _loss_terms(rng, layer, x, lengths)

    def loss(x_, h0_, c0_):
        out, state = layer(x_, (h0_, c0_) if lstm else h0_, lengths)
        h_n, c_n = _states(layer, state)
        total = np.sum(out * r) + np.sum(h_n * s)
        return total + (np.sum(c_n * u) if lstm else 0.0)

    _out, _state, tape = layer.forward_train(x, (h0, c0) if lstm else h0, lengths)
    grads = layer.backward(tape, d_out=r, d_state=(s, u) if lstm else s)
    eps = 1e-6

    flat = layer.parameters_flat()
    for i in rng.choice(flat.size, size=12, replace=False):
        plus, minus = flat.copy(), flat.copy()
        plus[i] += eps
        minus[i] -= eps
        layer.set_parameters_flat(plus)
        lp = loss(x, h0, c0)
        layer.set_parameters_flat(minus)
        lm = loss(x, h0, c0)
        layer.set_parameters_flat(flat)
        assert grads.flat[i] == pytest.approx((lp - lm) / (2 * eps), rel=1e-5, abs=1e-7)

    for arr, grad, name in [
        (x, grads.input, "x"),
        (h0, grads.state[0] if lstm else grads.state, "h0"),
    ] + ([(c0, grads.state[1], "c0")] if lstm else []):
        for idx in [(0, 0, 0), (1, 2, 1), (2, 0, 2)]:
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += eps
            minus[idx] -= eps
            args = {"x": (x, h0, c0), "h0": (x, h0, c0), "c0": (x, h0, c0)}[name]
            pos = ["x", "h0", "c0"].index(name)
            lp = loss(*[plus if k == pos else a for k, a in enumerate(args)])
            lm = loss(*[minus if k == pos else a for k, a in enumerate(args)])
            assert grad[idx] == pytest.approx((lp - lm) / (2 * eps), rel=1e-5, abs=1e-7), (
                name,
                idx,
            )
    # Steps past a sequence's length do not influence anything: zero input gradient there.
    assert np.all(grads.input[2, 1:] == 0) and np.all(grads.input[1, 3:] == 0)


@pytest.mark.parametrize("cls", CELLS)
def test_manual_sgd_reduces_the_loss(rng, cls):
    layer = cls(3, 8, dtype="float64", seed=19)
    x = _x(rng, (4, 6, 3), np.float64)
    target = 0.5 * np.sin(np.arange(6 * 8).reshape(1, 6, 8) / 5.0) * np.ones((4, 1, 1))

    def loss_of(out):
        return float(np.mean((out - target) ** 2))

    losses = []
    for _ in range(100):
        out, _, tape = layer.forward_train(x)
        losses.append(loss_of(out))
        grads = layer.backward(tape, d_out=2 * (out - target) / out.size)
        layer.set_parameters_flat(layer.parameters_flat() - 2.0 * grads.flat)
    # Small steps along the true gradient decrease the loss at every step.
    assert np.all(np.diff(losses) < 0)
    assert losses[-1] < 0.75 * losses[0]


# -- reproducibility -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CELLS)
def test_seed_reproducibility(rng, cls):
    a, b, c = cls(3, 4, seed=20), cls(3, 4, seed=20), cls(3, 4, seed=21)
    np.testing.assert_array_equal(a.parameters_flat(), b.parameters_flat())
    assert not np.array_equal(a.parameters_flat(), c.parameters_flat())
    x = _x(rng, (2, 30, 3))
    np.testing.assert_array_equal(a(x)[0], a(x)[0])  # same call twice: same bits
    np.testing.assert_array_equal(a(x)[0], b(x)[0])
    # seed=None draws a seed and exposes it, so a run can be repeated.
    d, e = cls(3, 4), cls(3, 4)
    assert d.seed != e.seed
    assert not np.array_equal(d.parameters_flat(), e.parameters_flat())
    np.testing.assert_array_equal(cls(3, 4, seed=d.seed).parameters_flat(), d.parameters_flat())


@pytest.mark.parametrize("cls", CELLS)
def test_dropout_is_fresh_per_call_reproducible_and_off_in_eval(rng, cls):
    x = _x(rng, (4, 6, 3))
    a = cls(3, 16, num_layers=2, dropout=0.5, seed=22)
    b = cls(3, 16, num_layers=2, dropout=0.5, seed=22)
    plain = cls(3, 16, num_layers=2, seed=22)
    first, second = a(x)[0], a(x)[0]
    assert not np.array_equal(first, second)  # a new mask per call
    np.testing.assert_array_equal(b(x)[0], first)  # same seed, same sequence of masks
    np.testing.assert_array_equal(b(x)[0], second)
    assert not np.array_equal(first, plain(x)[0])
    a.eval()
    np.testing.assert_array_equal(a(x)[0], plain(x)[0])
    # forward_train follows the training flag too.
    np.testing.assert_array_equal(a.forward_train(x)[0], plain(x)[0])


def test_dropout_with_one_layer_warns_and_does_nothing(rng):
    with pytest.warns(UserWarning, match="dropout"):
        layer = LSTM(3, 4, dropout=0.5, seed=23)
    x = _x(rng, (2, 4, 3))
    np.testing.assert_array_equal(layer(x)[0], LSTM(3, 4, seed=23)(x)[0])


@pytest.mark.parametrize("cls", CELLS)
def test_other_float_dtypes_are_converted_and_views_are_copied(rng, cls):
    layer = cls(3, 4, seed=24)
    x64 = _x(rng, (2, 8, 3), np.float64)
    ref, _ = layer(x64.astype(np.float32))
    out, _ = layer(x64)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(
        layer(x64.astype(np.float16))[0], layer(x64.astype(np.float16).astype(np.float32))[0]
    )
    # A strided view is copied to a contiguous buffer first.
    wide = _x(rng, (2, 16, 3))
    view = wide[:, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(layer(view)[0], layer(np.ascontiguousarray(view))[0])
    # Nested lists are array-likes.
    np.testing.assert_array_equal(layer(view.tolist())[0], layer(view)[0])


def test_check_finite_false_lets_nan_through(rng):
    layer = GRU(3, 4, seed=25, check_finite=False)
    x = _x(rng, (1, 4, 3))
    x[0, 2, 1] = np.nan
    out, _ = layer(x)
    assert np.all(np.isfinite(out[0, :2])) and np.all(np.isnan(out[0, 2:]))


@pytest.mark.parametrize("cls", CELLS)
def test_deepcopy_and_pickle_keep_weights_and_dropout_stream(rng, cls):
    layer = cls(3, 4, num_layers=2, dropout=0.3, seed=26)
    x = _x(rng, (2, 5, 3))
    layer(x)  # advance the dropout stream
    for clone in [copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))]:
        np.testing.assert_array_equal(clone.parameters_flat(), layer.parameters_flat())
        assert repr(clone) == repr(layer)
        np.testing.assert_array_equal(clone(x)[0], copy.deepcopy(layer)(x)[0])
        clone.set_parameters_flat(np.zeros(clone.num_parameters, np.float32))
        assert np.any(layer.parameters_flat() != 0)  # independent weights


# -- threads, GIL, fork --------------------------------------------------------------------------


def test_set_and_get_num_threads(rng, restore_num_threads):
    layer = LSTM(16, 32, num_layers=2, seed=27)
    x = _x(rng, (8, 20, 16))
    for n in [1, 2, 3]:
        lstmrs.set_num_threads(n)
        assert lstmrs.get_num_threads() == n
        # Same thread count, same bits.
        np.testing.assert_array_equal(layer(x)[0], layer(x)[0])
    lstmrs.set_num_threads(1)
    one = layer(x)[0]
    lstmrs.set_num_threads(2)
    np.testing.assert_allclose(layer(x)[0], one, rtol=0, atol=1e-6)


def test_concurrent_calls_from_python_threads_agree(rng):
    layer = GRU(8, 16, num_layers=2, bidirectional=True, seed=28)
    xs = [_x(rng, (4, 12, 8)) for _ in range(4)]
    expected = [layer(x)[0] for x in xs]
    results = [None] * len(xs)

    def work(i):
        for _ in range(5):
            results[i] = layer(xs[i])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return t0, time.perf_counter()


def test_forward_and_backward_release_the_gil(rng, restore_num_threads):
    """A Python thread keeps running while a long forward/backward computes: if the GIL were
    held, it could not take a single step inside the call."""
    lstmrs.set_num_threads(1)
    layer = LSTM(32, 128, num_layers=2, seed=29)
    steps = 50
    while True:  # calibrate: each call must last long enough to sample inside it
        x = _x(rng, (8, steps, 32))
        t0, t1 = _timed(lambda x=x: layer.forward_train(x))
        if t1 - t0 > 0.2 or steps > 50_000:
            break
        steps *= 2
    out, _, tape = layer.forward_train(x)
    d_out = np.ones_like(out)

    ticks = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        time.sleep(0.05)
        windows = [_timed(lambda: layer(x)), _timed(lambda: layer.backward(tape, d_out=d_out))]
    finally:
        stop.set()
        spinner.join()
    ticks = np.array(ticks)
    for t0, t1 in windows:
        lo, hi = t0 + 0.25 * (t1 - t0), t0 + 0.75 * (t1 - t0)
        inside = np.count_nonzero((ticks > lo) & (ticks < hi))
        assert inside > 100, f"the other thread ran {inside} steps in the middle of the call"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_can_compute(rng, restore_num_threads):
    """After a call started the worker pool, a forked child (multiprocessing's default on Linux)
    must still compute: the parent's workers do not exist in it."""
    lstmrs.set_num_threads(2)
    layer = GRU(8, 16, num_layers=2, seed=30)
    x = _x(rng, (4, 20, 8))
    expected, _ = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            out, _ = layer(x)
            code = 0 if np.array_equal(out, expected) else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in its first forward call")
        time.sleep(0.02)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    # The parent still works too.
    np.testing.assert_array_equal(layer(x)[0], expected)


# -- documentation -------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [lstmrs, lstmrs.rnn])
def test_docstring_examples_run(module):
    failures, tried = doctest.testmod(module, verbose=False)
    assert tried > 0 and failures == 0


def test_public_names():
    for name in [
        "LSTM",
        "GRU",
        "RnnGradients",
        "set_num_threads",
        "get_num_threads",
        "LstmrsError",
        "ShapeError",
        "DTypeError",
        "InvalidArgumentError",
        "NonFiniteError",
        "__version__",
    ]:
        assert name in lstmrs.__all__ and hasattr(lstmrs, name)
    assert lstmrs.__version__.count(".") == 2


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: GRU(3, 8, num_layers=1, seed=0), "GRU"),
        (lambda: lstmrs.RNN(3, 8, cell="gru", seed=0), "gru"),
    ],
)
def test_a_pair_of_states_for_a_one_state_cell_says_so(make, name):
    rnn = make()
    x = np.zeros((2, 5, 3), dtype=np.float32)
    h0 = np.zeros((1, 2, 8), dtype=np.float32)
    for pair in ((h0, h0.copy()), [h0, h0.copy()]):
        with pytest.raises(
            lstmrs.ShapeError, match=rf"'{name}' has one state \(h\), so pass h0 alone"
        ):
            rnn(x, pair)
    # h0 alone works; a wrong shape that is not a pair keeps the plain shape message.
    assert rnn(x, h0)[1].shape == (1, 2, 8)
    with pytest.raises(lstmrs.ShapeError, match="h0") as e:
        rnn(x, np.zeros((1, 3, 8), dtype=np.float32))
    assert "one state" not in str(e.value)
