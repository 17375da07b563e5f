"""The pieces behind `lstmrs train`: configuration layers and their errors, run directories,
the task registry, and the tasks' data handling and scoring (in process, small data)."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest
from lstmrs import config as C
from lstmrs.cli import get_tasks, resolve_config, train_run
from lstmrs.rundir import RunDir
from lstmrs.tasks import BUILTIN_TASKS, PluginTask, as_task, lstmrs_register_tasks
from lstmrs.tasks.anomaly import window_scores
from lstmrs.tasks.baselines import Dense, LogisticRegression, Sparse
from lstmrs.tasks.charlm import UNK, sample_next
from lstmrs.tasks.classify import _build_vocab, _encode
from lstmrs.tasks.forecast import _origins, infer_season

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
needs_data = pytest.mark.skipif(
    not os.path.isdir(DATA), reason=f"real data sets not found at {DATA} (../shared/data)"
)


# --------------------------------------------------------------------------------------------
# Configuration


def test_parse_value_reads_toml_scalars_and_falls_back_to_text():
    assert C.parse_value("200") == 200
    assert C.parse_value("1e-3") == pytest.approx(1e-3)
    assert C.parse_value("true") is True
    assert C.parse_value("[1, 2]") == [1, 2]
    assert C.parse_value("lstm") == "lstm"
    assert C.parse_value("data/x.csv") == "data/x.csv"
    assert C.parse_override("train.lr=0.5") == ("train.lr", 0.5)
    with pytest.raises(C.ConfigError, match="KEY=VALUE"):
        C.parse_override("train.lr")


def test_layers_coerce_types_from_the_defaults():
    task = BUILTIN_TASKS["adding"]
    cfg = resolve_config(
        task, sets=["data.seq_len=30", "train.lr=1", "model.bidirectional=yes"], cell="GRU"
    )
    assert cfg["data"]["seq_len"] == 30
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)
    assert cfg["model"]["bidirectional"] is True
    assert cfg["model"]["cell"] == "gru"
    assert cfg["task"] == "adding"


@pytest.mark.parametrize(
    ("override", "pieces"),
    [
        ("train.lr=-1", ["train.lr", "-1", "a number > 0"]),
        ("data.seq_len=1", ["data.seq_len", "1", "an integer >= 2"]),
        ("model.cell=lstn", ["model.cell", "'lstn'", "one of", "'lstm'"]),
        ("train.lrr=0.1", ["unknown key 'train.lrr'", "did you mean 'train.lr'", "Allowed:"]),
        ("train.epochs=many", ["train.epochs", "'many'", "an integer >= 0"]),
        ("train.checkpoint_every=0", ["train.checkpoint_every", "'epoch' or an integer >= 1"]),
        ("train=3", ["'train'", "is a section"]),
    ],
)
def test_config_errors_name_key_value_and_what_is_allowed(override, pieces):
    with pytest.raises(C.ConfigError) as e:
        resolve_config(BUILTIN_TASKS["adding"], sets=[override])
    for p in pieces:
        assert p in str(e.value)
    assert "--set" in str(e.value)  # where the value came from


def test_file_paths_are_relative_to_the_file(tmp_path):
    sub = tmp_path / "cfgs"
    sub.mkdir()
    layer = C.loads_toml('[data]\npath = "../series.csv"\n')
    cfg = resolve_config(
        BUILTIN_TASKS["forecast"], file_cfg=layer, file_source="x.toml", file_dir=str(sub)
    )
    assert cfg["data"]["path"] == str(tmp_path / "series.csv")


def test_required_path_is_reported():
    with pytest.raises(C.ConfigError, match=r'data\.path = "" is not allowed'):
        resolve_config(BUILTIN_TASKS["charlm"])


def test_toml_writer_round_trips_every_default_config():
    for task in BUILTIN_TASKS.values():
        text = C.dumps(task.default_config)
        assert C.loads_toml(text) == task.default_config
    tricky = {"a": 'quote " back\\slash\nnew', "b": [1.5, -2], "c": {"d": float("inf")}}
    assert C.loads_toml(C.dumps(tricky)) == tricky


def test_bad_toml_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[data\npath = 1\n")
    with pytest.raises(C.ConfigError, match="bad.toml is not valid TOML"):
        C.load_toml(p)


# --------------------------------------------------------------------------------------------
# Registry


def test_builtin_tasks_register_through_the_plugin_hook():
    from lstmrs.plugins import BUILTIN, create_manager

    pm = create_manager(load_entrypoints=False)  # the built-in plugin alone
    registered = pm.registry("tasks")
    assert set(registered) == set(BUILTIN_TASKS)
    for name, task in BUILTIN_TASKS.items():
        assert registered[name] is task
        assert pm.owner("tasks", name) == BUILTIN
    got = []
    lstmrs_register_tasks(got.append)
    assert [t.name for t in got] == list(BUILTIN_TASKS)


def test_cli_sees_builtin_tasks():
    assert set(get_tasks()) >= set(BUILTIN_TASKS)


def test_make_data_follows_the_registry_protocol():
    x, y = BUILTIN_TASKS["adding"].make_data({"seq_len": 12, "n_train": 40}, seed=3)
    assert x.shape == (40, 12, 2) and y.shape == (40, 1)
    x2, _ = BUILTIN_TASKS["adding"].make_data({"seq_len": 12, "n_train": 40}, seed=3)
    np.testing.assert_array_equal(x, x2)


class ParityTask:
    """A task with only the registry's minimal protocol: the parity of a bit sequence."""

    name = "parity"
    description = "parity of random bits"
    default_config = {"n": 256, "length": 6}  # noqa: RUF012

    def make_data(self, config, seed):
        rng = np.random.default_rng(seed)
        bits = rng.integers(0, 2, size=(config["n"], config["length"]))
        return bits.astype(np.float32)[..., None], (bits.sum(axis=1) % 2).astype(np.int64)

    def model_kwargs(self, config):
        return {"input_size": 1, "output_size": 2, "loss": "cross_entropy"}


