"""A long stream under truncated BPTT: T steps of B parallel streams, trained window by window.

Each window: forward from the carried state, backward of output.sum(), a plain SGD update of
every parameter, and the final state carried to the next window without a gradient path
(lstmrs returns plain arrays; torch detaches h and c). The inputs cycle through a pool of four
pre-drawn windows, so the stream itself takes constant memory and generating it is not timed.
torch does not compute the input gradient (a training loop has no use for it); lstmrs always
does.

Each (library, T) runs in a fresh child process (see memory.py): the wall time of the loop and
its peak RSS increase over the post-setup baseline, with the RSS sampled 20 times along the way.
Two views of "bounded by the window": the peak for T against the peak for T/10, and the growth
of the peak over the second half of the T run (about 0 when bounded). The allocator warms up
over the first tens of windows (glibc arenas of several threads), so the T/10 peak can sit
below the T peak without anything growing with the stream; the second-half growth tells them
apart.
"""

from __future__ import annotations

import time

import numpy as np
from common import close, measure_peak, require_agreement, rss_hwm_kib, run_child

POOL = 4
TRACE_POINTS = 20
LR = 1e-4


class LstmrsLoop:
    def __init__(self, lstmrs, b: int, i: int, h: int, window: int, sd=None):
        self.layer = lstmrs.LSTM(i, h, batch_first=True, dtype="float32", seed=0)
        if sd is not None:
            self.layer.load_state_dict(sd)
        self.ones = np.ones((b, window, h), np.float32)
        self.state = None

    def window(self, x: np.ndarray, keep: bool = False):
        layer = self.layer
        out, self.state, tape = layer.forward_train(x, self.state)
        g = layer.backward(tape, d_out=self.ones[:, : x.shape[1]])
        layer.set_parameters_flat(layer.parameters_flat() - LR * g.flat)
        return (out, g.flat.copy()) if keep else None


class TorchLoop:
    def __init__(self, torch, b: int, i: int, h: int, window: int):
        torch.manual_seed(0)
        self.torch = torch
        self.module = torch.nn.LSTM(i, h, batch_first=True)
        self.params = list(self.module.parameters())
        self.state = None

    def window(self, x: np.ndarray, keep: bool = False):
        torch = self.torch
        out, state = self.module(torch.from_numpy(x), self.state)
        out.sum().backward()
        grads = torch.cat([p.grad.flatten() for p in self.params]).numpy() if keep else None
        with torch.no_grad():
            for p in self.params:
                p.add_(p.grad, alpha=-LR)
                p.grad = None
        self.state = tuple(s.detach() for s in state)
        return (out.detach().numpy(), grads) if keep else None


def _pool(b: int, window: int, i: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((b, window, i)).astype(np.float32) for _ in range(POOL)]


def verify(torch, lstmrs, b: int, i: int, h: int, window: int) -> None:
    """Three windows in both libraries from the same weights: the third window's outputs and
    gradients must agree, which checks the state carry and the SGD update as well."""
    w = min(window, 20)
    t_loop = TorchLoop(torch, b, i, h, w)
    sd = {k: v.detach().numpy().copy() for k, v in t_loop.module.state_dict().items()}
    r_loop = LstmrsLoop(lstmrs, b, i, h, w, sd)
    pool = _pool(b, w, i)
    for x in pool[:2]:
        t_loop.window(x)
        r_loop.window(x)
    t_out, t_g = t_loop.window(pool[2], keep=True)
    r_out, r_g = r_loop.window(pool[2], keep=True)
    problems = [
        close("tbptt lstmrs output (window 3)", r_out, t_out, 1e-4),
        close("tbptt lstmrs gradients (window 3)", r_g, t_g, 1e-3),
    ]
    require_agreement(
        f"tbptt B={b} I={i} H={h}, 3 windows of {w}: lstmrs agrees with torch", problems
    )


