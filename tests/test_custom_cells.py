"""Plugin cells run through the Rust core: the compiled programs match the NumPy reference of
the cell language, the DSL LSTM/GRU match the native kernels, and models with plugin cells train,
stream their config and restore from checkpoints without the plugin."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import lstmrs
import numpy as np
import pytest
from lstmrs import _lstmrs
from lstmrs.errors import InvalidArgumentError, LstmrsError
from lstmrs.plugins.builtin import GRU_CELL, LSTM_CELL
from lstmrs.testing import check_cell_gradients, isolated_plugins, register_temporarily

try:
    import lstmrs_cells
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins/lstmrs-cells/src"))
    import lstmrs_cells

PLUGIN_CELLS = {spec.name: spec for spec in lstmrs_cells.CELLS}


def _dsl_json(spec) -> str:
    """The expression form of a native cell, which the core compiles like any plugin cell."""
    return spec.to_json()


@pytest.mark.parametrize("name", sorted(PLUGIN_CELLS))
def test_plugin_cell_gradients_including_rust(name):
    report = check_cell_gradients(PLUGIN_CELLS[name], rust=True)
    assert report["rust"] == {"checked": True}
    assert report["elements"] > 0 and report["worst"] <= 1.0


@pytest.mark.parametrize("spec", [LSTM_CELL, GRU_CELL], ids=["lstm", "gru"])
def test_dsl_builtins_match_the_reference(spec):
    assert check_cell_gradients(spec, rust=True, hidden_size=4, seq_len=4)["rust"]["checked"]


def test_compile_cell_validates_and_dedups():
    text = PLUGIN_CELLS["indrnn"].to_json()
    assert _lstmrs.compile_cell(text) == "indrnn"
    assert _lstmrs.compile_cell(text) == "indrnn"
    bad = json.loads(text)
    bad["outputs"] = {}
    with pytest.raises(LstmrsError):
        _lstmrs.compile_cell(json.dumps(bad))
    core = _lstmrs.RnnCore(text, 3, 4, 1, True, False, "float32", 0)
    assert core.cell == "indrnn" and core.cell_description == text
    assert [n for n, _ in core.param_specs()] == ["weight_ih_l0", "bias_ih_l0", "u_l0"]
    # u starts at the constant 1.0 (its init rule), unlike the uniform weights.
    assert np.all(core.get_param("u_l0") == 1.0)


@pytest.mark.parametrize(
    ("native", "spec"), [(lstmrs.LSTM, LSTM_CELL), (lstmrs.GRU, GRU_CELL)], ids=["lstm", "gru"]
)
def test_rnn_layer_with_dsl_cell_equals_native(native, spec):
    kw = {"num_layers": 2, "bidirectional": True, "dtype": "float64", "seed": 3}
    ref = native(3, 5, **kw)
    dsl = lstmrs.RNN(3, 5, cell=_dsl_json(spec), **kw)
    assert dsl.cell == spec.name and dsl.cell_description is not None
    # Same parameter layout, same seed: same weights.
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(dsl.state_dict()[k], v)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 3))
    lengths = [6, 3, 5, 1]
    out_r, _, tape_r = ref.forward_train(x, lengths=lengths)
    out_d, _, tape_d = dsl.forward_train(x, lengths=lengths)
    np.testing.assert_allclose(out_d, out_r, rtol=1e-12, atol=1e-12)
    g = rng.normal(size=out_r.shape)
    gr, gd = ref.backward(tape_r, d_out=g), dsl.backward(tape_d, d_out=g)
    np.testing.assert_allclose(gd.flat, gr.flat, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(gd.input, gr.input, rtol=1e-11, atol=1e-12)
    # A native spec object resolves to the fused kernel.
    assert lstmrs.RNN(3, 5, cell=spec).cell_description is None


def test_rnn_layer_plugin_cell_state_and_pickle():
    spec = PLUGIN_CELLS["peephole_lstm"]
    layer = lstmrs.RNN(2, 3, cell=spec, num_layers=2, seed=1, dtype="float64")
    names = list(layer.state_dict())
    assert names[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "w_ci_l0"]
    x = np.random.default_rng(1).normal(size=(2, 4, 2))
    out, (_, c_n) = layer(x)
    # Truncated BPTT: two halves with the carried state equal the whole sequence.
    o1, s1 = layer(x[:, :2])
    o2, s2 = layer(x[:, 2:], state=s1)
    np.testing.assert_allclose(np.concatenate([o1, o2], axis=1), out, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(s2[1], c_n, rtol=1e-13, atol=1e-14)
    clone = pickle.loads(pickle.dumps(layer))
    np.testing.assert_array_equal(clone(x)[0], out)
    with pytest.raises(InvalidArgumentError):
        lstmrs.RNN(2, 3, cell="no_such_cell")


@pytest.mark.parametrize("name", ["peephole_lstm", "mgu", "indrnn"])
def test_model_with_plugin_cell_trains_and_restores(name, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 2)).astype(np.float32)
    y = x[:, :, :1].sum(axis=1) * 0.3
    with isolated_plugins():
        with register_temporarily(lstmrs_cells, name="lstmrs_cells_test"):
            m = lstmrs.Model(
                input_size=2,
                cell=name,
                hidden_size=8,
                num_layers=2,
                bidirectional=name == "mgu",
                dropout=0.1,
                seed=0,
            )
            assert m.cell == name
            assert m.has_cell_state == (name == "peephole_lstm")
            m.compile("adam", lr=1e-2)
            h = m.fit(x, y, epochs=4, batch_size=16, verbose=0, seed=0)
            assert h.history["loss"][-1] < h.history["loss"][0]
            pred = m.predict(x)
            path = m.save(tmp_path / "ckpt")
        # The plugin is gone: the checkpoint carries the cell description.
        with pytest.raises(InvalidArgumentError):
            lstmrs.Model(input_size=2, cell=name, hidden_size=8)
        restored = lstmrs.load(path)
        assert restored.cell == name
        np.testing.assert_allclose(restored.predict(x), pred, rtol=1e-6, atol=1e-6)
        assert isinstance(restored.get_config()["cell"], dict)
