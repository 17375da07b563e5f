"""Stepper: step-by-step inference equals whole-sequence predict at every step."""

from __future__ import annotations

import numpy as np
import pytest
from lstmrs import get_num_threads, set_num_threads
from lstmrs.errors import DTypeError, InvalidArgumentError, ShapeError
from lstmrs.models import Model
from lstmrs.streaming import Stepper

TOL = {"rtol": 1e-12, "atol": 1e-13}


def dense(cell="lstm", pooling="per_step", **kw):
    return Model(
        input_size=3,
        hidden_size=6,
        num_layers=2,
        cell=cell,
        pooling=pooling,
        output_size=2,
        head_hidden=(4,),
        dtype="float64",
        seed=1,
        **kw,
    )


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_per_step_stepping_equals_predict(cell):
    m = dense(cell)
    x = np.random.default_rng(0).normal(size=(3, 9, 3))
    full = m.predict(x)
    s = m.stepper(batch=3)
    for t in range(9):
        np.testing.assert_allclose(s.step(x[:, t]), full[:, t], **TOL)
    # The state after the sequence is the model's final state h_n.
    _, h_n, c_n = m.core.predict(x)
    h, c = s.state
    np.testing.assert_allclose(h, h_n, **TOL)
    if cell == "lstm":
        np.testing.assert_allclose(c, c_n, **TOL)
    else:
        assert c is None


def test_last_pooling_gives_the_prefix_prediction_at_each_step():
    m = dense(pooling="last")
    x = np.random.default_rng(1).normal(size=(2, 7, 3))
    s = m.stepper(batch=2)
    for t in range(7):
        np.testing.assert_allclose(s.step(x[:, t]), m.predict(x[:, : t + 1]), **TOL)
    np.testing.assert_allclose(s.step_many(x[:, :0]).shape, (2, 0, 2))


def test_tokens_single_stream_reset_and_step_many():
    m = Model(
        vocab_size=7,
        embedding_dim=3,
        hidden_size=5,
        pooling="per_step",
        output_size=7,
        loss="cross_entropy",
        dtype="float64",
        seed=2,
    )
    ids = np.array([1, 4, 6, 0, 2, 2, 5])
    full = m.predict(ids[None])[0]
    s = m.stepper()
    outs = np.stack([s.step(int(i)) for i in ids])  # scalars in, [O] out for one stream
    np.testing.assert_allclose(outs, full, **TOL)
    s.reset()
    np.testing.assert_allclose(s.step_many(ids), full, **TOL)
    assert s.steps == 7


def test_state_get_set_resumes_a_stream():
    m = dense()
    x = np.random.default_rng(3).normal(size=(1, 10, 3))
    s = m.stepper()
    s.step_many(x[:, :4])
    saved = s.state
    tail = s.step_many(x[:, 4:])
    s.state = saved
    np.testing.assert_allclose(s.step_many(x[:, 4:]), tail, **TOL)
    # The same as predicting with the saved state as h0/c0.
    out, _, _ = m.core.predict(np.ascontiguousarray(x[:, 4:]), h0=saved[0], c0=saved[1])
    np.testing.assert_allclose(tail, out, **TOL)
    with pytest.raises(InvalidArgumentError):
        s.state = saved[0]  # an LSTM needs c too
    with pytest.raises(ShapeError):
        s.state = (np.zeros((1, 1, 6)), np.zeros((1, 1, 6)))  # 2 layers


def test_stepper_follows_the_model_weights_and_f32():
    m = Model(input_size=2, hidden_size=4, pooling="per_step", seed=0)
    x = np.random.default_rng(4).normal(size=(1, 5, 2)).astype(np.float32)
    s = m.stepper()
    other = Model(input_size=2, hidden_size=4, pooling="per_step", seed=9)
    m.load_state_dict(other.state_dict())
    np.testing.assert_allclose(s.step_many(x[0]), other.predict(x)[0], rtol=1e-5, atol=1e-6)


def test_stepper_errors():
    with pytest.raises(InvalidArgumentError):
        dense(bidirectional=True).stepper()
    with pytest.raises(InvalidArgumentError):
        dense(pooling="mean").stepper()
    with pytest.raises(InvalidArgumentError):
        Stepper(dense(), batch=0)
    s = dense().stepper(batch=2)
    with pytest.raises(ShapeError):
        s.step(np.zeros((3, 3)))
    with pytest.raises(ShapeError):
        s.step(np.zeros(3))  # one stream's step for a 2-stream stepper


def small_f32(**kw):
    return Model(input_size=5, hidden_size=7, pooling="per_step", output_size=3, seed=3, **kw)


def test_step_returns_a_fresh_array_each_call():
    s = small_f32().stepper()
    x = np.linspace(-1, 1, 5, dtype=np.float32)
    a = s.step(x[None])
    b = s.step(x[None])
    assert a.shape == b.shape == (1, 3) and a.dtype == np.float32
    assert not np.shares_memory(a, b)
    kept = b.copy()
    a[:] = 99.0  # writing a result changes nothing else
    np.testing.assert_array_equal(b, kept)
    assert s.step(x).shape == (3,)  # no batch axis in, none out
    assert s.steps == 3
    s.reset()
    assert s.steps == 0


