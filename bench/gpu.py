"""The GPU section: lstmrs on the GPU (wgpu/Vulkan) against PyTorch CUDA (cuDNN) with TF32 off
and on, over a grid of T x B x H (input size = H, one layer), forward and training step; plus
what the device costs before any RNN runs (lstmrs' probe: a submit's round trip, one more
dispatch inside a submit, its tiled product's TFLOP/s; torch: an n^3 matmul in FP32 and TF32).

Run only when asked for (``--modes gpu``): on a software driver (Mesa's lavapipe, ~1 GFLOP/s)
the default grid would take hours, so shrink it with --gpu-T/--gpu-B/--gpu-H there.

What each timing includes:
  lstmrs-gpu    a NumPy call: upload the input, the whole pass in one submit, read the output
                (training: forward_train + backward, every gradient read back to the host);
  torch-cuda-*  tensors already on the device, torch.cuda.synchronize() after the call;
  lstmrs-cpu    the CPU path at the run's thread count, only for cases whose estimated time is
                under --gpu-cpu-budget seconds (the "GPU vs own CPU" ratio).
Every case is verified (lstmrs-gpu output and gradients against torch) before it is timed.
"""

from __future__ import annotations

import copy

import impls
from common import close, forward_flops, require_agreement, summarize, time_interleaved
from common import training_flops as train_flops

# The grid.
GRID_T = (50, 500)
GRID_B = (1, 16, 64, 256)
GRID_H = (128, 512, 1024)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def add_arguments(ap) -> None:
    ap.add_argument("--gpu-T", type=_ints, default=GRID_T, help="comma list of T (gpu)")
    ap.add_argument("--gpu-B", type=_ints, default=GRID_B, help="comma list of B (gpu)")
    ap.add_argument("--gpu-H", type=_ints, default=GRID_H, help="comma list of H = I (gpu)")
    ap.add_argument("--gpu-matmul", type=int, default=4096, help="n of the n^3 device matmul (gpu)")
    ap.add_argument(
        "--gpu-cpu-budget",
        type=float,
        default=2.0,
        help="time lstmrs-cpu only where a call is estimated under this many seconds (gpu)",
    )


def _torch_cuda_fns(torch, module, x, tf32: bool):
    """(infer, train) on CUDA with TF32 set as asked inside each call (the flag is global)."""
    dev = torch.device("cuda")
    tx = torch.from_numpy(x).to(dev)
    tx_grad = tx.clone().requires_grad_()

    def set_tf32():
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32

    def infer():
        set_tf32()
        with torch.inference_mode():
            out = module(tx)[0]
        torch.cuda.synchronize()
        return out

    def train():
        set_tf32()
        for p in module.parameters():
            p.grad = None
        tx_grad.grad = None
        module(tx_grad)[0].sum().backward()
        torch.cuda.synchronize()
        return tx_grad

    return infer, train


def _torch_matmul(torch, n: int, tf32: bool, warmup: int, repeats: int) -> dict:
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")

    def run():
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a @ b
        torch.cuda.synchronize()

    times = time_interleaved({"mm": run}, warmup, repeats)["mm"]
    row = summarize(times, 2.0 * n**3)
    row["tflops"] = row["gflops"] / 1e3
    return row


def _launch_cost(torch, warmup: int, repeats: int) -> float:
    """Seconds of one tiny CUDA kernel launch plus synchronize, the counterpart of the probe's
    submit round trip."""
    t = torch.zeros(1, device="cuda")

    def run():
        t.add_(1.0)
        torch.cuda.synchronize()

    return summarize(time_interleaved({"k": run}, warmup, repeats)["k"])["median_ms"] / 1e3


def device_info(args, torch, lstmrs) -> dict:
    """The adapters, lstmrs' probe and torch's matmul/launch numbers (when CUDA exists)."""
    info = {"lstmrs_adapter": lstmrs.gpu.gpu_info(), "cuda": torch.cuda.is_available()}
    if info["lstmrs_adapter"]["available"]:
        from lstmrs import _lstmrs

        p = _lstmrs.gpu_probe(args.gpu_matmul, 64, max(args.repeats, 3))
        p["matmul_tflops"] = 2.0 * args.gpu_matmul**3 / p["matmul_s"] / 1e12
        info["lstmrs_probe"] = p
    if info["cuda"]:
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["torch_launch_s"] = _launch_cost(torch, args.warmup, max(args.repeats, 20))
        info["torch_matmul"] = {
            name: _torch_matmul(torch, args.gpu_matmul, tf32, args.warmup, args.repeats)
            for name, tf32 in (("fp32", False), ("tf32", True))
        }
    return info


