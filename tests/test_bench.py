"""The benchmark's own machinery (bench/): the timers and statistics, the isolated per-library
workers, a whole --quick record both ways, the reduced-precision record (lowp.py) both ways, and
the issue 16 goal summary on synthetic records.
Nothing here asserts a speed: the record measures, the tests check it measures what it says."""

from __future__ import annotations

import json
import os
import sys
import time
from types import SimpleNamespace

import lstmrs
import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
# The bench's modules import each other by bare name from bench/.
sys.path.insert(0, BENCH)

import cases
import common
import goals
import isolated
import lowp
import stream

TINY = (2, 5, 3, 4, 1)  # (B, T, I, H, layers)


def _args(**kw):
    base = {"threads": 1, "warmup": 1, "repeats": 3, "min_time": 0.0, "quick": True}
    return SimpleNamespace(**(base | kw))


# ---------------------------------------------------------------------------------------------
# Timers and statistics


def test_summarize_reports_median_min_and_quartiles():
    s = common.summarize([9.0, 1.0, 5.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0], flops=5e6)
    assert (s["median_ms"], s["min_ms"], s["q1_ms"], s["q3_ms"]) == (5.0, 1.0, 3.0, 7.0)
    assert s["iqr_ms"] == 4.0 and s["iqr_rel"] == pytest.approx(0.8) and s["calls"] == 9
    assert s["gflops"] == pytest.approx(1.0)  # 5e6 FLOPs in 5 ms
    one = common.summarize([2.0])
    assert one["iqr_ms"] == 0.0 and one["q1_ms"] == one["q3_ms"] == 2.0


def test_back_to_back_takes_at_least_repeats_calls_and_min_seconds():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.002)

    times = common.time_back_to_back(fn, warmup=2, repeats=3, min_seconds=0.0)
    assert len(times) == 3 and len(calls) == 5  # warm-up calls are not timed
    calls.clear()
    times = common.time_back_to_back(fn, warmup=0, repeats=3, min_seconds=0.03)
    assert sum(times) >= 30.0 and len(times) > 3 and len(calls) == len(times)
    assert common.calls_needed(2.0, 15, 1.0) == 500 and common.calls_needed(200.0, 15, 1.0) == 15


def test_interleaved_gives_short_calls_more_samples_and_keeps_turns():
    log = []

    def make(name, seconds):
        def fn():
            log.append(name)
            time.sleep(seconds)

        return fn

    fns = {"slow": make("slow", 0.01), "fast": make("fast", 0.001)}
    times = common.time_interleaved(fns, warmup=1, repeats=3, min_seconds=0.05)
    assert len(times["slow"]) % 3 == 0 and len(times["fast"]) % 3 == 0
    assert len(times["fast"]) > 2 * len(times["slow"])
    timed = log[2:]  # after one warm-up call each
    # Three turns: the slow function's calls are spread between the fast one's, not bunched.
    assert timed.index("fast") < len(timed) - 1 - timed[::-1].index("slow")
    assert timed[-1] == "fast" and timed[0] == "slow"
    # Without min_seconds: one call per turn, as before.
    assert {k: len(v) for k, v in common.time_interleaved(fns, 0, 2).items()} == {
        "slow": 2,
        "fast": 2,
    }


def test_rotated_starts_each_case_elsewhere():
    libs = ["torch", "lstmrs", "onnxruntime"]
    assert isolated.rotated(libs, 0) == libs
    assert isolated.rotated(libs, 1) == ["lstmrs", "onnxruntime", "torch"]
    assert isolated.rotated(libs, 5) == ["onnxruntime", "torch", "lstmrs"]


# ---------------------------------------------------------------------------------------------
# Isolated workers


