"""Printing the record: the run's description and one table per section."""

from __future__ import annotations


def _fmt(v, spec: str, suffix: str = "") -> str:
    return "" if v is None else f"{v:{spec}}{suffix}"


def _table(head: list[tuple[str, int]], lines: list[list[str]]) -> None:
    """Left-aligned first columns (width < 0), right-aligned the rest."""

    def row(cells):
        return " ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_, w) in zip(cells, head))

    title = row([name for name, _ in head])
    print(title)
    print("-" * len(title))
    for cells in lines:
        print(row(cells))


def print_meta(meta: dict) -> None:
    print(
        f"threads: torch {meta['torch_threads']}, lstmrs {meta['lstmrs_threads']}, "
        f"ORT intra-op {meta['threads']}"
    )
    print("versions:", ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v))
    ident = meta.get("cpu_identity") or {}
    where = ", ".join(
        [f"{k} {ident[k]}" for k in ("cpu family", "model", "stepping") if k in ident]
        + [f"{k} {v}" for k, v in ident.get("caches", {}).items()]
    )
    print(
        f"cpu: {meta['cpu']} ({meta['cpus_visible']} visible; {' '.join(meta['cpu_flags'])})"
        + (f"; {where}" if where else "")
    )
    timing = meta.get("timing")
    if timing:
        where = timing["isolation"]
        if timing["isolated_sections"]:
            where += f" ({', '.join(timing['isolated_sections'])}; other sections shared)"
        print(f"timing: {where}")
        print(f"  calls: {timing['calls']}; {timing['statistics']}")
    for lib, kernels in meta.get("library_kernels", {}).items():
        print(f"  {lib} kernels: {kernels}")
    print(f"load average before: {meta['loadavg_before']}")
    if meta["loadavg_before"] and meta["loadavg_before"][0] > 0.5:
        print("  WARNING: the machine is busy; torch's spinning OpenMP threads suffer most")


def print_gemm(g: dict) -> None:
    n = g["shape"][0]
    print(
        f"GEMM ceiling: {g['library']} f32 [{n}x{n}]@[{n}x{n}]: {g['median_ms']:.2f} ms, {g['gflops']:.1f} GFLOP/s"
    )
    for c in g.get("candidates", []):
        spread = f", IQR {100 * c['iqr_rel']:.0f}% of {c['calls']} calls" if "iqr_rel" in c else ""
        print(
            f"  candidate {c['library']}: {c['median_ms']:.2f} ms, {c['gflops']:.1f} GFLOP/s{spread}"
        )


def _pct(r: dict) -> str:
    return _fmt(100 * r["gemm_fraction"], ".0f", "%") if "gemm_fraction" in r else ""


def _iqr(r: dict) -> str:
    return _fmt(100 * r["iqr_rel"], ".0f") if "iqr_rel" in r else ""


def _peak(r: dict) -> str:
    if "peak_error" in r:
        return "error"
    return _fmt(r.get("peak_rss_increase_mb"), ".1f")


def print_cases(rows: list[dict]) -> None:
    head = [
        ("cell", -4),
        ("case (B,T,I,H,L)", -22),
        ("mode", -9),
        ("impl", -11),
        ("median ms", 10),
        ("min ms", 9),
        ("IQR%", 5),
        ("calls", 5),
        ("GFLOP/s", 8),
        ("%GEMM", 6),
        ("/torch", 7),
        ("/ort", 7),
        ("/best", 6),
        ("peak MiB", 9),
        ("mem/torch", 9),
    ]
    lines = []
    for r in rows:
        case = f"({r['B']},{r['T']},{r['I']},{r['H']},{r['layers']})"
        lines.append(
            [
                r["cell"],
                case,
                r["mode"],
                r["impl"],
                f"{r['median_ms']:.2f}",
                f"{r['min_ms']:.2f}",
                _iqr(r),
                str(r.get("calls", len(r["times_ms"]))),
                f"{r['gflops']:.2f}",
                _pct(r),
                _fmt(r.get("ratio_vs_torch"), ".2f", "x"),
                _fmt(r.get("ratio_vs_ort"), ".2f", "x"),
                _fmt(r.get("ratio_vs_fastest_reference"), ".2f", "x"),
                _peak(r),
                _fmt(r.get("peak_ratio_vs_torch"), ".2f", "x"),
            ]
        )
    _table(head, lines)
    print(
        "ratios: lstmrs median time / reference median time (below 1 = lstmrs faster); /best: "
        "against the faster of torch and ORT; IQR%: inter-quartile range / median"
    )
    print(
        "lstmrs_onnx: the lstmrs layer exported by layer.to_onnx, run in ONNX Runtime (the "
        "deployment path); onnxruntime: a graph built by hand from torch's weights"
    )
    print(
        "%GEMM: GFLOP/s / the GEMM ceiling's; peak MiB: RSS added by one training step (memory.py)"
    )


def print_plugin(rows: list[dict], info: dict) -> None:
    b, t, i, h, layers = info["case"]
    plug = info.get("peephole_plugin", "not installed")
    print(
        f"cells in the cell language vs built-in LSTM, (B,T,I,H,L) = ({b},{t},{i},{h},{layers}); peephole from {plug}"
    )
    head = [
        ("impl", -20),
        ("cell", -13),
        ("mode", -9),
        ("median ms", 10),
        ("GFLOP/s", 8),
        ("%GEMM", 6),
        ("/builtin", 9),
        ("/torch", 7),
        ("peak MiB", 9),
    ]
    lines = [
        [
            r["impl"],
            r["cell"],
            r["mode"],
            f"{r['median_ms']:.2f}",
            f"{r['gflops']:.2f}",
            _pct(r),
            _fmt(r.get("ratio_vs_builtin"), ".2f", "x"),
            _fmt(r.get("ratio_vs_torch"), ".2f", "x"),
            _peak(r),
        ]
        for r in rows
    ]
    _table(head, lines)
    print(
        "/builtin: time / lstmrs.LSTM's; /torch: time / torch's for the same cell (torch-peephole is a Python loop)"
    )


