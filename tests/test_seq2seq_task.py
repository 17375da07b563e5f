"""The ``seq2seq`` task: reading dictionaries and pair files, the split by source, the metrics,
and `lstmrs train` / `lstmrs predict` end to end on a tiny file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from lstmrs.cli import main
from lstmrs.seq2seq import CHECKPOINT_DIR
from lstmrs.tasks.seq2seq import (
    Seq2SeqTask,
    bleu,
    edit_distance,
    read_dictionary,
    score,
)

CMUDICT = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "g2p", "cmudict.dict"
)


def write_dict(path, n_words: int = 120, seed: int = 0) -> None:
    """A synthetic pronouncing dictionary: each letter is one phoneme (with a stress digit on
    vowels); every fifth word has an alternate pronunciation."""
    rng = np.random.default_rng(seed)
    letters = "abcdeikost"
    phones = {c: (c.upper() + "1" if c in "aeio" else c.upper() + "H") for c in letters}
    words = set()
    while len(words) < n_words:
        words.add("".join(rng.choice(list(letters), size=rng.integers(2, 6))))
    with open(path, "w") as f:
        f.write(";;; a comment line\n")
        for i, w in enumerate(sorted(words)):
            f.write(f"{w} {' '.join(phones[c] for c in w)}\n")
            if i % 5 == 0:
                f.write(f"{w}(2) {' '.join(phones[c] for c in w)} Z  # an alternate\n")


def test_dictionary_reader_groups_alternates_and_drops_stress(tmp_path):
    p = tmp_path / "d.dict"
    p.write_text("a AH0\na(2) EY1\n'bout B AW1 T # comment\nabc EY1 B IY0 S IY0\n")
    d = read_dictionary(str(p), keep_stress=False)
    assert d == {
        "a": [["AH"], ["EY"]],
        "'bout": [["B", "AW", "T"]],
        "abc": [["EY", "B", "IY", "S", "IY"]],
    }
    assert read_dictionary(str(p), keep_stress=True)["a"] == [["AH0"], ["EY1"]]


def test_split_is_by_source_and_deterministic(tmp_path):
    p = tmp_path / "d.dict"
    write_dict(p, 200)
    task = Seq2SeqTask()
    cfg = task.config({"data": {"path": str(p), "test_fraction": 0.1, "val_fraction": 0.1}})
    a = task.prepare(cfg)
    b = task.prepare(cfg)
    assert a.test["sources"] == b.test["sources"]
    test = set(a.test["sources"])
    assert len(test) == 20
    # The training pairs' sources, decoded back to text.
    vocab = a.state["src_vocab"]
    train = {"".join(vocab[i] for i in s) for s in a.train[0]}
    val = {"".join(vocab[i] for i in s) for s in a.val[0]}
    assert not (train & test) and not (train & val) and not (val & test)
    assert len(train) + len(val) + len(test) == 200
    # Alternates are separate training pairs of the same source.
    assert len(a.train[0]) > len(train)
    assert all(len(r) >= 1 for r in a.test["refs"])
    assert "H" in a.state["tgt_vocab"] or "KH" in a.state["tgt_vocab"]
    assert not any(t[-1].isdigit() for t in a.state["tgt_vocab"][4:])


def test_metrics():
    assert edit_distance(list("kitten"), list("sitting")) == 3
    s = score([["A", "B"], ["C"]], [[["A", "B"]], [["D"], ["C", "E"]]])
    # Second prediction: nearest reference is ["D"] or ["C","E"] (both distance 1): 1 error.
    assert s["sequence_error_rate"] == 0.5
    assert s["token_error_rate"] == pytest.approx(1 / 3)
    ref = ["the", "cat", "sat", "on", "the", "mat"]
    assert bleu([ref], [[ref]]) == pytest.approx(1.0)
    assert 0.0 < bleu([["the", "cat", "sat", "on", "a", "mat"]], [[ref]]) < 1.0


def test_train_then_predict_on_the_command_line(tmp_path, capsys):
    p = tmp_path / "d.dict"
    write_dict(p, 150)
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--task",
            "seq2seq",
            "--run-dir",
            str(run),
            "--no-plots",
            "--quiet",
            "--set",
            f"data.path={p}",
            "--set",
            "model.hidden_size=16",
            "--set",
            "model.embed_size=8",
            "--set",
            "train.epochs=2",
            "--set",
            "train.batch_size=16",
            "--set",
            "eval.beam=3",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "greedy: token (phoneme) error rate" in out and "beam 3:" in out
    with open(run / "summary.json") as f:
        summary = json.load(f)
    for k in ("greedy_token_error_rate", "beam_sequence_error_rate", "test_loss"):
        assert 0.0 <= summary[k] <= 10.0, k
    assert main(["predict", str(run), "cab", "sotie"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["cab", "sotie"]
    assert code == 0
    # A letter the model never saw is a clean error (exit 2), not a crash.
    assert main(["predict", str(run), "xyz"]) == 2
    # --resume goes on from the Seq2Seq's own checkpoint, and says so.
    args = ["train", "--resume", "--run-dir", str(run), "--no-plots", "--set", "train.epochs=3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "the task's own checkpoint format" in out and "no checkpoint" not in out
    with open(run / "metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [0, 1, 2]


@pytest.mark.skipif(not os.path.isfile(CMUDICT), reason="shared CMUdict not present")
def test_reads_the_real_cmudict():
    d = read_dictionary(CMUDICT, keep_stress=False)
    assert len(d) > 120_000
    assert ["EY"] in d["a"] and ["AH"] in d["a"]
    phones = {p for prons in d.values() for pr in prons for p in pr}
    assert len(phones) == 39


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path):
    """Ctrl-C through `lstmrs train`: the interrupted seq2seq run writes its checkpoint, exits
    130, and `lstmrs train --resume` continues it to the end."""
    p = tmp_path / "d.dict"
    write_dict(p, 150)
    env = {**os.environ, "LSTMRS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "LSTMRS_PLUGINS": ""}
    sets = [f"data.path={p}", "model.hidden_size=16", "model.embed_size=8"]
    sets += ["train.batch_size=8", "eval.beam=2"]
    args = [a for kv in sets for a in ("--set", kv)]
    cmd = [sys.executable, "-m", "lstmrs.cli", "train", "--task", "seq2seq", "--run-dir", "run"]
    # Far more epochs than the test waits for: the interrupt must land while training runs.
    proc = subprocess.Popen(
        [*cmd, "--no-plots", *args, "--set", "train.epochs=100000"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
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
    assert "finishing this batch" in err and "checkpoint saved to" in err
    assert "--resume" in out
    with open(tmp_path / "run" / "state.json") as f:
        assert json.load(f)["status"] == "interrupted"
    with open(tmp_path / "run" / "checkpoints" / CHECKPOINT_DIR / "state.json") as f:
        saved = json.load(f)
    done = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert done == list(range(len(done))) and saved["epoch"] == len(done)

    total = len(done) + 2
    res = subprocess.run(
        [*cmd[:-4], "--resume", "--run-dir", "run", "--no-plots", "--set", f"train.epochs={total}"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "the task's own checkpoint format" in res.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(total))
    with open(tmp_path / "run" / "summary.json") as f:
        assert 0.0 <= json.load(f)["greedy_token_error_rate"] <= 10.0
