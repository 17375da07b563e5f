"""Streaming: one time step of LSTM or GRU(I -> H) -> linear(1) per Python call, the state
kept between calls, as a real-time loop calls it.

  lstmrs        Model(pooling="per_step").stepper(batch=B).step(x_t)
  torch         nn.LSTM / nn.GRU on a length-1 sequence with the state passed back in, then
                nn.Linear, under no_grad
  onnxruntime   an ONNX LSTM / GRU node with sequence length 1 and initial_h (/ initial_c)
                inputs plus the linear head, session.run with the returned Y_h (/ Y_c) fed back
"""

from __future__ import annotations

import isolated
import numpy as np
import ort_models
from common import close, require_agreement, summarize, time_interleaved

CASES = [(1, 128), (32, 128), (1, 512), (32, 512)]  # (batch, hidden)
QUICK_CASES = CASES
INPUT = 32


def torch_factory(torch, cell: str, sd: dict, h: int):
    """Fresh torch step functions over ``sd`` (lstmrs.Model's state dict: ``rnn.*``, ``head.0.*``)."""
    rnn_sd = {k[len("rnn.") :]: v for k, v in sd.items() if k.startswith("rnn.")}
    t_rnn = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(INPUT, h)
    t_rnn.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in rnn_sd.items()})
    t_head = torch.nn.Linear(h, 1)
    t_head.load_state_dict(
        {
            "weight": torch.from_numpy(np.asarray(sd["head.0.weight"])),
            "bias": torch.from_numpy(np.asarray(sd["head.0.bias"])),
        }
    )

    def factory():
        state = [None]

        def step(x):
            with torch.no_grad():
                out, state[0] = t_rnn(torch.from_numpy(x)[None], state[0])
                return t_head(out[0]).numpy()

        return step

    return factory


def lstmrs_model(lstmrs, cell: str, h: int, sd: dict | None = None):
    model = lstmrs.Model(
        input_size=INPUT, hidden_size=h, cell=cell, pooling="per_step", output_size=1, seed=0
    )
    if sd is not None:
        model.load_state_dict(sd)
    return model


def lstmrs_factory(model, b: int):
    def factory():
        return model.stepper(batch=b).step

    return factory


def ort_step_model(cell: str, sd: dict, b: int):
    """The ONNX step graph of :func:`ort_factory` from lstmrs.Model's state dict."""
    rnn_sd = {k[len("rnn.") :]: np.asarray(v) for k, v in sd.items() if k.startswith("rnn.")}
    head_w, head_b = np.asarray(sd["head.0.weight"]), np.asarray(sd["head.0.bias"])
    return ort_models.step_model(rnn_sd, head_w, head_b, b, INPUT, cell)


def ort_factory(sess, cell: str, b: int, h: int):
    states = ["h0", "c0"] if cell == "lstm" else ["h0"]

    def factory():
        zeros = np.zeros((1, b, h), np.float32)
        feeds = dict.fromkeys(states, zeros)

        def step(x):
            feeds["x"] = x[None]
            y, *new = sess.run(None, feeds)
            feeds.update(zip(states, new))
            return y

        return step

    return factory


def _impls(torch, lstmrs, cell: str, b: int, h: int, threads: int, use_ort: bool):
    """(lstmrs.Model's state dict, name -> a factory of fresh step functions, each with its own
    zero state, that return the step's [B, 1] output)."""
    model = lstmrs_model(lstmrs, cell, h)
    sd = {k: np.asarray(v) for k, v in model.state_dict().items()}
    factories = {
        "torch": torch_factory(torch, cell, sd, h),
        "lstmrs": lstmrs_factory(model, b),
    }
    if use_ort:
        sess = ort_models.session_from_bytes(
            ort_step_model(cell, sd, b).SerializeToString(), threads
        )
        factories["onnxruntime"] = ort_factory(sess, cell, b, h)
    return sd, factories


def _repeat(step, x, n: int):
    def run():
        for _ in range(n):
            step(x)

    return run


def _verify(cell: str, b: int, h: int, factories: dict, xs) -> list:
    """Four steps from a zero state: every implementation must follow torch. Returns torch's
    outputs (the reference for the isolated workers' own four steps)."""
    problems = []
    ref_step = factories["torch"]()
    ref = [ref_step(x) for x in xs]
    for name, make in factories.items():
        if name != "torch":
            step = make()
            got = [np.reshape(step(x), (b, 1)) for x in xs]
            problems.append(close(f"stream {name} {cell} B={b} H={h}", got, ref, 1e-4))
    others = ", ".join(k for k in factories if k != "torch")
    require_agreement(f"stream {cell} B={b} H={h}: {others} agree with torch", problems)
    return ref


def _time_isolated(args, cell, b, h, sd, xs, ref, names, turn: int) -> tuple[dict, dict]:
    """Each implementation's repeats in its own worker process (worker.py), one after another
    in an order rotated by ``turn``; each worker's own four steps are checked against torch's."""
    with isolated.Workspace() as ws:
        npz = ws.save("stream", xs=xs, **{f"sd.{k}": v for k, v in sd.items()})
        onnx = (
            ws.save_model("step", ort_step_model(cell, sd, b)) if "onnxruntime" in names else None
        )
        base = {"kind": "stream", "cell": cell, "B": b, "H": h, "npz": npz, "onnx": onnx}
        # One warm-up repeat (``steps`` calls), as the shared timing does.
        base |= {"steps": steps_per_repeat(args), **isolated.timing_job(args), "warmup": 1}

        def check(lib, outs):
            got = [outs[f"step{k}"] for k in range(len(xs))]
            return [close(f"stream {lib} {cell} B={b} H={h} (worker)", got, ref, 1e-4)]

        return isolated.time_libs(base, isolated.rotated(names, turn), ws, check)


def steps_per_repeat(args) -> int:
    return 200 if args.quick else 2000


def run_section(args, torch, lstmrs, use_ort: bool) -> list[dict]:
    rows = []
    steps = steps_per_repeat(args)
    cases = QUICK_CASES if args.quick else CASES
    for turn, (cell, (b, h)) in enumerate((c, case) for c in args.cells for case in cases):
        sd, factories = _impls(torch, lstmrs, cell, b, h, args.threads, use_ort)
        xs = np.random.default_rng(0).standard_normal((4, b, INPUT)).astype(np.float32)
        ref = _verify(cell, b, h, factories, xs)
        if args.shared_process:
            fns = {name: _repeat(make(), xs[0], steps) for name, make in factories.items()}
            timed, children = time_interleaved(fns, 1, args.repeats, args.min_time), {}
        else:
            timed, children = _time_isolated(args, cell, b, h, sd, xs, ref, list(factories), turn)
        row = {
            "section": "stream",
            "cell": cell,
            "B": b,
            "H": h,
            "I": INPUT,
            "steps_per_repeat": steps,
        }
        for n in factories:
            stats = summarize(timed[n])
            row[f"{n}_us"] = stats["median_ms"] * 1e3 / steps
            row[f"{n}_min_us"] = stats["min_ms"] * 1e3 / steps
            row[f"{n}_iqr_rel"] = stats["iqr_rel"]
            row[f"{n}_calls"] = stats["calls"]
            row[f"{n}_times_ms"] = stats["times_ms"]
            if n in children:
                row[f"{n}_child"] = children[n]
        for n, key in (("torch", "torch"), ("onnxruntime", "ort")):
            if n in factories:
                row[f"ratio_vs_{key}"] = row["lstmrs_us"] / row[f"{n}_us"]
        rows.append(row)
    return rows
