"""The GPU backend through the Python API: parity with the CPU layers, and the typed errors and
warnings of ``device=``.

The parity tests need a usable GPU (Mesa's lavapipe counts: CI runs them on it). They skip
without one, unless ``LSTMRS_REQUIRE_GPU=1``, which makes a missing GPU a failure so that a green
run proves the GPU path ran. The error and warning tests run everywhere.
"""

from __future__ import annotations

import os
import pickle
import warnings

import lstmrs
import numpy as np
import pytest
from lstmrs import _lstmrs, gpu
from lstmrs.errors import GpuUnavailableError, InvalidArgumentError

REQUIRE = os.environ.get("LSTMRS_REQUIRE_GPU") == "1"


@pytest.fixture(scope="module")
def gpu_device() -> dict:
    """The adapter, or a skip (a failure with LSTMRS_REQUIRE_GPU=1). Asserts it is Vulkan."""
    info = gpu.gpu_info()
    if not info["available"]:
        if REQUIRE:
            pytest.fail(f"LSTMRS_REQUIRE_GPU=1 but no usable GPU: {info['reason']}")
        pytest.skip(f"no usable GPU: {info['reason']}")
    assert info["backend"] == "vulkan", info
    return info


def _assert_close(name: str, got: np.ndarray, want: np.ndarray) -> None:
    """Relative 1e-4, with a floor of 1e-5 of the tensor's largest magnitude (sums over many
    steps round differently on the two paths, so near-zero elements are judged on scale)."""
    assert got.shape == want.shape, name
    assert got.dtype == want.dtype == np.float32, name
    floor = 1e-5 * max(float(np.abs(want).max()), 1e-3)
    err = np.abs(got.astype(np.float64) - want)
    allowed = 1e-4 * np.abs(want.astype(np.float64)) + floor
    worst = int(np.argmax(err / allowed))
    assert (err <= allowed).all(), (
        f"{name}: worst at {np.unravel_index(worst, want.shape)}: "
        f"gpu {got.flat[worst]} vs cpu {want.flat[worst]}"
    )


def _pair(cls, **kw):
    """The same layer on the CPU and on the GPU, with equal weights and dropout streams."""
    cpu = cls(**kw, seed=11)
    on_gpu = cls(**kw, seed=11, device="gpu")
    on_gpu.load_state_dict(cpu.state_dict())
    return cpu, on_gpu


CASES = [
    # cls, num_layers, bidirectional, batch_first, lengths
    (lstmrs.LSTM, 1, False, True, False),
    (lstmrs.LSTM, 2, True, False, True),
    (lstmrs.LSTM, 2, False, True, True),
    (lstmrs.GRU, 1, True, True, True),
    (lstmrs.GRU, 2, True, True, False),
    (lstmrs.GRU, 2, False, False, True),
]


@pytest.mark.parametrize(("cls", "layers", "bidir", "batch_first", "with_lengths"), CASES)
def test_forward_and_backward_match_cpu(
    gpu_device, rng, cls, layers, bidir, batch_first, with_lengths
):
    kw = {
        "input_size": 5,
        "hidden_size": 6,
        "num_layers": layers,
        "bidirectional": bidir,
        "batch_first": batch_first,
    }
    cpu, on_gpu = _pair(cls, **kw)
    assert on_gpu.device == "gpu" and cpu.device == "cpu"
    b, t = 3, 7
    x = rng.standard_normal((b, t, 5) if batch_first else (t, b, 5)).astype(np.float32)
    lengths = np.array([7, 2, 5]) if with_lengths else None
    d = 2 if bidir else 1
    h0 = rng.standard_normal((layers * d, b, 6)).astype(np.float32)
    lstm = cls is lstmrs.LSTM
    state = (h0, 0.5 * h0) if lstm else h0

    _check_forward_and_backward(cpu, on_gpu, x, state, lengths, rng)


