"""Numeric sequence classification: the .ts reader, the preprocessing fitted on training data,
the 1-NN DTW baseline, fold ensembles and the classify task on UCR-style data end to end."""

from __future__ import annotations

import json
import os

import lstmrs
import numpy as np
import pytest
from lstmrs import DataFileError
from lstmrs.cli import main, resolve_config
from lstmrs.ensemble import Ensemble, is_ensemble
from lstmrs.tasks import BUILTIN_TASKS
from lstmrs.tasks.baselines import dtw_1nn
from lstmrs.tasks.classify import _fold_masks
from lstmrs.tasks.series_prep import SeriesPrep
from lstmrs.ts_format import find_split_pair, read_ts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UCR = os.path.join(ROOT, "..", "shared", "data", "ucr")
needs_ucr = pytest.mark.skipif(not os.path.isdir(UCR), reason="../shared/data/ucr is absent")

HEADER = """# a comment
@problemName Toy
@timeStamps false
@univariate {uni}
@equalLength false
@classLabel true up down
@data
"""


def write_ts(path, cases, univariate=True):
    lines = [HEADER.format(uni=str(univariate).lower())]
    for dims, label in cases:
        lines.append(":".join(",".join(v for v in d) for d in dims) + f":{label}\n")
    path.write_text("".join(lines))
    return str(path)


# --------------------------------------------------------------------------------------------
# The .ts reader


def test_ts_reader_cuts_padding_fills_gaps_and_keeps_string_labels(tmp_path):
    p = write_ts(
        tmp_path / "x_TRAIN.ts",
        [
            ([["1", "2", "?", "4", "NaN", "NaN"]], "up"),
            ([["3", "2", "1"]], "down"),
        ],
    )
    ts = read_ts(p)
    assert ts.name == "Toy" and ts.labels == ["up", "down"] and ts.class_labels == ["up", "down"]
    assert ts.series[0][:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]  # "?" interpolated, NaNs cut
    assert ts.series[1].shape == (3, 1) and ts.filled == 1


def test_ts_reader_multivariate(tmp_path):
    p = write_ts(
        tmp_path / "m.ts",
        [([["1", "2", "3"], ["4", "5", "6"]], "up"), ([["0", "0"], ["1", "1"]], "down")],
        univariate=False,
    )
    ts = read_ts(p)
    assert ts.dims == 2
    assert ts.series[0].tolist() == [[1, 4], [2, 5], [3, 6]]


@pytest.mark.parametrize(
    "body, message",
    [
        ("1,2,x:up\n", "line 8 dimension 1: expected a number"),
        ("1,2,3:left\n", "class label 'left' is not among"),
        ("1,2:up\n1,2:3,4:down\n", "2 dimensions, but the first case has 1"),
        ("", "no cases after @data"),
    ],
)
def test_ts_reader_errors_name_the_line(tmp_path, body, message):
    p = tmp_path / "bad.ts"
    p.write_text(HEADER.format(uni="true") + body)
    with pytest.raises(DataFileError, match=message) as e:
        read_ts(p)
    assert isinstance(e.value, ValueError) and isinstance(e.value, lstmrs.LstmrsError)


def test_ts_reader_rejects_files_that_are_not_ts(tmp_path):
    p = tmp_path / "a.ts"
    p.write_text("hello\n")
    with pytest.raises(DataFileError, match="a.ts line 1: expected a @header line"):
        read_ts(p)
    with pytest.raises(DataFileError, match="cannot read it"):
        read_ts(tmp_path / "missing.ts")


def test_split_pair_is_found_by_name(tmp_path):
    train = write_ts(tmp_path / "Toy_TRAIN.ts", [([["1"]], "up")])
    assert find_split_pair(train) is None
    test = write_ts(tmp_path / "Toy_TEST.ts", [([["1"]], "up")])
    assert find_split_pair(train) == test
    assert find_split_pair(test) is None


# --------------------------------------------------------------------------------------------
# 1-NN DTW


