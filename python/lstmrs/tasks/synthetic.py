"""The synthetic long-range memory benchmarks: the adding problem and the copy task.

Both are generated from the run's seed (:mod:`lstmrs.datasets`), need no files, and take the
sequence length as a parameter, which is what makes them hard: the model must carry information
across ``seq_len`` (adding) or ``delay + length`` (copy) steps.

- ``adding`` (Hochreiter & Schmidhuber, 1997): the target is the sum of the two marked values.
  Predicting the mean scores an MSE of about 0.167; below 0.01 the task is solved.
- ``copy`` (Arjovsky et al., 2016): repeat ``length`` symbols after ``delay`` blanks and a
  delimiter. The memoryless strategy (blanks, then guesses) scores a cross-entropy of
  ``length * log(num_symbols) / S`` with ``S = 2 * length + delay + 1``.
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar

import numpy as np

from .. import config as C
from .. import plots
from ..datasets import adding_problem, copy_task, load_arrays
from ..models import Model
from .base import Prepared, Task, model_kwargs

__all__ = ["AddingTask", "CopyTask"]


def _npz_input(path: str, tokens: bool) -> np.ndarray:
    """``X`` from an ``.npz`` (key ``X`` or ``x``) or ``.npy`` file."""
    z = load_arrays(path, "--input")
    for k in ("X", "x"):
        if k in z:
            return z[k]
    raise C.ConfigError(f"--input: {path!r} has no array named 'X'")


def _write_array(path: str, a: np.ndarray) -> None:
    if path.endswith(".npy"):
        np.save(path, a)
    elif path.endswith(".npz"):
        np.savez(path, y=a)
    else:
        np.savetxt(path, a.reshape(a.shape[0], -1), delimiter=",", fmt="%.7g")


class AddingTask(Task):
    name = "adding"
    description = (
        "Adding problem (Hochreiter & Schmidhuber 1997): sum the two marked values of a "
        "sequence of length data.seq_len; MSE 0.167 = no memory, < 0.01 = solved"
    )
    task_defaults: ClassVar[dict[str, Any]] = {
        "data": {"seq_len": 50, "n_train": 6400, "n_val": 1000, "n_test": 1000},
        "model": {"hidden_size": 32},
        "train": {
            "lr": 0.01,
            "epochs": 100,
            "batch_size": 64,
            "target_val_loss": 0.002,
        },
    }
    task_rules: ClassVar[dict[str, C.Rule]] = {
        "data.seq_len": C.Int(lo=2),
        "data.n_train": C.Int(lo=1),
        "data.n_val": C.Int(lo=1),
        "data.n_test": C.Int(lo=1),
    }

    def prepare(self, config, state=None, whole=False):
        d, seed = config["data"], config["seed"]
        t = d["seq_len"]
        # Three seeds derived from the run's seed keep the splits disjoint draws.
        train = adding_problem(d["n_train"], t, seed=seed * 3 + 1)
        val = adding_problem(d["n_val"], t, seed=seed * 3 + 2)
        test = adding_problem(d["n_test"], t, seed=seed * 3 + 3)
        info = [
            (
                f"data: adding problem, T={t}; {d['n_train']} train / {d['n_val']} validation / "
                f"{d['n_test']} test sequences (predicting the mean: MSE ~0.167)"
            )
        ]
        return Prepared(train=train, val=val, test=test, info=info)

    def build_model(self, config, data):
        return Model(input_size=2, output_size=1, loss="mse", **model_kwargs(config))

    def evaluate(self, model, data, config):
        x, y = data.test
        pred = model.predict(x, batch_size=512)
        train_mean = float(np.mean(data.train[1]))
        return {
            "test_mse": float(np.mean((pred - y) ** 2)),
            "test_mae": float(np.mean(np.abs(pred - y))),
            "baseline_mse": float(np.mean((train_mean - y) ** 2)),
            "seq_len": int(x.shape[1]),
            "_pred": pred,
        }

    def format_summary(self, s):
        verdict = "solved" if s["test_mse"] < 0.01 else "not solved (< 0.01 counts as solved)"
        return (
            f"test MSE {s['test_mse']:.5f}  (MAE {s['test_mae']:.4f}; predicting the mean: "
            f"{s['baseline_mse']:.4f}) at T={s['seq_len']}: {verdict}"
        )

    def plot(self, model, data, summary, config, out_dir, records):
        p = plots.scatter_plot(
            data.test[1],
            summary["_pred"],
            os.path.join(out_dir, "predictions.png"),
            f"Adding problem, T={summary['seq_len']}: test MSE {summary['test_mse']:.4g}",
            xlabel="target (sum of the marked values)",
        )
        return [p] if p else []

    def predict_file(self, model, config, state, input_path, output_path):
        x = _npz_input(input_path, tokens=False)
        pred = model.predict(x, batch_size=512)
        _write_array(output_path, pred)
        return f"{pred.shape[0]} predictions"


class CopyTask(Task):
    name = "copy"
    description = (
        "Copy task (Arjovsky et al. 2016): repeat data.length symbols after data.delay blanks "
        "and a delimiter; reports recall accuracy against the memoryless baseline"
    )
    task_defaults: ClassVar[dict[str, Any]] = {
        "data": {
            "length": 10,
            "delay": 20,
            "num_symbols": 8,
            "mask_prefix": False,
            "n_train": 6400,
            "n_val": 500,
            "n_test": 1000,
        },
        "model": {"hidden_size": 128},
        "train": {"lr": 0.01, "epochs": 30, "batch_size": 64, "target_val_loss": 0.0},
    }
    task_rules: ClassVar[dict[str, C.Rule]] = {
        "data.length": C.Int(lo=1),
        "data.delay": C.Int(lo=0),
        "data.num_symbols": C.Int(lo=1),
        "data.n_train": C.Int(lo=1),
        "data.n_val": C.Int(lo=1),
        "data.n_test": C.Int(lo=1),
    }
    metrics = ("accuracy",)

    def prepare(self, config, state=None, whole=False):
        d, seed = config["data"], config["seed"]
        kw = {
            "length": d["length"],
            "delay": d["delay"],
            "num_symbols": d["num_symbols"],
            "mask_prefix": d["mask_prefix"],
        }
        train = copy_task(d["n_train"], seed=seed * 3 + 1, **kw)
        val = copy_task(d["n_val"], seed=seed * 3 + 2, **kw)
        test = copy_task(d["n_test"], seed=seed * 3 + 3, **kw)
        total = 2 * d["length"] + d["delay"] + 1
        info = [
            (
                f"data: copy task, {d['length']} symbols of {d['num_symbols']} after {d['delay']} "
                f"blanks (sequences of {total} steps); {d['n_train']} train / {d['n_val']} "
                f"validation / {d['n_test']} test"
            )
        ]
        return Prepared(train=train, val=val, test=test, info=info)

    def build_model(self, config, data):
        vocab = config["data"]["num_symbols"] + 2
        return Model(
            vocab_size=vocab,
            embedding_dim=vocab,
            output_size=vocab,
            pooling="per_step",
            loss="cross_entropy",
            **model_kwargs(config),
        )

    def evaluate(self, model, data, config):
        d = config["data"]
        x, y = data.test
        logits = model.predict(x, batch_size=512)
        res = model.evaluate(x, y, batch_size=512, metrics=[])
        length = d["length"]
        pred = logits[:, -length:].argmax(axis=-1)
        want = y[:, -length:]
        per_pos = (pred == want).mean(axis=0)
        total = 2 * length + d["delay"] + 1
        # Memoryless: certain blanks, then uniform guesses; masked, only the guesses count.
        scored = length if d["mask_prefix"] else total
        return {
            "test_loss": float(res["loss"]),
            "baseline_loss": length * math.log(d["num_symbols"]) / scored,
            "recall_accuracy": float((pred == want).mean()),
            "sequence_accuracy": float((pred == want).all(axis=1).mean()),
            "chance_accuracy": 1.0 / d["num_symbols"],
            "recall_accuracy_per_position": per_pos.tolist(),
        }

    def format_summary(self, s):
        return (
            f"test loss {s['test_loss']:.4f} (memoryless baseline {s['baseline_loss']:.4f}); "
            f"recall accuracy {s['recall_accuracy']:.4f} (chance {s['chance_accuracy']:.3f}), "
            f"whole sequences right {s['sequence_accuracy']:.4f}"
        )

    def plot(self, model, data, summary, config, out_dir, records):
        per = summary["recall_accuracy_per_position"]
        p = plots.bar_plot(
            [str(i + 1) for i in range(len(per))],
            per,
            os.path.join(out_dir, "recall_accuracy.png"),
            f"Copy task: accuracy per recalled symbol (delay {config['data']['delay']})",
            "accuracy",
            ref=(summary["chance_accuracy"], "chance"),
        )
        return [p] if p else []

    def predict_file(self, model, config, state, input_path, output_path):
        x = _npz_input(input_path, tokens=True)
        labels = model.predict(x, batch_size=512, output="labels")
        _write_array(output_path, labels)
        return f"{labels.shape[0]} sequences of predicted symbols"