def _tiny_lstm():
    b, t, i, h, layers = TINY
    layer = lstmrs.LSTM(i, h, num_layers=layers, batch_first=True, dtype="float32", seed=3)
    sd = {k: np.asarray(v) for k, v in layer.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((b, t, i)).astype(np.float32)
    return layer, sd, x


def test_isolated_worker_times_only_its_library_and_its_result_is_checked(capsys):
    layer, sd, x = _tiny_lstm()
    reference = {"out": np.asarray(layer(x)[0])}
    timed, children = cases._time_isolated(
        _args(), "lstm", TINY, "inference", ["lstmrs"], sd, x, {}, reference, 0
    )
    assert len(timed["lstmrs"]) == 3 and all(t > 0 for t in timed["lstmrs"])
    # The worker imported lstmrs only, with the thread count the parent set.
    assert children["lstmrs"]["modules"] == ["lstmrs"]
    assert children["lstmrs"]["threads_seen"]["lstmrs"] == 1
    assert "their own results agree with torch" in capsys.readouterr().out

    # A worker whose result disagrees with the reference stops the record before any table.
    wrong = {"out": reference["out"] + 1.0}
    with pytest.raises(SystemExit) as exc:
        cases._time_isolated(_args(), "lstm", TINY, "inference", ["lstmrs"], sd, x, {}, wrong, 0)
    assert exc.value.code == 1
    assert "lstm lstmrs out (worker)" in capsys.readouterr().err


def test_isolated_ort_worker_imports_neither_torch_nor_lstmrs():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    layer, sd, x = _tiny_lstm()
    reference = {"out": np.asarray(layer(x)[0])}
    models = {"lstmrs_onnx": layer.to_onnx(lengths=False)}
    timed, children = cases._time_isolated(
        _args(), "lstm", TINY, "inference", ["lstmrs_onnx"], sd, x, models, reference, 0
    )
    assert len(timed["lstmrs_onnx"]) == 3
    assert children["lstmrs_onnx"]["modules"] == ["onnxruntime"]


def test_failed_worker_exits_with_its_error(capsys):
    with pytest.raises(SystemExit):
        isolated.run_worker({"kind": "nope", "lib": "lstmrs", "threads": 1})
    assert "unknown job kind 'nope'" in capsys.readouterr().err


def test_lowp_worker_runs_the_quantized_layer_alone_and_names_its_kernel(tmp_path):
    layer, sd, x = _tiny_lstm()
    npz = str(tmp_path / "case.npz")
    np.savez(npz, x=x, **{f"sd.{k}": v for k, v in sd.items()})
    out = str(tmp_path / "out.npz")
    job = {"kind": "lowp", "cell": "lstm", "case": list(TINY), "npz": npz, "out": out}
    res = isolated.run_worker(job | {"lib": "lstmrs_bf16"} | isolated.timing_job(_args()))
    assert res["modules"] == ["lstmrs"] and len(res["times_ms"]) == 3
    assert res["label"] == lstmrs.quantize_dynamic(layer, "bfloat16").kernel
    with np.load(out) as data:
        got = data["out"]
    want = np.asarray(lstmrs.quantize_dynamic(layer, "bfloat16")(x)[0])
    np.testing.assert_array_equal(got, want)
    # Near the float layer, not equal to it: the worker ran bf16.
    ref = np.asarray(layer.eval()(x)[0])
    assert 0 < np.abs(got - ref).max() < 1e-2


@pytest.mark.parametrize("shared", [False, True], ids=["isolated", "shared-process"])
def test_lowp_record_isolated_and_shared(shared, tmp_path, restore_num_threads, capsys):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    out = tmp_path / "lowp.json"
    argv = ["--threads", "1", "--cells", "lstm", "--cases", ",".join(map(str, TINY))]
    argv += ["--repeats", "2", "--min-time", "0", "--no-ort", "--json", str(out)]
    try:
        assert lowp.main(argv + (["--shared-process"] if shared else [])) == 0
    finally:
        torch.set_num_threads(before)
    record = json.loads(out.read_text())
    assert record["meta"]["isolation"] == (isolated.SHARED if shared else isolated.ISOLATION)
    rows = {r["impl"]: r for r in record["speed"]}
    assert set(rows) == {lib for lib in worker_libs() if "onnxruntime" not in lib}
    for name, r in rows.items():
        assert r["calls"] >= 2 and r["median_ms"] > 0
        assert r["precision"] == lowp._precision(name)
        assert r["rel_err_vs_torch_f32"] <= lowp.SANITY_RTOL[r["precision"]]
        if shared:
            assert "child" not in r
        else:
            assert r["child"]["modules"] == [name.split("_")[0]]
    assert rows["lstmrs_bf16"]["kernel"] in lstmrs.quantization.kernels("bfloat16")
    assert rows["lstmrs_int8"]["kernel"] in lstmrs.quantization.kernels("qint8")
    assert (
        rows["lstmrs"]["rel_err_vs_torch_f32"] < 1e-5 < rows["lstmrs_bf16"]["rel_err_vs_torch_f32"]
    )
    assert [g["goal"] for g in record["goals"]][:3] == ["bf16_speed", "bf16_error", "int8_speed"]
    assert "reduced-precision goals" in capsys.readouterr().out


def test_lowp_impls_selects_and_names_are_checked(tmp_path, restore_num_threads, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "lowp.json"
    argv = ["--threads", "1", "--cells", "gru", "--cases", ",".join(map(str, TINY))]
    argv += ["--repeats", "2", "--min-time", "0", "--shared-process", "--json", str(out)]
    assert lowp.main(argv + ["--impls", "lstmrs_bf16,lstmrs"]) == 0
    rows = json.loads(out.read_text())["speed"]
    assert [r["impl"] for r in rows] == ["lstmrs", "lstmrs_bf16"]
    assert "ratio_vs_torch_bf16" not in rows[1] and rows[1]["speedup_vs_lstmrs_f32"] > 0
    with pytest.raises(SystemExit):
        lowp.main(argv + ["--impls", "lstmrs,tensorflow"])
    assert "--impls: expected names from" in capsys.readouterr().err


def worker_libs():
    import worker

    return worker.LOWP_LIBS


# ---------------------------------------------------------------------------------------------
# A whole --quick record, isolated (default) and --shared-process


@pytest.mark.parametrize("shared", [False, True], ids=["isolated", "shared-process"])
def test_quick_record_isolated_and_shared(shared, tmp_path, monkeypatch, restore_num_threads):
    torch = pytest.importorskip("torch")
    import bench_rnn

    monkeypatch.setattr(cases, "QUICK_CASES", [TINY])
    monkeypatch.setattr(stream, "QUICK_CASES", [(1, 8)])
    before = torch.get_num_threads()
    out = tmp_path / "record.json"
    argv = ["--quick", "--cells", "lstm", "--modes", "inference,training,stream", "--threads", "1"]
    argv += ["--gemm-size", "64", "--json", str(out)] + (["--shared-process"] if shared else [])
    try:
        assert bench_rnn.main(argv) == 0
    finally:
        torch.set_num_threads(before)
    record = json.loads(out.read_text())
    timing = record["meta"]["timing"]
    assert timing["isolation"] == (isolated.SHARED if shared else isolated.ISOLATION)
    rows = record["cases"]
    impls = {(r["mode"], r["impl"]) for r in rows}
    assert ("inference", "lstmrs") in impls and ("training", "torch") in impls
    for r in rows:
        assert r["calls"] == len(r["times_ms"]) >= 3 and r["min_ms"] <= r["median_ms"]
        assert r["q1_ms"] <= r["median_ms"] <= r["q3_ms"]
        if shared:
            assert "child" not in r
        else:
            lib = "onnxruntime" if r["impl"] in ("onnxruntime", "lstmrs_onnx") else r["impl"]
            assert r["child"]["modules"] == [lib]
    lstmrs_inf = next(r for r in rows if (r["mode"], r["impl"]) == ("inference", "lstmrs"))
    assert "ratio_vs_fastest_reference" in lstmrs_inf
    (srow,) = record["stream"]
    assert srow["lstmrs_us"] > 0 and ("lstmrs_child" in srow) != shared
    assert len(record["meta"]["gemm"]["candidates"]) >= 2
    # The machine is named beyond "AMD EPYC": its generation and caches, where Linux says them.
    ident = record["meta"]["cpu_identity"]
    if sys.platform == "linux" and os.uname().machine == "x86_64":
        assert {"cpu family", "model"} <= set(ident)
    if os.path.isdir("/sys/devices/system/cpu/cpu0/cache/index0"):
        assert ident["caches"]["L1d"].endswith("K")
    names = [g["goal"] for g in record["goals"]]
    assert names[:2] == ["inference_every", "inference_half"] and "memory" in names


# ---------------------------------------------------------------------------------------------
# Goal summary on synthetic records


def _case_row(cell, case, mode, **kw):
    b, t, i, h, layers = case
    return (
        {"cell": cell, "B": b, "T": t, "I": i, "H": h, "layers": layers, "mode": mode}
        | {"impl": "lstmrs"}
        | kw
    )


def _record(inf, train, gemm_frac, stream_b1_us, stream_b32, mem):
    """One lstmrs row per (cell, case) for each mode, from per-cell value lists over CASES."""
    rows = []
    for cell in ("lstm", "gru"):
        for k, case in enumerate(cases.CASES):
            frac = gemm_frac if case in goals.GEMM_BOUND else 0.3
            rows.append(
                _case_row(
                    cell,
                    case,
                    "inference",
                    ratio_vs_fastest_reference=inf[cell][k],
                    gemm_fraction=frac,
                )
            )
            rows.append(
                _case_row(
                    cell,
                    case,
                    "training",
                    ratio_vs_torch=train[cell][k],
                    gemm_fraction=frac,
                    peak_ratio_vs_torch=mem,
                )
            )
            rows.append(_case_row(cell, case, "inference") | {"impl": "torch"})
    srows = [
        {"cell": "lstm", "B": 1, "H": 128, "lstmrs_us": stream_b1_us, "ratio_vs_ort": 0.3},
        {"cell": "lstm", "B": 32, "H": 512, "lstmrs_us": 200.0, "ratio_vs_ort": stream_b32},
    ]
    return {"cases": rows, "stream": srows}


def _lowp_record(bf16_speedup, bf16_err, int8_vs_torch, change_pct):
    """lowp.py's speed rows on the GEMM-bound cases (both cells; times from the ratios) and two
    accuracy rows with the metric changes ``change_pct`` {dtype: (charlm, forecast)}."""
    rows = []
    for cell in ("lstm", "gru"):
        for k, case in enumerate(goals.GEMM_BOUND):

            def row(impl, ms, cell=cell, case=case, **kw):
                return {"cell": cell, "case": list(case), "impl": impl, "median_ms": ms} | kw

            rows.append(row("lstmrs", 100.0, rel_err_vs_torch_f32=1e-7))
            rows.append(
                row("lstmrs_bf16", 100.0 / bf16_speedup[cell][k], rel_err_vs_torch_f32=bf16_err)
            )
            rows.append(row("lstmrs_int8", 40.0, rel_err_vs_torch_f32=1e-2))
            rows.append(row("torch_qint8_dynamic", 40.0 / int8_vs_torch))
    acc = [
        {"task": task, "metric": metric}
        | {f"{dt}_change_pct": change_pct[dt][n] for dt in ("bfloat16", "qint8")}
        for n, (task, metric) in enumerate([("charlm", "val_bpc"), ("forecast", "model_rmse")])
    ]
    return {"speed": rows, "accuracy": acc}


def _by_name(record):
    return {g["goal"]: g for g in goals.check(record)}


def test_goals_all_met():
    inf = {"lstm": [0.7, 0.75, 0.9, 0.95, 0.6], "gru": [0.5, 0.8, 0.99, 0.9, 0.7]}
    train = {"lstm": [0.5] * 5, "gru": [0.4] * 5}
    lowp_rec = _lowp_record(
        {"lstm": [1.7, 1.8, 2.0], "gru": [1.65, 2.0, 2.2]},
        4e-3,
        0.3,
        {"bfloat16": (0.02, -0.04), "qint8": (0.01, -0.2)},
    )
    g = _by_name(goals.merged([_record(inf, train, 0.9, 3.0, 0.9, 0.8), lowp_rec]))
    assert all(v["status"] == "met" for v in g.values()), g
    assert g["inference_every"]["factor"] == pytest.approx(0.99)
    assert g["inference_every"]["decisive"] == "gru (64,128,128,256,2)"
    # 10 cases, 6 at or under 0.8: the 5th smallest (0.75) decides.
    assert g["inference_half"]["factor"] == pytest.approx(0.75 / 0.8)
    assert g["gemm_inference"]["factor"] == pytest.approx(0.85 / 0.9)
    assert len(g["gemm_training"]["items"]) == 2 * len(goals.GEMM_BOUND)
    assert g["stream_b1"]["factor"] == pytest.approx(0.75)
    assert g["bf16_speed"]["factor"] == pytest.approx(1.6 / 1.65)
    assert g["bf16_speed"]["decisive"] == "gru (64,64,512,1024,1)"
    assert len(g["bf16_error"]["items"]) == 2 * len(goals.GEMM_BOUND)
    # The int8 goal is on the LSTM of one case only.
    assert [it["what"] for it in g["int8_speed"]["items"]] == ["lstm (64,64,512,1024,1)"]
    assert g["int8_speed"]["factor"] == pytest.approx(0.3 / 0.5)
    # An improved metric counts as no change.
    assert g["int8_accuracy"]["factor"] == pytest.approx(0.01 / 2.0)


def test_lowp_goals_missed_report_the_distance(capsys):
    rec = _lowp_record(
        {"lstm": [1.45, 2.0, 3.0], "gru": [1.2, 2.0, 2.0]},
        1.5e-2,
        0.55,
        {"bfloat16": (0.5, 1.5), "qint8": (3.0, 0.1)},
    )
    g = {x["goal"]: x for x in goals.check_lowp(rec)}
    assert all(v["status"] == "missed" for v in g.values()), g
    assert g["bf16_speed"]["factor"] == pytest.approx(1.6 / 1.2)
    assert sum(not it["ok"] for it in g["bf16_speed"]["items"]) == 2
    assert g["bf16_error"]["factor"] == pytest.approx(1.5)
    assert g["int8_speed"]["factor"] == pytest.approx(0.55 / 0.5)
    assert g["bf16_accuracy"]["decisive"] == "forecast model_rmse"
    assert g["int8_accuracy"]["factor"] == pytest.approx(1.5)
    goals.print_goals(list(g.values()), title="lowp")
    out = capsys.readouterr().out
    assert (
        "[MISSED] bf16 inference >= 1.6x" in out and "lstm (64,64,512,1024,1): 1.45 vs 1.6" in out
    )


def test_goals_cli_merges_records(tmp_path, capsys):
    paths = []
    for n, rec in enumerate(
        [
            {"cases": [], "stream": []},
            _lowp_record(
                {"lstm": [2.0] * 3, "gru": [2.0] * 3},
                1e-3,
                0.2,
                {"bfloat16": (0, 0), "qint8": (0, 0)},
            ),
        ]
    ):
        paths.append(tmp_path / f"r{n}.json")
        paths[-1].write_text(json.dumps(rec))
    assert goals.main([str(p) for p in paths]) == 0
    out = capsys.readouterr().out
    assert "[   met] bf16 inference >= 1.6x" in out
    assert "inference <= 1.0x the faster of torch and ORT: not measured" in out


def test_goals_missed_report_the_distance(capsys):
    inf = {"lstm": [0.89, 1.69, 1.26, 1.06, 1.59], "gru": [3.68, 1.03, 0.97, 0.95, 0.80]}
    train = {"lstm": [1.21, 0.75, 0.71, 0.99, 0.67], "gru": [0.18, 0.55, 0.54, 0.49, 0.17]}
    g = _by_name(_record(inf, train, 0.7, 5.0, 1.16, 1.03))
    assert {k for k, v in g.items() if v["status"] == "met"} == set()
    assert g["inference_every"]["factor"] == pytest.approx(3.68)
    assert g["inference_every"]["decisive"] == "gru (32,100,8,64,1)"
    # One case of ten at or under 0.8: the 5th smallest (1.03) decides, 1.03 / 0.8 away.
    assert g["inference_half"]["factor"] == pytest.approx(1.03 / 0.8)
    assert g["training_lstm"]["factor"] == pytest.approx(1.21 / 0.8)
    assert g["training_gru"]["factor"] == pytest.approx(0.55 / 0.5)
    assert sum(not it["ok"] for it in g["training_gru"]["items"]) == 2
    assert g["gemm_inference"]["factor"] == pytest.approx(0.85 / 0.7)
    assert g["stream_b1"]["factor"] == pytest.approx(1.25)
    assert g["stream_b32"]["factor"] == pytest.approx(1.16)
    assert g["memory"]["factor"] == pytest.approx(1.03)
    goals.print_goals(list(g.values()))
    out = capsys.readouterr().out
    assert "[MISSED] inference <= 1.0x" in out and "gru (32,100,8,64,1): 3.68 vs 1 -> 3.68" in out


def test_goals_not_measured_without_rows():
    g = _by_name({"cases": [], "stream": []})
    assert all(v["status"] == "not measured" for v in g.values())
