"""`lstmrs tune`: a study end to end on the adding task (tiny model, a few epochs), pruning, the
best configuration run again by `lstmrs train`, --resume, --workers, the [tune] table's errors,
and workers sharing one study (SQLite, and PostgreSQL when LSTMRS_TEST_POSTGRES_URL names a
server, as .ci/run sets up) where one is killed with SIGKILL in the middle of a trial."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid

import lstmrs
import pytest
import sqlalchemy.exc
from lstmrs import config as C
from lstmrs.cli import main

optuna = pytest.importorskip("optuna", reason="lstmrs tune needs optuna (pip install optuna)")
from lstmrs import tuning

ENV = {**os.environ, "LSTMRS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "LSTMRS_PLUGINS": ""}
POSTGRES_ENV = "LSTMRS_TEST_POSTGRES_URL"

BASE = """
task = "adding"
[data]
seq_len = 12
n_train = 256
n_val = 128
n_test = 64
[model]
hidden_size = 8
[train]
epochs = {epochs}
batch_size = 64
target_val_loss = 0.0
"""


def write_config(tmp_path, tune: str, epochs: int = 4, name: str = "tune.toml") -> str:
    path = tmp_path / name
    path.write_text(BASE.format(epochs=epochs) + tune)
    return str(path)


SPACE = """
[tune]
trials = 4
startup_trials = 2
warmup_epochs = 1
trial_plots = false
[tune.params]
"train.lr" = { low = 1e-3, high = 3e-2, log = true }
"model.hidden_size" = { low = 4, high = 12 }
"model.cell" = ["lstm", "gru"]
"""


def read_lines(*parts) -> list[str]:
    with open(os.path.join(*parts)) as f:
        return f.read().splitlines()


def trial_states(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials():
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def test_study_end_to_end_and_best_toml_reruns(tmp_path, capsys):
    cfg = write_config(tmp_path, SPACE)
    out_dir = tmp_path / "tune"
    result = tuning.tune(cfg, run_dir=str(out_dir))
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    states = trial_states(study)
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 4
    assert set(states) <= {"COMPLETE", "PRUNED"}
    assert result.counts == states
    # The first trial runs the config's own values (tune.start_from_config).
    first = study.get_trials()[0]
    assert first.user_attrs.get("from_config") is True
    assert first.params["model.hidden_size"] == 8 and first.params["model.cell"] == "lstm"
    # Every trial is a run directory with the sampled values in its config.
    for t in study.get_trials():
        run = t.user_attrs["run_dir"]
        assert run == str(out_dir / "trials" / f"trial-{t.number:04d}")
        used = C.load_toml(os.path.join(run, "config.toml"))
        assert used["train"]["lr"] == t.params["train.lr"]
        assert used["model"]["hidden_size"] == t.params["model.hidden_size"]
        assert used["model"]["cell"] == t.params["model.cell"]
    # The leaderboard: completed trials first, best first.
    complete = sorted(t.value for t in study.get_trials() if t.state.name == "COMPLETE")
    board = [r["val_loss"] for r in result.leaderboard if r["state"] == "complete"]
    assert board == complete
    assert result.best_value == complete[0]
    text = capsys.readouterr().out
    assert "best first" in text and f"best: trial {result.best_trial}" in text
    with open(out_dir / "leaderboard.csv") as f:
        assert len(f.read().strip().splitlines()) == 1 + len(study.get_trials())
    with open(out_dir / "summary.json") as f:
        summary = json.load(f)
    assert summary["best_trial"] == result.best_trial
    assert summary["best_run_dir"] == result.best_run_dir
    assert os.path.isfile(out_dir / "plots" / "tune_history.png")

    # best.toml runs unchanged with `lstmrs train` and reproduces the best trial's value.
    rerun = tmp_path / "rerun"
    assert main(["train", result.best_config_path, "--run-dir", str(rerun), "--no-plots"]) == 0
    with open(rerun / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert records[-1]["val_loss"] == pytest.approx(result.best_value, rel=1e-6)
    best_cfg = C.load_toml(rerun / "config.toml")
    assert best_cfg["model"]["cell"] == result.best_params["model.cell"]


def test_lstmrs_train_ignores_the_tune_table(tmp_path):
    cfg = write_config(tmp_path, SPACE, epochs=1)
    assert main(["train", cfg, "--run-dir", str(tmp_path / "run"), "--quiet", "--no-plots"]) == 0


def test_pruning_stops_poor_trials_early(tmp_path):
    # One learning rate learns, the other barely moves: once a good trial has finished, a poor
    # one is worse than the median at its first epochs and is pruned. Seed 2 draws the good rate
    # three times, then the poor one.
    tune = """
