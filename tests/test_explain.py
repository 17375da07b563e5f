"""lstmrs.explain: attributions (integrated gradients, gradient x input, occlusion), traces and
their summaries, on small models trained in the test."""

from __future__ import annotations

import ast
import pathlib

import lstmrs
import lstmrs.explain
import numpy as np
import pytest
from lstmrs.errors import InvalidArgumentError, ShapeError


def _fit(model, x, y, epochs, lengths=None):
    model.compile("adam", lr=1e-2)
    model.fit(x, y, lengths=lengths, epochs=epochs, batch_size=32, verbose=0, seed=0)
    return model


def _sines(rng, n, t):
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    freq = rng.uniform(0.2, 0.6, (n, 1))
    return np.sin(freq * np.arange(t + 3)[None, :] + phase)


def _regression(rng, dtype):
    """Dense sequence regression, forecast-like: the next 3 values of a sine."""
    s = _sines(rng, 256, 16)
    x = np.stack([s[:, :16], np.cos(s[:, :16])], axis=2)
    m = lstmrs.Model(input_size=2, hidden_size=12, output_size=3, dtype=dtype, seed=1)
    return _fit(m, x, s[:, 16:], 6), x[:8], None, 2


def _attention_classify(rng, dtype):
    """Classification with attention pooling over sequences of mixed lengths."""
    n, t = 256, 20
    y = rng.integers(0, 3, n)
    x = np.sin((0.3 + 0.4 * y)[:, None] * np.arange(t)[None, :] + rng.uniform(0, 6, (n, 1)))
    lengths = rng.integers(8, t + 1, n)
    m = lstmrs.Model(
        input_size=1,
        cell="gru",
        hidden_size=8,
        bidirectional=True,
        pooling="attention",
        output_size=3,
        loss="cross_entropy",
        dtype=dtype,
        seed=2,
    )
    _fit(m, x[..., None], y, 6, lengths)
    return m, x[:8, :, None], lengths[:8], None


def _token(rng, dtype):
    """A token model: does token 3 occur?"""
    n, t = 256, 12
    x = rng.integers(0, 10, (n, t))
    y = (x == 3).any(axis=1).astype(np.int64)
    m = lstmrs.Model(
        vocab_size=10,
        embedding_dim=6,
        hidden_size=12,
        output_size=2,
        loss="cross_entropy",
        dtype=dtype,
        seed=3,
    )
    lengths = rng.integers(6, t + 1, n)
    return _fit(m, x, y, 6, lengths), x[:8], lengths[:8], None


def _per_step(rng, dtype):
    """A per-step (char-LM-like) model: the next token of a noisy cycle."""
    n, t = 128, 16
    start = rng.integers(0, 5, (n, 1))
    x = (start + np.arange(t + 1)[None, :]) % 5
    m = lstmrs.Model(
        vocab_size=5,
        embedding_dim=4,
        hidden_size=12,
        pooling="per_step",
        output_size=5,
        loss="cross_entropy",
        dtype=dtype,
        seed=4,
    )
    _fit(m, x[:, :-1], x[:, 1:], 6)
    return m, x[:8, :-1], None, (10, 2)


