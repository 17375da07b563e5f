"""Issue 16's performance goals, checked on one record: met or missed, and by how much.

Each goal is a list of items (a case, or a streaming shape) with a value and a limit. An item's
``factor`` is how many times lstmrs must get faster (or leaner) to meet its limit: value / limit
for an upper limit (a time ratio, microseconds, a memory ratio), limit / value for a lower one
(%GEMM). A goal's ``factor`` is that of its worst item (for "on at least half": of the item that
decides it); below 1 it is met with room to spare, above 1 it is the remaining distance. A goal
with no item in the record (a section not run, or --quick's small shapes) is "not measured".
"""

from __future__ import annotations

import math

# Cases bound by the gate matmuls (large I and H): where %GEMM is judged.
GEMM_BOUND = ((64, 64, 512, 1024, 1), (64, 128, 128, 256, 1), (64, 128, 128, 256, 2))
GEMM_FRACTION = 0.85
INFERENCE_EVERY, INFERENCE_HALF = 1.0, 0.8
TRAINING = {"lstm": 0.8, "gru": 0.5}
STREAM_B1_H128_US = 4.0


def _case(r: dict) -> tuple:
    return (r["B"], r["T"], r["I"], r["H"], r["layers"])


def _label(r: dict) -> str:
    return f"{r['cell']} ({','.join(str(v) for v in _case(r))})"


def _item(what: str, value: float, limit: float, upper: bool = True) -> dict:
    factor = value / limit if upper else limit / max(value, 1e-30)
    return {"what": what, "value": value, "limit": limit, "factor": factor, "ok": factor <= 1.0}


def _goal(name: str, text: str, items: list[dict], decisive: dict | None = None) -> dict:
    """``decisive``: the item that decides the goal (default: the worst)."""
    if not items:
        return {"goal": name, "text": text, "status": "not measured", "items": []}
    worst = decisive or max(items, key=lambda it: it["factor"])
    return {
        "goal": name,
        "text": text,
        "status": "met" if worst["factor"] <= 1.0 else "missed",
        "factor": worst["factor"],
        "decisive": worst["what"],
        "items": items,
    }


def _lstmrs_rows(record: dict, mode: str) -> list[dict]:
    return [r for r in record.get("cases", []) if r["impl"] == "lstmrs" and r["mode"] == mode]


def check(record: dict) -> list[dict]:
    """Every goal of issue 16 on ``record`` (bench_rnn.py's JSON), in the issue's order."""
    goals = []
    inf = [
        _item(_label(r), r["ratio_vs_fastest_reference"], INFERENCE_EVERY)
        for r in _lstmrs_rows(record, "inference")
        if "ratio_vs_fastest_reference" in r
    ]
    goals.append(_goal("inference_every", "inference <= 1.0x the faster of torch and ORT", inf))
    half = [_item(it["what"], it["value"], INFERENCE_HALF) for it in inf]
    # Met when the ceil(n/2)-th smallest ratio is within the limit: that item decides it.
    decisive = (
        sorted(half, key=lambda it: it["value"])[math.ceil(len(half) / 2) - 1] if half else None
    )
    goals.append(
        _goal(
            "inference_half",
            "inference <= 0.8x the faster reference on half the cases",
            half,
            decisive,
        )
    )
    for cell, limit in TRAINING.items():
        items = [
            _item(_label(r), r["ratio_vs_torch"], limit)
            for r in _lstmrs_rows(record, "training")
            if r["cell"] == cell and "ratio_vs_torch" in r
        ]
        goals.append(
            _goal(f"training_{cell}", f"{cell.upper()} training step <= {limit}x torch", items)
        )
    for mode in ("inference", "training"):
        items = [
            _item(_label(r), r["gemm_fraction"], GEMM_FRACTION, upper=False)
            for r in _lstmrs_rows(record, mode)
            if _case(r) in GEMM_BOUND and "gemm_fraction" in r
        ]
        goals.append(
            _goal(f"gemm_{mode}", f"{mode} >= 85% of the GEMM ceiling on GEMM-bound cases", items)
        )
    stream = record.get("stream", [])
    small = [
        _item(f"{r['cell']} B=1 H=128", r["lstmrs_us"], STREAM_B1_H128_US)
        for r in stream
        if (r["B"], r["H"]) == (1, 128)
    ]
    goals.append(_goal("stream_b1", "streaming B=1 H=128 <= 4 us per step", small))
    b32 = [
        _item(f"{r['cell']} B=32 H={r['H']}", r["ratio_vs_ort"], 1.0)
        for r in stream
        if r["B"] == 32 and "ratio_vs_ort" in r
    ]
    goals.append(_goal("stream_b32", "streaming B=32 <= ORT's time", b32))
    mem = [
        _item(_label(r), r["peak_ratio_vs_torch"], 1.0)
        for r in _lstmrs_rows(record, "training")
        if "peak_ratio_vs_torch" in r
    ]
    goals.append(_goal("memory", "training step peak memory <= torch's", mem))
    return goals


def print_goals(goals: list[dict], quick: bool = False) -> None:
    print(
        "issue 16 goals"
        + (" (a --quick run: small shapes, not the issue's cases)" if quick else "")
    )
    print("  factor: how many times faster (leaner) lstmrs must get; <= 1 met (room to spare)")
    for g in goals:
        tag = {"met": "met", "missed": "MISSED"}.get(g["status"], "n/a")
        if g["status"] == "not measured":
            print(f"  [{tag:>6}] {g['text']}: not measured in this run")
            continue
        n_ok = sum(it["ok"] for it in g["items"])
        print(
            f"  [{tag:>6}] {g['text']}: {n_ok}/{len(g['items'])} within; "
            f"factor {g['factor']:.2f} ({g['decisive']})"
        )
        for it in g["items"]:
            if not it["ok"]:
                print(
                    f"           {it['what']}: {it['value']:.3g} vs {it['limit']:g} -> {it['factor']:.2f}"
                )