def test_plugin_task_with_minimal_protocol_trains_end_to_end(tmp_path):
    task = as_task(ParityTask())
    assert isinstance(task, PluginTask)
    cfg = resolve_config(
        task, sets=["data.n=128", "train.epochs=2", "model.hidden_size=8", "train.batch_size=32"]
    )
    run = RunDir.create(str(tmp_path / "run"), task.name)
    lines = []
    assert train_run(task, cfg, run, resume=False, say=lines.append, make_plots=False) == 0
    summary = run.read_summary()
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert math.isfinite(summary["test_loss"])
    assert len(run.read_metrics()) == 2
    assert any(line.startswith("epoch   2/2") for line in lines)


# --------------------------------------------------------------------------------------------
# Scoring pieces


def test_window_scores_counts_found_windows_and_false_alarm_bursts():
    alarms = np.zeros(100, dtype=bool)
    alarms[[5, 22, 23, 40, 41, 44, 70, 95]] = True
    windows = [(0, 3), (20, 30), (50, 60), (90, 99)]
    # Scored from step 10: window (0, 3) is before it, alarm 5 does not count.
    s = window_scores(alarms, windows, start=10, gap=5)
    assert s["windows"] == 3
    assert s["windows_found"] == 2  # (20, 30) and (90, 99); (50, 60) missed
    # Outside every window: 40, 41, 44 (one burst, gaps <= 5) and 70 (another).
    assert s["false_alarm_bursts"] == 2
    assert s["alarms"] == 7
    assert s["window_precision"] == pytest.approx(2 / 4)
    assert s["window_recall"] == pytest.approx(2 / 3)
    # A gap of 2 splits 40, 41 from 44.
    assert window_scores(alarms, windows, start=10, gap=2)["false_alarm_bursts"] == 3


