"""Every cell of lstmrs-cells exports to ONNX (a Scan running the cell's program) and matches
lstmrs in ONNX Runtime, as a layer and inside a Model, with mixed lengths."""

from __future__ import annotations

import lstmrs
import lstmrs_cells
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("spec", lstmrs_cells.CELLS, ids=lambda s: s.name)
def test_plugin_cell_exports_and_matches(spec):
    rng = np.random.default_rng(5)
    layer = lstmrs.RNN(3, 4, cell=spec, num_layers=2, bidirectional=True, seed=1)
    proto = layer.to_onnx()  # checked in ONNX Runtime by the exporter too
    assert "Scan" in {n.op_type for n in proto.graph.node}
    x = rng.standard_normal((3, 8, 3)).astype(np.float32)
    lens = np.array([8, 1, 5])
    got = run(proto, {"x": x, "lengths": lens})
    out, state = layer(x, lengths=lens)
    want = [out, *(state if isinstance(state, tuple) else (state,))]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)

    model = lstmrs.Model(input_size=3, cell=spec, hidden_size=4, pooling="attention", seed=2)
    (y,) = run(model.to_onnx(), {"x": x, "lengths": lens})
    np.testing.assert_allclose(y, model.predict(x, lengths=lens), rtol=1e-5, atol=1e-5)
