"""Stepper: step-by-step inference equals whole-sequence predict at every step."""

from __future__ import annotations

import numpy as np
import pytest
from lstmrs.errors import InvalidArgumentError, ShapeError
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
