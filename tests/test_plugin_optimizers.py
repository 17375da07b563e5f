"""Plugin optimizers drive `fit`: the core's loss-and-gradient call into a reused buffer, then
the plugin's in-place update of a zero-copy view of the weights (lstmrs-lion as the plugin);
clipping, checkpoints and exact resumption on that path; the core's loss-only call that
`evaluate` uses."""

from __future__ import annotations

import math
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from lstmrs import checkpoint as ckpt
from lstmrs.callbacks import Callback
from lstmrs.datasets import adding_problem
from lstmrs.errors import InvalidArgumentError
from lstmrs.metrics import loss_value
from lstmrs.models import Model
from lstmrs.optim import Optimizer
from lstmrs.testing import isolated_plugins, register_temporarily

try:
    import lstmrs_lion
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins/lstmrs-lion/src"))
    import lstmrs_lion


@pytest.fixture
def builtins_only():
    """A fresh plugin manager with lstmrs' built-ins only (no installed plugin)."""
    with isolated_plugins() as pm:
        yield pm


@pytest.fixture
def lion(builtins_only):
    """The Lion plugin registered for the test (no installed plugin is loaded)."""
    with register_temporarily(lstmrs_lion, name="lstmrs_lion"):
        yield lstmrs_lion


def numpy_lion(p, g, m, lr, beta1, beta2, wd):
    """Chen et al. (2023), Algorithm 2, in the arrays' dtype: returns the new (p, m)."""
    dt = p.dtype.type
    p = p * dt(1 - lr * wd)
    p = p - dt(lr) * np.sign(dt(beta1) * m + dt(1 - beta1) * g)
    m = dt(beta2) * m + dt(1 - beta2) * g
    return p, m


def clip_by_norm(g, max_norm):
    """torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when below 1."""
    norm = math.sqrt(float(np.sum(g.astype(np.float64) ** 2)))
    coef = max_norm / (norm + 1e-6)
    return (g * g.dtype.type(coef) if coef < 1.0 else g), norm


def test_compile_by_name_uses_the_plugin_and_the_split_step(lion):
    m = Model(input_size=2, hidden_size=4, seed=0)
    m.compile("lion", lr=1e-3, weight_decay=0.1)
    assert isinstance(m.optimizer, lion.Lion) and m.optimizer.hyper["weight_decay"] == 0.1
    assert not m.fused_optimizer
    m.compile("adam")
    assert m.fused_optimizer


def test_unknown_optimizer_names_the_registered_ones(builtins_only):
    m = Model(input_size=2, hidden_size=4, seed=0)
    with pytest.raises(InvalidArgumentError, match=r"'adam'.*got 'lion'.*lstmrs plugins"):
        m.compile("lion")


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-6), ("float64", 1e-13)])
def test_lion_through_fit_matches_numpy_lion_for_three_steps(lion, dtype, tol):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6, 3)).astype(dtype)
    y = rng.normal(size=(24, 2)).astype(dtype)
    lr, betas, wd, max_norm = 2e-2, (0.9, 0.99), 0.3, 0.05
    model = Model(input_size=3, hidden_size=5, output_size=2, dtype=dtype, seed=3)
    ref = Model(input_size=3, hidden_size=5, output_size=2, dtype=dtype, seed=3)
    model.compile("lion", lr=lr, betas=betas, weight_decay=wd, clip_norm=max_norm)
    h = model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0, seed=0)
    assert model.optimizer_steps == 3

    p = ref.get_weights()
    mom = np.zeros_like(p)
    spec = ref.loss.spec()
    losses, norms = [], []
    for k in range(3):
        ref.set_weights(p)
        xb, yb = (
            np.ascontiguousarray(x[8 * k : 8 * k + 8]),
            np.ascontiguousarray(y[8 * k : 8 * k + 8]),
        )
        loss, g = ref.core.loss_and_grad(xb, yb, spec, training=True)
        g, norm = clip_by_norm(g, max_norm)
        norms.append(norm)
        assert norm > max_norm  # the clipping is exercised
        p, mom = numpy_lion(p, g, mom, lr, *betas, wd)
        losses.append(loss)
    got = model.get_weights()
    np.testing.assert_allclose(got, p, rtol=tol, atol=tol)
    # Lion moves every weight by about lr per step: a wrong sign anywhere would show.
    assert np.abs(got - ref.core.get_flat()).max() > lr / 2
    np.testing.assert_allclose(model._opt_core.exp_avg, mom, rtol=tol * 10, atol=tol)
    assert h.history["loss"][0] == pytest.approx(np.mean(losses), rel=1e-9)


