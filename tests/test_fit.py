"""Model.fit / fit_stream: batching, determinism, validation, variable lengths, truncated BPTT,
schedules, progress output, errors, and learning the adding problem."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from lstmrs import datasets, optim
from lstmrs.callbacks import LambdaCallback
from lstmrs.errors import InvalidArgumentError, NonFiniteError, ShapeError
from lstmrs.models import Model


def regression_data(n=40, t=8, f=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, f)).astype(np.float32)
    y = x[:, :, :1].mean(axis=1) + 0.5 * x[:, -1, 1:2]
    return x, y.astype(np.float32)


def model(**kw):
    args = {"input_size": 3, "hidden_size": 8, "output_size": 1, "seed": 0}
    args.update(kw)
    m = Model(**args)
    m.compile("adam", lr=1e-2)
    return m


def test_history_and_one_train_step_per_batch():
    x, y = regression_data()
    m = model()
    m.compile("adam", lr=1e-2, metrics=["mae", "rmse"])
    h = m.fit(x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0, seed=0)
    assert h is m.history and h.epoch == [0, 1, 2]
    for key in ("loss", "mae", "rmse", "val_loss", "val_mae", "val_rmse", "lr", "seconds"):
        assert len(h.history[key]) == 3, key
    # 30 training sequences in batches of 16: 2 optimizer steps per epoch.
    assert m.optimizer_steps == 6
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert h.history["lr"] == [1e-2] * 3
    # The validation split is the last quarter, scored with the final weights.
    ev = m.evaluate(x[30:], y[30:], metrics=["mae"])
    assert ev["loss"] == pytest.approx(h.history["val_loss"][-1], rel=1e-6)
    assert ev["mae"] == pytest.approx(h.history["val_mae"][-1], rel=1e-6)


def test_same_seed_same_run_and_different_seed_differs():
    x, y = regression_data()
    runs = []
    for seed in (3, 3, 4):
        m = model(dropout=0.3, num_layers=2)
        h = m.fit(x, y, epochs=2, batch_size=8, verbose=0, seed=seed)
        runs.append((h.history["loss"], m.get_weights()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][0] != runs[2][0]


def test_epoch_loss_is_the_mean_over_samples():
    """With lr=0 the weights stay put: the epoch loss equals evaluate on the whole set, even
    with an uneven last batch."""
    x, y = regression_data(n=37)
    m = model()
    m.compile("sgd", lr=0.0)
    h = m.fit(x, y, epochs=1, batch_size=10, verbose=0, seed=0)
    assert h.history["loss"][0] == pytest.approx(m.evaluate(x, y)["loss"], rel=1e-6)


def test_validation_data_and_metrics_for_classification():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 6, 3)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int64)
    m = model(loss="cross_entropy", output_size=2)
    m.compile("adam", lr=2e-2, metrics=["accuracy", "f1"])
    h = m.fit(
        x[:45], y[:45], validation_data=(x[45:], y[45:]), epochs=4, batch_size=15, verbose=0, seed=0
    )
    ev = m.evaluate(x[45:], y[45:], metrics=["accuracy", "f1", "confusion_matrix"])
    assert ev["accuracy"] == pytest.approx(h.history["val_accuracy"][-1])
    assert ev["f1"] == pytest.approx(h.history["val_f1"][-1])
    assert ev["confusion_matrix"].sum() == 15
    pred = m.predict(x[45:], output="labels")
    assert ev["accuracy"] == pytest.approx(np.mean(pred == y[45:]))
    assert h.history["accuracy"][-1] > 0.6


def test_variable_length_list_equals_padded_with_lengths():
    rng = np.random.default_rng(2)
    lens = rng.integers(2, 9, size=24)
    seqs = [rng.normal(size=(t, 3)).astype(np.float32) for t in lens]
    y = np.array([s[:, 0].sum() for s in seqs], dtype=np.float32)
    padded = np.zeros((24, 8, 3), dtype=np.float32)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    a, b = model(pooling="mean"), model(pooling="mean")
    ha = a.fit(seqs, y, epochs=2, batch_size=5, verbose=0, seed=1)
    hb = b.fit(padded, y, lengths=lens, epochs=2, batch_size=5, verbose=0, seed=1)
    assert ha.history["loss"] == hb.history["loss"]
    np.testing.assert_array_equal(a.get_weights(), b.get_weights())


def test_per_step_targets_as_lists():
    rng = np.random.default_rng(3)
    lens = [4, 2, 6]
    seqs = [rng.normal(size=(t, 3)).astype(np.float32) for t in lens]
    ys = [rng.integers(0, 3, size=t) for t in lens]
    m = model(pooling="per_step", loss="cross_entropy", output_size=3)
    m.compile("sgd", lr=0.0, metrics=["accuracy"])  # weights stay: training scores = predict's
    h = m.fit(seqs, ys, epochs=1, batch_size=2, verbose=0, seed=0)
    labels = m.predict(seqs, output="labels")
    hits = [np.sum(labels[i, : len(t)] == t) for i, t in enumerate(ys)]
    # Padded steps are not scored: accuracy over the 12 real steps only.
    assert h.history["accuracy"][0] == pytest.approx(sum(hits) / 12)
    assert h.history["loss"][0] == pytest.approx(m.evaluate(seqs, ys)["loss"], rel=1e-6)


def test_schedules_drive_the_learning_rate():
    x, y = regression_data()
    m = model()
    m.compile("sgd", lr=0.1, schedule=optim.StepLR(2, gamma=0.5))
    h = m.fit(x, y, epochs=5, batch_size=20, verbose=0, seed=0)
    assert h.history["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    seen = []
    m.compile("sgd", lr=0.1, schedule=optim.CosineWarmup(6, warmup_steps=2))
    m.fit(
        x,
        y,
        epochs=3,
        batch_size=20,
        verbose=0,
        seed=0,
        callbacks=[LambdaCallback(on_batch_end=lambda b, logs: seen.append(logs["lr"]))],
    )
    sched = optim.CosineWarmup(6, warmup_steps=2)
    assert seen == pytest.approx([sched.lr_at(k, 0.1) for k in range(6)])


def test_tbptt_equals_manual_chunked_steps():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 10, 3)).astype(np.float32)
    y = rng.normal(size=(6, 10, 1)).astype(np.float32)
    a = model(pooling="per_step", cell="gru", num_layers=2)
    h = a.fit(x, y, epochs=1, batch_size=3, shuffle=False, tbptt=4, verbose=0, seed=0)
    assert a.optimizer_steps == 2 * 3  # two batches, chunks of 4 + 4 + 2 steps
    b = model(pooling="per_step", cell="gru", num_layers=2)
    losses = []
    seeds = np.random.default_rng(0).integers(0, np.iinfo(np.int64).max, size=6, dtype=np.int64)
    k = 0
    for rows in (slice(0, 3), slice(3, 6)):
        state = None
        for t0 in (0, 4, 8):
            xs = np.ascontiguousarray(x[rows, t0 : t0 + 4])
            ys = np.ascontiguousarray(y[rows, t0 : t0 + 4])
            loss, _, _, h_n, _ = b.core.train_step(
                xs, ys, b._loss_spec, b._opt_core, 1e-2, int(seeds[k]), h0=state
            )
            state, k = h_n, k + 1
            losses.append((loss, xs.shape[1]))
    np.testing.assert_array_equal(a.get_weights(), b.get_weights())
    mean = sum(v * n for v, n in losses) / sum(n for _, n in losses)
    assert h.history["loss"][0] == pytest.approx(mean, rel=1e-12)


def test_fit_stream_learns_a_periodic_language():
    pattern = np.array([0, 1, 2, 3, 2, 1], dtype=np.int64)
    stream = np.tile(pattern, 200)
    m = Model(
        vocab_size=4,
        embedding_dim=4,
        hidden_size=16,
        pooling="per_step",
        loss="cross_entropy",
        output_size=4,
        seed=0,
    )
    m.compile("adam", lr=3e-2, metrics=["perplexity", "bpc", "accuracy"])
    h = m.fit_stream(
        stream,
        seq_len=12,
        batch_size=8,
        epochs=8,
        verbose=0,
        seed=0,
        validation_stream=stream[:300],
    )
    # 0,1,2,3,2,1: after "2" the next token depends on the past; with state carried over chunk
    # borders it is fully predictable.
    assert h.history["val_accuracy"][-1] > 0.95
    assert h.history["val_perplexity"][-1] == pytest.approx(np.exp(h.history["val_loss"][-1]))
    assert h.history["val_bpc"][-1] == pytest.approx(h.history["val_loss"][-1] / np.log(2))
    ev = m.evaluate_stream(stream[:300], batch_size=8, seq_len=12)
    assert ev["loss"] == pytest.approx(h.history["val_loss"][-1], rel=1e-9)
    # 1199 (input, next) pairs in 8 sub-streams of 149 steps, chunks of 12: 13 steps per epoch.
    assert m.optimizer_steps == 8 * 13


def test_errors():
    x, y = regression_data()
    m = model()
    with pytest.raises(ShapeError):
        m.fit(x, y[:-1], verbose=0)
    with pytest.raises(ShapeError):
        m.fit(x[:, :, :2], y, verbose=0)
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        m.fit(bad, y, verbose=0)
    with pytest.raises(InvalidArgumentError):
        m.fit(x, y, tbptt=4, verbose=0)  # last pooling
    with pytest.raises(InvalidArgumentError):
        m.fit(x, y, validation_split=1.5, verbose=0)
    with pytest.raises(InvalidArgumentError):
        m.fit(x, y, batch_size=0, verbose=0)
    with pytest.raises(InvalidArgumentError):
        m.fit(x, y, verbose=3)
    m.compile("adam", schedule=optim.ReduceLROnPlateau())  # monitors val_loss
    with pytest.raises(InvalidArgumentError):
        m.fit(x, y, verbose=0)


def test_diverging_training_raises_non_finite():
    x, y = regression_data()
    m = model(head_hidden=(8,), activation="relu")
    m.compile("sgd", lr=1e12)
    with pytest.raises(NonFiniteError, match="loss"):
        m.fit(x, y * 1e3, epochs=30, batch_size=8, verbose=0, seed=0)


def test_verbose_modes(capsys):
    x, y = regression_data()
    m = model()
    m.fit(x, y, epochs=2, batch_size=20, verbose=0, seed=0)
    assert capsys.readouterr().out == ""
    m.fit(x, y, epochs=2, batch_size=20, verbose=2, seed=0, validation_split=0.2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("Epoch 2/2") and "val_loss" in lines[1]
    m.fit(x, y, epochs=2, batch_size=20, verbose=1, seed=0)
    err = capsys.readouterr().err
    assert "Epoch 1/2" in err and "Epoch 2/2" in err and "seq/s" in err


def test_rich_is_not_imported_by_the_package():
    code = (
        "import sys, lstmrs, lstmrs.models, lstmrs.training, lstmrs.callbacks, lstmrs.progress;"
        "print('rich' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_adding_problem_is_learned():
    """T = 30: predicting the mean scores ~0.167; the trained model must go below 0.05 within
    20 epochs of 40 steps (seeds 0-4 all get there by epoch 10)."""
    x, y = datasets.adding_problem(2560, 30, seed=0)
    xv, yv = datasets.adding_problem(512, 30, seed=1)
    m = Model(input_size=2, hidden_size=32, output_size=1, loss="mse", seed=0)
    m.compile("adam", lr=1e-2, clip_norm=1.0)

    def stop_when_solved(epoch, logs):
        m.stop_training = logs["val_loss"] < 0.01

    start = time.perf_counter()
    h = m.fit(
        x,
        y,
        epochs=20,
        batch_size=64,
        validation_data=(xv, yv),
        verbose=0,
        seed=0,
        callbacks=[LambdaCallback(on_epoch_end=stop_when_solved)],
    )
    elapsed = time.perf_counter() - start
    assert h.history["val_loss"][0] > 0.1  # it starts out as bad as predicting the mean
    assert min(h.history["val_loss"]) < 0.05, h.history["val_loss"]
    assert m.optimizer_steps <= 20 * 40
    assert m.evaluate(xv, yv)["loss"] == pytest.approx(h.history["val_loss"][-1], rel=1e-6)
    assert elapsed < 20


def test_datasets_are_reproducible():
    a = datasets.adding_problem(5, 10, seed=3)
    b = datasets.adding_problem(5, 10, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    x, y = a
    assert x.shape == (5, 10, 2) and y.shape == (5, 1)
    assert np.all(x[:, :, 1].sum(1) == 2)
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * x[:, :, 1]).sum(1), rtol=1e-6)
    assert np.all(x[:, :5, 1].sum(1) == 1)  # one marker in each half
    tok, tgt = datasets.copy_task(4, length=3, delay=2, num_symbols=5, seed=0)
    assert tok.shape == tgt.shape == (4, 9)
    np.testing.assert_array_equal(tgt[:, -3:], tok[:, :3])
    assert np.all(tok[:, 5] == 6) and np.all(tgt[:, :-3] == 0)
    _, masked = datasets.copy_task(4, length=3, delay=2, num_symbols=5, mask_prefix=True)
    assert np.all(masked[:, :-3] == -100)
