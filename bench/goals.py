"""Issue 16's performance goals, checked on one record: met or missed, and by how much.

Each goal is a list of items (a case, or a streaming shape) with a value and a limit. An item's
``factor`` is how many times lstmrs must get faster (or leaner) to meet its limit: value / limit
for an upper limit (a time ratio, microseconds, a memory ratio), limit / value for a lower one
(%GEMM). A goal's ``factor`` is that of its worst item (for "on at least half": of the item that
decides it); below 1 it is met with room to spare, above 1 it is the remaining distance. A goal
with no item in the record (a section not run, or --quick's small shapes) is "not measured".

The reduced-precision goals read lowp.py's record (its ``speed`` and ``accuracy`` rows):
:func:`check` takes either record, or both merged (``python bench/goals.py RECORD.json ...``
prints the table of several records' sections together).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

# Cases bound by the gate matmuls (large I and H): where %GEMM is judged.
GEMM_BOUND = ((64, 64, 512, 1024, 1), (64, 128, 128, 256, 1), (64, 128, 128, 256, 2))
GEMM_FRACTION = 0.85
INFERENCE_EVERY, INFERENCE_HALF = 1.0, 0.8
TRAINING = {"lstm": 0.8, "gru": 0.5}
STREAM_B1_H128_US = 4.0
# bf16 inference: at least this many times lstmrs' own float32 throughput on the GEMM-bound
# cases, its output within BF16_REL_ERR of torch float32 (max|a-b| / max|b|).
BF16_SPEEDUP, BF16_REL_ERR = 1.6, 1e-2
# int8 inference: at most this fraction of the time of torch's dynamically quantized LSTM.
INT8_CASE, INT8_VS_TORCH = (64, 64, 512, 1024, 1), 0.5
# The accuracy budget on trained models of the built-in tasks (lowp.py --accuracy): the task's
# metric (lower is better: bits per character, RMSE) may worsen by at most this many percent
# over the same model in float32.
ACCURACY_BUDGET_PCT = {"bfloat16": 1.0, "qint8": 2.0}


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
    return goals + check_lowp(record)


def _lowp_rows(record: dict, impl: str) -> dict:
    """(cell, case) -> the row of ``impl`` in lowp.py's speed rows."""
    return {(r["cell"], tuple(r["case"])): r for r in record.get("speed", []) if r["impl"] == impl}


def check_lowp(record: dict) -> list[dict]:
    """The reduced-precision goals of issue 16 on lowp.py's record."""
    f32, bf16 = _lowp_rows(record, "lstmrs"), _lowp_rows(record, "lstmrs_bf16")
    int8, tq = _lowp_rows(record, "lstmrs_int8"), _lowp_rows(record, "torch_qint8_dynamic")
    goals = []
    speed = [
        _item(
            f"{cell} ({','.join(map(str, case))})",
            f32[key]["median_ms"] / bf16[key]["median_ms"],
            BF16_SPEEDUP,
            upper=False,
        )
        for key in bf16
        for cell, case in [key]
        if case in GEMM_BOUND and key in f32
    ]
    goals.append(
        _goal(
            "bf16_speed",
            f"bf16 inference >= {BF16_SPEEDUP}x lstmrs f32 throughput on GEMM-bound cases",
            speed,
        )
    )
    err = [
        _item(f"{cell} ({','.join(map(str, case))})", r["rel_err_vs_torch_f32"], BF16_REL_ERR)
        for (cell, case), r in bf16.items()
        if case in GEMM_BOUND
    ]
    goals.append(
        _goal("bf16_error", f"bf16 outputs within {BF16_REL_ERR:g} of torch f32 (relative)", err)
    )
    q = [
        _item(
            f"{cell} ({','.join(map(str, case))})",
            int8[key]["median_ms"] / tq[key]["median_ms"],
            INT8_VS_TORCH,
        )
        for key in int8
        for cell, case in [key]
        if case == INT8_CASE and cell == "lstm" and key in tq
    ]
    goals.append(
        _goal("int8_speed", f"int8 LSTM <= {INT8_VS_TORCH}x torch's dynamic qint8 time", q)
    )
    for dt, name in (("bfloat16", "bf16"), ("qint8", "int8")):
        budget = ACCURACY_BUDGET_PCT[dt]
        items = [
            _item(f"{a['task']} {a['metric']}", max(a[f"{dt}_change_pct"], 0.0), budget)
            for a in record.get("accuracy", [])
        ]
        goals.append(
            _goal(
                f"{name}_accuracy",
                f"{name} task metric within {budget:g}% of f32 on trained models",
                items,
            )
        )
    return goals


def print_goals(goals: list[dict], quick: bool = False, title: str = "issue 16 goals") -> None:
    print(title + (" (a --quick run: small shapes, not the issue's cases)" if quick else ""))
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


def merged(records: list[dict]) -> dict:
    """Several records' sections in one (bench_rnn.py's ``cases``/``stream``, lowp.py's
    ``speed``/``accuracy``): a later record's rows are added after an earlier one's."""
    out: dict = {}
    for rec in records:
        for key in ("cases", "stream", "speed", "accuracy"):
            out.setdefault(key, []).extend(rec.get(key, []))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="issue 16's goals on one or more records")
    p.add_argument("records", nargs="+", metavar="RECORD.json")
    args = p.parse_args(argv)
    records = []
    for path in args.records:
        with open(path) as f:
            records.append(json.load(f))
    print_goals(check(merged(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