[tune]
trials = 5
sampler = "random"
startup_trials = 1
warmup_epochs = 0
seed = 2
trial_plots = false
[tune.params]
"train.lr" = [0.03, 0.00001]
"""
    cfg = write_config(tmp_path, tune, epochs=6)
    result = tuning.tune(cfg, run_dir=str(tmp_path / "tune"), quiet=True)
    pruned = [r for r in result.leaderboard if r["state"] == "pruned"]
    assert pruned, result.leaderboard
    for r in pruned:
        assert r["params"]["train.lr"] == 0.00001
        state = json.loads("\n".join(read_lines(r["run_dir"], "state.json")))
        assert state["status"] == "pruned"
        lines = read_lines(r["run_dir"], "metrics.jsonl")
        assert 1 <= len(lines) < 6  # stopped before its last epoch
        assert not os.path.exists(os.path.join(r["run_dir"], "summary.json"))  # no test eval
    assert result.best_params == {"train.lr": 0.03}


def test_conditional_keys_and_validation_metric(tmp_path):
    # copy logs val_accuracy (maximized); dropout is only sampled with two layers.
    tune = """
[tune]
trials = 3
metric = "val_accuracy"
pruner = "none"
sampler = "random"
seed = 1
trial_plots = false
[tune.params]
"model.num_layers" = [1, 2]
"model.dropout" = { low = 0.1, high = 0.4, when = { "model.num_layers" = 2 } }
"""
    path = tmp_path / "copy.toml"
    path.write_text(
        'task = "copy"\n[data]\nlength = 3\ndelay = 4\nn_train = 128\nn_val = 64\nn_test = 64\n'
        "[model]\nhidden_size = 8\n[train]\nepochs = 2\n" + tune
    )
    result = tuning.tune(str(path), run_dir=str(tmp_path / "tune"), quiet=True)
    assert result.direction == "maximize"
    seen = set()
    for r in result.leaderboard:
        layers = r["params"]["model.num_layers"]
        seen.add(layers)
        assert ("model.dropout" in r["params"]) == (layers == 2)
        used = C.load_toml(os.path.join(r["run_dir"], "config.toml"))
        assert used["model"]["dropout"] == r["params"].get("model.dropout", 0.0)
        metrics = [json.loads(x) for x in read_lines(r["run_dir"], "metrics.jsonl")]
        assert r["val_accuracy"] == pytest.approx(metrics[-1]["val_accuracy"])
    complete = [r["val_accuracy"] for r in result.leaderboard]
    assert complete == sorted(complete, reverse=True)


def forecast_config(tmp_path, tune: str) -> str:
    """A forecast task on a 60-point sine wave (a CSV written here)."""
    csv_path = tmp_path / "wave.csv"
    rows = [f"{math.sin(i / 3):.5f}" for i in range(60)]
    csv_path.write_text("value\n" + "\n".join(rows) + "\n")
    path = tmp_path / "forecast.toml"
    path.write_text(
        'task = "forecast"\n[data]\npath = "wave.csv"\nlookback = 6\nhorizon = 2\n'
        "[model]\nhidden_size = 4\n[train]\nepochs = 2\npatience = 0\n" + tune
    )
    return str(path)


def test_failed_trials_are_recorded_and_the_search_goes_on(tmp_path, capsys):
    # A lookback of 100 does not fit the 60 points: that trial fails with the task's own error,
    # the others run (random seed 0 draws 100, 4, 100, 100, 4, 4).
    tune = """