def test_lion_fit_reduces_the_loss(lion):
    x, y = adding_problem(256, 10, seed=0)
    m = Model(input_size=2, hidden_size=16, output_size=1, seed=0)
    m.compile("lion", lr=3e-3, clip_norm=1.0)
    before = m.evaluate(x, y)["loss"]
    h = m.fit(x, y, epochs=6, batch_size=32, verbose=0, seed=0)
    after = m.evaluate(x, y)["loss"]
    assert after < 0.5 * before, (before, after)
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert m.optimizer_steps == 48


def test_the_plugin_updates_the_weights_in_place_without_model_sized_copies(lion):
    # A model large enough (about 0.9 MB of weights) that a copy of it would stand out.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 4, 8)).astype(np.float32)
    y = rng.normal(size=(8, 1)).astype(np.float32)
    m = Model(input_size=8, hidden_size=224, output_size=1, seed=0)
    m.compile("lion", lr=1e-3)
    view = m.weights_view()
    assert view.flags.writeable and view.flags.c_contiguous and view.shape == (m.num_params,)
    view[0] = 7.0  # the view is the model's buffer, not a copy
    assert m.get_weights()[0] == 7.0
    size = m.num_params * 4

    class Probe(Callback):
        def __init__(self):
            super().__init__()
            self.peaks, self.grads = [], set()

        def on_batch_begin(self, batch, logs=None):
            tracemalloc.start()

        def on_batch_end(self, batch, logs=None):
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            self.peaks.append(peak)
            self.grads.add(id(self.model._grad))

    probe = Probe()
    m.fit(x, y, epochs=3, batch_size=4, verbose=0, seed=0, callbacks=[probe])
    assert len(probe.peaks) == 6 and len(probe.grads) == 1  # one gradient buffer, reused
    assert max(probe.peaks[1:]) < size // 10, (probe.peaks, size)
    assert m.weights_view() is view and np.shares_memory(view, m._params_view)
    np.testing.assert_array_equal(view, m.get_weights())
    assert view[0] != 7.0  # trained through the view


def test_gradient_buffer_must_not_alias_the_weights():
    m = Model(input_size=2, hidden_size=3, seed=0)
    x, y = np.zeros((2, 3, 2), np.float32), np.zeros((2, 1), np.float32)
    with pytest.raises(InvalidArgumentError, match="share memory"):
        m.core.loss_and_grad_into(x, y, m.loss.spec(), m.weights_view())
    with pytest.raises(Exception, match=r"expected shape \[5\]|ShapeError|shape"):
        m.core.loss_and_grad_into(x, y, m.loss.spec(), np.zeros(5, np.float32))


def test_loss_and_grad_into_equals_the_fused_steps_gradient_and_clipping():
    # SGD without momentum: the fused step moves the weights by -lr * clipped gradient.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 5, 2))
    y = rng.normal(size=(6, 1))
    a = Model(input_size=2, hidden_size=4, dtype="float64", dropout=0.0, seed=1)
    a.compile("sgd", lr=0.5, clip_value=0.01)
    w0 = a.get_weights()
    spec = a.loss.spec()
    g = np.zeros(a.num_params)
    loss, norm, *_ = a.core.loss_and_grad_into(x, y, spec, g, 0, clip_value=0.01)
    ref_loss, ref_g = a.core.loss_and_grad(x, y, spec, training=True)
    assert loss == ref_loss and norm == pytest.approx(np.linalg.norm(ref_g), rel=1e-12)
    np.testing.assert_array_equal(g, np.clip(ref_g, -0.01, 0.01))
    fused = a.core.train_step(x, y, spec, a._opt_core, 0.5, 0, clip_value=0.01)
    assert fused[0] == loss and fused[1] == norm
    np.testing.assert_allclose(a.get_weights(), w0 - 0.5 * g, rtol=0, atol=1e-15)


