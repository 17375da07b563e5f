"""Import of Keras 3 ``LSTM``, ``GRU`` and ``Bidirectional`` layers.

Keras keeps one ``kernel`` [I, G*H] (gates as columns), one ``recurrent_kernel`` [H, G*H] and
one bias per layer. LSTM gates are i,f,c,o, the same blocks as torch's i,f,g,o: the matrices are
transposed and the bias becomes ``bias_ih`` (``bias_hh`` = 0). GRU gates are z,r,h and are
reordered to torch's r,z,n; only ``reset_after=True`` (Keras 3's default) is torch's GRU: its
bias is [2, 3H], input and recurrent bias. ``reset_after=False`` applies the reset gate before
the recurrent product, which neither torch's GRU nor the cell language can express, and is
refused with :class:`~lstmrs.errors.UnsupportedModelError`, as are activations other than
Keras's defaults (tanh, sigmoid).

The result, :class:`KerasRecurrent`, holds the lstmrs layer (``.layer``, batch-first) and
applies Keras's conventions around it: ``go_backwards`` (the input read last step first, the
outputs in that reading order), ``return_sequences`` (every step, else the last one),
``return_state`` and, for ``Bidirectional(merge_mode="concat")``, the two directions of one
bidirectional lstmrs layer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, ShapeError, UnsupportedModelError
from ..formats.optional import require
from ..rnn import GRU, LSTM

__all__ = ["KerasRecurrent", "from_keras", "from_keras_weights", "keras_weights_to_torch"]

# Keras GRU blocks z,r,h -> torch r,z,n.
_GRU_BLOCKS = (1, 0, 2)


def _array(name: str, v: Any, ndim: int) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.ndim != ndim:
        raise ShapeError(f"weights: {name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def keras_weights_to_torch(
    kind: str, weights: Sequence[Any], *, reset_after: bool = True, suffix: str = "_l0"
) -> dict[str, np.ndarray]:
    """Keras ``get_weights()`` of an LSTM or GRU (``[kernel, recurrent_kernel]`` plus ``bias``
    when the layer has one) as torch-named float64 arrays with ``suffix``."""
    if kind not in ("lstm", "gru"):
        raise InvalidArgumentError(f"kind: expected 'lstm' or 'gru', got {kind!r}")
    if not isinstance(weights, Sequence) or len(weights) not in (2, 3):
        raise InvalidArgumentError(
            "weights: expected [kernel, recurrent_kernel] or [kernel, recurrent_kernel, bias] "
            f"(Keras get_weights()), got {type(weights).__name__} of length "
            f"{len(weights) if hasattr(weights, '__len__') else '?'}"
        )
    if kind == "gru" and not reset_after:
        raise UnsupportedModelError(
            "reset_after=False: this GRU applies the reset gate before the recurrent product "
            "(r * h) @ U, which torch's GRU and lstmrs' cells do not compute; only "
            "reset_after=True (Keras 3's default) imports"
        )
    gates = 4 if kind == "lstm" else 3
    kernel = _array("kernel", weights[0], 2)
    recurrent = _array("recurrent_kernel", weights[1], 2)
    h = recurrent.shape[0]
    if recurrent.shape != (h, gates * h) or kernel.shape[1] != gates * h:
        raise ShapeError(
            f"weights: expected kernel [I, {gates}*H] and recurrent_kernel [H, {gates}*H] for "
            f"a {kind.upper()}, got {kernel.shape} and {recurrent.shape}"
        )
    if kind == "gru":
        order = np.concatenate([np.arange(k * h, (k + 1) * h) for k in _GRU_BLOCKS])
    else:
        order = np.arange(gates * h)
    out = {
        f"weight_ih{suffix}": kernel.T[order],
        f"weight_hh{suffix}": recurrent.T[order],
    }
    if len(weights) == 3:
        bias = np.asarray(weights[2], dtype=np.float64)
        if kind == "gru":
            if bias.shape != (2, gates * h):
                raise ShapeError(
                    f"weights: expected a reset_after GRU bias of shape [2, {gates * h}], "
                    f"got {bias.shape}"
                )
            out[f"bias_ih{suffix}"] = bias[0][order]
            out[f"bias_hh{suffix}"] = bias[1][order]
        else:
            if bias.shape != (gates * h,):
                raise ShapeError(
                    f"weights: expected a bias of shape [{gates * h}], got {bias.shape}"
                )
            out[f"bias_ih{suffix}"] = bias
            out[f"bias_hh{suffix}"] = np.zeros_like(bias)
    return out


class KerasRecurrent:
    """An imported Keras recurrent layer: ``layer`` (the lstmrs layer, batch-first) with the
    Keras layer's output conventions. ``imported(x, initial_state=None)`` returns what the
    Keras layer returns for ``x`` [B, T, I]: the output (``[B, T, D*H]`` with
    ``return_sequences``, else ``[B, D*H]``), followed by the final states when
    ``return_state`` (LSTM ``h, c``, GRU ``h``; forward then backward for a bidirectional
    layer), as a list."""

    def __init__(
        self,
        layer: LSTM | GRU,
        *,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        name: str = "",
    ) -> None:
        if layer.bidirectional and go_backwards:
            raise UnsupportedModelError(
                "go_backwards=True on the forward layer of a Bidirectional wrapper"
            )
        self.layer = layer
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.name = name

    def __repr__(self) -> str:
        flags = [
            f"{k}=True"
            for k in ("return_sequences", "return_state", "go_backwards")
            if getattr(self, k)
        ]
        return f"KerasRecurrent({self.name!r}, {self.layer!r}{''.join(', ' + f for f in flags)})"

    def __call__(self, x: Any, initial_state: Any = None):
        lstm = isinstance(self.layer, LSTM)
        state = None
        if initial_state is not None:
            # Keras: [h, c] (LSTM) / [h] (GRU), each [B, H]; bidirectional: forward, then
            # backward. lstmrs: [L*D, B, H].
            parts = [np.asarray(s) for s in initial_state]
            per_dir = 2 if lstm else 1
            if len(parts) != per_dir * self.layer.num_directions:
                raise InvalidArgumentError(
                    f"initial_state: expected {per_dir * self.layer.num_directions} arrays "
                    f"[B, H], got {len(parts)}"
                )
            hs = np.stack(parts[0::per_dir])
            state = (hs, np.stack(parts[1::per_dir])) if lstm else hs
        x = np.asarray(x)
        if self.go_backwards:
            x = x[:, ::-1]
        out, new_state = self.layer(x, state)
        h = self.layer.hidden_size
        if self.return_sequences:
            y = out
        elif self.layer.bidirectional:
            # The backward direction's last output is the one at step 0.
            y = np.concatenate([out[:, -1, :h], out[:, 0, h:]], axis=1)
        else:
            y = out[:, -1]
        if not self.return_state:
            return y
        hn, cn = new_state if lstm else (new_state, None)
        states = []
        for d in range(self.layer.num_directions):
            states.append(hn[d])
            if cn is not None:
                states.append(cn[d])
        return [y, *states]


def _check_activations(cfg: dict, where: str) -> None:
    for key, want in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        got = cfg.get(key, want)
        if got != want:
            raise UnsupportedModelError(
                f"{where}: {key}={got!r}: lstmrs' LSTM and GRU use {want!r} (Keras's default)"
            )
    if cfg.get("stateful"):
        raise UnsupportedModelError(f"{where}: stateful=True layers carry state across calls")


def from_keras_weights(
    kind: str,
    weights: Sequence[Any],
    *,
    reset_after: bool = True,
    return_sequences: bool = False,
    return_state: bool = False,
    go_backwards: bool = False,
    dtype: Any = "float32",
    name: str = "",
) -> KerasRecurrent:
    """A :class:`KerasRecurrent` from an LSTM's or GRU's ``get_weights()`` arrays and its
    options (no Keras needed)."""
    sd = keras_weights_to_torch(kind, weights, reset_after=reset_after)
    return _build(kind, [sd], return_sequences, return_state, go_backwards, dtype, name)


def _build(kind, dir_weights, return_sequences, return_state, go_backwards, dtype, name):
    sd: dict[str, np.ndarray] = {}
    for d, w in enumerate(dir_weights):
        sfx = "_l0" + ("_reverse" if d else "")
        sd.update({k.replace("_l0", sfx): v for k, v in w.items()})
    i = sd["weight_ih_l0"].shape[1]
    h = sd["weight_hh_l0"].shape[1]
    cls = LSTM if kind == "lstm" else GRU
    layer = cls(
        i,
        h,
        bias="bias_ih_l0" in sd,
        batch_first=True,
        bidirectional=len(dir_weights) == 2,
        dtype=dtype,
        seed=0,
    )
    layer.load_state_dict(sd)
    layer.eval()
    return KerasRecurrent(
        layer,
        return_sequences=return_sequences,
        return_state=return_state,
        go_backwards=go_backwards,
        name=name,
    )


def _layer_kind(keras: Any, layer: Any) -> str | None:
    if isinstance(layer, keras.layers.LSTM):
        return "lstm"
    if isinstance(layer, keras.layers.GRU):
        return "gru"
    return None


def _from_layer(keras: Any, layer: Any, dtype: Any) -> KerasRecurrent:
    if isinstance(layer, keras.layers.Bidirectional):
        cfg = layer.get_config()
        where = f"Keras layer {layer.name!r}"
        if cfg.get("merge_mode") != "concat":
            raise UnsupportedModelError(
                f"{where}: merge_mode={cfg.get('merge_mode')!r}: only 'concat' (torch's "
                "bidirectional output) imports"
            )
        fwd, bwd = layer.forward_layer, layer.backward_layer
        kind = _layer_kind(keras, fwd)
        if kind is None or _layer_kind(keras, bwd) != kind:
            raise UnsupportedModelError(
                f"{where}: expected LSTM or GRU layers of one kind inside, got "
                f"{type(fwd).__name__} and {type(bwd).__name__}"
            )
        fc, bc = fwd.get_config(), bwd.get_config()
        for c, w in ((fc, "forward layer"), (bc, "backward layer")):
            _check_activations(c, f"{where} ({w})")
        if fc.get("go_backwards") or not bc.get("go_backwards"):
            raise UnsupportedModelError(
                f"{where}: expected a forward layer reading forwards and a backward layer "
                "reading backwards (Keras's default pair)"
            )
        weights = [
            keras_weights_to_torch(kind, lay.get_weights(), reset_after=c.get("reset_after", True))
            for lay, c in ((fwd, fc), (bwd, bc))
        ]
        return _build(
            kind,
            weights,
            fc.get("return_sequences", False),
            fc.get("return_state", False),
            False,
            dtype,
            layer.name,
        )
    kind = _layer_kind(keras, layer)
    if kind is None:
        raise InvalidArgumentError(
            f"source: expected a Keras LSTM, GRU or Bidirectional layer, got {type(layer).__name__}"
        )
    cfg = layer.get_config()
    _check_activations(cfg, f"Keras layer {layer.name!r}")
    sd = keras_weights_to_torch(kind, layer.get_weights(), reset_after=cfg.get("reset_after", True))
    return _build(
        kind,
        [sd],
        cfg.get("return_sequences", False),
        cfg.get("return_state", False),
        cfg.get("go_backwards", False),
        dtype,
        layer.name,
    )


def _recurrent_layers(keras: Any, model: Any) -> list:
    found = []
    for layer in model.layers:
        if isinstance(layer, (keras.layers.LSTM, keras.layers.GRU, keras.layers.Bidirectional)):
            found.append(layer)
        elif hasattr(layer, "layers"):  # a nested model
            found.extend(_recurrent_layers(keras, layer))
    return found


def from_keras(source: Any, *, dtype: Any = "float32"):
    """Imports Keras 3 recurrent layers.

    ``source``: an ``LSTM`` / ``GRU`` / ``Bidirectional`` layer (returns one
    :class:`KerasRecurrent`), or a Keras model or the path of a ``.keras`` file (returns the
    list of its recurrent layers, in model order, nested models included).
    """
    keras = require("keras", "importing from Keras")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise InvalidArgumentError(f"source: {path!r} is not a file")
        source = keras.saving.load_model(path, compile=False)
    if isinstance(source, keras.Model):
        return [_from_layer(keras, layer, dtype) for layer in _recurrent_layers(keras, source)]
    return _from_layer(keras, source, dtype)
