"""How each library runs one case: builders of the inference and training-step callables.

Shared by the timing sections (which verify and time them in one process) and by the memory
child processes (which run one training step each), so both measure the same code.

Variants:
  lstm, gru         torch.nn.LSTM/GRU against lstmrs.LSTM/GRU (the fused built-in kernels)
  dsl_lstm          lstmrs.RNN with the built-in LSTM's cell-language description, compiled by
                    the core like any plugin cell (torch side: nn.LSTM, the same function)
  peephole_lstm     lstmrs.RNN with the peephole cell of the lstmrs-cells plugin; torch side:
                    TorchPeephole, a per-step Python loop (what a custom cell costs in torch)
"""

from __future__ import annotations

import math

import numpy as np

VARIANTS = ("lstm", "gru", "dsl_lstm", "peephole_lstm")


def flop_cell(variant: str) -> str:
    return (
        "gru" if variant == "gru" else ("peephole_lstm" if variant == "peephole_lstm" else "lstm")
    )


def make_input(b: int, t: int, i: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, t, i)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# torch


def torch_peephole_class(torch):
    """One-layer batch-first peephole LSTM (Gers & Schmidhuber) as a per-step Python loop, with
    the parameter names of lstmrs.RNN(cell="peephole_lstm") so state dicts load across."""
    nn = torch.nn

    class TorchPeephole(nn.Module):
        def __init__(self, input_size: int, hidden_size: int):
            super().__init__()
            h, a = hidden_size, 1.0 / math.sqrt(hidden_size)

            def p(*shape):
                return nn.Parameter(torch.empty(*shape).uniform_(-a, a))

            self.hidden_size = h
            self.weight_ih_l0, self.weight_hh_l0 = p(4 * h, input_size), p(4 * h, h)
            self.bias_ih_l0, self.bias_hh_l0 = p(4 * h), p(4 * h)
            self.w_ci_l0, self.w_cf_l0, self.w_co_l0 = p(h), p(h), p(h)

        def forward(self, x):
            b, t, _ = x.shape
            h = x.new_zeros(b, self.hidden_size)
            c = x.new_zeros(b, self.hidden_size)
            # The input projection of all steps at once, as the fused implementations do.
            xp = torch.nn.functional.linear(x, self.weight_ih_l0, self.bias_ih_l0)
            outs = []
            for k in range(t):
                g = xp[:, k] + torch.nn.functional.linear(h, self.weight_hh_l0, self.bias_hh_l0)
                gi, gf, gg, go = g.chunk(4, dim=1)
                i = torch.sigmoid(gi + self.w_ci_l0 * c)
                f = torch.sigmoid(gf + self.w_cf_l0 * c)
                c = f * c + i * torch.tanh(gg)
                o = torch.sigmoid(go + self.w_co_l0 * c)
                h = o * torch.tanh(c)
                outs.append(h)
            return torch.stack(outs, dim=1), (h[None], c[None])

    return TorchPeephole


def torch_module(torch, variant: str, i: int, h: int, layers: int, seed: int = 0):
    torch.manual_seed(seed)
    if variant == "peephole_lstm":
        if layers != 1:
            raise ValueError("the torch peephole loop is one layer")
        return torch_peephole_class(torch)(i, h)
    cls = torch.nn.GRU if variant == "gru" else torch.nn.LSTM
    return cls(i, h, num_layers=layers, batch_first=True)


def state_dict_np(module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def torch_fns(torch, module, x: np.ndarray):
    """(infer, train): inference under inference_mode; training step = forward + backward of
    output.sum() with parameters and input requiring grad. train() returns the input tensor
    (its .grad and the parameters' .grad hold the gradients)."""
    tx = torch.from_numpy(x)
    tx_grad = tx.clone().requires_grad_()

    def infer():
        with torch.inference_mode():
            return module(tx)[0]

    def train():
        for p in module.parameters():
            p.grad = None
        tx_grad.grad = None
        module(tx_grad)[0].sum().backward()
        return tx_grad

    return infer, train


# ---------------------------------------------------------------------------------------------
# lstmrs


def plugin_cell_spec(name: str):
    """A registered plugin cell's spec and the version of the distribution that registered it,
    or None when no installed plugin registers ``name``."""
    from lstmrs import plugins

    cells = plugins.get_cells()
    if name not in cells:
        return None
    try:
        from importlib.metadata import version

        dist = version("lstmrs-cells")
    except Exception:  # noqa: BLE001 - only a label for the report
        dist = "unknown"
    return cells[name], dist


def lstmrs_layer(
    lstmrs, variant: str, i: int, h: int, layers: int, seed: int = 0, device: str = "cpu"
):
    kw = {"num_layers": layers, "batch_first": True, "dtype": "float32", "seed": seed}
    if device != "cpu":
        kw["device"] = device
    if variant == "lstm":
        return lstmrs.LSTM(i, h, **kw)
    if variant == "gru":
        return lstmrs.GRU(i, h, **kw)
    if variant == "dsl_lstm":
        from lstmrs.plugins.builtin import LSTM_CELL

        # The JSON text, not the spec: the spec is marked native and would take the fused kernel.
        layer = lstmrs.RNN(i, h, cell=LSTM_CELL.to_json(), **kw)
        assert layer.cell_description is not None, "DSL LSTM resolved to the native kernel"
        return layer
    if variant == "peephole_lstm":
        found = plugin_cell_spec("peephole_lstm")
        if found is None:
            raise LookupError("no installed plugin registers 'peephole_lstm' (lstmrs-cells)")
        return lstmrs.RNN(i, h, cell=found[0], **kw)
    raise ValueError(f"unknown variant {variant!r}")


def lstmrs_fns(layer, x: np.ndarray):
    """(infer, train): forward in eval mode; training step = forward_train + backward with
    d_out = ones (the gradient of output.sum()). train() returns the RnnGradients."""
    ones = np.ones((x.shape[0], x.shape[1], layer.hidden_size), np.float32)

    def infer():
        return layer(x)[0]

    def train():
        _, _, tape = layer.forward_train(x)
        return layer.backward(tape, d_out=ones)

    return infer, train