# --------------------------------------------------------------------------------------------
# Checkpoints and resumption


class Stop(Callback):
    """Raises ``exc`` after ``at`` optimizer steps (KeyboardInterrupt stands for Ctrl-C)."""

    def __init__(self, at, exc):
        super().__init__()
        self.at, self.exc = at, exc

    def on_batch_end(self, batch, logs=None):
        if self.model.optimizer_steps == self.at:
            raise self.exc("stop")


def _lion_model(seed=0):
    m = Model(input_size=3, hidden_size=6, num_layers=2, dropout=0.3, seed=seed)
    m.compile("lion", lr=3e-3, weight_decay=0.2, clip_norm=0.5, metrics=["mae"])
    return m


def _data():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 7, 3)).astype(np.float32)
    y = x[:, :, 0].sum(1, keepdims=True).astype(np.float32) * 0.2
    return x, y


FIT = {"epochs": 3, "batch_size": 8, "validation_split": 0.2, "verbose": 0, "seed": 11}


def test_lion_checkpoint_round_trip_and_crash_resume_are_exact(lion, tmp_path):
    x, y = _data()
    full = _lion_model()
    hf = full.fit(x, y, **FIT)

    crashed = _lion_model()
    with pytest.raises(RuntimeError, match="stop"):
        crashed.fit(
            x,
            y,
            **FIT,
            checkpoint_dir=tmp_path,
            checkpoint_every=3,
            callbacks=[Stop(7, RuntimeError)],
        )
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.endswith("step-000000006")  # a crash saves nothing more
    loaded = Model.load(latest)
    assert isinstance(loaded._opt_core, lion.LionCore) and loaded.optimizer_steps == 6
    assert loaded.optimizer.hyper == {"betas": (0.9, 0.99), "weight_decay": 0.2}
    assert loaded._opt_core.exp_avg.dtype == np.float32
    assert np.abs(loaded._opt_core.exp_avg).max() > 0

    resumed = _lion_model(seed=99)  # the weights and Lion's momentum come from the checkpoint
    hr = resumed.fit(x, y, **FIT, checkpoint_dir=tmp_path, checkpoint_every=3, resume=True)
    assert resumed.optimizer_steps == full.optimizer_steps == 12
    np.testing.assert_array_equal(resumed.get_weights(), full.get_weights())
    np.testing.assert_array_equal(resumed._opt_core.exp_avg, full._opt_core.exp_avg)
    assert hr.history["loss"] == hf.history["loss"]
    assert hr.history["val_mae"] == hf.history["val_mae"]

    # Saved and loaded again: identical predictions and optimizer state.
    again = Model.load(resumed.save(tmp_path / "final"))
    np.testing.assert_array_equal(again.predict(x), resumed.predict(x))
    np.testing.assert_array_equal(again._opt_core.exp_avg, resumed._opt_core.exp_avg)


def test_checkpoint_of_a_missing_plugin_optimizer_loads_for_inference_only(builtins_only, tmp_path):
    x, y = _data()
    with register_temporarily(lstmrs_lion, name="lstmrs_lion"):
        m = _lion_model()
        m.fit(x, y, **FIT, checkpoint_dir=tmp_path / "run")
    # The plugin is gone (the test suite loads no installed plugins).
    with pytest.warns(RuntimeWarning, match="'lion'"):
        back = Model.load(tmp_path / "run")
    assert not back.compiled
    np.testing.assert_array_equal(back.predict(x), m.predict(x))
    with pytest.warns(RuntimeWarning), pytest.raises(ckpt.CheckpointError, match="install"):
        Model.resume(tmp_path / "run")


# --------------------------------------------------------------------------------------------
# Ctrl-C


def _adam_model(seed=0):
    from lstmrs import optim

    m = Model(input_size=3, hidden_size=6, num_layers=2, dropout=0.3, seed=seed)
    m.compile(
        "adam",
        lr=5e-3,
        clip_norm=0.5,
        metrics=["mae"],
        schedule=optim.CosineWarmup(20, warmup_steps=3),
    )
    return m


