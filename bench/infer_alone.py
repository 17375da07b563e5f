"""Inference of one implementation alone in this process, calls back to back: lstmrs or ONNX
Runtime (never both in one process, so neither's threads spin beside the other's calls, unlike
the interleaved record of ``bench_rnn.py``). Prints per case the median and fastest wall time
and the median CPU time of all threads. For A/B comparisons of builds, run it in turns with
each build's extension module in place (see the helpers' brief on timing).

    python bench/infer_alone.py lstmrs --threads 2 --repeats 15
    python bench/infer_alone.py ort --threads 2 --cases lstm:64,128,128,256 gru:8,2000,16,128
"""

from __future__ import annotations

import alone
import impls
import lstmrs
import numpy as np
import ort_models


def callable_for(which: str, cell: str, b, t, i, h, layers, threads):
    """The timed call; an ORT session is checked against the lstmrs layer it was built from."""
    layer = impls.lstmrs_layer(lstmrs, cell, i, h, layers)
    x = impls.make_input(b, t, i)
    if which == "lstmrs":
        return lambda: layer(x)
    sd = {k: np.asarray(v) for k, v in layer.state_dict().items()}
    sess = ort_models.sequence_session(cell, sd, b, t, i, h, layers, threads)
    got, want = sess.run(None, {"x": x})[0], layer(x)[0]
    if not np.allclose(got, want, atol=1e-4, rtol=1e-4):
        raise AssertionError(f"ORT and lstmrs disagree: max |diff| {np.abs(got - want).max():.3g}")
    return lambda: sess.run(None, {"x": x})


if __name__ == "__main__":
    alone.main(
        __doc__,
        ["lstmrs", "ort"],
        callable_for,
        set_up=lambda args: lstmrs.set_num_threads(args.threads),
    )