def print_stream(rows: list[dict], input_size: int) -> None:
    print(f"streaming one step, cell({input_size} -> H) -> linear(1), microseconds per call")
    head = [
        ("cell", 5),
        ("B", 4),
        ("H", 5),
        ("torch", 10),
        ("ORT", 10),
        ("lstmrs", 10),
        ("/torch", 8),
        ("/ort", 8),
        ("IQR% t/o/l", 11),
    ]

    def spread(r):
        return "/".join(
            _fmt(100 * r[f"{n}_iqr_rel"], ".0f") if f"{n}_iqr_rel" in r else "-"
            for n in ("torch", "onnxruntime", "lstmrs")
        )

    lines = [
        [
            r.get("cell", "lstm"),
            str(r["B"]),
            str(r["H"]),
            f"{r['torch_us']:.1f}",
            _fmt(r.get("onnxruntime_us"), ".1f"),
            f"{r['lstmrs_us']:.1f}",
            _fmt(r.get("ratio_vs_torch"), ".2f", "x"),
            _fmt(r.get("ratio_vs_ort"), ".2f", "x"),
            spread(r),
        ]
        for r in rows
    ]
    _table(head, lines)
    print("median per step; IQR%: inter-quartile range / median of the repeats (torch/ORT/lstmrs)")


def print_tbptt(rows: list[dict]) -> None:
    r0 = rows[0]
    print(
        f"long stream, truncated BPTT: LSTM B={r0['B']} I={r0['I']} H={r0['H']}, window {r0['window']}, SGD per window"
    )
    head = [
        ("impl", -7),
        ("T", 8),
        ("wall s", 8),
        ("steps/s", 9),
        ("ms/window", 10),
        ("/torch", 7),
        ("peak MiB", 9),
        ("T_short", 8),
        ("peak MiB", 9),
        ("long/short", 10),
        ("2nd-half growth", 15),
    ]
    lines = []
    for r in rows:
        if "error" in r:
            lines.append([r["impl"], "error: " + r["error"]])
            continue
        lines.append(
            [
                r["impl"],
                str(r["T"]),
                f"{r['wall_s']:.2f}",
                f"{r['steps_per_s']:.0f}",
                f"{r['window_ms']:.2f}",
                _fmt(r.get("ratio_vs_torch"), ".2f", "x"),
                f"{r['peak_rss_increase_mb']:.1f}",
                str(r["T_short"]),
                f"{r['peak_rss_increase_short_mb']:.1f}",
                f"{r['peak_ratio_long_vs_short']:.2f}",
                f"{r['peak_growth_second_half_mb']:.1f}",
            ]
        )
    _table(head, lines)
    print(
        "peak MiB: RSS added over the post-setup baseline during the whole loop (T, then T_short);"
    )
    print("2nd-half growth: MiB the T run's peak grew during its second half (~0 = bounded)")


def print_gpu(section: dict) -> None:
    dev = section["device"]
    a = dev["lstmrs_adapter"]
    print(f"GPU: lstmrs on {a.get('name')} ({a.get('backend')}, {a.get('device_type')})", end="")
    print(f"; torch CUDA on {dev['cuda_device']}" if dev.get("cuda") else "; torch: no CUDA here")
    if "lstmrs_probe" in dev:
        p = dev["lstmrs_probe"]
        print(
            f"  lstmrs probe: submit round trip {p['submit_roundtrip_s'] * 1e6:.0f} us, "
            f"+{p['per_dispatch_s'] * 1e6:.1f} us per dispatch in a submit, "
            f"matmul {p['matmul_n']}^3 {p['matmul_tflops']:.3f} TFLOP/s"
        )
    if dev.get("cuda"):
        mm = dev["torch_matmul"]
        print(
            f"  torch: launch+sync {dev['torch_launch_s'] * 1e6:.0f} us, matmul "
            f"FP32 {mm['fp32']['tflops']:.1f} / TF32 {mm['tf32']['tflops']:.1f} TFLOP/s"
        )
    if not section["rows"]:
        return
    head = [
        ("cell", -4),
        ("T", 4),
        ("B", 4),
        ("H", 5),
        ("mode", -9),
        ("impl", -16),
        ("median ms", 10),
        ("GFLOP/s", 9),
        ("time/lstmrs-gpu", 15),
    ]
    lines = [
        [
            r["cell"],
            str(r["T"]),
            str(r["B"]),
            str(r["H"]),
            r["mode"],
            r["impl"],
            f"{r['median_ms']:.2f}",
            f"{r['gflops']:.2f}",
            _fmt(r.get("lstmrs_gpu_speedup"), ".2f", "x"),
        ]
        for r in section["rows"]
    ]
    _table(head, lines)
    print("time/lstmrs-gpu: the row's time / lstmrs-gpu's (above 1 = lstmrs-gpu faster);")
    print(
        "lstmrs-gpu includes upload and readback of NumPy arrays, torch-cuda keeps tensors on the device"
    )