@pytest.mark.parametrize("at", [5, 8, 12])
@pytest.mark.parametrize("make", [_adam_model, _lion_model], ids=["adam", "lion"])
def test_keyboard_interrupt_saves_a_checkpoint_and_resume_is_exact(
    lion, tmp_path, capsys, make, at
):
    # 4 training batches per epoch (32 sequences after the validation split): step 5 is in the
    # middle of the second epoch, 8 its last batch (the epoch's end has not run), 12 the end.
    x, y = _data()
    full = make()
    hf = full.fit(x, y, **FIT)

    stopped = make()
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(x, y, **FIT, checkpoint_dir=tmp_path, callbacks=[Stop(at, KeyboardInterrupt)])
    latest = ckpt.latest_checkpoint(tmp_path)
    assert os.path.basename(latest) == f"step-{at:09d}"
    assert stopped._interrupt_checkpoint == latest
    assert f"checkpoint saved to {latest}" in capsys.readouterr().err
    # The checkpoint holds the weights after step `at`'s update.
    np.testing.assert_array_equal(Model.load(latest).get_weights(), stopped.get_weights())

    resumed = make(seed=42)
    hr = resumed.fit(x, y, **FIT, checkpoint_dir=tmp_path, resume=True)
    np.testing.assert_array_equal(resumed.get_weights(), full.get_weights())
    assert hr.history["loss"] == hf.history["loss"]
    assert hr.history["val_loss"] == hf.history["val_loss"]
    assert hr.history["lr"] == hf.history["lr"]


def test_keyboard_interrupt_without_checkpoint_dir_just_propagates(tmp_path, capsys):
    x, y = _data()
    m = _adam_model()
    with pytest.raises(KeyboardInterrupt):
        m.fit(x, y, **FIT, callbacks=[Stop(3, KeyboardInterrupt)])
    assert m.optimizer_steps == 3 and m._interrupt_checkpoint is None
    assert "checkpoint" not in capsys.readouterr().err


def _sigint(times):
    # raise_signal delivers to this (the main) thread and runs the Python handler before it
    # returns; os.kill may land on one of the core's worker threads and reach the handler later.
    for _ in range(times):
        signal.raise_signal(signal.SIGINT)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_is_deferred_to_the_end_of_the_batch(tmp_path, capsys):
    class CtrlC(Callback):
        """Presses Ctrl-C `times` times just before step `at` + 1 runs."""

        def __init__(self, at, times):
            super().__init__()
            self.at, self.times = at, times

        def on_batch_begin(self, batch, logs=None):
            if self.model.optimizer_steps == self.at:
                _sigint(self.times)

    x, y = _data()
    full = _adam_model()
    full.fit(x, y, **FIT)
    # Once: the running batch completes (step 6), then the checkpoint and KeyboardInterrupt.
    m = _adam_model()
    with pytest.raises(KeyboardInterrupt):
        m.fit(x, y, **FIT, checkpoint_dir=tmp_path / "a", callbacks=[CtrlC(5, 1)])
    assert m.optimizer_steps == 6
    assert ckpt.latest_checkpoint(tmp_path / "a").endswith("step-000000006")
    assert "finishing this batch" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    # Twice: stops at once, before step 6; the state after step 5 is what is saved.
    m2 = _adam_model()
    with pytest.raises(KeyboardInterrupt):
        m2.fit(x, y, **FIT, checkpoint_dir=tmp_path / "b", callbacks=[CtrlC(5, 2)])
    assert m2.optimizer_steps == 5
    assert ckpt.latest_checkpoint(tmp_path / "b").endswith("step-000000005")
    for d in ("a", "b"):
        r = _adam_model(seed=7)
        r.fit(x, y, **FIT, checkpoint_dir=tmp_path / d, resume=True)
        np.testing.assert_array_equal(r.get_weights(), full.get_weights())


