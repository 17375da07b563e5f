"""A plugin task's ``make_data`` result is checked before training: wrong types, None,
mismatched lengths, dtypes and label ranges raise a typed error naming the task and the plugin
before the first epoch, and the run directory is marked "failed"."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from lstmrs.cli import resolve_config, train_run
from lstmrs.errors import DTypeError, InvalidArgumentError, NonFiniteError, ShapeError
from lstmrs.plugins import get_tasks, hookimpl
from lstmrs.rundir import RunDir
from lstmrs.tasks import as_task, check_task_data
from lstmrs.testing import isolated_plugins, register_temporarily


def _pairs(n=64, t=5):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, t, 1)).astype(np.float32)
    return x, x.sum(axis=(1, 2))[:, None]


def _good():
    return _pairs()


BAD = {
    # what make_data returns -> (error type, text in the message)
    "mismatched": (lambda: (_pairs(256)[0], _pairs(255)[1]), ShapeError, "256 sequences.*255"),
    "none": (lambda: None, DTypeError, "pair \\(X, y\\).*got NoneType"),
    "none_y": (lambda: (_pairs()[0], None), DTypeError, "None for y"),
    "one_array": (lambda: (_pairs()[0],), DTypeError, "pair \\(X, y\\).*got 1"),
    "strings": (lambda: (_pairs()[0], np.array(["a"] * 64)), DTypeError, "y has dtype <U1"),
    "ragged": (lambda: ([[1.0], [1.0, 2.0]], [0.0, 1.0]), DTypeError, "X is not an array"),
    "nan": (lambda: (np.full((8, 3, 1), np.nan), np.zeros(8)), NonFiniteError, "NaN"),
    "rank": (lambda: (np.zeros(8), np.zeros(8)), ShapeError, "X has shape \\(8,\\)"),
    "int_no_vocab": (lambda: (np.zeros((8, 3), int), np.zeros(8)), DTypeError, "no vocab_size"),
}


class ToyTask:
    name = "toy_protocol"
    description = "returns whatever the test sets"
    default_config: ClassVar[dict] = {"n": 64}

    def __init__(self, make, kwargs=None):
        self._make, self._kwargs = make, kwargs or {}

    def make_data(self, config, seed):
        return self._make()

    def model_kwargs(self, config):
        return dict(self._kwargs)


class _Plugin:
    def __init__(self, task):
        self.task = task

    @hookimpl
    def lstmrs_register_tasks(self, register):
        register(self.task)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_task_data_fails_before_the_first_epoch_naming_the_plugin(case, tmp_path):
    make, error, match = BAD[case]
    with isolated_plugins(), register_temporarily(_Plugin(ToyTask(make)), name="toy_plugin"):
        task = as_task(get_tasks()["toy_protocol"])
        cfg = resolve_config(task, sets=["train.epochs=3", "model.hidden_size=4"])
        run = RunDir.create(str(tmp_path / "run"), task.name)
        lines: list[str] = []
        with pytest.raises(error, match=match) as e:
            train_run(task, cfg, run, resume=False, say=lines.append, make_plots=False)
    assert "task 'toy_protocol' of plugin 'toy_plugin'" in str(e.value)
    assert not any(line.startswith("epoch") for line in lines)  # no epoch ran
    assert run.read_metrics() == []
    state = run.read_state()
    assert state["status"] == "failed" and error.__name__ in state["error"]


@pytest.mark.parametrize(
    "x, y, kwargs, error, match",
    [
        # token ids against vocab_size
        (
            np.full((4, 3), 7),
            np.zeros(4),
            {"vocab_size": 5},
            InvalidArgumentError,
            "from 7 to 7.*vocab_size=5",
        ),
        (np.zeros((4, 3)), np.zeros(4), {"vocab_size": 5}, DTypeError, "integer token ids"),
        # class labels against output_size
        (
            np.zeros((4, 3, 1)),
            np.array([0, 1, 2, 3]),
            {"loss": "cross_entropy", "output_size": 3},
            InvalidArgumentError,
            "labels from 0 to 3.*output_size=3",
        ),
        (
            np.zeros((4, 3, 1)),
            np.array([0.0, 1.0, 0.0, 1.0]),
            {"loss": "cross_entropy", "output_size": 2},
            DTypeError,
            "integer class labels",
        ),
        (
            np.zeros((4, 3, 1)),
            np.array([0.0, 2.0, 0.0, 1.0]),
            {"loss": "bce_with_logits"},
            InvalidArgumentError,
            r"targets in \[0, 1\]",
        ),
    ],
)
def test_dtypes_and_label_ranges(x, y, kwargs, error, match):
    with pytest.raises(error, match=match):
        check_task_data((x, y), "task 't'", kwargs)


def test_ignore_index_labels_and_valid_data_pass():
    y = np.array([[0, 1, -100], [2, -100, -100]])
    loss = {"name": "cross_entropy", "ignore_index": -100}
    x, y2 = check_task_data(
        (np.zeros((2, 3), np.int64), y), "t", {"vocab_size": 3, "loss": loss, "output_size": 3}
    )
    assert y2 is not None and x.dtype == np.int64
    x, y = check_task_data(([[0.5, 1.0], [2.0, 3.0]], [1.0, 2.0]), "t", {})  # lists are fine
    assert x.shape == (2, 2) and y.shape == (2,)


def test_good_task_data_still_trains(tmp_path):
    with isolated_plugins(), register_temporarily(_Plugin(ToyTask(_good)), name="toy_plugin"):
        task = as_task(get_tasks()["toy_protocol"])
        cfg = resolve_config(task, sets=["train.epochs=1", "model.hidden_size=4"])
        run = RunDir.create(str(tmp_path / "run"), task.name)
        assert train_run(task, cfg, run, resume=False, say=lambda s: None, make_plots=False) == 0
    assert run.read_state()["status"] == "completed"
    assert len(run.read_metrics()) == 1
