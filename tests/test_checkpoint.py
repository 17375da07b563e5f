"""Checkpoints: bitwise round trips, crash-safe writing, tamper detection, and exact resumption
of an interrupted training (including one killed with SIGKILL in another process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from lstmrs import checkpoint as ckpt
from lstmrs import optim
from lstmrs.callbacks import Callback
from lstmrs.models import Loss, Model


def test_round_trip_predicts_bitwise(tmp_path):
    m = Model(
        vocab_size=9,
        embedding_dim=4,
        hidden_size=6,
        bidirectional=True,
        pooling="attention",
        head_hidden=(5,),
        output_size=3,
        loss=Loss("cross_entropy", class_weights=[1.0, 2.0, 0.5], ignore_index=2),
        seed=3,
    )
    m.compile(
        "rmsprop",
        lr=1e-3,
        momentum=0.5,
        centered=True,
        clip_value=0.5,
        metrics=["f1"],
        schedule=optim.CosineWarmup(100, warmup_steps=10),
    )
    x = np.random.default_rng(0).integers(0, 9, size=(6, 7))
    m.fit(x, np.arange(6) % 3, epochs=1, batch_size=3, verbose=0, seed=0)
    path = m.save(tmp_path / "m")
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", "optimizer.safetensors"]
    back = ckpt.load(path)
    np.testing.assert_array_equal(back.predict(x), m.predict(x))
    assert back.get_config() == m.get_config()
    assert back.loss.class_weights.tolist() == [1.0, 2.0, 0.5]
    assert back.optimizer.hyper == m.optimizer.hyper and back.optimizer.name == "rmsprop"
    assert back.clip_value == 0.5 and back.metrics == ["f1"]
    assert back.schedule.get_config() == m.schedule.get_config()
    st, st2 = m._opt_core.state_dict(), back._opt_core.state_dict()
    assert st["step"] == st2["step"] == 2
    for k in st["buffers"]:
        np.testing.assert_array_equal(st["buffers"][k], st2["buffers"][k])
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["format"] == "lstmrs-checkpoint" and cfg["optimizer_state"]["kind"] == "rmsprop"
    assert "lstmrs_version" in cfg and set(cfg["files"]) == {
        "model.safetensors",
        "optimizer.safetensors",
    }
    # Weights are plain safetensors by PyTorch names.
    from safetensors.numpy import load_file

    w = load_file(os.path.join(path, "model.safetensors"))
    np.testing.assert_array_equal(
        w["rnn.weight_ih_l0_reverse"], m.state_dict()["rnn.weight_ih_l0_reverse"]
    )


def test_loaded_model_continues_training_identically(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 5, 2))
    y = rng.normal(size=(20, 1))
    a = Model(input_size=2, hidden_size=4, dtype="float64", seed=0)
    a.compile("adam", lr=1e-2, amsgrad=True)
    a.fit(x, y, epochs=1, batch_size=5, verbose=0, seed=0)
    a.save(tmp_path / "a")
    b = Model.load(tmp_path / "a")
    ha = a.fit(x, y, epochs=2, batch_size=5, verbose=0, seed=7)
    hb = b.fit(x, y, epochs=2, batch_size=5, verbose=0, seed=7)
    assert ha.history["loss"] == hb.history["loss"]
    np.testing.assert_array_equal(a.get_weights(), b.get_weights())
    assert b.optimizer_steps == 12


def test_tampering_and_torn_sets_are_detected(tmp_path):
    m = Model(input_size=2, hidden_size=3, seed=0)
    path = m.save(tmp_path / "m")
    weights = os.path.join(path, "model.safetensors")
    with open(weights, "rb") as f:
        data = bytearray(f.read())
    data[-1] ^= 1
    with open(weights, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="does not match"):
        ckpt.load(path)
    # A weights file from another save (a torn write of the set) is caught the same way.
    Model(input_size=2, hidden_size=3, seed=1).save(tmp_path / "other")
    os.replace(os.path.join(tmp_path / "other", "model.safetensors"), weights)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(path)
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["format_version"] = 99
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ckpt.CheckpointError, match="newer"):
        ckpt.load(path)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(tmp_path / "missing")
    assert isinstance(ckpt.CheckpointError("x"), ValueError)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "f.bin"
    ckpt.atomic_write(target, b"one")
    ckpt.atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_training_checkpoints_are_pruned_and_resumable(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(12, 4, 2)), rng.normal(size=(12, 1))
    m = Model(input_size=2, hidden_size=3, dtype="float64", seed=0)
    m.compile("sgd", lr=0.05, momentum=0.9)
    m.fit(x, y, epochs=4, batch_size=4, verbose=0, seed=0, checkpoint_dir=tmp_path / "run")
    names = sorted(os.listdir(tmp_path / "run"))
    assert names == ["latest", "step-000000009-end", "step-000000012-end"]
    assert ckpt.latest_checkpoint(tmp_path / "run").endswith("step-000000012-end")
    # Resuming a finished run trains nothing more.
    r = Model.resume(tmp_path / "run")
    h = r.fit(x, y, epochs=4, batch_size=4, verbose=0, seed=0)
    assert r.optimizer_steps == 12 and len(h.history["loss"]) == 4
    np.testing.assert_array_equal(r.get_weights(), m.get_weights())


class Crash(Callback):
    """Simulates a crash (an exception; KeyboardInterrupt is Ctrl-C) after a given number of
    optimizer steps."""

    def __init__(self, at, exc=RuntimeError):
        super().__init__()
        self.at = at
        self.exc = exc

    def on_batch_end(self, batch, logs=None):
        if self.model.optimizer_steps == self.at:
            raise self.exc("simulated crash")


def _lm(seed=0):
    m = Model(
        vocab_size=5,
        embedding_dim=3,
        hidden_size=8,
        num_layers=2,
        dropout=0.2,
        pooling="per_step",
        loss="cross_entropy",
        output_size=5,
        seed=seed,
    )
    m.compile("adam", lr=1e-2, metrics=["perplexity"], schedule=optim.StepLR(1, gamma=0.7))
    return m


def test_fit_stream_resumes_mid_epoch_with_carried_state(tmp_path):
    stream = np.random.default_rng(3).integers(0, 5, size=400)
    args = {
        "seq_len": 7,
        "batch_size": 4,
        "epochs": 3,
        "verbose": 0,
        "seed": 5,
        "validation_stream": stream[:100],
    }
    full = _lm().fit_stream(stream, **args)
    crashed = _lm()
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit_stream(
            stream, **args, checkpoint_dir=tmp_path, checkpoint_every=4, callbacks=[Crash(at=22)]
        )
    # Steps per epoch: 99 steps per sub-stream / 7 -> 15; the last checkpoint is at step 20,
    # in the middle of the second epoch, between two chunks (state carried). A crash (unlike
    # Ctrl-C) writes nothing more.
    assert ckpt.latest_checkpoint(tmp_path).endswith("step-000000020")
    assert os.path.exists(os.path.join(ckpt.latest_checkpoint(tmp_path), "carry.safetensors"))
    resumed = _lm(seed=99)  # the weights come from the checkpoint
    h = resumed.fit_stream(stream, **args, checkpoint_dir=tmp_path, checkpoint_every=4, resume=True)
    assert h.history["loss"] == full.history["loss"]
    assert h.history["val_perplexity"] == full.history["val_perplexity"]
    assert h.history["lr"] == full.history["lr"]


def test_resume_refuses_other_data(tmp_path):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(8, 3, 2)), rng.normal(size=(8, 1))
    m = Model(input_size=2, hidden_size=3, seed=0)
    m.fit(x, y, epochs=1, batch_size=4, verbose=0, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="resume"):
        m.fit(x[:6], y[:6], epochs=2, batch_size=4, verbose=0, checkpoint_dir=tmp_path, resume=True)


CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from lstmrs._lstmrs import set_num_threads
    from lstmrs.callbacks import Callback, CSVLogger, EarlyStopping
    from lstmrs.models import Model

    mode, ckdir, out = sys.argv[1:4]
    set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 12, 3)).astype(np.float32)
    y = (x[:, :, 0].cumsum(1)[:, -1:] * 0.3).astype(np.float32)

    class SlowAfterCheckpoint(Callback):
        # Gives the parent time to kill the process once the second checkpoint exists.
        batches_run = 0

        def on_batch_end(self, batch, logs=None):
            self.batches_run += 1
            if mode == "crash" and self.model.optimizer_steps >= 15:
                time.sleep(30)

    model = Model(input_size=3, hidden_size=16, num_layers=2, dropout=0.25, seed=0)
    model.compile("adam", lr=5e-3, clip_norm=1.0)
    slow = SlowAfterCheckpoint()
    callbacks = [slow, EarlyStopping("val_loss", patience=50),
                 CSVLogger(ckdir + "/log.csv")]
    kw = dict(epochs=4, batch_size=16, validation_split=0.2, verbose=0, seed=123,
              callbacks=callbacks)
    if mode != "full":
        kw.update(checkpoint_dir=ckdir, checkpoint_every=7, resume=(mode == "resume"))
    h = model.fit(x, y, **kw)
    np.save(out + ".npy", model.get_weights())
    json.dump({**h.history, "batches_run": slow.batches_run}, open(out, "w"))
    """
)