def _check_forward_and_backward(cpu, on_gpu, x, state, lengths, rng) -> None:
    """Outputs, final states, and every gradient for random output and state gradients."""
    lstm = isinstance(state, tuple)
    out_c, st_c, tape_c = cpu.forward_train(x, state, lengths)
    out_g, st_g, tape_g = on_gpu.forward_train(x, state, lengths)
    _assert_close("output", out_g, out_c)
    for k, (g, c) in enumerate(zip(st_g, st_c) if lstm else [(st_g, st_c)]):
        _assert_close(f"state {k}", g, c)

    d_out = rng.standard_normal(out_c.shape).astype(np.float32)
    d_state = (
        tuple(rng.standard_normal(v.shape).astype(np.float32) for v in st_c)
        if lstm
        else (rng.standard_normal(st_c.shape).astype(np.float32))
    )
    gc = cpu.backward(tape_c, d_out, d_state)
    gg = on_gpu.backward(tape_g, d_out, d_state)
    for name in gc.params:
        _assert_close(f"d {name}", gg.params[name], gc.params[name])
    _assert_close("d input", gg.input, gc.input)
    for k, (g, c) in enumerate(zip(gg.state, gc.state) if lstm else [(gg.state, gc.state)]):
        _assert_close(f"d state {k}", g, c)


@pytest.mark.parametrize(
    ("layers", "bidir", "batch_first", "with_lengths"),
    [(1, False, True, False), (2, True, False, True), (2, False, True, True)],
)
def test_projected_lstm_matches_cpu(gpu_device, rng, layers, bidir, batch_first, with_lengths):
    """proj_size=P on the GPU is the CPU layer: outputs of D*P features, h_n [L*D,B,P], c_n
    [L*D,B,H], and every gradient, weight_hr_l{k}[_reverse] included."""
    kw = {"input_size": 5, "hidden_size": 7, "num_layers": layers, "bidirectional": bidir}
    cpu, on_gpu = _pair(lstmrs.LSTM, **kw, batch_first=batch_first, proj_size=3)
    assert on_gpu.device == "gpu" and on_gpu.proj_size == 3
    assert any(name.startswith("weight_hr_l") for name in on_gpu.state_dict())
    b, t, d = 3, 6, 2 if bidir else 1
    x = rng.standard_normal((b, t, 5) if batch_first else (t, b, 5)).astype(np.float32)
    lengths = np.array([6, 1, 4]) if with_lengths else None
    h0 = rng.standard_normal((layers * d, b, 3)).astype(np.float32)
    c0 = rng.standard_normal((layers * d, b, 7)).astype(np.float32)
    out, (h_n, c_n) = on_gpu(x, (h0, c0), lengths)
    assert out.shape[-1] == d * 3 and h_n.shape == h0.shape and c_n.shape == c0.shape
    _check_forward_and_backward(cpu, on_gpu, x, (h0, c0), lengths, rng)


