"""`lstmrs` end to end, in subprocesses: every subcommand's --help, config errors, training runs
on small slices of the real data sets (tiny models, one or two epochs), the files of a run
directory, eval / predict / generate on them, and Ctrl-C with --resume."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from lstmrs.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
needs_data = pytest.mark.skipif(
    not os.path.isdir(DATA), reason=f"real data sets not found at {DATA} (../shared/data)"
)
# No installed plugin loads in the subprocesses either (tests that need one register it).
ENV = {**os.environ, "LSTMRS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "LSTMRS_PLUGINS": ""}


def lstmrs(*args, cwd, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "lstmrs.cli", *map(str, args)],
        check=False,
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(res):
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def run_files(run):
    for name in ("config.toml", "state.json", "metrics.jsonl", "summary.json"):
        assert os.path.isfile(os.path.join(run, name)), name
    assert os.path.isfile(os.path.join(run, "model", "model.safetensors"))
    assert os.path.isfile(os.path.join(run, "checkpoints", "latest"))
    with open(os.path.join(run, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    for r in records:
        assert math.isfinite(r["loss"])
    return summary, records


# --------------------------------------------------------------------------------------------
# Help and errors


@pytest.mark.parametrize("command", ["train", "eval", "predict", "generate", "tasks", "plugins"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: lstmrs {command}" in out
    if command == "train":
        for flag in (
            "--task",
            "--cell",
            "--optimizer",
            "--set",
            "--run-dir",
            "--resume",
            "--quiet",
            "--threads",
        ):
            assert flag in out
        assert "(default: " in out


def test_top_level_and_bench_help(tmp_path, capsys, monkeypatch):
    out = ok(lstmrs("--help", cwd=tmp_path))  # the real entry point, in a subprocess
    for command in ("train", "eval", "predict", "generate", "plugins", "bench"):
        assert command in out
    from lstmrs import cli

    monkeypatch.setattr(cli, "_find_bench", lambda: None)  # not the script's own help
    assert main(["bench", "--help"]) == 0
    assert "usage: lstmrs bench" in capsys.readouterr().out


def test_bench_outside_a_checkout_explains(tmp_path, monkeypatch, capsys):
    from lstmrs import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_find_bench", lambda: None)
    assert cli.main(["bench", "--quick"]) == 1
    assert "source repository" in capsys.readouterr().err


def test_tasks_lists_builtins_and_prints_defaults(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("adding", "copy", "forecast", "classify", "charlm", "anomaly"):
        assert name in out
    assert main(["tasks", "forecast"]) == 0
    out = capsys.readouterr().out
    assert "[data]" in out and "lookback = 24" in out


@pytest.mark.parametrize(
    ("args", "pieces"),
    [
        (["--set", "train.lr=-1"], ["train.lr = -1", "a number > 0"]),
        (["--set", "data.seq_len=abc"], ["data.seq_len = 'abc'", "an integer >= 2"]),
        (["--set", "train.batchsize=8"], ["unknown key 'train.batchsize'", "train.batch_size"]),
        (["--task", "nope"], ["task = 'nope'", "'adding'", "'forecast'"]),
        (["--cell", "rnn"], ["model.cell = 'rnn'", "'gru'", "'lstm'"]),
        (["--task", "forecast"], ['data.path = ""', "CSV"]),
    ],
)
def test_config_errors_exit_2_and_name_key_value_allowed(
    args, pieces, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    for p in pieces:
        assert p in err
    assert not os.path.exists(tmp_path / "runs")


def test_missing_data_file_is_a_clean_error(tmp_path):
    res = lstmrs("train", "--task", "charlm", "--set", "data.path=nothere.txt", cwd=tmp_path)
    assert res.returncode == 2
    assert "data.path" in res.stderr and "nothere.txt" in res.stderr
    assert "Traceback" not in res.stderr


def test_config_file_errors_name_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text('task = "adding"\n[train]\nepochs = "ten"\n')
    assert main(["train", "c.toml"]) == 2
    assert "train.epochs = 'ten' (c.toml)" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Synthetic tasks (no files)


def test_adding_trains_prints_and_writes_the_run_dir(tmp_path):
    out = ok(
        lstmrs(
            "train",
            "--task",
            "adding",
            "--run-dir",
            "run",
            "--no-plots",
            "--set",
            "data.seq_len=8",
            "--set",
            "data.n_train=256",
            "--set",
            "data.n_val=64",
            "--set",
            "data.n_test=64",
            "--set",
            "train.epochs=2",
            "--set",
            "model.hidden_size=8",
            cwd=tmp_path,
        )
    )
    assert "epoch   1/2" in out and "epoch   2/2" in out
    assert "test MSE" in out
    summary, records = run_files(tmp_path / "run")
    assert len(records) == 2 and [r["epoch"] for r in records] == [0, 1]
    assert math.isfinite(summary["test_mse"]) and summary["test_mse"] >= 0
    assert f"{summary['test_mse']:.5f}" in out
    assert not os.listdir(tmp_path / "run" / "plots")  # --no-plots
    with open(tmp_path / "run" / "config.toml") as f:
        assert "seq_len = 8" in f.read()


def test_copy_task_runs_quietly(tmp_path):
    out = ok(
        lstmrs(
            "train",
            "--task",
            "copy",
            "--quiet",
            "--no-plots",
            "--run-dir",
            "run",
            "--set",
            "data.length=3",
            "--set",
            "data.delay=4",
            "--set",
            "data.n_train=128",
            "--set",
            "data.n_val=32",
            "--set",
            "data.n_test=32",
            "--set",
            "train.epochs=1",
            "--set",
            "model.hidden_size=8",
            "--optimizer",
            "rmsprop",
            "--cell",
            "gru",
            cwd=tmp_path,
        )
    )
    assert "epoch" not in out  # --quiet: the numbers only
    assert "recall accuracy" in out
    summary, _ = run_files(tmp_path / "run")
    assert 0.0 <= summary["recall_accuracy"] <= 1.0
    assert summary["baseline_loss"] == pytest.approx(3 * math.log(8) / 11)


def test_lion_plugin_optimizer_trains_through_the_cli(tmp_path, capsys):
    try:
        import lstmrs_lion
    except ImportError:  # not installed: the source tree
        sys.path.insert(0, os.path.join(ROOT, "plugins", "lstmrs-lion", "src"))
        import lstmrs_lion
    from lstmrs.checkpoint import read_checkpoint
    from lstmrs.testing import isolated_plugins, register_temporarily

    run = tmp_path / "run"
    with isolated_plugins(), register_temporarily(lstmrs_lion, name="lstmrs_lion"):
        code = main(
            [
                "train",
                "--task",
                "adding",
                "--optimizer",
                "lion",
                "--run-dir",
                str(run),
                "--no-plots",
                "--set",
                "data.seq_len=8",
                "--set",
                "data.n_train=512",
                "--set",
                "data.n_val=64",
                "--set",
                "data.n_test=64",
                "--set",
                "train.epochs=4",
                "--set",
                "train.lr=0.003",
                "--set",
                "train.batch_size=32",
                "--set",
                "model.hidden_size=8",
            ]
        )
    out = capsys.readouterr().out
    assert code == 0, out
    summary, records = run_files(run)
    assert summary["status"] == "completed" and len(records) == 4
    assert records[-1]["loss"] < records[0]["loss"]
    with open(run / "config.toml") as f:
        assert 'optimizer = "lion"' in f.read()
    config, tensors = read_checkpoint(run / "checkpoints")
    assert config["compile"]["optimizer"]["name"] == "lion"
    assert config["optimizer_state"] == {"kind": "lion", "step": 4 * 512 // 32}
    assert np.abs(tensors["optimizer.safetensors"]["exp_avg"]).max() > 0
    # Without the plugin the name is refused like any unknown value, listing the choices.
    assert main(["train", "--optimizer", "lion", "--run-dir", str(tmp_path / "r2")]) == 2
    assert "train.optimizer = 'lion'" in capsys.readouterr().err


CTRL_C_ARGS = [
    "--no-plots",
    "--set",
    "data.seq_len=10",
    "--set",
    "data.n_train=2048",
    "--set",
    "model.hidden_size=8",
    "--set",
    "train.target_val_loss=0",
]


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path):
    args = [
        "train",
        "--task",
        "adding",
        "--run-dir",
        "run",
        *CTRL_C_ARGS,
        "--set",
        # Far more than the test waits for: the interrupt must land while training runs, however
        # fast or slow the machine is.
        "train.epochs=100000",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lstmrs.cli", *args],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "training ended before the interrupt: " + proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError("Ctrl-C did not stop training within 60 s:\n" + out + err) from None
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    assert "checkpoint" in out and "--resume" in out
    assert "finishing this batch" in err and "checkpoint saved to" in err
    with open(tmp_path / "run" / "state.json") as f:
        assert json.load(f)["status"] == "interrupted"
    assert os.path.isfile(tmp_path / "run" / "checkpoints" / "latest")
    done = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert done == list(range(len(done)))

    total = len(done) + 2
    res = lstmrs(
        "train",
        "--resume",
        "--run-dir",
        "run",
        "--no-plots",
        "--set",
        f"train.epochs={total}",
        cwd=tmp_path,
    )
    out = ok(res)
    assert "resuming from" in out
    assert f"epoch {len(done) + 1:>3}/{total}" in out
    summary, records = run_files(tmp_path / "run")
    assert [r["epoch"] for r in records] == list(range(total))
    assert summary["epochs"] == total and summary["status"] == "completed"

    # The checkpoint was taken mid-epoch, after a whole batch: the interrupted and resumed run
    # ends exactly where one run of `total` epochs does.
    ok(
        lstmrs(
            "train",
            "--task",
            "adding",
            "--run-dir",
            "full",
            *CTRL_C_ARGS,
            "--set",
            f"train.epochs={total}",
            cwd=tmp_path,
        )
    )
    full_summary, full_records = run_files(tmp_path / "full")
    assert [r["loss"] for r in records] == [r["loss"] for r in full_records]
    assert summary["test_mse"] == full_summary["test_mse"]
    from lstmrs.checkpoint import load

    np.testing.assert_array_equal(
        load(tmp_path / "run" / "model").get_weights(),
        load(tmp_path / "full" / "model").get_weights(),
    )


# --------------------------------------------------------------------------------------------
# Real data


@needs_data
def test_forecast_airline_then_predict_and_eval(tmp_path):
    airline = os.path.join(DATA, "timeseries", "airline-passengers.csv")
    out = ok(
        lstmrs(
            "train",
            "--task",
            "forecast",
            "--run-dir",
            "run",
            "--set",
            f"data.path={airline}",
            "--set",
            "data.log=true",
            "--set",
            "train.epochs=2",
            "--set",
            "model.hidden_size=8",
            cwd=tmp_path,
        )
    )
    for label in ("model", "naive", "seasonal naive (12)", "RMSE", "MAE", "MAPE"):
        assert label in out
    summary, records = run_files(tmp_path / "run")
    assert len(records) == 2 and all("val_loss" in r for r in records)
    for k in ("model", "naive", "seasonal_naive"):
        for m in ("rmse", "mae", "mape"):
            assert math.isfinite(summary[f"{k}_{m}"]) and summary[f"{k}_{m}"] > 0
    assert summary["season"] == 12
    assert os.path.isfile(tmp_path / "run" / "plots" / "forecast.png")
    assert os.path.isfile(tmp_path / "run" / "plots" / "loss.png")

    ok(lstmrs("predict", "run", "--input", airline, "--output", "fc.csv", cwd=tmp_path))
    with open(tmp_path / "fc.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["steps_ahead", "Passengers"] and len(rows) == 13
    assert all(float(r[1]) > 0 for r in rows[1:])

    out = ok(lstmrs("eval", "run", cwd=tmp_path))
    assert f"{summary['model_rmse']:.4f}" in out


@needs_data
def test_classify_reviews_slice_with_baseline(tmp_path):
    src = os.path.join(DATA, "sentiment", "review_polarity.csv")
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    # 12 training and 4 test reviews (cv9xx) of each class.
    keep = [r for r in rows if int(r["id"][2:5]) < 12 or int(r["id"][2:5]) >= 996]
    with open(tmp_path / "reviews.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "label", "text"])
        w.writeheader()
        w.writerows(keep)
    out = ok(
        lstmrs(
            "train",
            "--task",
            "classify",
            "--run-dir",
            "run",
            "--no-plots",
            "--set",
            "data.path=reviews.csv",
            "--set",
            "data.id_column=id",
            "--set",
            "data.test_id_regex=^cv9",
            "--set",
            "data.max_len=40",
            "--set",
            "train.epochs=1",
            "--set",
            "model.hidden_size=8",
            "--set",
            "model.embedding_dim=8",
            cwd=tmp_path,
        )
    )
    assert "bag-of-words LR" in out and "test set: 8 items" in out
    summary, _ = run_files(tmp_path / "run")
    for k in ("accuracy", "precision", "recall", "f1", "baseline_accuracy", "baseline_f1"):
        assert 0.0 <= summary[k] <= 1.0
    cm = summary["confusion_matrix"]
    assert sum(map(sum, cm)) == 8

    ok(lstmrs("predict", "run", "--input", "reviews.csv", "--output", "p.csv", cwd=tmp_path))
    with open(tmp_path / "p.csv") as f:
        pred = list(csv.DictReader(f))
    assert len(pred) == len(keep)
    assert {p["label"] for p in pred} <= {"neg", "pos"}
    assert all(abs(float(p["p_neg"]) + float(p["p_pos"]) - 1) < 1e-3 for p in pred)


@needs_data
def test_charlm_tinyshakespeare_slice_then_generate(tmp_path, capsys):
    with open(os.path.join(DATA, "tinyshakespeare", "input.txt")) as f:
        text = "".join(f.readlines()[:300])
    (tmp_path / "shk.txt").write_text(text)
    out = ok(
        lstmrs(
            "train",
            "--task",
            "charlm",
            "--run-dir",
            "run",
            "--no-plots",
            "--set",
            "data.path=shk.txt",
            "--set",
            "train.epochs=1",
            "--set",
            "train.batch_size=8",
            "--set",
            "model.hidden_size=16",
            "--set",
            "model.num_layers=1",
            "--set",
            "eval.sample_length=40",
            cwd=tmp_path,
        )
    )
    assert "held-out bits per character" in out
    summary, records = run_files(tmp_path / "run")
    assert 0 < summary["val_bpc"] < 10 and math.isfinite(summary["unigram_bpc"])
    assert "bpc" in records[0] and "val_bpc" in records[0]

    args = ["generate", "run", "--prompt", "ROMEO:", "--length", "60", "--seed", "3"]
    first = ok(lstmrs(*args, cwd=tmp_path))
    assert first.startswith("ROMEO:") and len(first.rstrip("\n")) >= 60
    assert ok(lstmrs(*args, cwd=tmp_path)) == first  # same seed, same text
    assert main(["generate", str(tmp_path / "run"), "--prompt", "\u00e9\u00e9"]) == 2
    assert "not in the model's vocabulary" in capsys.readouterr().err


@needs_data
def test_anomaly_nyc_taxi_slice_against_a_real_window(tmp_path):
    with open(os.path.join(DATA, "anomaly", "nyc_taxi.csv")) as f:
        lines = f.readlines()
    # 1000 half-hours (about 21 days) from 2014-10-14, holding the NYC-marathon window.
    start = next(i for i, ln in enumerate(lines) if ln.startswith("2014-10-14 00:00"))
    (tmp_path / "nyc_taxi.csv").write_text(lines[0] + "".join(lines[start : start + 1000]))
    windows = os.path.join(DATA, "anomaly", "nab_combined_windows.json")
    out = ok(
        lstmrs(
            "train",
            "--task",
            "anomaly",
            "--run-dir",
            "run",
            "--set",
            "data.path=nyc_taxi.csv",
            "--set",
            f"data.windows={windows}",
            "--set",
            "train.epochs=1",
            "--set",
            "model.hidden_size=8",
            "--set",
            "data.lookback=24",
            cwd=tmp_path,
        )
    )
    assert "window precision" in out and "recall" in out
    summary, _ = run_files(tmp_path / "run")
    assert summary["windows"] == 1  # the marathon window 2014-10-30 .. 2014-11-03
    assert math.isfinite(summary["threshold"]) and summary["threshold"] > 0
    assert summary["windows_found"] in (0, 1)
    assert os.path.isfile(tmp_path / "run" / "plots" / "anomalies.png")

    ok(lstmrs("predict", "run", "--input", "nyc_taxi.csv", "--output", "s.csv", cwd=tmp_path))
    with open(tmp_path / "s.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1000
    assert rows[0]["score"] == "" and float(rows[-1]["score"]) >= 0
    assert {r["alarm"] for r in rows} <= {"0", "1"}
