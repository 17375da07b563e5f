"""lstmrs.Model: construction, parameter names, weights by name, predict and evaluate."""

from __future__ import annotations

import numpy as np
import pytest
from lstmrs import optim
from lstmrs.errors import DTypeError, InvalidArgumentError, ShapeError
from lstmrs.models import Loss, Model


def small(**kw):
    args = {"input_size": 3, "hidden_size": 5, "output_size": 2, "seed": 0}
    args.update(kw)
    return Model(**args)


def test_parameter_names_and_counts():
    m = small()
    assert [n for n, _ in m.param_specs] == [
        "rnn.weight_ih_l0",
        "rnn.weight_hh_l0",
        "rnn.bias_ih_l0",
        "rnn.bias_hh_l0",
        "head.0.weight",
        "head.0.bias",
    ]
    # LSTM: 4H*F + 4H*H + 2*4H = 60 + 100 + 40; head 2*5 + 2.
    assert m.num_params == 212
    e = Model(
        vocab_size=11,
        embedding_dim=4,
        hidden_size=5,
        cell="gru",
        bidirectional=True,
        pooling="attention",
        attention_units=7,
        head_hidden=(6,),
        output_size=3,
        seed=0,
    )
    names = [n for n, _ in e.param_specs]
    assert names[0] == "embedding.weight" and dict(e.param_specs)["embedding.weight"] == (11, 4)
    assert "rnn.weight_hh_l0_reverse" in names
    assert dict(e.param_specs)["attention.weight"] == (7, 10)
    assert dict(e.param_specs)["head.0.weight"] == (6, 10)
    assert dict(e.param_specs)["head.1.weight"] == (3, 6)
    assert e.num_params == sum(int(np.prod(s)) for _, s in e.param_specs)


def test_constructor_arguments_are_checked():
    with pytest.raises(InvalidArgumentError):
        Model(input_size=3, vocab_size=10, embedding_dim=4)
    with pytest.raises(InvalidArgumentError):
        Model()
    with pytest.raises(InvalidArgumentError):
        Model(vocab_size=10)  # no embedding_dim
    with pytest.raises(InvalidArgumentError):
        small(pooling="max")
    with pytest.raises(InvalidArgumentError):
        small(dropout=1.0)
    with pytest.raises(InvalidArgumentError):
        small(attention_units=4)  # only with attention pooling
    with pytest.raises(InvalidArgumentError):
        small(hidden_size=0)
    with pytest.raises(InvalidArgumentError):
        small(loss="hinge")
    with pytest.raises(DTypeError):
        small(dtype="float16")
    with pytest.raises(ShapeError):
        small(loss=Loss("cross_entropy", class_weights=[1.0, 2.0, 3.0]))  # 2 outputs


def test_seed_fixes_the_weights():
    a, b, c = small(seed=4), small(seed=4), small(seed=5)
    np.testing.assert_array_equal(a.get_weights(), b.get_weights())
    assert not np.array_equal(a.get_weights(), c.get_weights())
    bound = 1 / np.sqrt(5)  # PyTorch's U(-1/sqrt(H), 1/sqrt(H)) for recurrent weights
    w = a.state_dict()["rnn.weight_hh_l0"]
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.5 * bound


def test_state_dict_round_trip_and_errors():
    a, b = small(seed=1), small(seed=2)
    x = np.random.default_rng(0).normal(size=(4, 6, 3)).astype(np.float32)
    assert not np.array_equal(a.predict(x), b.predict(x))
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    sd = a.state_dict()
    sd["head.0.bias"] = sd["head.0.bias"] + 1.0
    before = b.get_weights()
    bad = dict(sd)
    bad["rnn.weight_hh_l0"] = np.zeros((3, 3))
    with pytest.raises(ShapeError):
        b.load_state_dict(bad)
    np.testing.assert_array_equal(b.get_weights(), before)  # nothing changed
    with pytest.raises(InvalidArgumentError):
        b.load_state_dict({"head.0.bias": sd["head.0.bias"]})  # strict: names missing
    b.load_state_dict({"head.0.bias": sd["head.0.bias"]}, strict=False)
    np.testing.assert_allclose(b.predict(x), a.predict(x) + 1.0, rtol=1e-6)
    with pytest.raises(InvalidArgumentError):
        b.load_state_dict({**sd, "extra": np.zeros(1)})