KINDS = {
    "regression": _regression,
    "attention_classify": _attention_classify,
    "token": _token,
    "per_step": _per_step,
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_integrated_gradients_completeness(kind, dtype, rng):
    model, x, lengths, target = KINDS[kind](rng, dtype)
    e = model.explain(x, lengths=lengths, target=target, steps=50)
    b, t = x.shape[:2]
    assert e.attributions.shape == ((b, t) if model.tokens else (b, t, x.shape[2]))
    gap = e.output - e.baseline_output
    assert np.all(np.abs(gap) > 1e-3), gap  # the check below is not vacuous
    # Completeness: the attributions sum to F(x) - F(baseline) within 1%.
    total = e.attributions.reshape(b, -1).sum(axis=1)
    np.testing.assert_allclose(total - gap, e.delta, atol=1e-12)
    assert np.all(np.abs(e.delta) <= 0.01 * np.abs(gap)), (e.delta, gap)
    # The explained output is the model's own output.
    out = model.predict(x, lengths=lengths)
    if model.pooling == "per_step":
        want = out[np.arange(b), e.step, e.target]
    else:
        want = out[np.arange(b), e.target]
    np.testing.assert_allclose(e.output, want, rtol=1e-5, atol=1e-6)
    if lengths is not None:
        pad = np.arange(t)[None, :] >= lengths[:, None]
        assert np.all(e.step_scores()[pad] == 0)
    assert (e.attention is not None) == (model.pooling == "attention")
    if e.attention is not None:
        np.testing.assert_allclose(e.attention.sum(axis=1), 1.0, rtol=1e-5)


def test_default_targets(rng):
    model, x, lengths, _ = _attention_classify(rng, "float64")
    e = model.explain(x, lengths=lengths, method="gradient_x_input")
    np.testing.assert_array_equal(e.target, model.predict(x, lengths=lengths).argmax(axis=1))
    model, x, _, _ = _per_step(rng, "float64")
    e = model.explain(x, method="gradient_x_input")
    assert np.all(e.step == x.shape[1] - 1)
    # A per-step target at step s depends on nothing after s (the model is causal).
    e = model.explain(x, target=(5, 1), method="integrated_gradients", steps=20)
    assert np.all(e.step_scores()[:, 6:] == 0)
    assert np.any(e.step_scores()[:, :6] != 0)


def test_gradient_x_input_is_the_input_gradient_times_the_input(rng):
    m = lstmrs.Model(input_size=3, hidden_size=5, output_size=2, dtype="float64", seed=5)
    x = rng.standard_normal((4, 7, 3))
    e = m.explain(x, method="gradient_x_input", target=1)
    # Central differences of output 1 with respect to each input element.
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += 1e-6
        down[idx] -= 1e-6
        grad[idx] = (m.predict(up)[idx[0], 1] - m.predict(down)[idx[0], 1]) / 2e-6
    np.testing.assert_allclose(e.attributions, grad * x, rtol=1e-5, atol=1e-8)


def test_input_gradient_matches_torch(rng):
    torch = pytest.importorskip("torch")
    m = lstmrs.Model(
        input_size=3, hidden_size=5, num_layers=2, output_size=2, dtype="float64", seed=6
    )
    x = rng.standard_normal((3, 6, 3))
    e = m.explain(x, method="gradient_x_input", target=np.array([0, 1, 1]))
    rnn = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True).double()
    head = torch.nn.Linear(5, 2).double()
    sd = m.state_dict()
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            p.copy_(torch.from_numpy(sd[f"rnn.{name}"]))
        for name, p in head.named_parameters():
            p.copy_(torch.from_numpy(sd[f"head.0.{name}"]))
    xt = torch.from_numpy(x).requires_grad_(True)
    out = head(rnn(xt)[1][0][-1])
    out[torch.arange(3), torch.tensor([0, 1, 1])].sum().backward()
    np.testing.assert_allclose(e.attributions, xt.grad.numpy() * x, rtol=1e-9, atol=1e-12)


def test_occlusion_is_the_output_drop(rng):
    m = lstmrs.Model(input_size=2, hidden_size=6, output_size=1, dtype="float64", seed=7)
    x = rng.standard_normal((3, 5, 2))
    lengths = np.array([5, 3, 4])
    e = m.explain(x, lengths=lengths, method="occlusion")
    f = m.predict(x, lengths=lengths)[:, 0]
    for b in range(3):
        for t in range(5):
            for k in range(2):
                occ = x.copy()
                occ[b, t, k] = 0.0
                drop = f[b] - m.predict(occ, lengths=lengths)[b, 0]
                want = drop if t < lengths[b] else 0.0
                assert e.attributions[b, t, k] == pytest.approx(want, abs=1e-12)
    # Windows: each step scored by the mean drop of the windows covering it.
    e3 = m.explain(x, method="occlusion", window=3)
    occ = x.copy()
    occ[0, 0:3, 0] = 0.0
    assert e3.attributions[0, 0, 0] == pytest.approx(f[0] - m.predict(occ)[0, 0], abs=1e-12)


def test_occlusion_of_a_token_model_uses_the_baseline_tokens(rng):
    m = lstmrs.Model(vocab_size=6, embedding_dim=3, hidden_size=5, output_size=1, seed=8)
    m = lstmrs.Model(**{**m.get_config(), "dtype": "float64"})
    x = rng.integers(1, 6, (2, 5))
    e = m.explain(x, method="occlusion", baseline=0)
    f = m.predict(x)[:, 0]
    occ = x.copy()
    occ[1, 2] = 0
    assert e.attributions.shape == (2, 5)
    assert e.attributions[1, 2] == pytest.approx(f[1] - m.predict(occ)[1, 0], abs=1e-12)
    # Integrated gradients from the padding token's embedding.
    e = m.explain(x, baseline=0, steps=30)
    zeros = np.zeros_like(x)
    assert e.baseline_output == pytest.approx(m.predict(zeros)[:, 0], abs=1e-12)
    assert np.all(np.abs(e.delta) <= 0.01 * np.abs(e.output - e.baseline_output) + 1e-9)