def test_projected_lstm_on_the_gpu_matches_torch(gpu_device, rng):
    """A ``torch.nn.LSTM(proj_size=3)`` state dict loads unchanged into a GPU layer, which gives
    torch's outputs and final states (to 1e-5) and autograd's gradients (to 1e-4): stacked,
    bidirectional, packed ragged lengths, given initial states."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(4)
    kw = {"num_layers": 2, "bidirectional": True, "batch_first": True, "proj_size": 3}
    net = torch.nn.LSTM(4, 7, **kw)
    layer = lstmrs.LSTM(4, 7, **kw, device="gpu")
    layer.load_state_dict({k: v.detach().numpy() for k, v in net.state_dict().items()})
    x = rng.standard_normal((3, 6, 4)).astype(np.float32)
    lengths = np.array([6, 1, 4])
    h0 = (0.5 * rng.standard_normal((4, 3, 3))).astype(np.float32)
    c0 = (0.5 * rng.standard_normal((4, 3, 7))).astype(np.float32)
    g_out = rng.standard_normal((3, 6, 6)).astype(np.float32)
    g_h, g_c = rng.standard_normal(h0.shape), rng.standard_normal(c0.shape)
    g_h, g_c = g_h.astype(np.float32), g_c.astype(np.float32)

    tx, th0, tc0 = (torch.from_numpy(v).requires_grad_() for v in (x, h0, c0))
    packed = pack_padded_sequence(tx, torch.from_numpy(lengths), True, enforce_sorted=False)
    t_out, (t_h, t_c) = net(packed, (th0, tc0))
    t_out = pad_packed_sequence(t_out, batch_first=True, total_length=6)[0]
    loss = sum((a * torch.from_numpy(w)).sum() for a, w in ((t_out, g_out), (t_h, g_h), (t_c, g_c)))
    loss.backward()

    out, (h_n, c_n), tape = layer.forward_train(x, (h0, c0), lengths)
    fwd = {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(out, t_out.detach().numpy(), **fwd)
    np.testing.assert_allclose(h_n, t_h.detach().numpy(), **fwd)
    np.testing.assert_allclose(c_n, t_c.detach().numpy(), **fwd)
    g = layer.backward(tape, d_out=g_out, d_state=(g_h, g_c))
    grad = {"rtol": 1e-4, "atol": 1e-5}
    for name, p in net.named_parameters():
        np.testing.assert_allclose(g.params[name], p.grad.numpy(), err_msg=name, **grad)
    np.testing.assert_allclose(g.input, tx.grad.numpy(), err_msg="input", **grad)
    np.testing.assert_allclose(g.state[0], th0.grad.numpy(), err_msg="h0", **grad)
    np.testing.assert_allclose(g.state[1], tc0.grad.numpy(), err_msg="c0", **grad)


def test_dropout_and_unbatched_inputs_match_cpu(gpu_device, rng):
    """Training-mode dropout between layers draws the same masks on both devices (the layer's
    seed stream picks them), and an unbatched [T, I] input works on the GPU."""
    cpu, on_gpu = _pair(lstmrs.GRU, input_size=4, hidden_size=5, num_layers=3, dropout=0.5)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    out_c, st_c, tape_c = cpu.forward_train(x)
    out_g, st_g, tape_g = on_gpu.forward_train(x)
    _assert_close("output", out_g, out_c)
    _assert_close("h_n", st_g, st_c)
    d_out = np.ones_like(out_c)
    _assert_close(
        "d input", on_gpu.backward(tape_g, d_out).input, cpu.backward(tape_c, d_out).input
    )
    # Dropout really acted: evaluation mode gives another output.
    on_gpu.eval()
    assert not np.allclose(on_gpu(x)[0], out_g)


def test_gpu_tape_follows_parameter_changes(gpu_device, rng):
    """A GPU tape is refused once the weights change, as a CPU tape is."""
    layer = lstmrs.LSTM(3, 4, seed=1, device="gpu")
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    out, _, tape = layer.forward_train(x)
    layer.set_parameters_flat(layer.parameters_flat() * 0.5)
    with pytest.raises(InvalidArgumentError, match="recorded before"):
        layer.backward(tape, np.ones_like(out))


def test_gpu_info_describes_the_adapter(gpu_device):
    assert lstmrs.gpu_available() is True
    assert gpu_device["reason"] is None
    assert gpu_device["name"] and gpu_device["device_type"] in (
        "discrete",
        "integrated",
        "virtual",
        "cpu",
        "other",
    )


# -- errors and warnings: these run with or without a GPU ---------------------------------------


def test_gpu_info_is_consistent():
    info = gpu.gpu_info()
    assert set(info) == {
        "available",
        "reason",
        "name",
        "backend",
        "device_type",
        "driver",
        "driver_info",
    }
    assert lstmrs.gpu_available() is info["available"]
    if info["available"]:
        assert info["reason"] is None and info["backend"] == "vulkan"
    else:
        assert info["name"] is None
        assert any(
            r in info["reason"] for r in ("feature not built", "no adapter", "limits too small")
        ), info["reason"]


def test_core_refuses_the_gpu_with_the_reason():
    """The extension itself raises GpuUnavailableError, with the reason, when device='gpu'
    cannot run: "feature not built" in a CPU-only build, "no adapter" without a driver."""
    core = _lstmrs.RnnCore("lstm", 2, 3, 1, True, False, "float32", 0)
    x = np.zeros((1, 2, 2), dtype=np.float32)
    info = gpu.gpu_info()
    if info["available"]:
        out, h_n, c_n, tape = core.forward(x, device="gpu")
        assert out.shape == (1, 2, 3) and h_n.shape == c_n.shape == (1, 1, 3)
        assert tape is None
    else:
        with pytest.raises(GpuUnavailableError) as e:
            core.forward(x, device="gpu")
        assert info["reason"] in str(e.value)
        assert isinstance(e.value, RuntimeError)
    with pytest.raises(InvalidArgumentError, match="device"):
        core.forward(x, device="cuda")


def _no_gpu(monkeypatch, reason="GPU backend: no adapter: no Vulkan adapter (test)"):
    monkeypatch.setattr(
        gpu,
        "gpu_info",
        lambda: {
            "available": False,
            "reason": reason,
            "name": None,
            "backend": None,
            "device_type": None,
            "driver": None,
            "driver_info": None,
        },
    )


@pytest.mark.parametrize("cls", [lstmrs.LSTM, lstmrs.GRU])
def test_gpu_without_a_gpu_raises_the_reason(monkeypatch, cls):
    _no_gpu(monkeypatch)
    with pytest.raises(GpuUnavailableError, match="no adapter"):
        cls(3, 4, device="gpu")


def test_auto_without_a_gpu_warns_and_runs_on_the_cpu(monkeypatch, rng):
    _no_gpu(monkeypatch, reason="GPU backend: feature not built: (test)")
    with pytest.warns(RuntimeWarning, match=r"device='auto': running on the CPU .*feature not"):
        layer = lstmrs.LSTM(3, 4, seed=2, device="auto")
    assert layer.device == "cpu"
    ref = lstmrs.LSTM(3, 4, seed=2)
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(layer(x)[0], ref(x)[0])


def test_auto_with_a_gpu_picks_it(monkeypatch):
    monkeypatch.setattr(gpu, "gpu_info", lambda: {"available": True, "reason": None})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer = lstmrs.GRU(3, 4, device="auto")
    assert layer.device == "gpu"
    assert "device='gpu'" in repr(layer)


def test_what_the_gpu_cannot_run_is_an_invalid_argument(monkeypatch):
    """float64 and custom cells are refused before the machine is asked (and 'auto' keeps them
    on the CPU with a warning)."""
    monkeypatch.setattr(gpu, "gpu_info", lambda: pytest.fail("must not be asked"))
    with pytest.raises(InvalidArgumentError, match="float32"):
        lstmrs.LSTM(3, 4, dtype="float64", device="gpu")
    elman = {
        "name": "elman_gpu_test",
        "states": ["h"],
        "x_gates": 1,
        "h_gates": 1,
        "unit_params": [],
        "nodes": [
            {"op": "xg", "index": 0},
            {"op": "hg", "index": 0},
            {"op": "add", "args": [0, 1]},
            {"op": "tanh", "args": [2]},
        ],
        "outputs": {"h": 3},
    }
    with pytest.raises(InvalidArgumentError, match="custom cells"):
        lstmrs.RNN(3, 4, cell=elman, device="gpu")
    with pytest.warns(RuntimeWarning, match="float32"):
        assert lstmrs.GRU(3, 4, dtype="float64", device="auto").device == "cpu"
    with pytest.raises(InvalidArgumentError, match="device"):
        lstmrs.GRU(3, 4, device="cuda")


def test_device_survives_pickling(monkeypatch):
    layer = lstmrs.LSTM(3, 4, seed=3)
    assert pickle.loads(pickle.dumps(layer)).device == "cpu"
    monkeypatch.setattr(gpu, "gpu_info", lambda: {"available": True, "reason": None})
    layer.device = "gpu"
    data = pickle.dumps(layer)
    assert pickle.loads(data).device == "gpu"
    # Restored where no GPU is usable: the same typed error as asking for one.
    _no_gpu(monkeypatch)
    with pytest.raises(GpuUnavailableError, match="no adapter"):
        pickle.loads(data)


_NO_VULKAN_SCRIPT = """
import warnings
import numpy as np
import lstmrs
from lstmrs import gpu
from lstmrs.errors import GpuUnavailableError