def child(job: dict) -> dict:
    """The child process's side: runs the whole loop once, returns time and peak memory."""
    b, i, h, window, steps = job["B"], job["I"], job["H"], job["window"], job["T"]
    if job["lib"] == "torch":
        import torch

        torch.set_num_threads(job["threads"])
        loop = TorchLoop(torch, b, i, h, window)
    else:
        import lstmrs

        lstmrs.set_num_threads(job["threads"])
        loop = LstmrsLoop(lstmrs, b, i, h, window)
    pool = _pool(b, window, i)
    loop.window(pool[0][:, :2])  # page in code, start thread pools
    loop.state = None
    n = steps // window
    every = max(1, n // TRACE_POINTS)
    timing, trace = {}, []

    def run():
        t0 = time.perf_counter()
        for k in range(n):
            loop.window(pool[k % POOL])
            if (k + 1) % every == 0:  # a /proc read, a few microseconds
                trace.append((k + 1, rss_hwm_kib()))
        timing["wall_s"] = time.perf_counter() - t0

    mem = measure_peak(run)
    base = mem["baseline_rss_mb"]
    # [windows done, RSS increase, peak increase so far] in MiB over the post-setup baseline.
    mem["trace_mb"] = [[k, s["VmRSS"] / 1024 - base, s["VmHWM"] / 1024 - base] for k, s in trace]
    half = [p for k, _, p in mem["trace_mb"] if k <= n // 2]
    # Growth of the peak over the second half of the stream: ~0 when memory is bounded.
    mem["peak_growth_second_half_mb"] = mem["peak_rss_increase_mb"] - (half[-1] if half else 0.0)
    return {"windows": n, "steps": n * window, **timing, **mem}


def run_section(args, torch, lstmrs) -> list[dict]:
    b, i, h, window = args.tbptt_batch, args.tbptt_input, args.tbptt_hidden, args.tbptt_window
    long_t = args.tbptt_steps
    short_t = max(window, long_t // 10)
    verify(torch, lstmrs, b, i, h, window)
    rows = []
    for lib in ("torch", "lstmrs"):
        runs = {}
        for t in (long_t, short_t):
            job = {"kind": "tbptt", "lib": lib, "T": t, "window": window, "B": b, "I": i, "H": h}
            runs[t] = run_child({**job, "threads": args.threads})
            print(f"  tbptt {lib} T={t}: {_brief(runs[t])}", flush=True)
        long, short = runs[long_t], runs[short_t]
        row = {"section": "tbptt", "impl": lib, "B": b, "I": i, "H": h, "window": window}
        if "error" in long or "error" in short:
            rows.append({**row, "error": long.get("error") or short.get("error")})
            continue
        rows.append(
            {
                **row,
                "T": long["steps"],
                "wall_s": long["wall_s"],
                "steps_per_s": long["steps"] / long["wall_s"],
                "window_ms": long["wall_s"] / long["windows"] * 1e3,
                "peak_rss_increase_mb": long["peak_rss_increase_mb"],
                "T_short": short["steps"],
                "peak_rss_increase_short_mb": short["peak_rss_increase_mb"],
                "peak_ratio_long_vs_short": long["peak_rss_increase_mb"]
                / max(short["peak_rss_increase_mb"], 1e-3),
                "peak_growth_second_half_mb": long["peak_growth_second_half_mb"],
                "rss_trace_mb": long["trace_mb"],
                "memory_method": long["method"],
            }
        )
    by = {r["impl"]: r for r in rows if "error" not in r}
    if "torch" in by and "lstmrs" in by:
        by["lstmrs"]["ratio_vs_torch"] = by["lstmrs"]["wall_s"] / by["torch"]["wall_s"]
    return rows


def _brief(r: dict) -> str:
    if "error" in r:
        return "ERROR " + r["error"]
    return f"{r['wall_s']:.2f} s, peak +{r['peak_rss_increase_mb']:.1f} MiB"