def test_known_answer_adding_problem():
    """The adding problem's target is the sum of the values at the two marked steps: a trained
    model's attributions must put their top-2 mass on those steps. The baseline keeps the
    markers and sets every value to -1, outside the values' range [0, 1], so the question is
    purely "which values does the model read" and no marked value can hide by lying close to
    its reference (from an all-zero baseline a marked value of 0.01 would get about 0.01)."""
    x, y = lstmrs.datasets.adding_problem(2000, 30, seed=0)
    xt, _ = lstmrs.datasets.adding_problem(200, 30, seed=1)
    m = lstmrs.Model(input_size=2, hidden_size=24, output_size=1, seed=0)
    _fit(m, x, y, 20)
    baseline = xt.copy()
    baseline[:, :, 0] = -1.0
    marked = np.sort(np.argsort(-xt[:, :, 1], axis=1)[:, :2], axis=1)
    for method in ("integrated_gradients", "occlusion"):
        e = m.explain(xt, method=method, baseline=baseline, steps=32)
        hits = np.all(np.sort(e.top_steps(2), axis=1) == marked, axis=1)
        assert hits.mean() >= 0.95, (method, hits.mean())
        # The mass sits on the value channel; the markers equal their baseline.
        assert np.abs(e.attributions[:, :, 1]).max() < 1e-5


def _check_trace_shapes(tr, b, t, h, gates, states):
    for lt in tr.layers:
        assert list(lt.gates) == gates
        assert list(lt.states) == states
        for a in [*lt.gates.values(), *lt.states.values()]:
            assert a.shape == (b, t, h)


def test_trace_of_lstm_gru_and_summaries(rng):
    x = rng.standard_normal((4, 9, 2))
    lengths = np.array([9, 4, 7, 1])
    m = lstmrs.Model(
        input_size=2, hidden_size=5, num_layers=2, bidirectional=True, dtype="float64", seed=9
    )
    tr = m.trace(x, lengths=lengths)
    assert [(lt.layer, lt.direction) for lt in tr.layers] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    _check_trace_shapes(tr, 4, 9, 5, ["i", "f", "g", "o"], ["h", "c"])
    np.testing.assert_allclose(tr.output, m.predict(x, lengths=lengths), rtol=1e-12)
    lt = tr[0, 0]
    pad = np.arange(9)[None, :] >= lengths[:, None]
    assert np.all(lt.states["h"][pad] == 0) and np.all(lt.gates["f"][pad] == 0)
    np.testing.assert_allclose(lt.states["h"], lt.gates["o"] * np.tanh(lt.states["c"]))
    # Memory span: mean of 1/(1 - f) over the valid steps, per unit.
    f = lt.gates["f"][~pad]
    np.testing.assert_allclose(tr.memory_span()[(0, 0)], (1 / (1 - f)).mean(axis=0))
    sat = tr.gate_saturation()
    assert set(sat) == {(ly, d, g) for ly in (0, 1) for d in (0, 1) for g in "ifo"}
    i = tr[1, 1].gates["i"][~pad]
    assert sat[(1, 1, "i")] == pytest.approx(((i < 0.1).mean(), (i > 0.9).mean()))
    # A signal equal to one unit's activation finds that unit first, with r = 1.
    signal = tr[1, 0].states["c"][:, :, 3]
    best = tr.correlated_units(signal, state="c", top=3)
    assert best[0][:3] == (1, 0, 3) and best[0][3] == pytest.approx(1.0)
    with pytest.raises(ShapeError, match="signal"):
        tr.correlated_units(signal[:, :3])

    g = lstmrs.Model(input_size=2, cell="gru", hidden_size=4, dtype="float64", seed=1)
    tr = g.trace(x, lengths=lengths)
    _check_trace_shapes(tr, 4, 9, 4, ["r", "z", "n"], ["h"])
    lt = tr[0, 0]
    h_prev = np.concatenate([np.zeros((4, 1, 4)), lt.states["h"][:, :-1]], axis=1)
    valid = ~pad
    want = (1 - lt.gates["z"]) * lt.gates["n"] + lt.gates["z"] * h_prev
    np.testing.assert_allclose(lt.states["h"][valid], want[valid], atol=1e-12)
    assert set(tr.memory_span()) == {(0, 0)}


