"""``classify`` with ``model.kind = "hierarchical"``: the hierarchical attention network
(:class:`lstmrs.hierarchical_model.HierarchicalModel`, Yang et al. 2016) on text data.

The texts are tokenized and the vocabulary built exactly as for the flat model (same file,
splits and vocabulary rule); each text is then cut into sentences after ``.``, ``!`` and ``?``
tokens (sentences of punctuation only are dropped), at most ``data.max_sentences`` sentences of
at most ``data.max_words`` words each (``data.max_len`` and ``data.keep`` are the flat model's).
``model.embedding_dim`` sizes the embedding, ``model.hidden_size`` both BiLSTMs (per
direction) and ``model.attention_units`` (0: twice ``hidden_size``) both attention layers.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import config as C
from ..hierarchical import encode_documents
from ..hierarchical_model import CHECKPOINT_DIR, HierarchicalModel

__all__ = [
    "SENTENCE_END",
    "build",
    "check",
    "compile_han",
    "encode",
    "not_text",
    "own_checkpoint",
    "sentences",
]

SENTENCE_END = frozenset({".", "!", "?"})


def check(config: dict) -> None:
    """The settings the hierarchical model does not have, refused by name."""
    m, t = config["model"], config["train"]
    fixed = {
        "model.cell": (m["cell"], "lstm"),
        "model.num_layers": (m["num_layers"], 1),
        "model.dropout": (m["dropout"], 0.0),
        "train.optimizer": (t["optimizer"], "adam"),
        "train.weight_decay": (t["weight_decay"], 0.0),
    }
    for key, (value, expected) in fixed.items():
        if value != expected:
            raise C.ConfigError(
                f"config: {key} = {value!r} is not allowed with model.kind = 'hierarchical': "
                f"expected {expected!r} (its word and sentence encoders are one-layer "
                "bidirectional LSTMs trained with Adam)"
            )
    if t["ensemble"] not in ("auto", 1):
        raise C.ConfigError(
            f"config: train.ensemble = {t['ensemble']!r} is not allowed with model.kind = "
            "'hierarchical': expected 1 or 'auto'"
        )


def not_text(fmt: str) -> C.ConfigError:
    return C.ConfigError(
        f"config: model.kind = 'hierarchical' is not allowed for {fmt} data: the hierarchical "
        "model reads texts (a CSV of texts and labels, data.format = 'text'); expected "
        "model.kind = 'flat' for numeric sequences or token ids"
    )


def sentences(tokens: list[str]) -> list[list[str]]:
    """``tokens`` cut after every sentence-ending token; sentences of punctuation only (the
    leftovers of ``...``) dropped."""
    out, cur = [], []
    for tok in tokens:
        cur.append(tok)
        if tok in SENTENCE_END:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return [s for s in out if any(t not in SENTENCE_END for t in s)]


def encode(toks: list[list[str]], vocab: dict[str, int], data: dict) -> tuple[np.ndarray, ...]:
    """Token ids ``[N, S, W]`` and word counts ``[N, S]`` of tokenized texts."""
    docs = [sentences(t) for t in toks]
    return encode_documents(docs, vocab, data["max_sentences"], data["max_words"])


def build(config: dict, vocab_size: int, num_classes: int, class_weights: Any) -> HierarchicalModel:
    m = config["model"]
    hidden = m["hidden_size"]
    return HierarchicalModel(
        vocab_size=vocab_size,
        num_classes=num_classes,
        embed_size=m["embedding_dim"],
        word_hidden=hidden,
        sentence_hidden=hidden,
        attention_units=m["attention_units"] or 2 * hidden,
        class_weights=class_weights,
        seed=config["seed"],
    )


def compile_han(model: HierarchicalModel, config: dict) -> None:
    t = config["train"]
    model.compile(t["lr"], clip_norm=t["clip_norm"], lr_decay=t["lr_decay"])


def own_checkpoint(checkpoint_dir: str) -> str | None:
    path = os.path.join(checkpoint_dir, CHECKPOINT_DIR)
    return path if HierarchicalModel.is_checkpoint(path) else None
