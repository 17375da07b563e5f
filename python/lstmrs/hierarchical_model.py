"""The hierarchical attention network (:class:`lstmrs.hierarchical.HierarchicalClassifier`) as
a model that ``lstmrs train`` runs: ``fit`` with the runner's callbacks (time limit, early
stopping with the best weights, learning-rate plateau, the metrics log), a checkpoint after
every epoch that ``resume=True`` continues bit-exactly, class weights, ``predict`` with
probabilities, and ``save`` / ``load`` of a directory (``hierarchical.json`` and the weights).

Inputs are token ids ``[D, S, W]`` and word counts ``[D, S]``
(:func:`lstmrs.hierarchical.encode_documents`); the counts travel where a flat
:class:`lstmrs.Model` takes its ``lengths``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .callbacks import Callback, CallbackList, History
from .checkpoint_format import WEIGHTS_NPY, load_architecture, save_architecture
from .errors import InvalidArgumentError, ShapeError
from .hierarchical import Adam, HierarchicalClassifier, _softmax
from .validation import check_int

__all__ = ["CHECKPOINT_DIR", "HierarchicalModel"]

CONFIG_FILE = "hierarchical.json"
WEIGHTS_FILE = WEIGHTS_NPY
#: The sub-directory of a run's checkpoint directory that holds the last epoch's checkpoint.
CHECKPOINT_DIR = "hierarchical"


class _FlatWeights:
    """What the generic callbacks (early stopping's best weights) read and write."""

    def __init__(self, model: HierarchicalModel) -> None:
        self._model = model

    def get_flat(self) -> np.ndarray:
        return self._model.params.copy()

    def set_flat(self, values: np.ndarray) -> None:
        self._model.set_weights(values)


class HierarchicalModel:
    """A :class:`HierarchicalClassifier` with a training loop, checkpoints and a saved form.

    ``class_weights``: a weight per class for the cross-entropy (PyTorch's ``weight``: the
    loss is ``sum_i w[y_i] nll_i / sum_i w[y_i]``), or None for the plain mean.
    """

    cell = "lstm"

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_size: int = 64,
        word_hidden: int = 48,
        sentence_hidden: int = 48,
        attention_units: int = 96,
        class_weights: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        self._config: dict[str, Any] = {
            "vocab_size": int(vocab_size),
            "num_classes": int(num_classes),
            "embed_size": int(embed_size),
            "word_hidden": int(word_hidden),
            "sentence_hidden": int(sentence_hidden),
            "attention_units": int(attention_units),
            "class_weights": None if class_weights is None else [float(w) for w in class_weights],
            "seed": int(seed),
        }
        cw = self._config["class_weights"]
        if cw is not None and (len(cw) != num_classes or min(cw) < 0 or sum(cw) <= 0):
            raise InvalidArgumentError(
                f"class_weights: expected {num_classes} weights >= 0, not all 0, got {cw}"
            )
        self.net = HierarchicalClassifier(
            vocab_size,
            num_classes,
            embed_size=embed_size,
            word_hidden=word_hidden,
            sentence_hidden=sentence_hidden,
            attention_units=attention_units,
            seed=seed,
        )
        #: The float64 master copy of every parameter (the LSTMs hold float32 copies).
        self.params: np.ndarray = self.net.parameters_flat()
        self.core = _FlatWeights(self)
        self.stop_training = False
        self.lr = 2e-3
        self.clip_norm = 5.0
        self.lr_decay = 1.0
        self._opt = Adam(self.num_params, lr=self.lr, clip_norm=self.clip_norm)
        # The runner reads this after Ctrl-C; checkpoints are per epoch only.
        self._interrupt_checkpoint = None

    # Architecture and weights ---------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)

    @property
    def num_params(self) -> int:
        return int(self.net.num_parameters)

    def set_weights(self, flat: np.ndarray) -> None:
        flat = np.asarray(flat, np.float64)
        if flat.shape != self.params.shape:
            raise ShapeError(f"weights: expected shape {self.params.shape}, got {flat.shape}")
        self.params = flat.copy()
        self.net.set_parameters_flat(self.params)

    def __repr__(self) -> str:
        c = self._config
        return (
            f"HierarchicalModel(words: embedding {c['embed_size']} -> BiLSTM "
            f"{c['word_hidden']}x2 -> attention {c['attention_units']}; sentences: BiLSTM "
            f"{c['sentence_hidden']}x2 -> attention; {c['num_classes']} classes, "
            f"params={self.num_params:,})"
        )

    # Training --------------------------------------------------------------------------------

    def compile(self, lr: float = 2e-3, *, clip_norm: float = 5.0, lr_decay: float = 1.0) -> None:
        """Adam's learning rate, gradient clipping by global norm (0 = off) and the factor the
        rate is multiplied by after every epoch."""
        for name, v in (("lr", lr), ("clip_norm", clip_norm), ("lr_decay", lr_decay)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise InvalidArgumentError(f"{name}: expected a number >= 0, got {v!r}")
        if lr <= 0 or not 0 < lr_decay <= 1:
            raise InvalidArgumentError(
                f"lr, lr_decay: expected lr > 0 and 0 < lr_decay <= 1, got {lr}, {lr_decay}"
            )
        self.lr, self.clip_norm, self.lr_decay = float(lr), float(clip_norm), float(lr_decay)
        self._opt = Adam(self.num_params, lr=self.lr, clip_norm=self.clip_norm)

    def _loss_grad(self, ids, counts, labels) -> tuple[float, np.ndarray]:
        logits, tape = self.net.forward_train(ids, counts)
        prob = _softmax(logits)
        n = len(labels)
        nll = -np.log(prob[np.arange(n), labels] + 1e-300)
        cw = self._config["class_weights"]
        w = np.ones(n) if cw is None else np.asarray(cw)[labels]
        d_logits = prob.copy()
        d_logits[np.arange(n), labels] -= 1.0
        d_logits *= (w / w.sum())[:, None]
        return float((w * nll).sum() / w.sum()), self.net.backward(tape, d_logits)

    def _check_data(self, x, counts, y=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        x, counts = np.asarray(x), np.asarray(counts)
        if x.ndim != 3 or counts.shape != x.shape[:2]:
            raise ShapeError(
                f"x, lengths: expected token ids [D, S, W] and word counts [D, S], got shapes "
                f"{list(x.shape)} and {list(np.shape(counts))}"
            )
        if y is not None:
            y = np.asarray(y)
            k = self._config["num_classes"]
            if y.shape != (len(x),) or y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= k:
                raise InvalidArgumentError(f"y: expected {len(x)} class ids in 0..{k - 1}")
        return x, counts, y

    def _evaluate(self, x, y, counts) -> dict[str, float]:
        p = self.predict(x, lengths=counts, output="probabilities")
        nll = -np.log(p[np.arange(len(y)), y] + 1e-300)
        cw = self._config["class_weights"]
        w = np.ones(len(y)) if cw is None else np.asarray(cw)[y]
        return {
            "loss": float((w * nll).sum() / w.sum()),
            "accuracy": float(np.mean(p.argmax(axis=1) == y)),
        }

    def fit(
        self,
        x,
        y,
        *,
        lengths=None,
        epochs: int = 10,
        batch_size: int = 32,
        validation_data: tuple | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
        seed: int | None = None,
        verbose: int = 1,
        **_runner: Any,
    ) -> History:
        """Adam on shuffled batches of documents. ``x``: token ids ``[D, S, W]``; ``lengths``:
        word counts ``[D, S]``; ``validation_data``: ``(x, y, lengths)``, scored after every
        epoch (``val_loss``, ``val_accuracy``). With ``checkpoint_dir`` the weights, Adam's
        moments, the callbacks' states and the epoch are saved after every epoch in its
        ``hierarchical/``; ``resume=True`` continues from there bit-exactly (each epoch's order
        derives from ``seed`` and the epoch). Other keyword arguments of the ``lstmrs train``
        runner (``checkpoint_every``) are accepted and ignored: checkpoints are per epoch."""
        epochs = check_int("epochs", epochs, minimum=0)
        batch_size = check_int("batch_size", batch_size)
        seed = self._config["seed"] if seed is None else check_int("seed", seed, minimum=0)
        x, counts, y = self._check_data(x, lengths, y)
        assert y is not None
        val = None
        if validation_data is not None:
            vx, vy, vc = validation_data
            vx, vc, vy = self._check_data(vx, vc, vy)
            val = (vx, vy, vc)
        history = History()
        params = {
            "epochs": epochs,
            "steps": math.ceil(len(x) / batch_size),
            "verbose": verbose,
            "metrics": ["loss", "accuracy"],
            "initial_epoch": 0,
        }
        cbs = CallbackList([history, *callbacks], self, params)
        start_epoch = 0
        ck_dir = os.path.join(os.fspath(checkpoint_dir), CHECKPOINT_DIR) if checkpoint_dir else None
        if resume and ck_dir and os.path.isfile(os.path.join(ck_dir, "state.json")):
            start_epoch = self._load_checkpoint(ck_dir, cbs)
        params["initial_epoch"] = start_epoch
        self.stop_training = False
        cbs.on_train_begin({})
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            cbs.on_epoch_begin(epoch, {"lr": self.lr})
            order = np.random.default_rng([seed, epoch]).permutation(len(x))
            total = seen = 0.0
            for b, i in enumerate(range(0, len(order), batch_size)):
                cbs.on_batch_begin(b, {})
                idx = order[i : i + batch_size]
                loss, grad = self._loss_grad(x[idx], counts[idx], y[idx])
                self._opt.lr = self.lr  # callbacks (the plateau) change self.lr
                self.params = self._opt.step(self.params, grad)
                self.net.set_parameters_flat(self.params)
                total += loss * len(idx)
                seen += len(idx)
                cbs.on_batch_end(
                    b, {"batch_loss": loss, "loss": total / seen, "lr": self.lr, "size": len(idx)}
                )
                if self.stop_training:
                    break
            logs: dict[str, Any] = {"loss": total / max(seen, 1)}
            if val is not None:
                ev = self._evaluate(*val)
                logs["val_loss"], logs["val_accuracy"] = ev["loss"], ev["accuracy"]
            logs["lr"] = self.lr
            logs["seconds"] = time.perf_counter() - t0
            if verbose:
                print(
                    f"epoch {epoch + 1}/{epochs}: "
                    + ", ".join(f"{k} {v:.4g}" for k, v in logs.items()),
                    flush=True,
                )
            cbs.on_epoch_end(epoch, logs)
            self.lr *= self.lr_decay
            if ck_dir and not self.stop_training:
                self._save_checkpoint(ck_dir, epoch + 1, cbs)
            if self.stop_training:
                break
        cbs.on_train_end({})
        return history

    def _save_checkpoint(self, path: str, epoch: int, cbs: CallbackList) -> None:
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        np.save(os.path.join(tmp, WEIGHTS_FILE), self.params)
        np.savez(os.path.join(tmp, "adam.npz"), m=self._opt.m, v=self._opt.v)
        state = {
            "config": self._config,
            "adam_step": self._opt.t,
            "lr": self.lr,
            "clip_norm": self.clip_norm,
            "lr_decay": self.lr_decay,
            "epoch": epoch,
            "callbacks": [c.state_dict() for c in cbs.callbacks],
        }
        with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
            json.dump(state, f)
        if os.path.isdir(path):  # swap, so that a crash leaves one complete checkpoint
            old = path + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)

    def _load_checkpoint(self, path: str, cbs: CallbackList) -> int:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
            state = json.load(f)
        if state["config"] != self._config:
            raise InvalidArgumentError(
                f"resume: the checkpoint in {path!r} is of another model: {state['config']} "
                f"(this one: {self._config})"
            )
        self.set_weights(np.load(os.path.join(path, WEIGHTS_FILE)))
        self.lr, self.clip_norm = float(state["lr"]), float(state["clip_norm"])
        self.lr_decay = float(state["lr_decay"])
        self._opt = Adam(self.num_params, lr=self.lr, clip_norm=self.clip_norm)
        with np.load(os.path.join(path, "adam.npz")) as z:
            self._opt.m, self._opt.v = z["m"], z["v"]
        self._opt.t = int(state["adam_step"])
        for c, s in zip(cbs.callbacks, state["callbacks"]):
            if s is not None:
                c.load_state_dict(s)
        return int(state["epoch"])

    # Prediction ------------------------------------------------------------------------------

    def predict(
        self, x, *, lengths=None, batch_size: int = 64, output: str = "probabilities"
    ) -> np.ndarray:
        """Class probabilities ``[D, C]`` (``output="probabilities"``) or class ids ``[D]``
        (``output="classes"``) of token ids ``x [D, S, W]`` with word counts ``lengths``."""
        if output not in ("probabilities", "classes"):
            raise InvalidArgumentError(
                f"output: expected 'probabilities' or 'classes', got {output!r}"
            )
        x, counts, _ = self._check_data(x, lengths)
        p = self.net.predict_proba(x, counts, batch_size=check_int("batch_size", batch_size))
        return p if output == "probabilities" else p.argmax(axis=1)

    def to_onnx(self, *args: Any, **kwargs: Any) -> Any:
        raise InvalidArgumentError(
            "export: the hierarchical model has no ONNX export (expected a run of a flat model)"
        )

    def save_safetensors(self, *args: Any, **kwargs: Any) -> Any:
        raise InvalidArgumentError(
            "export: the hierarchical model has no safetensors export; its weights are "
            "model/weights.npy in the run directory (HierarchicalModel.load reads them)"
        )

    # Saving ----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> str:
        """Writes ``path/hierarchical.json`` (the architecture) and ``path/weights.npy``."""
        return save_architecture(path, CONFIG_FILE, self._config, self.params)

    @classmethod
    def load(cls, path: str | os.PathLike) -> HierarchicalModel:
        cfg, weights = load_architecture(path, CONFIG_FILE)
        m = cls(**cfg)
        m.set_weights(weights)
        return m

    @staticmethod
    def is_checkpoint(path: str | os.PathLike) -> bool:
        """Whether ``path`` holds a checkpoint of :meth:`fit` (its ``hierarchical/``)."""
        return os.path.isfile(os.path.join(os.fspath(path), "state.json"))

    @staticmethod
    def is_saved(path: str | os.PathLike) -> bool:
        return os.path.isfile(os.path.join(os.fspath(path), CONFIG_FILE))
