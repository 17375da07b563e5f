"""Streaming: one time step of LSTM or GRU(I -> H) -> linear(1) per Python call, the state
kept between calls, as a real-time loop calls it.

  lstmrs        Model(pooling="per_step").stepper(batch=B).step(x_t)
  torch         nn.LSTM / nn.GRU on a length-1 sequence with the state passed back in, then
                nn.Linear, under no_grad
  onnxruntime   an ONNX LSTM / GRU node with sequence length 1 and initial_h (/ initial_c)
                inputs plus the linear head, session.run with the returned Y_h (/ Y_c) fed back
"""

from __future__ import annotations

import numpy as np
import ort_models
from common import close, require_agreement, time_interleaved

CASES = [(1, 128), (32, 128), (1, 512), (32, 512)]  # (batch, hidden)
INPUT = 32


def _impls(torch, lstmrs, cell: str, b: int, h: int, threads: int, use_ort: bool) -> dict:
    """name -> a factory of fresh step functions (each with its own zero state) that return
    the step's [B, 1] output."""
    model = lstmrs.Model(
        input_size=INPUT, hidden_size=h, cell=cell, pooling="per_step", output_size=1, seed=0
    )
    sd = {k: np.asarray(v) for k, v in model.state_dict().items()}
    rnn_sd = {k[len("rnn.") :]: v for k, v in sd.items() if k.startswith("rnn.")}
    t_lstm = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(INPUT, h)
    t_lstm.load_state_dict({k: torch.from_numpy(v) for k, v in rnn_sd.items()})
    t_head = torch.nn.Linear(h, 1)
    t_head.load_state_dict(
        {
            "weight": torch.from_numpy(sd["head.0.weight"]),
            "bias": torch.from_numpy(sd["head.0.bias"]),
        }
    )

    def lstmrs_factory():
        stepper = model.stepper(batch=b)
        return stepper.step

    def torch_factory():
        state = [None]

        def step(x):
            with torch.no_grad():
                out, state[0] = t_lstm(torch.from_numpy(x)[None], state[0])
                return t_head(out[0]).numpy()

        return step

    factories = {"torch": torch_factory, "lstmrs": lstmrs_factory}
    if use_ort:
        sess = ort_models.step_session(
            rnn_sd, sd["head.0.weight"], sd["head.0.bias"], b, INPUT, threads, cell
        )
        states = ["h0", "c0"] if cell == "lstm" else ["h0"]

        def ort_factory():
            zeros = np.zeros((1, b, h), np.float32)
            feeds = dict.fromkeys(states, zeros)

            def step(x):
                feeds["x"] = x[None]
                y, *new = sess.run(None, feeds)
                feeds.update(zip(states, new))
                return y

            return step

        factories["onnxruntime"] = ort_factory
    return factories


def _repeat(step, x, n: int):
    def run():
        for _ in range(n):
            step(x)

    return run


def run_section(args, torch, lstmrs, use_ort: bool) -> list[dict]:
    rows = []
    steps = 200 if args.quick else 2000
    for cell, (b, h) in ((c, case) for c in args.cells for case in CASES):
        factories = _impls(torch, lstmrs, cell, b, h, args.threads, use_ort)
        xs = np.random.default_rng(0).standard_normal((4, b, INPUT)).astype(np.float32)

        # Four steps from a zero state: every implementation must follow torch.
        problems = []
        ref_step = factories["torch"]()
        ref = [ref_step(x) for x in xs]
        for name, make in factories.items():
            if name != "torch":
                step = make()
                got = [np.reshape(step(x), (b, 1)) for x in xs]
                problems.append(close(f"stream {name} {cell} B={b} H={h}", got, ref, 1e-4))
        require_agreement(
            f"stream {cell} B={b} H={h}: {', '.join(k for k in factories if k != 'torch')} agree with torch",
            problems,
        )

        fns = {name: _repeat(make(), xs[0], steps) for name, make in factories.items()}
        timed = time_interleaved(fns, 1, args.repeats)
        per_step = {n: float(np.median(t)) * 1e3 / steps for n, t in timed.items()}
        row = {
            "section": "stream",
            "cell": cell,
            "B": b,
            "H": h,
            "I": INPUT,
            "steps_per_repeat": steps,
        }
        row.update({f"{n}_us": v for n, v in per_step.items()})
        for n, key in (("torch", "torch"), ("onnxruntime", "ort")):
            if n in per_step:
                row[f"ratio_vs_{key}"] = per_step["lstmrs"] / per_step[n]
        rows.append(row)
    return rows