def test_converted_inputs_step_like_the_fast_path():
    m = small_f32()
    x = np.random.default_rng(5).normal(size=(4, 2, 10))  # float64, [B, 2, 10]
    want_stepper = m.stepper(batch=4)
    want = [want_stepper.step(np.ascontiguousarray(x[:, 0, ::2], dtype=np.float32))]
    want.append(want_stepper.step(np.ascontiguousarray(x[:, 1, ::2], dtype=np.float32)))
    for convert in (
        lambda a: a,  # float64: converted
        lambda a: a.astype(np.float32),  # float32 but strided: copied
        lambda a: np.asfortranarray(a.astype(np.float32)),
        lambda a: a.tolist(),  # nested lists
    ):
        s = m.stepper(batch=4)
        for t in range(2):
            got = s.step(convert(x[:, t, ::2]))
            np.testing.assert_array_equal(got, want[t])
    # The core reports unconverted input instead of stepping it.
    s = m.stepper(batch=4)
    assert s.core.step(x[:, 0, ::2]) is None
    assert s.core.step(np.ascontiguousarray(x[:, 0, ::2], dtype=np.float32)) is not None
    assert s.steps == 1


def test_bad_step_input_raises_typed_errors_and_does_not_step():
    s = small_f32().stepper(batch=2)
    good = np.zeros((2, 5), np.float32)
    for bad in (
        np.zeros((2, 4), np.float32),  # fast path: right dtype, wrong shape
        np.zeros((3, 5), np.float32),
        np.zeros(5, np.float32),  # one stream's step for a 2-stream stepper
        np.zeros((2, 5, 1), np.float32),
        np.zeros((2, 4)),  # converted first, then the shape check
        [[0.0] * 5],
    ):
        with pytest.raises(ShapeError):
            s.step(bad)
    for bad in (np.array([["a"] * 5] * 2), np.zeros((2, 5), complex), [[None] * 5] * 2):
        with pytest.raises(DTypeError):
            s.step(bad)
    assert s.steps == 0
    np.testing.assert_array_equal(s.state[0], 0.0)  # no failed call moved the state
    assert s.step(good).shape == (2, 3)


def test_token_steps_fast_and_converted_and_their_errors():
    m = Model(
        vocab_size=6, embedding_dim=3, hidden_size=4, pooling="per_step", output_size=2, seed=4
    )
    ids = np.array([[1, 5], [0, 2]])  # [B=2, T=2]
    full = m.predict(ids)
    for convert in (
        lambda a: np.ascontiguousarray(a, dtype=np.int64),
        lambda a: a.astype(np.int32),
        lambda a: a.tolist(),
    ):
        s = m.stepper(batch=2)
        for t in range(2):
            np.testing.assert_allclose(s.step(convert(ids[:, t])), full[:, t], rtol=1e-5, atol=1e-6)
    s = m.stepper(batch=2)
    with pytest.raises(DTypeError):
        s.step(np.array([1.0, 2.0]))  # float token ids
    with pytest.raises(ShapeError):
        s.step(np.array([1, 2, 3]))
    with pytest.raises(ShapeError):
        s.step(np.int64(1))  # one id for two streams
    with pytest.raises(InvalidArgumentError):
        s.step(np.array([1, 6]))  # out of the vocabulary
    one = m.stepper()
    assert one.step(np.int64(3)).shape == (2,)
    assert one.step(np.array([3])).shape == (1, 2)


def test_large_steps_release_the_gil_and_agree_with_predict():
    # 1 x (32 + 256) x 4*256 multiply-adds per step: above the size where the binding releases
    # the GIL, so this runs the borrowing path; the small test models run the GIL-held one.
    m = Model(input_size=32, hidden_size=256, pooling="per_step", dtype="float64", seed=6)
    x = np.random.default_rng(6).normal(size=(1, 4, 32))
    full = m.predict(x)
    s = m.stepper()
    for t in range(4):
        np.testing.assert_allclose(s.step(x[0, t]), full[0, t], **TOL)


@pytest.mark.parametrize("hidden", [130, 420])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_large_f32_batches_step_like_predict_at_any_thread_count(cell, hidden):
    # B = 40 streams of H = 130: past the old small-batch limit (16), where f32 on an AVX-512 CPU
    # now takes the register-tiled mat-vec kernel, and big enough (40 x 162 x 520 multiply-adds)
    # that a step shares its weight rows among the pool's threads. H = 420: weights past 2 MiB,
    # where the kernel's tiles run along the batch. The split keeps every sum's order, so one
    # and two threads give the same bits.
    m = Model(input_size=32, hidden_size=hidden, cell=cell, pooling="per_step", seed=3)
    x = np.random.default_rng(3).normal(size=(40, 3, 32)).astype(np.float32)
    full = m.predict(x)
    before = get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            set_num_threads(n)
            s = m.stepper(batch=40)
            outs = [s.step(x[:, t]) for t in range(3)]
            for t, out in enumerate(outs):
                np.testing.assert_allclose(out, full[:, t], rtol=1e-4, atol=1e-5)
            runs.append((outs, s.state))
    finally:
        set_num_threads(before)
    (one, (h1, c1)), (two, (h2, c2)) = runs
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(h1, h2)
    if cell == "lstm":
        np.testing.assert_array_equal(c1, c2)
