"""`lstmrs export RUN --format onnx|safetensors` on a tiny adding run."""

from __future__ import annotations

import lstmrs
import numpy as np
import pytest
from lstmrs.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    sets = [
        "data.seq_len=6",
        "data.n_train=64",
        "data.n_val=16",
        "data.n_test=16",
        "train.epochs=1",
        "model.hidden_size=5",
        "model.bidirectional=true",
    ]
    args = ["train", "--task", "adding", "--run-dir", str(run), "--quiet", "--no-plots"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return run


def test_export_onnx_writes_a_model_that_matches_the_run(run_dir, capsys, rng):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    path = run_dir / "model.onnx"
    assert f"wrote {path}" in capsys.readouterr().out
    model = lstmrs.load(str(run_dir / "model"))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((4, 9, 2)).astype(np.float32)
    lens = np.array([9, 1, 5, 7])
    (got,) = sess.run(None, {"x": x, "lengths": lens})
    np.testing.assert_allclose(got, model.predict(x, lengths=lens), rtol=1e-5, atol=1e-5)


def test_export_safetensors_loads_into_torch(run_dir, tmp_path, rng):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    out = tmp_path / "lstm.safetensors"
    assert (
        main(
            ["export", str(run_dir), "--format", "safetensors", "--rnn-only", "--output", str(out)]
        )
        == 0
    )
    model = lstmrs.load(str(run_dir / "model"))
    lstm = torch.nn.LSTM(2, 5, bidirectional=True, batch_first=True)
    lstm.load_state_dict(load_file(str(out)))  # strict: exactly nn.LSTM's names
    x = rng.standard_normal((3, 6, 2)).astype(np.float32)
    with torch.no_grad():
        _, (h_n, _) = lstm(torch.from_numpy(x))
    # The model's head reads the final states of both directions ("last" pooling).
    sd = model.state_dict()
    rows = np.concatenate([h_n[0].numpy(), h_n[1].numpy()], axis=1)
    want = rows @ sd["head.0.weight"].T + sd["head.0.bias"]
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-5)
    full = tmp_path / "model.safetensors"
    assert main(["export", str(run_dir), "--format", "safetensors", "--output", str(full)]) == 0
    assert set(load_file(str(full))) == set(sd)


def test_export_usage_errors(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--format", "onnx", "--rnn-only"]) == 2
    assert "--rnn-only" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--format", "onnx"]) == 2
    assert main(["export", str(run_dir), "--format", "safetensors", "--opset", "17"]) == 2
    assert "--opset: only with --format onnx" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--format", "onnx", "--opset", "3"]) == 1
    assert "opset" in capsys.readouterr().err


def test_export_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--format" in out and "safetensors" in out and "--rnn-only" in out