def _dtw_numpy(a, b, w):
    """The textbook recurrence over a full matrix, equal lengths, absolute window ``w``."""
    n = len(a)
    d = np.full((n + 1, n + 1), np.inf)
    d[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(max(1, i - w), min(n, i + w) + 1):
            d[i, j] = (a[i - 1] - b[j - 1]) ** 2 + min(d[i - 1, j], d[i, j - 1], d[i - 1, j - 1])
    return d[n, n]


def test_dtw_1nn_agrees_with_a_numpy_search():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.standard_normal((24, 30)), axis=1)
    y = np.arange(24) % 3
    xq = np.cumsum(rng.standard_normal((6, 30)), axis=1)
    pred, window, loo = dtw_1nn(x, y, xq, windows=(0.1,))
    w = round(0.1 * 30)
    want = [y[np.argmin([_dtw_numpy(q, r, w) for r in x])] for q in xq]
    assert window == 0.1 and pred.tolist() == want
    hits = [
        y[min((j for j in range(24) if j != i), key=lambda j: _dtw_numpy(x[i], x[j], w))] == y[i]
        for i in range(24)
    ]
    assert loo == pytest.approx(np.mean(hits))


@needs_ucr
def test_dtw_on_a_ucr_data_set_matches_the_archive():
    # The archive reports 1-NN DTW accuracies of 0.66-0.70 for PickupGestureWiimoteZ.
    tr = read_ts(os.path.join(UCR, "PickupGestureWiimoteZ_TRAIN.ts"))
    te = read_ts(os.path.join(UCR, "PickupGestureWiimoteZ_TEST.ts"))
    from lstmrs.tasks.classify import _pad

    (xtr, ltr), (xte, lte) = _pad(tr.series, None), _pad(te.series, None)
    classes = sorted(set(tr.labels))
    ytr = np.array([classes.index(v) for v in tr.labels])
    yte = np.array([classes.index(v) for v in te.labels])
    pred, window, _ = dtw_1nn(xtr, ytr, xte, ltr, lte)
    assert 0.0 < window <= 0.2
    assert 0.62 <= np.mean(pred == yte) <= 0.8


def test_dtw_bad_input_is_typed():
    x = np.zeros((3, 4))
    with pytest.raises(lstmrs.InvalidArgumentError, match="every length in 1..=4"):
        dtw_1nn(x, np.arange(3), x, np.array([4, 5, 4]), None)
    with pytest.raises(lstmrs.InvalidArgumentError, match="window"):
        dtw_1nn(x, np.arange(3), x, windows=(2.0,))


# --------------------------------------------------------------------------------------------
# Preprocessing and folds


def test_series_prep_is_fitted_on_the_training_split_only():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 50, 2)) * 3 + 5
    lens = np.full(10, 50)
    y = np.arange(10) % 2
    prep = SeriesPrep.fit(x[:6], lens[:6], y[:6], normalize="global", max_steps=20)
    assert prep.patch == 3
    assert np.allclose(prep.mean, x[:6].reshape(-1, 2).mean(axis=0))
    z, zl = prep.transform(x, lens)
    assert z.shape == (10, 17, 6) and z.dtype == np.float32 and (zl == 17).all()
    # Window k holds steps 3k..3k+2 of both features, step-major.
    assert np.allclose(z[0, 1, :2], (x[0, 3] - prep.mean) / prep.std)
    assert np.allclose(z[:, -1, 4:], 0.0)  # padding past step 50 is the training mean
    again = SeriesPrep.from_state(json.loads(json.dumps(prep.state())))
    assert np.array_equal(again.transform(x, lens)[0], z)


def test_series_normalisation_keeps_level_channels_and_constant_series():
    x = np.stack([np.linspace(0, 1, 8), np.full(8, 7.0)])[:, :, None]
    lens = np.array([8, 5])
    prep = SeriesPrep.fit(x, lens, np.array([0, 1]), normalize="series", max_steps=100)
    z, _ = prep.transform(x, lens)
    assert z.shape == (2, 8, 3) and np.isfinite(z).all()
    assert np.allclose(z[1, :5, 0], z[1, 0, 0])  # a constant series stays constant
    with pytest.raises(lstmrs.ShapeError, match="expected 1 features per step"):
        prep.transform(np.zeros((1, 8, 2)), np.array([8]))


