"""ONNX Runtime sessions: a whole-sequence LSTM/GRU stack built directly from torch-layout
weights, the same stack exported by lstmrs' own exporter (``layer.to_onnx``), and a one-step LSTM
+ linear head with the state passed in and out (streaming)."""

from __future__ import annotations

import numpy as np


def available() -> str | None:
    """ORT's version string when onnxruntime and onnx import, else None."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        return None
    return f"{onnxruntime.__version__} (onnx {onnx.__version__})"


def _layer_tensors(cell: str, sd: dict, layer: int, h: int) -> list:
    """ONNX W [1, G*H, I], R [1, G*H, H], B [1, 2*G*H] of one layer (torch key suffix _l{k}):
    the exporter's own conversion (gates reordered to i,o,f,c / z,r,h)."""
    # Imported here, not at the top: the isolated ONNX Runtime worker (worker.py) imports this
    # module for its sessions and must not load lstmrs.
    from lstmrs.formats.onnx_rnn import onnx_layer_tensors

    return list(onnx_layer_tensors(cell, sd, layer, h, 1, True))


def _session(model, threads: int):
    return session_from_bytes(model.SerializeToString(), threads)


def session_from_bytes(model: bytes, threads: int):
    """A CPU session of a serialized model with the record's options: ``threads`` intra-op
    threads, one inter-op thread, sequential execution, every graph optimization."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def sequence_session(
    cell: str, sd: dict, b: int, t: int, i: int, h: int, layers: int, threads: int
):
    """Batch-first [B, T, I] -> [B, T, H]: ORT's CPU RNN kernels only take time-major input, so
    the LSTM/GRU nodes are wrapped in Transpose nodes (part of the timed call)."""
    return _session(sequence_model(cell, sd, b, t, i, h, layers), threads)


def sequence_model(cell: str, sd: dict, b: int, t: int, i: int, h: int, layers: int):
    """The ``onnx.ModelProto`` of :func:`sequence_session`."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Transpose", ["x"], ["x_tm0"], perm=[1, 0, 2])]
    inits = []
    for layer in range(layers):
        names = [f"W{layer}", f"R{layer}", f"B{layer}"]
        for arr, name in zip(_layer_tensors(cell, sd, layer, h), names):
            inits.append(numpy_helper.from_array(arr, name))
        attrs = {"hidden_size": h}
        if cell == "gru":
            attrs["linear_before_reset"] = 1  # torch: n = tanh(W_in x + b_in + r*(W_hn h + b_hn))
        nodes.append(
            helper.make_node(cell.upper(), [f"x_tm{layer}", *names], [f"y{layer}"], **attrs)
        )
        # Y is [T, num_directions, B, H].
        inits.append(numpy_helper.from_array(np.array([1], np.int64), f"axes{layer}"))
        nodes.append(
            helper.make_node("Squeeze", [f"y{layer}", f"axes{layer}"], [f"x_tm{layer + 1}"])
        )
    nodes.append(helper.make_node("Transpose", [f"x_tm{layers}"], ["out"], perm=[1, 0, 2]))
    graph = helper.make_graph(
        nodes,
        f"{cell}_bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, t, i])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [b, t, h])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def exported_session(layer, threads: int):
    """The lstmrs layer's own ONNX export (``layer.to_onnx``: checked by onnx.checker and in
    ONNX Runtime against the layer when made), without a lengths input: the deployment path."""
    return _session(layer.to_onnx(lengths=False), threads)


def step_session(
    sd: dict, head_w: np.ndarray, head_b: np.ndarray, b: int, i: int, threads: int, cell="lstm"
):
    """A session of :func:`step_model`."""
    return _session(step_model(sd, head_w, head_b, b, i, cell), threads)


def step_model(sd: dict, head_w: np.ndarray, head_b: np.ndarray, b: int, i: int, cell="lstm"):
    """One LSTM or GRU step + linear head: inputs x [1, B, I], h0 (and for the LSTM c0)
    [1, B, H]; outputs y [B, O], h1 (and c1) [1, B, H] (fed back as the next call's h0, c0).
    ``sd`` uses torch's LSTM/GRU names."""
    from onnx import TensorProto, helper, numpy_helper

    h = sd["weight_hh_l0"].shape[1]
    o = head_w.shape[0]
    lstm = cell == "lstm"
    inits = [numpy_helper.from_array(a, n) for a, n in zip(_layer_tensors(cell, sd, 0, h), "WRB")]
    inits += [
        numpy_helper.from_array(np.ascontiguousarray(head_w.T, np.float32), "head_w"),
        numpy_helper.from_array(np.ascontiguousarray(head_b, np.float32), "head_b"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    states = ["h0", "c0"] if lstm else ["h0"]
    outs = ["h1", "c1"] if lstm else ["h1"]
    if lstm:
        # Inputs: X, W, R, B, sequence_lens (absent), initial_h, initial_c.
        rnn = helper.make_node(
            "LSTM", ["x", "W", "R", "B", "", *states], ["", *outs], hidden_size=h
        )
    else:
        # torch's GRU: n = tanh(W_in x + b_in + r*(W_hn h + b_hn)).
        rnn = helper.make_node(
            "GRU",
            ["x", "W", "R", "B", "", *states],
            ["", *outs],
            hidden_size=h,
            linear_before_reset=1,
        )
    nodes = [
        rnn,
        helper.make_node("Squeeze", ["h1", "axis0"], ["h_last"]),
        helper.make_node("MatMul", ["h_last", "head_w"], ["proj"]),
        helper.make_node("Add", ["proj", "head_b"], ["y"]),
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        f"{cell}_step",
        [helper.make_tensor_value_info("x", f32, [1, b, i])]
        + [helper.make_tensor_value_info(n, f32, [1, b, h]) for n in states],
        [helper.make_tensor_value_info("y", f32, [b, o])]
        + [helper.make_tensor_value_info(n, f32, [1, b, h]) for n in outs],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