def test_infer_season_from_timestamps():
    assert infer_season([f"1950-{m:02d}" for m in range(1, 13)])[0] == 12
    assert infer_season([f"1981-01-{d:02d}" for d in range(1, 20)])[0] == 7
    half = [f"2014-07-01 {h:02d}:{m:02d}:00" for h in range(10) for m in (0, 30)]
    assert infer_season(half)[0] == 48
    assert infer_season(["a", "b", "c"])[0] == 1


def test_origins_keep_all_targets_in_their_span():
    o = _origins(10, 20, lookback=4, horizon=3)
    assert o.min() + 1 >= 10 and o.max() + 3 <= 19
    assert list(o) == list(range(9, 17))
    assert _origins(0, 10, lookback=8, horizon=5).size == 0


def _write_series(path, values, start_year=1950):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Month", "Value"])
        for i, v in enumerate(values):
            w.writerow([f"{start_year + i // 12}-{i % 12 + 1:02d}", v])


def test_forecast_baselines_on_a_purely_seasonal_series(tmp_path):
    pattern = np.array([5, 7, 9, 12, 15, 18, 20, 19, 16, 12, 8, 6], dtype=float)
    _write_series(tmp_path / "s.csv", np.tile(pattern, 12))
    task = BUILTIN_TASKS["forecast"]
    cfg = resolve_config(
        task,
        sets=[
            f"data.path={tmp_path / 's.csv'}",
            "data.lookback=12",
            "data.horizon=6",
            "model.hidden_size=4",
        ],
    )
    data = task.prepare(cfg)
    assert data.state["season"] == 12
    model = task.build_model(cfg, data)
    s = task.evaluate(model, data, cfg)
    # Last year's value is exact on a repeating pattern; the last value is not.
    assert s["seasonal_naive_rmse"] == pytest.approx(0.0, abs=1e-9)
    assert s["naive_rmse"] > 1.0
    assert all(math.isfinite(s[f"model_{k}"]) for k in ("rmse", "mae", "mape"))


def test_forecast_scaler_is_fitted_on_the_train_span_only(tmp_path):
    values = np.arange(1, 121, dtype=float)
    _write_series(tmp_path / "trend.csv", values)
    task = BUILTIN_TASKS["forecast"]
    cfg = resolve_config(
        task, sets=[f"data.path={tmp_path / 'trend.csv'}", "data.lookback=6", "data.horizon=3"]
    )
    data = task.prepare(cfg)
    train_end = data.extra["spans"]["train"][1]
    assert data.state["scaler"]["a"][0] == pytest.approx(values[:train_end].mean())
    assert data.state["scaler"]["b"][0] == pytest.approx(values[:train_end].std())


def test_logistic_regression_sparse_and_dense_agree_and_separate():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    dense = LogisticRegression(1e-4, iters=400).fit(Dense(x), y, 2)
    rows = [{j: float(v) for j, v in enumerate(r)} for r in x]
    sparse = LogisticRegression(1e-4, iters=400).fit(Sparse(rows, 5), y, 2)
    np.testing.assert_allclose(dense.w, sparse.w, rtol=1e-6, atol=1e-9)
    assert np.mean(dense.predict(Dense(x)) == y) >= 0.97


def test_logistic_regression_matches_scikit_learn_objective():
    sk = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 4))
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 * rng.standard_normal(200) > 0).astype(int)
    l2 = 1e-2
    ours = LogisticRegression(l2, iters=3000).fit(Dense(x), y, 2)
    # Two softmax columns have the optimum w1 = -w0 = v / 2 with penalty l2 / 4 * |v|^2, so
    # scikit-learn's binary problem 1/2 |v|^2 + C * sum(loss) is ours with C = 2 / (l2 * n).
    ref = sk.LogisticRegression(C=2 / (l2 * len(y)), tol=1e-10, max_iter=10000).fit(x, y)
    ours_margin = ours.w[:, 1] - ours.w[:, 0]
    np.testing.assert_allclose(ours_margin, ref.coef_[0], rtol=2e-3, atol=2e-4)