def test_kill9_and_resume_equals_uninterrupted_run(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONHASHSEED": "0"}

    def run(mode, out, ckdir):
        subprocess.run(
            [sys.executable, str(script), mode, str(ckdir), str(out)],
            check=True,
            env=env,
            timeout=120,
        )
        with open(out) as f:
            return json.load(f), np.load(str(out) + ".npy")

    full_dir, run_dir = tmp_path / "full", tmp_path / "run"
    full_dir.mkdir()
    run_dir.mkdir()
    full, full_w = run("full", tmp_path / "full.json", full_dir)

    child = subprocess.Popen(
        [sys.executable, str(script), "crash", str(run_dir), str(tmp_path / "crash.json")], env=env
    )
    latest = run_dir / "latest"
    deadline = time.monotonic() + 60
    try:
        # 8 batches per epoch; checkpoints every 7 steps: wait for the one at step 14.
        while time.monotonic() < deadline:
            if latest.exists() and "step-000000014" in latest.read_text():
                break
            assert child.poll() is None, "the training ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint appeared")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert not (tmp_path / "crash.json").exists()

    resumed, resumed_w = run("resume", tmp_path / "resumed.json", run_dir)
    # 4 epochs of 8 batches; the resumed process ran only those after the checkpoint.
    assert full["batches_run"] == 32 and resumed["batches_run"] == 32 - 14
    assert resumed["loss"] == full["loss"]
    assert resumed["val_loss"] == full["val_loss"]
    np.testing.assert_array_equal(resumed_w, full_w)
    # The log has each epoch once, with the uninterrupted run's values.
    rows = [ln.split(",") for ln in (run_dir / "log.csv").read_text().splitlines()]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    col = rows[0].index("loss")
    assert [float(r[col]) for r in rows[1:]] == full["loss"]
