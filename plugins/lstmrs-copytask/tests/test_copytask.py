"""lstmrs-copytask: the generated sequences, the config, registration, and a model that fits."""

from __future__ import annotations

import math

import lstmrs_copytask
import numpy as np
import pytest
from lstmrs.errors import InvalidArgumentError
from lstmrs.plugins import get_tasks, list_plugins
from lstmrs.testing import register_temporarily
from lstmrs_copytask import TASK


def test_tokens_layout():
    x, y = TASK.make_data({"n": 64, "length": 5, "delay": 7, "num_symbols": 4}, seed=3)
    s = 2 * 5 + 7 + 1
    assert x.shape == y.shape == (64, s) and x.dtype == y.dtype == np.int64
    symbols = x[:, :5]
    assert symbols.min() >= 1 and symbols.max() <= 4
    assert set(np.unique(symbols)) == {1, 2, 3, 4}  # every symbol occurs in 320 draws
    assert (x[:, 5:12] == 0).all()  # the delay: blanks
    assert (x[:, 12] == 5).all()  # the delimiter is num_symbols + 1
    assert (x[:, 13:] == 0).all()  # blanks while recalling
    assert (y[:, :13] == 0).all()
    np.testing.assert_array_equal(y[:, 13:], symbols)


def test_mask_prefix_puts_ignore_index_before_the_recall():
    x, y = TASK.make_data(
        {"n": 8, "length": 3, "delay": 2, "mask_prefix": True, "ignore_index": -1}, seed=0
    )
    assert (y[:, :6] == -1).all()
    np.testing.assert_array_equal(y[:, 6:], x[:, :3])


def test_binary_layout():
    x, y = TASK.make_data(
        {"n": 16, "length": 4, "delay": 3, "variant": "binary", "bits": 6}, seed=1
    )
    s = 2 * 4 + 3 + 1
    assert x.shape == (16, s, 7) and y.shape == (16, s, 6)
    assert x.dtype == y.dtype == np.float32
    assert set(np.unique(x[:, :4, :6])) == {0.0, 1.0}
    assert (x[:, :, 6] == np.eye(s)[4 + 3]).all()  # the delimiter flag, once, after the delay
    assert (x[:, 4:, :6] == 0).all()
    assert (y[:, :8] == 0).all()
    np.testing.assert_array_equal(y[:, 8:], x[:, :4, :6])


def test_reproducible_from_the_seed():
    a = TASK.make_data({"n": 32}, seed=5)
    b = TASK.make_data({"n": 32}, seed=5)
    c = TASK.make_data({"n": 32}, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_agrees_with_lstmrs_datasets_copy_task():
    # Two implementations of the same specification (Arjovsky et al.) with the same draws.
    datasets = pytest.importorskip("lstmrs.datasets")
    if not hasattr(datasets, "copy_task"):
        pytest.skip("lstmrs.datasets has no copy_task")
    x, y = TASK.make_data({"n": 20, "length": 6, "delay": 4, "num_symbols": 5}, seed=9)
    x2, y2 = datasets.copy_task(20, 6, 4, num_symbols=5, seed=9)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_defaults_and_baseline():
    x, y = TASK.make_data(seed=0)
    assert x.shape == y.shape == (1024, 41)
    assert TASK.baseline_loss() == pytest.approx(10 * math.log(8) / 41)
    assert TASK.baseline_loss({"mask_prefix": True}) == pytest.approx(math.log(8))
    assert TASK.baseline_loss({"variant": "binary"}) == pytest.approx(10 * math.log(2) / 41)
    assert TASK.default_config["n"] == 1024  # make_data does not modify the defaults


@pytest.mark.parametrize(
    "config, match",
    [
        ({"lenght": 3}, "unknown config key"),
        ({"length": 0}, "length must be an integer >= 1"),
        ({"delay": -1}, "delay must be an integer >= 0"),
        ({"n": 2.5}, "n must be an integer"),
        ({"variant": "ternary"}, "variant"),
        ({"ignore_index": 3}, "real class id"),
    ],
)
def test_bad_config(config, match):
    with pytest.raises(InvalidArgumentError, match=match):
        TASK.make_data(config)


def test_registered_through_the_hook(lstmrs_plugins):
    assert "copy_memory" not in get_tasks()
    with register_temporarily(lstmrs_copytask, name="lstmrs_copytask"):
        task = get_tasks()["copy_memory"]
        assert task is TASK and task.description
        row = next(r for r in list_plugins() if r["name"] == "lstmrs_copytask")
        assert row["tasks"] == ["copy_memory"] and row["version"] == "0.1.0"
    assert "copy_memory" not in get_tasks()


@pytest.mark.parametrize("variant", ["tokens", "binary"])
def test_model_kwargs_fit_the_data(variant):
    from lstmrs.models import Model

    cfg = {"n": 4, "length": 3, "delay": 2, "variant": variant}
    x, y = TASK.make_data(cfg, seed=0)
    model = Model(hidden_size=8, seed=0, **TASK.model_kwargs(cfg))
    out = model.predict(x)
    assert out.shape == (4, x.shape[1], model.output_size)
    assert np.isfinite(model.evaluate(x, y)["loss"])