info = gpu.gpu_info()
assert not info["available"], info
x = np.ones((2, 3, 4), np.float32)
try:
    lstmrs.LSTM(4, 5, device="gpu")(x)
except GpuUnavailableError as e:
    print("gpu error:", e)
else:
    raise SystemExit("device='gpu' ran without a Vulkan driver")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out, _ = lstmrs.LSTM(4, 5, device="auto", seed=0)(x)
ref, _ = lstmrs.LSTM(4, 5, seed=0)(x)
assert np.array_equal(out, ref)
print("auto warning:", caught[0].message)
print("reason:", info["reason"])
"""


def test_machine_without_vulkan_driver_falls_back_with_a_clear_message(tmp_path):
    """The same extension on a machine with no Vulkan driver: pointing the Vulkan loader at a
    driver list that does not exist leaves no adapter. ``device="gpu"`` raises the typed error
    with the reason, ``"auto"`` warns and computes on the CPU, bit-identical to a CPU layer."""
    import subprocess
    import sys

    missing = str(tmp_path / "no_such_driver.json")
    env = dict(os.environ, VK_ICD_FILENAMES=missing, VK_DRIVER_FILES=missing)
    env.pop("LSTMRS_REQUIRE_GPU", None)
    proc = subprocess.run(
        [sys.executable, "-c", _NO_VULKAN_SCRIPT],
        check=False,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reason = proc.stdout.split("reason:", 1)[1].strip()
    built = "feature not built" not in str(gpu.gpu_info()["reason"])
    assert ("no adapter" if built else "feature not built") in reason, proc.stdout
    error_line = proc.stdout.split("auto warning:")[0]
    assert "gpu error:" in error_line and reason in error_line
    assert "auto warning:" in proc.stdout


@pytest.mark.parametrize("proj_size", [0, 5])
def test_model_trains_on_the_gpu_like_on_the_cpu(gpu_device, proj_size):
    """``Model(device="gpu")``: the recurrent stack runs on the GPU inside the same ``fit``
    (embedding, head, loss and Adam on the host); losses and weights follow the CPU run, with
    and without projections."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 9, size=(48, 12))
    y = (x.sum(axis=1) % 3).astype(np.int64)
    runs = {}
    for device in ("cpu", "gpu"):
        m = lstmrs.Model(
            vocab_size=9,
            embedding_dim=5,
            hidden_size=8,
            num_layers=2,
            dropout=0.2,
            output_size=3,
            loss="cross_entropy",
            proj_size=proj_size,
            seed=3,
            device=device,
        )
        assert m.device == device
        m.compile("adam", lr=0.01, clip_norm=1.0)
        h = m.fit(x, y, epochs=3, batch_size=16, seed=1, verbose=0)
        runs[device] = (h.history["loss"], m.get_weights())
    np.testing.assert_allclose(runs["gpu"][0], runs["cpu"][0], rtol=1e-4)
    np.testing.assert_allclose(runs["gpu"][1], runs["cpu"][1], atol=1e-4)


