"""The projected LSTM (``proj_size``): lstmrs.LSTM(..., proj_size=P) against
torch.nn.LSTM(..., proj_size=P), inference and a training step (forward + backward of
output.sum()), each case verified against torch before it is timed.

With ``--proj-gpu`` the same layer on lstmrs' GPU backend (``device="gpu"``, a NumPy call: upload,
one submit, read back) is verified and timed beside them (impl ``lstmrs-gpu``); the adapter is
printed. On a software driver (Mesa's lavapipe) that only shows the path works, not its speed."""

from __future__ import annotations

import numpy as np
from common import close, require_agreement, summarize, time_interleaved
from report import _fmt, _table

# (B, T, I, H, P, layers, bidirectional)
CASES = [
    (32, 100, 8, 64, 16, 1, False),
    (64, 128, 128, 256, 64, 1, False),
    (64, 128, 128, 256, 64, 2, True),
    (16, 200, 64, 512, 128, 1, False),
]
QUICK_CASES = [(16, 32, 8, 64, 16, 2, True)]


def add_arguments(ap) -> None:
    ap.add_argument(
        "--proj-gpu",
        action="store_true",
        help="also time lstmrs on the GPU backend in the proj section (needs a Vulkan adapter)",
    )


def proj_flops(b: int, t: int, i: int, h: int, p: int, layers: int, dirs: int) -> float:
    """Matmul FLOPs of one forward pass (multiply-add = 2): per layer and direction
    2*T*B*(4H*(I_l + P) + P*H), with I_l = D*P above the first layer."""
    total = 0.0
    for layer in range(layers):
        in_size = i if layer == 0 else dirs * p
        total += dirs * 2.0 * t * b * (4 * h * (in_size + p) + p * h)
    return total


def run_case(case, args, torch, lstmrs) -> list[dict]:
    b, t, i, h, p, layers, bidir = case
    torch.manual_seed(0)
    net = torch.nn.LSTM(i, h, num_layers=layers, batch_first=True, bidirectional=bidir, proj_size=p)
    ours = lstmrs.LSTM(
        i, h, num_layers=layers, batch_first=True, bidirectional=bidir, proj_size=p, seed=0
    )
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    ours.load_state_dict(sd)
    on_gpu = None
    if getattr(args, "proj_gpu", False):
        on_gpu = lstmrs.LSTM(
            i,
            h,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidir,
            proj_size=p,
            device="gpu",
        )
        on_gpu.load_state_dict(sd)
    x = np.random.default_rng(0).standard_normal((b, t, i)).astype(np.float32)
    tx = torch.from_numpy(x)
    tx_grad = tx.clone().requires_grad_()
    ones = np.ones((b, t, (2 if bidir else 1) * p), np.float32)

    def torch_infer():
        with torch.inference_mode():
            return net(tx)[0]

    def torch_train():
        for q in net.parameters():
            q.grad = None
        tx_grad.grad = None
        net(tx_grad)[0].sum().backward()
        return tx_grad

    def ours_infer():
        return ours(x)[0]

    def ours_train():
        _, _, tape = ours.forward_train(x)
        return ours.backward(tape, d_out=ones)

    infer = {"torch": torch_infer, "lstmrs": ours_infer}
    train = {"torch": torch_train, "lstmrs": ours_train}
    if on_gpu is not None:
        infer["lstmrs-gpu"] = lambda: on_gpu(x)[0]

        def gpu_train():
            _, _, tape = on_gpu.forward_train(x)
            return on_gpu.backward(tape, d_out=ones)

        train["lstmrs-gpu"] = gpu_train

    want, tg = torch_infer().numpy(), torch_train()
    problems = []
    for impl, run in infer.items():
        if impl == "torch":
            continue
        problems.append(close(f"proj {impl} output", run(), want, 1e-4))
        g = train[impl]()
        for name, q in net.named_parameters():
            problems.append(close(f"proj {impl} d{name}", g.params[name], q.grad.numpy(), 1e-3))
        problems.append(close(f"proj {impl} dinput", g.input, tg.grad.numpy(), 1e-3))
    require_agreement(f"proj_size {case}: lstmrs agrees with torch", problems)

    fwd = proj_flops(b, t, i, h, p, layers, 2 if bidir else 1)
    modes = {"inference": (infer, fwd), "training": (train, 3.0 * fwd)}
    rows = []
    for mode in args.modes or ("inference", "training"):
        fns, flops = modes[mode]
        timed = time_interleaved(fns, args.warmup, args.repeats)
        shape = {"B": b, "T": t, "I": i, "H": h, "P": p, "layers": layers, "bidirectional": bidir}
        group = [
            {"section": "proj", "mode": mode, "impl": impl, **shape} | summarize(ts, flops)
            for impl, ts in timed.items()
        ]
        ref = next(r for r in group if r["impl"] == "torch")
        for r in group:
            if r["impl"] != "torch":
                r["ratio_vs_torch"] = r["median_ms"] / ref["median_ms"]
        rows += group
    return rows


def run_section(args, torch, lstmrs) -> list[dict]:
    if getattr(args, "proj_gpu", False):
        info = lstmrs.gpu.gpu_info()
        if not info["available"]:
            raise SystemExit(f"--proj-gpu: lstmrs has no GPU here ({info['reason']})")
        print(f"  proj: lstmrs-gpu runs on {info['name']} ({info['device_type']})", flush=True)
    rows = []
    for case in QUICK_CASES if args.quick else CASES:
        rows += run_case(case, args, torch, lstmrs)
        print(f"  done proj {case}", flush=True)
    return rows


def print_proj(rows: list[dict]) -> None:
    head = [
        ("case (B,T,I,H,P,L,D)", -26),
        ("mode", -9),
        ("impl", -10),
        ("median ms", 10),
        ("GFLOP/s", 8),
        ("/torch", 7),
    ]
    lines = []
    for r in rows:
        d = 2 if r["bidirectional"] else 1
        case = f"({r['B']},{r['T']},{r['I']},{r['H']},{r['P']},{r['layers']},{d})"
        lines.append(
            [
                case,
                r["mode"],
                r["impl"],
                f"{r['median_ms']:.2f}",
                f"{r['gflops']:.2f}",
                _fmt(r.get("ratio_vs_torch"), ".2f", "x"),
            ]
        )
    _table(head, lines)
    print("proj_size: lstmrs.LSTM vs torch.nn.LSTM with the same proj_size; /torch = time ratio")