@pytest.mark.parametrize("pooling", ["last", "mean", "attention", "per_step"])
def test_predict_shapes_and_padding_invariance(pooling):
    m = small(pooling=pooling, num_layers=2, bidirectional=pooling != "last", dtype="float64")
    rng = np.random.default_rng(1)
    seqs = [rng.normal(size=(t, 3)) for t in (5, 2, 7)]
    out = m.predict(seqs)
    one_by_one = [m.predict(s[None]) for s in seqs]
    if pooling == "per_step":
        assert out.shape == (3, 7, 2)
        for i, s in enumerate(seqs):
            np.testing.assert_allclose(out[i, : len(s)], one_by_one[i][0], rtol=1e-12, atol=1e-14)
            assert np.all(out[i, len(s) :] == 0)
    else:
        assert out.shape == (3, 2)
        np.testing.assert_allclose(out, np.concatenate(one_by_one), rtol=1e-12, atol=1e-14)
    # The same sequences as a padded array + lengths, in small batches.
    padded = np.zeros((3, 7, 3))
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    np.testing.assert_allclose(
        m.predict(padded, lengths=[5, 2, 7], batch_size=2), out, rtol=1e-12, atol=1e-14
    )


def test_predict_probabilities_and_labels():
    m = small(loss="cross_entropy", output_size=4)
    x = np.random.default_rng(2).normal(size=(6, 5, 3)).astype(np.float32)
    raw = m.predict(x)
    p = m.predict_proba(x)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(m.predict(x, output="labels"), raw.argmax(-1))
    e = np.exp(raw - raw.max(-1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(-1, keepdims=True), rtol=1e-6)
    b = small(loss="bce_with_logits", output_size=1)
    np.testing.assert_allclose(b.predict_proba(x), 1 / (1 + np.exp(-b.predict(x))), rtol=1e-6)
    with pytest.raises(InvalidArgumentError):
        small().predict(x, output="probabilities")  # mse model
    with pytest.raises(InvalidArgumentError):
        m.predict(x, output="logits")


def test_input_checks():
    m = small()
    with pytest.raises(ShapeError):
        m.predict(np.zeros((2, 4, 5), dtype=np.float32))  # 5 features, model takes 3
    with pytest.raises(DTypeError):
        m.predict(np.array([["a"]]))
    with pytest.raises(InvalidArgumentError):
        m.predict(np.zeros((2, 4, 3)), lengths=[4, 5])
    t = Model(vocab_size=5, embedding_dim=3, hidden_size=4, seed=0)
    with pytest.raises(DTypeError):
        t.predict(np.zeros((2, 3)))  # float ids
    with pytest.raises(InvalidArgumentError):
        t.predict(np.array([[0, 5]]))  # id out of the vocabulary
    assert t.predict(np.array([[0, 4, 2]])).shape == (1, 1)


@pytest.mark.parametrize(
    "loss,pooling",
    [
        ("mse", "last"),
        ("mae", "mean"),
        (Loss("huber", delta=0.3), "per_step"),
        ("bce_with_logits", "last"),
        (Loss("cross_entropy", class_weights=[0.5, 2.0, 1.0], ignore_index=1), "per_step"),
    ],
)
def test_evaluate_loss_equals_the_core_loss(loss, pooling):
    """evaluate scores predictions in NumPy; it must agree with the Rust loss."""
    m = small(loss=loss, pooling=pooling, output_size=3, dtype="float64")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 6, 3))
    lengths = np.array([6, 3, 5, 1, 6])
    ce = m.loss.name == "cross_entropy"
    shape = (5, 6) if pooling == "per_step" else (5,)
    if ce:
        y = rng.integers(0, 3, size=shape)
    else:
        y = rng.random(shape + (3,))
    res = m.evaluate(x, y, lengths=lengths, batch_size=2)
    want, _ = m.core.loss_and_grad(
        x, y if not ce else y.astype(np.int64), m._loss_spec, lengths=lengths
    )
    assert res["loss"] == pytest.approx(want, rel=1e-12)


def test_compile():
    m = small()
    m.compile(
        "sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        clip_norm=1.0,
        schedule=optim.StepLR(2),
        metrics=["mae"],
    )
    assert m.compiled and m.lr == 0.1 and isinstance(m.optimizer, optim.SGD)
    assert m.optimizer.hyper["momentum"] == 0.9
    assert m._opt_core.name == "sgd"
    m.compile(optim.AdamW(lr=3e-3))
    assert m.optimizer.hyper["weight_decay"] == 1e-2 and m.lr == 3e-3
    assert Model(input_size=1, hidden_size=2, seed=0).compile().lr == 1e-3  # torch's Adam default
    with pytest.raises(InvalidArgumentError):
        m.compile("lbfgs")
    with pytest.raises(InvalidArgumentError):
        m.compile("adam", clip_norm=-1)
    with pytest.raises(InvalidArgumentError):
        m.compile("adam", metrics=["accuracy"])  # mse model
    with pytest.raises(InvalidArgumentError):
        m.compile("sgd", nesterov=True)  # no momentum
    with pytest.raises(InvalidArgumentError):
        m.compile("adam", betas=(0.9, 1.0))


def test_repr_and_summary():
    m = small(head_hidden=4)
    assert "hidden_size=5" in repr(m) and "params=" in repr(m)
    s = m.summary()
    assert "head.1.weight" in s and f"{m.num_params:,}" in s
    assert Model.from_config(m.get_config()).num_params == m.num_params
