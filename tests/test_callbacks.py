"""Callbacks: hook order, stopping, early stopping, checkpoints, learning-rate control, loggers."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from lstmrs import callbacks as C
from lstmrs import optim
from lstmrs.models import Model


def data(n=30, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 2)).astype(np.float32)
    return x, x[:, :, :1].sum(1).astype(np.float32)


def model(lr=1e-2, optimizer="adam", **kw):
    m = Model(input_size=2, hidden_size=6, output_size=1, seed=0, **kw)
    m.compile(optimizer, lr=lr)
    return m


class Recorder(C.Callback):
    def __init__(self, stop_at=None):
        super().__init__()
        self.events, self.stop_at = [], stop_at

    def on_train_begin(self, logs=None):
        self.events.append(("train_begin", self.params["steps"], self.params["epochs"]))

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("epoch_begin", epoch))

    def on_batch_end(self, batch, logs=None):
        self.events.append(("batch_end", batch, sorted(logs)))
        if self.stop_at == batch:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("epoch_end", epoch, sorted(logs)))

    def on_train_end(self, logs=None):
        self.events.append(("train_end",))


def test_hook_order_and_logs():
    x, y = data()
    rec = Recorder()
    model().fit(
        x, y, epochs=2, batch_size=10, callbacks=[rec], verbose=0, seed=0, validation_split=0.2
    )
    kinds = [e[0] for e in rec.events]
    assert kinds == (
        ["train_begin"] + (["epoch_begin"] + ["batch_end"] * 3 + ["epoch_end"]) * 2 + ["train_end"]
    )
    assert rec.events[0] == ("train_begin", 3, 2)
    assert rec.events[2][1:] == (0, ["batch_loss", "grad_norm", "loss", "lr", "size"])
    assert rec.events[5][2] == ["loss", "lr", "seconds", "val_loss"]


def test_stop_training_from_a_batch():
    x, y = data()
    rec = Recorder(stop_at=1)
    m = model()
    h = m.fit(x, y, epochs=5, batch_size=10, callbacks=[rec], verbose=0, seed=0)
    assert m.optimizer_steps == 2 and h.epoch == [0]


def test_early_stopping_on_a_plateau():
    # lr = 0: the loss never changes, so after the first epoch nothing improves. Shuffling
    # regroups the same examples into other batches, so the epoch mean can move in the last bits:
    # min_delta says that is not an improvement.
    x, y = data()
    m = model(lr=0.0, optimizer="sgd")
    es = C.EarlyStopping(monitor="loss", patience=2, min_delta=1e-9)
    h = m.fit(x, y, epochs=20, batch_size=10, callbacks=[es], verbose=0, seed=0)
    assert h.epoch == [0, 1, 2] and es.stopped_epoch == 2 and es.best_epoch == 0


def test_early_stopping_restores_best_weights():
    m = model()
    es = C.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    es.set_model(m)
    es.on_train_begin()
    best = m.get_weights()
    es.on_epoch_end(0, {"val_loss": 1.0})
    m.set_weights(best + 1.0)
    es.on_epoch_end(1, {"val_loss": 2.0})
    assert m.stop_training and es.stopped_epoch == 1
    np.testing.assert_array_equal(m.get_weights(), best)
    # min_delta: an improvement smaller than it does not count.
    es2 = C.EarlyStopping(monitor="val_acc", min_delta=0.1, patience=1)
    assert es2.mode == "max"
    es2.set_model(m)
    es2.on_epoch_end(0, {"val_acc": 0.5})
    es2.on_epoch_end(1, {"val_acc": 0.55})
    assert es2.stopped_epoch == 1
    with pytest.warns(RuntimeWarning, match="not in the logs"):
        es2.on_epoch_end(2, {"loss": 1.0})


def test_model_checkpoint_saves_the_best(tmp_path):
    x, y = data(40)
    m = model(lr=5e-2)
    ck = C.ModelCheckpoint(tmp_path / "ckpt-{epoch:02d}", monitor="val_loss", save_best_only=True)
    h = m.fit(
        x, y, epochs=6, batch_size=8, validation_split=0.25, callbacks=[ck], verbose=0, seed=0
    )
    vals = h.history["val_loss"]
    improving = [e + 1 for e in range(6) if vals[e] < min(vals[:e], default=math.inf)]
    assert [int(p[-2:]) for p in ck.saved] == improving
    from lstmrs.checkpoint import load

    best = load(ck.saved[-1])
    assert best.evaluate(x[30:], y[30:])["loss"] == pytest.approx(min(vals), rel=1e-6)


def test_learning_rate_scheduler_equals_compiled_schedule():
    x, y = data()
    a = model(lr=0.1, optimizer="sgd")
    ha = a.fit(
        x,
        y,
        epochs=4,
        batch_size=10,
        verbose=0,
        seed=0,
        callbacks=[C.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5**epoch)],
    )
    b = model(lr=0.1, optimizer="sgd")
    b.compile("sgd", lr=0.1, schedule=optim.ExponentialLR(0.5))
    hb = b.fit(x, y, epochs=4, batch_size=10, verbose=0, seed=0)
    assert ha.history["lr"] == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    assert ha.history["lr"] == hb.history["lr"]
    assert ha.history["loss"] == hb.history["loss"]
    c = model(lr=0.1, optimizer="sgd")
    hc = c.fit(
        x,
        y,
        epochs=3,
        batch_size=10,
        verbose=0,
        seed=0,
        callbacks=[C.LearningRateScheduler(optim.StepLR(2, gamma=0.1))],
    )
    assert hc.history["lr"] == pytest.approx([0.1, 0.1, 0.01])


def test_reduce_lr_on_plateau_callback():
    x, y = data()
    m = model(lr=1e-6, optimizer="sgd")  # the loss barely moves: a plateau
    cb = C.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1)
    h = m.fit(x, y, epochs=6, batch_size=10, callbacks=[cb], verbose=0, seed=0)
    assert h.history["lr"] == pytest.approx([1e-6, 1e-6, 1e-6, 5e-7, 5e-7, 2.5e-7], rel=1e-12)
    # Like torch, a reduction smaller than eps (1e-8) is skipped.
    m = model(lr=1e-9, optimizer="sgd")
    cb = C.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1)
    h = m.fit(x, y, epochs=4, batch_size=10, callbacks=[cb], verbose=0, seed=0)
    assert h.history["lr"] == [1e-9] * 4


def test_csv_and_jsonl_loggers(tmp_path):
    x, y = data()
    m = model()
    h = m.fit(
        x,
        y,
        epochs=3,
        batch_size=10,
        validation_split=0.2,
        verbose=0,
        seed=0,
        callbacks=[C.CSVLogger(tmp_path / "log.csv"), C.JSONLLogger(tmp_path / "log.jsonl")],
    )
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [float(r["loss"]) for r in rows] == h.history["loss"]
    assert [float(r["val_loss"]) for r in rows] == h.history["val_loss"]
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records] == h.history["loss"]
    assert set(records[0]) == {"epoch", "loss", "val_loss", "lr", "seconds"}
    # A new run overwrites; append=True continues the file.
    m.fit(
        x,
        y,
        epochs=1,
        batch_size=10,
        verbose=0,
        seed=0,
        callbacks=[C.CSVLogger(tmp_path / "log.csv", append=True)],
    )
    with open(tmp_path / "log.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_history_aligns_late_keys():
    h = C.History()
    h.on_epoch_end(0, {"loss": 1.0})
    h.on_epoch_end(1, {"loss": 0.5, "val_loss": 0.7})
    h.on_epoch_end(2, {"val_loss": 0.6})
    assert h.history["loss"][:2] == [1.0, 0.5] and math.isnan(h.history["loss"][2])
    assert math.isnan(h.history["val_loss"][0]) and h.history["val_loss"][1:] == [0.7, 0.6]


def test_lambda_callback_and_bad_callbacks():
    x, y = data()
    ends = []
    model().fit(
        x,
        y,
        epochs=2,
        batch_size=15,
        verbose=0,
        callbacks=[C.LambdaCallback(on_epoch_end=lambda e, logs: ends.append(e))],
    )
    assert ends == [0, 1]
    with pytest.raises(Exception, match="unknown hook"):
        C.LambdaCallback(on_step=lambda: None)
    with pytest.raises(Exception, match="Callback"):
        model().fit(x, y, epochs=1, verbose=0, callbacks=[object()])