def test_model_device_argument_errors(monkeypatch):
    with pytest.raises(InvalidArgumentError, match="device"):
        lstmrs.Model(input_size=2, device="tpu")
    # float64 has no GPU kernels: refused up front for "gpu", a warning and the CPU for "auto".
    with pytest.raises(InvalidArgumentError, match="f32|float32"):
        lstmrs.Model(input_size=2, dtype="float64", device="gpu")
    with pytest.warns(RuntimeWarning, match="device='auto': running on the CPU"):
        m = lstmrs.Model(input_size=2, dtype="float64", device="auto")
    assert m.device == "cpu"
    assert m.to("cpu") is m and m.device == "cpu"


def test_device_probe_measures_the_adapter(gpu_device):
    """The benchmark's probe (bench/gpu.py) returns positive, finite timings of the adapter."""
    p = _lstmrs.gpu_probe(32, 4, 1)
    assert p["matmul_n"] == 32 and p["dispatches"] == 4
    for key in ("submit_roundtrip_s", "matmul_s"):
        assert 0 < p[key] < 60, (key, p)
    assert 0 <= p["per_dispatch_s"] < 60, p


def test_device_probe_rejects_an_empty_product(gpu_device):
    with pytest.raises(InvalidArgumentError, match="n: expected a matrix size of at least 1"):
        _lstmrs.gpu_probe(0, 4, 1)