[tune]
trials = 3
sampler = "random"
pruner = "none"
trial_plots = false
[tune.params]
"data.lookback" = [4, 100]
"""
    result = tuning.tune(forecast_config(tmp_path, tune), run_dir=str(tmp_path / "t"))
    failed = [r for r in result.leaderboard if r["state"] == "fail"]
    assert failed and all(r["params"]["data.lookback"] == 100 for r in failed)
    assert result.counts["COMPLETE"] == 3
    assert (
        "failed: ConfigError: config: data.lookback + data.horizon = 102" in capsys.readouterr().out
    )
    # A space where every trial fails stops after the first few, with the error.
    tune = tune.replace("[4, 100]", "[100, 200]")
    with pytest.raises(tuning.TuneError, match="3 trials in a row failed; the last: ConfigError"):
        tuning.tune(forecast_config(tmp_path, tune), run_dir=str(tmp_path / "u"), quiet=True)


def test_saved_model_value_follows_the_restored_weights():
    records = [
        {"val_loss": 0.5, "val_accuracy": 0.6},
        {"val_loss": 0.3, "val_accuracy": 0.7},
        {"val_loss": 0.4, "val_accuracy": 0.8},
    ]
    # Early stopping restores the best val_loss epoch (the second); without it the last counts.
    assert tuning.saved_model_value(records, "val_accuracy", restores_best=True) == 0.7
    assert tuning.saved_model_value(records, "val_accuracy", restores_best=False) == 0.8
    assert tuning.saved_model_value(records, "val_loss", restores_best=True) == 0.3


def test_resume_continues_the_study(tmp_path):
    cfg = write_config(tmp_path, SPACE)
    out_dir = str(tmp_path / "tune")
    first = lstmrs.tune(cfg, run_dir=out_dir, trials=2, quiet=True)  # the package's entry point
    assert sum(first.counts.values()) == 2
    # The CLI, as a user would: the directory's own config, a larger budget.
    assert main(["tune", "--resume", "--run-dir", out_dir, "--trials", "4", "--quiet"]) == 0
    study = optuna.load_study(study_name=first.study_name, storage=first.storage)
    numbers = sorted(t.number for t in study.get_trials())
    assert numbers == [0, 1, 2, 3]
    # The resumed sampler does not draw the first trials' values again.
    values = [t.params["train.lr"] for t in study.get_trials()]
    assert len(set(values)) == 4
    assert sorted(os.listdir(os.path.join(out_dir, "trials"))) == [
        f"trial-{n:04d}" for n in numbers
    ]
    # A second search in the same directory without --resume is refused.
    assert main(["tune", cfg, "--run-dir", out_dir]) == 2


def test_local_workers_share_the_sqlite_study(tmp_path):
    cfg = write_config(tmp_path, SPACE)
    out_dir = tmp_path / "tune"
    result = tuning.tune(cfg, run_dir=str(out_dir), workers=2, trials=4, quiet=True)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    trials = study.get_trials()
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    # Two workers may both start the last trial: at most one more than the budget.
    assert 4 <= len(done) <= 5 and len(done) == len(trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2 and os.getpid() not in {int(w.split(":")[1]) for w in workers}


BAD_TABLES = [
    ('"model.hiden_size" = [8, 16]', "unknown key 'model.hiden_size'"),
    ('"train.lr" = { low = 0.01, high = 0.001 }', "tune.params.train.lr: low = 0.01 must be below"),
    ('"train.lr" = { low = -1.0, high = 0.1 }', "train.lr = -1.0 (tune.params.train.lr.low)"),
    ('"model.dropout" = { low = 0.0, high = 0.5, log = true }', "log = true needs low > 0"),
    ('"train.lr" = { low = 0.001, hgh = 0.1 }', "tune.params.train.lr.hgh is not a search"),
    ('"model.cell" = ["lstm", "lsmt"]', "model.cell = 'lsmt' (tune.params.model.cell.choices[1])"),
    ('"model.cell" = { low = 1, high = 2 }', "tune.params.model.cell is not a number"),
    ('"model.hidden_size" = { low = 4, high = 8, step = 1.5 }', "step = 1.5 is not allowed"),
    ('"seed" = [1, 2]', "tune.params.seed is not allowed: only model.*, train.*"),
    (
        (
            '"model.dropout" = { low = 0.1, high = 0.2, when = { "model.num_layers" = 2 } }\n'
            '"model.num_layers" = [1, 2]'
        ),
        "'model.num_layers' is tuned after 'model.dropout'; declare it first",
    ),
    ('"train.lr" = [0.1]\n[tune.extra]\nx = 1', "unknown key 'tune.extra.x'"),
]


@pytest.mark.parametrize("params, message", BAD_TABLES)
def test_config_errors_name_the_key(tmp_path, params, message):
    cfg = write_config(tmp_path, f"[tune]\ntrials = 2\n[tune.params]\n{params}\n")
    with pytest.raises(C.ConfigError) as e:
        tuning.tune(cfg, run_dir=str(tmp_path / "tune"), quiet=True)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "settings, message",
    [
        ('metric = "test_loss"', "tune.metric = 'test_loss'"),
        ('metric = "val_bogus"', "set tune.direction"),
        ("trials = 0", "the search needs a budget"),
        ("trials = -1", "tune.trials = -1"),
        ("heartbeat_interval = 10\ngrace_period = 5", "expected more than tune.heartbeat"),
        ('pruner = "sometimes"', "tune.pruner = 'sometimes'"),
    ],
)
def test_tune_settings_errors(tmp_path, settings, message):
    cfg = write_config(tmp_path, f'[tune]\n{settings}\n[tune.params]\n"train.lr" = [0.01]\n')
    with pytest.raises(C.ConfigError) as e:
        tuning.tune(cfg, run_dir=str(tmp_path / "tune"), quiet=True)
    assert message in str(e.value)


def test_cli_errors(tmp_path, capsys):
    no_table = write_config(tmp_path, "")
    assert main(["tune", no_table, "--run-dir", str(tmp_path / "a")]) == 2
    assert "has no [tune] table" in capsys.readouterr().err
    cfg = write_config(tmp_path, SPACE, name="space.toml")
    assert main(["tune", cfg, "--storage", "sqlite:///x.db"]) == 2
    assert "also give --study NAME" in capsys.readouterr().err
    assert main(["tune", cfg, "--workers", "0"]) == 2
    assert "--workers = 0" in capsys.readouterr().err
    # A metric the task does not log stops the search at its first epoch, not after N trials.
    assert main(["tune", cfg, "--run-dir", str(tmp_path / "b"), "--set", "tune.metric=val_mse",
                 "--set", "tune.direction=minimize"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "tune.metric = 'val_mse' is not in the epoch logs" in err
    study = optuna.load_study(
        study_name="b", storage=f"sqlite:///{tmp_path / 'b' / tuning.STUDY_DB}"
    )
    assert len(study.get_trials()) == 1
    # A study that searched another space cannot be joined.
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    args = ["tune", cfg, "--storage", storage, "--study", "s", "--trials", "1", "--quiet"]
    assert main([*args, "--run-dir", str(tmp_path / "c")]) == 0
    other = ["--set", "tune.params.train.lr.high=0.05"]
    assert main([*args, "--run-dir", str(tmp_path / "d"), *other]) == 2
    assert "searches another space" in capsys.readouterr().err


def test_help_and_missing_optuna(capsys, monkeypatch, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["tune", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--storage", "--study", "--trials", "--timeout", "--workers", "--resume"):
        assert flag in out
    assert "--worker-index" not in out  # internal: how --workers starts its processes
    # Without Optuna the error names the pip package (sys.modules[name] = None blocks imports).
    monkeypatch.setitem(sys.modules, "optuna", None)
    cfg = write_config(tmp_path, SPACE)
    assert main(["tune", cfg, "--run-dir", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err
    assert "lstmrs tune needs Optuna" in err and "pip install 'lstmrs[tune]'" in err


# --------------------------------------------------------------------------------------------
# Workers sharing one study; one is killed in the middle of a trial


#: Epochs per trial of the killed-worker test: seconds even on an idle machine, where 40 took
#: 0.3 s and the victim could finish the whole study before it was seen running.
KILL_EPOCHS = 400

KILL_SPACE = """
[tune]
trials = 4
pruner = "none"
sampler = "random"
heartbeat_interval = 1
grace_period = 3
trial_plots = false
[tune.params]
"train.lr" = { low = 1e-3, high = 3e-2, log = true }
"model.hidden_size" = { low = 4, high = 12 }
"""


def postgres_url() -> str | None:
    url = os.environ.get(POSTGRES_ENV)
    required = os.environ.get("CI") == "true" or os.environ.get("LSTMRS_REQUIRE_POSTGRES") == "1"
    if not url and required:
        pytest.fail(f"{POSTGRES_ENV} is unset in CI: .ci/run starts a PostgreSQL server")
    return url


def worker(cfg, storage, study, run_dir):
    args = ["tune", cfg, "--storage", storage, "--study", study, "--run-dir", run_dir]
    return subprocess.Popen(
        [sys.executable, "-m", "lstmrs.cli", *args, "--threads", "1"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_killed_worker_loses_only_its_trial(tmp_path, backend):
    if backend == "sqlite":
        storage = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        storage = postgres_url()
        if not storage:
            pytest.skip(f"{POSTGRES_ENV} is not set (.ci/run starts a PostgreSQL server)")
    # Long enough trials (KILL_EPOCHS) to kill one in the middle.
    cfg = write_config(tmp_path, KILL_SPACE, epochs=KILL_EPOCHS)
    name = f"kill-{uuid.uuid4().hex[:8]}"
    victim = worker(cfg, storage, name, str(tmp_path / "a"))
    # The study exists once the victim has started its first trial.
    deadline = time.time() + 60
    killed = None
    survivor = None
    while killed is None:
        assert time.time() < deadline, "the victim never reported an epoch"
        assert victim.poll() is None, victim.stdout.read()
        time.sleep(0.2)
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except (KeyError, sqlalchemy.exc.IntegrityError):
            # Not created yet, or the victim is creating the storage's tables this moment.
            continue
        if survivor is None:
            survivor = worker(cfg, storage, name, str(tmp_path / "b"))
        for t in study.get_trials():
            mine = t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
            # Early in the trial (a quarter of its epochs at most), so that it cannot finish before the kill lands
            # even when epochs take milliseconds.
            early = 0 < len(t.intermediate_values) <= KILL_EPOCHS // 4
            if mine and t.state.name == "RUNNING" and early:
                os.kill(victim.pid, signal.SIGKILL)
                killed = t
                break
    victim.wait(timeout=10)
    assert victim.returncode == -signal.SIGKILL
    out, _ = survivor.communicate(timeout=240)
    assert survivor.returncode == 0, out

    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials()
    states = trial_states(study)
    # Every trial is accounted for: finished, or the one failed by the kill; none left over.
    assert states.get("FAIL") == 1, (states, out)
    assert set(states) <= {"COMPLETE", "PRUNED", "FAIL"}
    assert sum(states.values()) == len(trials)
    done = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
    assert 4 <= done <= 5, states
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert failed.number == killed.number
    # It was queued again with the same values and run once, by the survivor.
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1, [t.system_attrs for t in trials]
    retry = retries[0]
    assert retry.state.name == "COMPLETE"
    assert retry.params == killed.params
    assert retry.user_attrs["worker"].endswith(f":{survivor.pid}")
    # No trial ran twice: one run directory per trial number over both workers, each with one
    # line per epoch.
    dirs = [
        d
        for w in ("a", "b")
        if os.path.isdir(tmp_path / w / "trials")
        for d in os.listdir(tmp_path / w / "trials")
    ]
    assert sorted(dirs) == sorted(f"trial-{t.number:04d}" for t in trials)
    for t in trials:
        if t.state.name == "COMPLETE":
            lines = read_lines(t.user_attrs["run_dir"], "metrics.jsonl")
            epochs = [json.loads(x)["epoch"] for x in lines]
            assert epochs == list(range(KILL_EPOCHS))
    assert "best: trial" in out
