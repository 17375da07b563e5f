"""``charlm``: a character-level language model on a text file (char-rnn).

The last ``data.val_fraction`` of the text (10%) is held out. The vocabulary is the characters
of the training part (id 0 stands for any other character). Training is truncated
backpropagation through time over the whole text (:meth:`lstmrs.Model.fit_stream`): the text
is cut into ``train.batch_size`` contiguous sub-streams read side by side in chunks of
``data.seq_len`` characters, each chunk starting from the previous chunk's final state.

The summary reports bits per character on the held-out part (next to the unigram model's,
which knows only character frequencies) and a short sample. ``lstmrs generate RUN_DIR`` samples
from the model one character at a time through :meth:`lstmrs.Model.stepper`.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any, ClassVar

import numpy as np

from .. import config as C
from .. import plots
from ..models import Model
from .base import Prepared, Task, model_kwargs

__all__ = ["CharLMTask", "sample_next"]

UNK = 0


def _read_text(path: str, what: str = "data.path") -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as e:
        raise C.ConfigError(f"config: {what} = {path!r}: cannot read it ({e.strerror})") from None


def _encode(text: str, index: dict[str, int]) -> np.ndarray:
    return np.fromiter((index.get(c, UNK) for c in text), dtype=np.int64, count=len(text))


def sample_next(
    logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator
) -> int:
    """A character id from the model's logits: greedy at temperature 0, else softmax of
    ``logits / temperature`` over the ``top_k`` likeliest (all when 0). Never the unknown id."""
    z = np.asarray(logits, dtype=np.float64).copy()
    z[UNK] = -np.inf
    if temperature == 0:
        return int(np.argmax(z))
    z = z / temperature
    if 0 < top_k < z.size:
        cut = np.partition(z, -top_k)[-top_k]
        z[z < cut] = -np.inf
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    return int(rng.choice(z.size, p=p))


class CharLMTask(Task):
    name = "charlm"
    description = (
        "Character language model on a text file (last 10% held out), truncated BPTT; bits "
        "per character, and text generation with `lstmrs generate`"
    )
    task_defaults: ClassVar[dict[str, Any]] = {
        "data": {"path": "", "val_fraction": 0.1, "seq_len": 100},
        "model": {"hidden_size": 128, "num_layers": 2, "embedding_dim": 64},
        "train": {
            "lr": 0.003,
            "epochs": 20,
            "batch_size": 32,
            "clip_norm": 5.0,
            "patience": 3,
        },
        "eval": {"sample_length": 300, "temperature": 0.8},
    }
    task_rules: ClassVar[dict[str, C.Rule]] = {
        "data.path": C.Path(),
        "data.val_fraction": C.Float(lo=0.0, hi=0.5, lo_open=True),
        "data.seq_len": C.Int(lo=1),
        "model.embedding_dim": C.Int(lo=1),
        "eval.sample_length": C.Int(lo=0),
        "eval.temperature": C.Float(lo=0.0),
    }
    metrics = ("bpc",)

    def check(self, config):
        if not config["data"]["path"]:
            raise C.ConfigError(
                'config: data.path = "" is not allowed: expected a text file (--set data.path=FILE)'
            )

    def prepare(self, config, state=None, whole=False):
        d = config["data"]
        text = _read_text(d["path"])
        if whole:
            if not state:
                raise C.ConfigError("eval --data: the run directory has no vocabulary")
            cut = 0
        else:
            cut = int(len(text) * (1.0 - d["val_fraction"]))
        train_text, val_text = text[:cut], text[cut:]
        if state:
            chars = state["chars"]
        else:
            chars = [""] + sorted(set(train_text))
        index = {c: i for i, c in enumerate(chars) if i != UNK}
        need = 2 * config["train"]["batch_size"] + 1
        if not whole and len(train_text) < need:
            raise C.ConfigError(
                f"config: train.batch_size = {config['train']['batch_size']} is not allowed for "
                f"this text: {len(train_text)} training characters cannot feed that many "
                f"sub-streams (expected at most {max(1, (len(train_text) - 1) // 2)})"
            )
        train_ids = _encode(train_text, index)
        val_ids = _encode(val_text, index)
        unseen = int(np.sum(val_ids == UNK))
        info = [
            f"data: {os.path.basename(d['path'])}, {len(text):,} characters: {len(train_text):,} "
            f"train / {len(val_text):,} held out; vocabulary of {len(chars) - 1} characters"
            + (f" ({unseen} held-out characters unseen in training)" if unseen else ""),
            (
                f"truncated BPTT: {config['train']['batch_size']} sub-streams x chunks of "
                f"{d['seq_len']} characters"
            ),
        ]
        return Prepared(
            train=(train_ids, None) if len(train_ids) else None,
            val=val_ids,
            test=val_ids,
            state={"chars": chars},
            info=info,
            extra={"train_text_len": len(train_text)},
        )

    def build_model(self, config, data):
        v = len(data.state["chars"])
        return Model(
            vocab_size=v,
            embedding_dim=config["model"]["embedding_dim"],
            output_size=v,
            pooling="per_step",
            loss="cross_entropy",
            **model_kwargs(config),
        )

    def train(self, model, data, config, **fit_kwargs):
        return model.fit_stream(
            data.train[0],
            config["data"]["seq_len"],
            batch_size=config["train"]["batch_size"],
            epochs=config["train"]["epochs"],
            validation_stream=data.val,
            **fit_kwargs,
        )

    def evaluate(self, model, data, config):
        val = data.test
        # Eight sub-streams: eight chunk borders start from a zero state, a negligible effect
        # on 100k characters, for an eighth of the sequential steps.
        batch = max(1, min(8, (len(val) - 1) // 64))
        res = model.evaluate_stream(val, batch_size=batch, seq_len=256, metrics=["bpc"])
        # Unigram reference: character frequencies of the training part (add-one smoothed).
        v = len(data.state["chars"])
        train_ids = data.train[0] if data.train is not None else np.zeros(0, np.int64)
        counts = np.bincount(train_ids, minlength=v).astype(float) + 1.0
        logp = np.log2(counts / counts.sum())
        unigram = float(-np.mean(logp[val[1:]])) if len(val) > 1 else math.nan
        out: dict[str, Any] = {
            "val_bpc": float(res["bpc"]),
            "val_loss": float(res["loss"]),
            "unigram_bpc": unigram,
            "val_chars": len(val),
        }
        e = config["eval"]
        if e["sample_length"]:
            buf = io.StringIO()
            self.generate(
                model,
                data.state,
                prompt="\n",
                length=e["sample_length"],
                temperature=e["temperature"],
                top_k=0,
                seed=config["seed"],
                out=buf,
            )
            out["sample"] = buf.getvalue()
        return out

    def format_summary(self, s):
        text = (
            f"held-out bits per character {s['val_bpc']:.4f} over {s['val_chars']:,} "
            f"characters (unigram model: {s['unigram_bpc']:.4f})"
        )
        if s.get("sample"):
            text += "\nsample:\n" + s["sample"].strip("\n")
        return text

    def plot(self, model, data, summary, config, out_dir, records):
        p = plots.metric_curves(
            records,
            ("bpc", "val_bpc"),
            os.path.join(out_dir, "bpc.png"),
            f"Bits per character (held out, final: {summary['val_bpc']:.3f})",
            "bits per character",
            labels=("training", "held out"),
        )
        return [p] if p else []

    def generate(self, model, state, *, prompt, length, temperature, top_k, seed, out):
        """Feeds ``prompt`` and streams ``length`` sampled characters to ``out``."""
        if length < 0:
            raise C.ConfigError(f"--length: expected an integer >= 0, got {length}")
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise C.ConfigError(f"--temperature: expected a number >= 0, got {temperature}")
        if top_k < 0:
            raise C.ConfigError(f"--top-k: expected an integer >= 0, got {top_k}")
        chars = state["chars"]
        index = {c: i for i, c in enumerate(chars) if i != UNK}
        missing = sorted({c for c in prompt if c not in index})
        if missing:
            raise C.ConfigError(f"--prompt: characters {missing} are not in the model's vocabulary")
        rng = np.random.default_rng(seed)
        stepper = model.stepper(batch=1)
        feed = prompt or ("\n" if "\n" in index else chars[1])
        out.write(prompt)
        logits = None
        for c in feed:
            logits = stepper.step(np.int64(index[c]))
        for _ in range(length):
            k = sample_next(logits, temperature, top_k, rng)
            out.write(chars[k])
            out.flush()
            logits = stepper.step(np.int64(k))
        out.write("\n")
        out.flush()

    def predict_file(self, model, config, state, input_path, output_path):
        chars = state["chars"]
        index = {c: i for i, c in enumerate(chars) if i != UNK}
        ids = _encode(_read_text(input_path, "--input"), index)
        if len(ids) < 2:
            raise C.ConfigError("--input: needs at least two characters")
        res = model.evaluate_stream(ids, batch_size=1, seq_len=256, metrics=["bpc"])
        result = {"chars": len(ids), "bpc": float(res["bpc"])}
        with open(output_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        return f"bits per character {result['bpc']:.4f} over {result['chars']} characters"