def test_auto_normalisation_picks_what_separates_the_classes():
    # The classes differ only in shape; levels are random and large: z-normalising wins.
    rng = np.random.default_rng(2)
    t = np.linspace(0, 1, 40)
    x = np.stack([(np.sin(6 * t) if i % 2 else t) + rng.uniform(-50, 50) for i in range(30)])[
        :, :, None
    ]
    prep = SeriesPrep.fit(x, np.full(30, 40), np.arange(30) % 2, normalize="auto")
    assert prep.normalize == "series" and prep.loo["series"] > prep.loo["global"]


def test_fold_masks_are_stratified_and_never_miss_a_class():
    y = np.repeat(np.arange(4), 5)
    masks = _fold_masks(y, 10, seed=0)
    assert len(masks) == 10
    for m in masks:
        assert sorted(np.bincount(y[m], minlength=4)) == [1, 1, 1, 1]
    # Each group of 5 folds covers every item exactly once.
    assert (np.sum(masks[:5], axis=0) == 1).all() and (np.sum(masks[5:], axis=0) == 1).all()


# --------------------------------------------------------------------------------------------
# Ensembles


def _toy(n=40, t=12, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.standard_normal((n, t, 1)).astype(np.float32) * 0.3
    x[y == 1] += np.linspace(0, 1, t, dtype=np.float32)[None, :, None]
    return x, y


def _members(k):
    ms = [
        lstmrs.Model(input_size=1, hidden_size=8, output_size=2, loss="cross_entropy", seed=s)
        for s in range(k)
    ]
    return Ensemble(ms)


def test_ensemble_averages_probabilities_and_round_trips(tmp_path):
    x, y = _toy()
    ens = _members(3)
    ens.compile("adam", lr=0.01)
    masks = _fold_masks(y, 3, seed=0)
    ens.fit(x, y, masks=masks, epochs=3, batch_size=8, verbose=0, seed=0)
    want = np.mean([m.predict(x, output="probabilities") for m in ens.members], axis=0)
    assert np.allclose(ens.predict(x, output="probabilities"), want)
    assert (ens.predict(x, output="labels") == want.argmax(1)).all()
    ens.save(tmp_path / "ens")
    assert is_ensemble(tmp_path / "ens")
    back = Ensemble.load(tmp_path / "ens")
    assert len(back) == 3 and np.allclose(back.predict(x, output="probabilities"), want)
    assert back.num_params == 3 * ens.members[0].num_params


def test_ensemble_resumes_at_the_member_it_was_training(tmp_path):
    x, y = _toy()
    masks = _fold_masks(y, 3, seed=0)

    def run(ens):
        ens.compile("adam", lr=0.01)
        ens.fit(
            x,
            y,
            masks=masks,
            epochs=2,
            batch_size=8,
            verbose=0,
            seed=0,
            checkpoint_dir=str(tmp_path / "ck"),
        )
        return ens

    whole = run(_members(3))
    p = whole.predict(x, output="probabilities")
    # A second run finds every member finished and trains nothing.
    again = run(_members(3))
    assert np.array_equal(again.predict(x, output="probabilities"), p)
    # Without member 2's final model, it is trained again from its last checkpoint.
    import shutil

    shutil.rmtree(tmp_path / "ck" / "member_2" / "final")
    resumed = run(_members(3))
    assert np.allclose(resumed.predict(x, output="probabilities"), p, atol=1e-6)


def test_ensemble_rejects_masks_of_the_wrong_shape():
    x, y = _toy()
    ens = _members(2)
    ens.compile("adam")
    with pytest.raises(lstmrs.InvalidArgumentError, match="masks: expected 2 boolean masks"):
        ens.fit(x, y, masks=[np.ones(3, bool)], epochs=1)


# --------------------------------------------------------------------------------------------
# The task end to end


def _ucr_like(tmp_path, n_train=30, n_test=20):
    """Two classes of unequal-length series (rising vs falling ramps with noise) as a
    TRAIN/TEST pair."""
    rng = np.random.default_rng(3)

    def cases(n):
        out = []
        for i in range(n):
            length = int(rng.integers(20, 60))
            ramp = np.linspace(0, 1, length) + rng.normal(0, 0.2, length)
            label = "up" if i % 2 == 0 else "down"
            vals = ramp if label == "up" else ramp[::-1]
            padded = [f"{v:.4f}" for v in vals] + ["NaN"] * (60 - length)
            out.append(([padded], label))
        return out

    train = write_ts(tmp_path / "Ramps_TRAIN.ts", cases(n_train))
    write_ts(tmp_path / "Ramps_TEST.ts", cases(n_test))
    return train


def test_classify_task_resolves_auto_choices_for_numeric_data(tmp_path):
    path = _ucr_like(tmp_path)
    task = BUILTIN_TASKS["classify"]
    cfg = resolve_config(task, sets=[f"data.path={path}"])
    data = task.prepare(cfg)
    assert len(data.test[1]) == 20 and len(data.train[1]) + len(data.val[1]) == 30
    lines = task.resolve(cfg, data)
    assert "ensemble 10" in lines[0] and cfg["model"]["bidirectional"] is True
    assert cfg["model"]["pooling"] == "last" and cfg["train"]["class_weight"] == "none"
    assert data.state["prep"]["patch"] == 2  # 60 steps > data.max_steps = 32
    model = task.build_model(cfg, data)
    assert isinstance(model, Ensemble) and len(model) == 10


def test_classify_task_weights_imbalanced_classes(tmp_path):
    path = _ucr_like(tmp_path)
    task = BUILTIN_TASKS["classify"]
    cfg = resolve_config(task, sets=[f"data.path={path}", "train.ensemble=1"])
    data = task.prepare(cfg)
    keep = np.concatenate([np.flatnonzero(data.train[1] == 0), np.flatnonzero(data.train[1])[:3]])
    data.train = tuple(a[keep] for a in data.train)
    data.extra["train_index"] = data.extra["train_index"][keep]
    task.resolve(cfg, data)
    assert cfg["train"]["class_weight"] == "balanced"
    model = task.build_model(cfg, data)
    w = model.loss.class_weights
    assert w[1] > w[0] and w @ np.bincount(data.train[1]) == pytest.approx(len(keep))


def test_classify_ts_pair_end_to_end_with_dtw_baseline(tmp_path, capsys):
    path = _ucr_like(tmp_path)
    run = str(tmp_path / "run")
    args = ["train", "--task", "classify", "--run-dir", run, "--no-plots", "--quiet"]
    sets = [f"data.path={path}", "train.ensemble=3", "train.epochs=4", "model.hidden_size=8"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    out = capsys.readouterr().out
    assert "LSTM x3 ensemble" in out and "1-NN DTW (w=" in out and "summary-stats LR" in out
    with open(os.path.join(run, "summary.json")) as f:
        s = json.load(f)
    assert s["test_size"] == 20 and s["ensemble"] == 3
    assert 0.0 <= s["cv_accuracy"] <= 1.0 and s["cv_loss"] > 0  # out-of-fold, all 30 items
    assert 0.0 <= s["dtw_window"] <= 1.0 and s["dtw_accuracy"] >= 0.9  # ramps are easy for DTW
    assert is_ensemble(os.path.join(run, "model"))
    # eval reloads the ensemble and gives the same accuracy; predict reads a .ts file.
    assert main(["eval", run, "--quiet"]) == 0
    assert f"{s['accuracy']:.4f}" in capsys.readouterr().out
    test_file = os.path.join(str(tmp_path), "Ramps_TEST.ts")
    assert main(["predict", run, "--input", test_file, "--output", str(tmp_path / "p.csv")]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0].startswith("id,label,p_down,p_up") and len(rows) == 21


# --------------------------------------------------------------------------------------------
# Anomaly detection on the UCR anomaly archive's layout


def _ucr_anomaly_pair(tmp_path, n_train=400, n=1200, at=(800, 811)):
    """A noisy sine whose TEST file is the whole series (TRAIN is its first part, as the UCR
    anomaly archive ships them), with a labelled burst of 12 points."""
    rng = np.random.default_rng(4)
    t = np.arange(n)
    v = np.sin(2 * np.pi * t / 40) + rng.normal(0, 0.05, n)
    v[at[0] : at[1] + 1] += 1.5 * np.sin(np.linspace(0, 3 * np.pi, at[1] - at[0] + 1))
    label = ((t >= at[0]) & (t <= at[1])).astype(int)
    rows = ["timestamp,value,is_anomaly"] + [f"{i},{v[i]:.5f},{label[i]}" for i in range(n)]
    (tmp_path / "Sine_TRAIN.csv").write_text("\n".join(rows[: n_train + 1]) + "\n")
    (tmp_path / "Sine_TEST.csv").write_text("\n".join(rows) + "\n")
    return str(tmp_path / "Sine_TRAIN.csv")


def test_anomaly_finds_the_labelled_burst_of_a_ucr_style_pair(tmp_path, capsys):
    path = _ucr_anomaly_pair(tmp_path)
    task = BUILTIN_TASKS["anomaly"]
    cfg = resolve_config(task, sets=[f"data.path={path}"])
    data = task.prepare(cfg)
    assert data.extra["train_end"] == 400 and data.extra["windows"] == [(800, 811)]
    assert data.train[0].shape[2] == 1  # integer timestamps: no time-of-day features
    run = str(tmp_path / "run")
    sets = [f"data.path={path}", "train.epochs=15", "model.hidden_size=16"]
    args = ["train", "--task", "anomaly", "--run-dir", run, "--no-plots", "--quiet"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    with open(os.path.join(run, "summary.json")) as f:
        s = json.load(f)
    a, b = s["top_window"]
    assert s["top_window_hit"] is True and a <= 811 and b >= 800
    assert "top-scored window" in capsys.readouterr().out


def test_anomaly_label_column_errors_name_the_row(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("timestamp,value,is_anomaly\n" + "".join(f"{i},1.0,0\n" for i in range(99)))
    with open(p, "a") as f:
        f.write("99,1.0,yes\n")
    task = BUILTIN_TASKS["anomaly"]
    cfg = resolve_config(task, sets=[f"data.path={p}", "data.lookback=4"])
    with pytest.raises(
        lstmrs.InvalidArgumentError, match="row 101: expected a number in 'is_anomaly'"
    ):
        task.prepare(cfg)


def test_training_budget_follows_the_data_size(tmp_path):
    task = BUILTIN_TASKS["classify"]
    budgets = {}
    for n in (30, 2000):
        path = _ucr_like(tmp_path, n_train=n, n_test=10)
        cfg = resolve_config(task, sets=[f"data.path={path}"])
        data = task.prepare(cfg)
        task.resolve(cfg, data)
        budgets[n] = (cfg["train"]["epochs"], cfg["train"]["patience"], cfg["train"]["ensemble"])
    assert budgets[30] == (400, 50, 10)  # 2 steps an epoch: the longest budget
    assert budgets[2000] == (48, 10, 1)  # 125 steps an epoch, one model


def test_ensemble_does_not_pass_off_one_member_as_the_whole():
    ens = _members(2)
    assert ens.cell == "lstm" and ens.output_size == 2
    with pytest.raises(AttributeError, match="use predict, or one model of .members"):
        ens.evaluate(np.zeros((1, 3, 1)), np.zeros(1))
    with pytest.raises(lstmrs.ExportError, match="export each member"):
        ens.to_onnx("x.onnx")


def test_resume_of_an_ensemble_run_keeps_its_finished_members(tmp_path, capsys):
    import shutil

    path = _ucr_like(tmp_path)
    run = str(tmp_path / "run")
    sets = [f"data.path={path}", "train.ensemble=3", "train.epochs=3", "model.hidden_size=8"]
    flags = [a for s in sets for a in ("--set", s)]
    assert main(["train", "--task", "classify", "--run-dir", run, "--no-plots"] + flags) == 0
    # As if killed while training the last member: its final model is not there yet.
    shutil.rmtree(os.path.join(run, "checkpoints", "member_2", "final"))
    capsys.readouterr()
    assert main(["train", "--resume", "--run-dir", run, "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "resuming the ensemble" in out and "LSTM x3 ensemble" in out
    assert os.path.isdir(os.path.join(run, "checkpoints", "member_2", "final"))