def run_case(cell, t, b, h, args, torch, lstmrs, cuda: bool, cpu_gflops: float | None):
    i = h
    tnet = impls.torch_module(torch, cell, i, h, 1)
    sd = impls.state_dict_np(tnet)
    ours_cpu, ours_gpu = (
        impls.lstmrs_layer(lstmrs, cell, i, h, 1, device=device) for device in ("cpu", "gpu")
    )
    for layer in (ours_cpu, ours_gpu):
        layer.load_state_dict(sd)
    x = impls.make_input(b, t, i)
    gpu_infer, gpu_train = impls.lstmrs_fns(ours_gpu, x)
    fns_inf, fns_train = {"lstmrs-gpu": gpu_infer}, {"lstmrs-gpu": gpu_train}

    # The reference for verification: torch on CUDA in FP32 when there is one, else on the CPU.
    if cuda:
        tnet = tnet.to("cuda")
        ref_infer, ref_train = _torch_cuda_fns(torch, tnet, x, tf32=False)
        fns_inf["torch-cuda-fp32"], fns_train["torch-cuda-fp32"] = ref_infer, ref_train
        inf32, train32 = _torch_cuda_fns(torch, tnet, x, tf32=True)
        fns_inf["torch-cuda-tf32"], fns_train["torch-cuda-tf32"] = inf32, train32
    else:
        ref_infer, ref_train = impls.torch_fns(torch, tnet, x)
    ref = ref_infer().float().cpu().numpy()
    problems = [close(f"{cell} lstmrs-gpu output", gpu_infer(), ref, 1e-4)]
    g = gpu_train()
    tx_grad = ref_train()
    for name, p in tnet.named_parameters():
        problems.append(close(f"{cell} lstmrs-gpu d{name}", g.params[name], _np(p.grad), 1e-3))
    problems.append(close(f"{cell} lstmrs-gpu dinput", g.input, _np(tx_grad.grad), 1e-3))
    require_agreement(f"{cell} T={t} B={b} H={h} on the GPU agrees with torch", problems)

    fwd = forward_flops(cell, b, t, i, h, 1)
    if cpu_gflops and train_flops(fwd) / (cpu_gflops * 1e9) < args.gpu_cpu_budget:
        cpu_infer, cpu_train = impls.lstmrs_fns(ours_cpu, x)
        fns_inf["lstmrs-cpu"], fns_train["lstmrs-cpu"] = cpu_infer, cpu_train
    rows = []
    for mode, fns, flops in (
        ("inference", fns_inf, fwd),
        ("training", fns_train, train_flops(fwd)),
    ):
        if mode not in args.modes:
            continue
        timed = time_interleaved(fns, args.warmup, args.repeats)
        group = [
            {"cell": cell, "T": t, "B": b, "H": h, "I": i, "mode": mode, "impl": impl}
            | summarize(times, flops)
            for impl, times in timed.items()
        ]
        ours_ms = next(r["median_ms"] for r in group if r["impl"] == "lstmrs-gpu")
        for r in group:
            if r["impl"] != "lstmrs-gpu":
                r["lstmrs_gpu_speedup"] = r["median_ms"] / ours_ms
        rows += group
    return rows


def _np(t):
    return t.detach().float().cpu().numpy()


def run_section(args, torch, lstmrs, cpu_gflops: float | None) -> dict:
    """{"device": device_info, "rows": [...]}; rows empty (with the reason printed) when lstmrs
    has no usable adapter here."""
    info = device_info(args, torch, lstmrs)
    adapter = info["lstmrs_adapter"]
    if not adapter["available"]:
        print(f"gpu: skipped, lstmrs has no GPU here ({adapter['reason']})")
        return {"device": info, "rows": []}
    rows = []
    # inference/training select the modes, as for the plugin section (both when neither is given).
    args = copy.copy(args)
    args.modes = args.modes or ["inference", "training"]
    for cell in args.cells:
        for t in args.gpu_T:
            for b in args.gpu_B:
                for h in args.gpu_H:
                    rows += run_case(cell, t, b, h, args, torch, lstmrs, info["cuda"], cpu_gflops)
                    print(f"  done gpu {cell} T={t} B={b} H={h}", flush=True)
    return {"device": info, "rows": rows}