# --------------------------------------------------------------------------------------------
# The loss-only core call


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_evaluate_loss_from_the_core_matches_numpy(dtype):
    rng = np.random.default_rng(8)
    lens = rng.integers(1, 9, size=13)
    seqs = [rng.integers(0, 6, size=n) for n in lens]
    ys = [rng.integers(0, 4, size=n) for n in lens]
    ys[0][0] = -1  # ignored
    weights = [0.5, 1.0, 2.0, 1.5]
    m = Model(
        vocab_size=6,
        embedding_dim=3,
        hidden_size=5,
        pooling="per_step",
        output_size=4,
        loss={"name": "cross_entropy", "ignore_index": -1, "class_weights": weights},
        dtype=dtype,
        seed=0,
    )
    got = m.evaluate(seqs, ys, batch_size=4)["loss"]
    out = m.predict(seqs)
    t = max(lens)
    yy = np.full((13, t), -1)
    for i, s in enumerate(ys):
        yy[i, : len(s)] = s
    mask = np.arange(t)[None, :] < lens[:, None]
    want, _ = loss_value(
        "cross_entropy", out, yy, mask, ignore_index=-1, class_weights=np.array(weights)
    )
    assert got == pytest.approx(want, rel=1e-6 if dtype == "float32" else 1e-12)

    # The raw call: the loss of the training path without dropout, plus the outputs.
    xs = np.zeros((3, 4), np.int64) + 2
    yv = np.array([[0, 1, 2, 3]] * 3)
    value, out, h, c = m.core.loss(xs, yv, m._loss_spec)
    ref, _ = m.core.loss_and_grad(xs, yv, m._loss_spec)
    assert value == ref and out.shape == (3, 4, 4) and h.shape == (1, 3, 5) and c.shape == h.shape


# --------------------------------------------------------------------------------------------
# The hook's contract beyond Lion: JSON state ("extra") and the interface check


class _DecayingSGDCore:
    """Plain SGD whose rate decays by `decay` per step: its state is a counter and a running
    scale, kept in the state dict's JSON part (`extra`) with no buffers."""

    def __init__(self, decay):
        self.decay, self.scale, self._steps = decay, 1.0, 0

    @property
    def steps(self):
        return self._steps

    def step(self, params, grads, lr):
        params -= params.dtype.type(lr * self.scale) * grads
        self.scale *= self.decay
        self._steps += 1

    def state_dict(self):
        return {
            "kind": "decaying_sgd",
            "step": self._steps,
            "buffers": {},
            "extra": {"scale": self.scale},
        }

    def load_state_dict(self, state):
        assert state["kind"] == "decaying_sgd"
        self._steps, self.scale = int(state["step"]), float(state["extra"]["scale"])


class DecayingSGD(Optimizer):
    name = "decaying_sgd"
    default_lr = 0.05
    defaults: ClassVar[dict] = {"decay": 0.9}

    def build(self, num_params, dtype):
        return _DecayingSGDCore(self.hyper["decay"])


class _Broken(DecayingSGD):
    name = "broken_opt"

    def build(self, num_params, dtype):
        return object()


class _Plugin:
    @staticmethod
    def lstmrs_register_optimizers(register):
        register(DecayingSGD)
        register(_Broken)


def test_json_optimizer_state_round_trips_and_resumes_exactly(builtins_only, tmp_path):
    x, y = _data()
    with register_temporarily(_Plugin(), name="decaying"):
        full = Model(input_size=3, hidden_size=4, seed=0).compile("decaying_sgd", decay=0.8)
        full.fit(x, y, **FIT)
        m = Model(input_size=3, hidden_size=4, seed=0).compile("decaying_sgd", decay=0.8)
        with pytest.raises(KeyboardInterrupt):
            m.fit(x, y, **FIT, checkpoint_dir=tmp_path, callbacks=[Stop(6, KeyboardInterrupt)])
        config, _ = ckpt.read_checkpoint(tmp_path)
        assert config["optimizer_state"]["extra"] == {"scale": pytest.approx(0.8**6, rel=1e-15)}
        r = Model(input_size=3, hidden_size=4, seed=5).compile("decaying_sgd", decay=0.8)
        r.fit(x, y, **FIT, checkpoint_dir=tmp_path, resume=True)
        assert r._opt_core.scale == full._opt_core.scale == pytest.approx(0.8**12, rel=1e-14)
        np.testing.assert_array_equal(r.get_weights(), full.get_weights())
        with pytest.raises(
            InvalidArgumentError, match="lacks step, state_dict, load_state_dict, steps"
        ):
            Model(input_size=3, hidden_size=4).compile("broken_opt")