def test_vocabulary_comes_from_training_texts_only():
    vocab = _build_vocab([["good", "film", "good"], ["bad", "film"]], min_freq=1, max_vocab=10)
    assert vocab["<unk>"] == 0 and vocab["film"] == 1 and vocab["good"] == 2
    x, lens = _encode([["good", "unseen", "film"], []], vocab, max_len=2, keep="last")
    assert x.tolist() == [[0, 1], [0, 0]]
    assert lens.tolist() == [2, 1]


def test_sampling_respects_temperature_top_k_and_never_returns_unknown():
    rng = np.random.default_rng(0)
    logits = np.array([50.0, 1.0, 3.0, 2.0])
    assert sample_next(logits, 0.0, 0, rng) == 2  # greedy, unknown id 0 excluded
    draws = {sample_next(logits, 5.0, 2, rng) for _ in range(200)}
    assert draws == {2, 3}
    assert UNK not in {sample_next(logits, 1.0, 0, rng) for _ in range(200)}


# --------------------------------------------------------------------------------------------
# Real data, in process


@needs_data
def test_review_split_puts_cv9_ids_in_the_test_set(tmp_path):
    path = tmp_path / "reviews.csv"
    with open(os.path.join(DATA, "sentiment", "review_polarity.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["id"][2:5]) < 8 or int(r["id"][2:5]) >= 996]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "label", "text"])
        w.writeheader()
        w.writerows(keep)
    task = BUILTIN_TASKS["classify"]
    cfg = resolve_config(
        task,
        sets=[
            f"data.path={path}",
            "data.id_column=id",
            "data.test_id_regex=^cv9",
            "data.val_fraction=0.25",
            "data.max_len=30",
        ],
    )
    data = task.prepare(cfg)
    ids = data.extra["ids"]
    assert {ids[i][:3] for i in data.extra["test_index"]} == {"cv9"}
    assert all(not ids[i].startswith("cv9") for i in data.extra["train_index"])
    assert len(data.extra["test_index"]) == 8  # cv996-cv999 of each class
    assert data.state["classes"] == ["neg", "pos"]
    # Vocabulary from the training split only.
    train_words = {t for i in data.extra["train_index"] for t in data.extra["tokens"][i]}
    assert set(data.state["vocab"][1:]) <= train_words


def test_every_example_config_is_valid():
    from lstmrs.cli import lookup_task

    examples = os.path.join(ROOT, "examples")
    names = sorted(n for n in os.listdir(examples) if n.endswith(".toml"))
    assert {C.load_toml(os.path.join(examples, n))["task"] for n in names} >= set(BUILTIN_TASKS)
    for name in names:
        path = os.path.join(examples, name)
        layer = C.load_toml(path)
        cfg = resolve_config(
            lookup_task(layer["task"]), file_cfg=layer, file_source=name, file_dir=examples
        )
        for key in ("path", "windows"):
            if cfg["data"].get(key):
                assert cfg["data"][key].startswith(DATA), (name, cfg["data"][key])


def test_copy_baseline_follows_the_masking():
    task = BUILTIN_TASKS["copy"]
    for mask, want in ((False, 3 * math.log(5) / 13), (True, math.log(5))):
        cfg = resolve_config(
            task,
            sets=[
                "data.length=3",
                "data.delay=6",
                "data.num_symbols=5",
                f"data.mask_prefix={mask}",
                "data.n_train=8",
                "data.n_val=4",
                "data.n_test=4",
                "model.hidden_size=4",
            ],
        )
        data = task.prepare(cfg)
        assert (data.train[1][:, :-3] == (-100 if mask else 0)).all()
        s = task.evaluate(task.build_model(cfg, data), data, cfg)
        assert s["baseline_loss"] == pytest.approx(want)
        assert len(s["recall_accuracy_per_position"]) == 3