def test_trace_of_a_custom_cell_names_gates_from_its_description(rng):
    from lstmrs.cells import Cell, sigmoid, tanh

    def mgu(c):
        xf, xn = c.x_gates(2)
        hf, hn = c.h_gates(2)
        h = c.state("h")
        f = sigmoid(xf + hf)
        return {"h": (1 - f) * h + f * tanh(xn + f * hn)}

    spec = Cell.define("mgu_explain", mgu, states=("h",))
    m = lstmrs.Model(input_size=2, cell=spec, hidden_size=4, dtype="float64", seed=2)
    x = rng.standard_normal((3, 6, 2))
    tr = m.trace(x)
    lt = tr[0, 0]
    names = list(lt.gates)
    assert len(names) == 2 and names[0].startswith("sigmoid_") and names[1].startswith("tanh_")
    assert lt.formulas[names[0]] == "sigmoid((xg0 + hg0))"
    f, n = lt.gates[names[0]], lt.gates[names[1]]
    h = lt.states["h"]
    h_prev = np.concatenate([np.zeros((3, 1, 4)), h[:, :-1]], axis=1)
    np.testing.assert_allclose(h, (1 - f) * h_prev + f * n, atol=1e-12)
    span = tr.memory_span(gate=names[0])[(0, 0)]
    assert span.shape == (4,) and np.all(span >= 1)
    with pytest.raises(InvalidArgumentError, match="gate"):
        tr.memory_span()
    # Attributions work through the custom cell's backward pass too.
    e = m.explain(x, steps=40)
    assert np.all(np.abs(e.delta) <= 0.01 * np.abs(e.output - e.baseline_output) + 1e-9)


def test_trace_of_a_cell_with_the_second_languages_ops_matches_its_states(rng):
    # The trace recomputes a custom cell's gates from its description: with exp, log, softplus,
    # division, maximum/minimum and a row mean, they must be the values the kernel used.
    from lstmrs.cells import Cell, exp, log, maximum, minimum, row_mean, sigmoid, softplus, tanh

    def odd(c):
        xf, xn = c.x_gates(2)
        hf, hn = c.h_gates(2)
        h = c.state("h")
        centred = xf - row_mean(xf)
        f = sigmoid(maximum(centred, -2.0) + minimum(hf, 1.0) + log(softplus(hf) + 1.0))
        n = tanh(xn / (1.0 + exp(hn * hn)))
        return {"h": (1 - f) * h + f * n}

    spec = Cell.define("odd_ops_explain", odd, states=("h",))
    m = lstmrs.Model(input_size=2, cell=spec, hidden_size=5, dtype="float64", seed=4)
    x = rng.standard_normal((3, 6, 2))
    lt = m.trace(x)[0, 0]
    f, n = (lt.gates[k] for k in lt.gates)
    h = lt.states["h"]
    h_prev = np.concatenate([np.zeros((3, 1, 5)), h[:, :-1]], axis=1)
    np.testing.assert_allclose(h, (1 - f) * h_prev + f * n, atol=1e-12)


def test_bad_arguments_raise_typed_errors(rng):
    m = lstmrs.Model(input_size=2, hidden_size=3, output_size=2, seed=0)
    x = rng.standard_normal((2, 4, 2))
    with pytest.raises(InvalidArgumentError, match="method"):
        m.explain(x, method="saliency")
    with pytest.raises(InvalidArgumentError, match="target"):
        m.explain(x, target=5)
    with pytest.raises(ShapeError, match="target"):
        m.explain(x, target=[0, 1, 1])
    with pytest.raises(ShapeError, match="baseline"):
        m.explain(x, baseline=np.zeros((3, 4, 2)))
    with pytest.raises(InvalidArgumentError, match="steps"):
        m.explain(x, steps=0)
    with pytest.raises(ShapeError, match="x"):
        m.explain(rng.standard_normal((2, 4, 3)))
    with pytest.raises(InvalidArgumentError, match="key"):
        m.trace(x)[1, 0]
    p = lstmrs.Model(vocab_size=4, embedding_dim=2, hidden_size=3, pooling="per_step", seed=0)
    with pytest.raises(InvalidArgumentError, match="step"):
        p.explain(np.zeros((2, 3), dtype=np.int64), target=(3, 0))


def test_explain_module_does_not_import_models_at_runtime():
    """The package is layered: models import lower modules, never the reverse."""
    src = pathlib.Path(lstmrs.explain.__file__).read_text()
    runtime = []
    for node in ast.parse(src).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom):
                runtime.append(sub.module or "")
    assert "models" not in runtime and "lstmrs.models" not in runtime, runtime


def test_results_do_not_depend_on_the_call_size(rng, monkeypatch):
    """The batch is cut into core calls of bounded memory; the cut must not show."""
    m = lstmrs.Model(input_size=2, hidden_size=6, pooling="attention", dtype="float64", seed=3)
    x = rng.standard_normal((7, 9, 2))
    lengths = np.array([9, 3, 5, 9, 1, 8, 2])
    whole = {k: m.explain(x, lengths=lengths, method=k, steps=8) for k in lstmrs.explain.METHODS}
    monkeypatch.setattr(lstmrs.explain, "_CALL_BYTES", 9 * 60 * 8 * 3)  # three rows a call
    assert lstmrs.explain._rows_per_call(m, 9) == 3
    for k, e in whole.items():
        cut = m.explain(x, lengths=lengths, method=k, steps=8)
        np.testing.assert_allclose(cut.attributions, e.attributions, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(cut.attention, e.attention, rtol=1e-12)
