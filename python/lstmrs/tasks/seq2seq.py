"""The ``seq2seq`` task: token sequences in, token sequences out, with :class:`lstmrs.Seq2Seq`.

Data: a TSV or CSV of ``source, target`` pairs, or a whitespace dictionary file in CMUdict's
format (``word PH1 PH2 ...``; ``word(2)`` marks an alternate pronunciation; ``#`` starts a
comment). Each side is split into characters or whitespace-separated words.

- **Split by source** with ``seed``: ``data.test_fraction`` and ``data.val_fraction`` of the
  distinct sources, so every alternate of a word lands in the same split and no word is in two.
- **Stress**: CMUdict's stress digits (``AH0``, ``EY1``) are dropped unless ``data.keep_stress``
  (39 phonemes instead of 69), the usual G2P setting.
- **Metrics** on the test sources, decoded greedily and with beam search (``eval.beam``):
  token error rate (edit distance / reference length; PER for phonemes) and sequence error rate
  (WER for G2P). A source with several references (alternates) is scored against the one
  nearest to the prediction: a word is right when the prediction equals any of its
  pronunciations. BLEU-4 is added when the output side is words of a TSV/CSV.
- **Model**: ``model.kind = "seq2seq"`` (the only kind; other tasks refuse the key),
  ``model.decoder_layers`` stacked decoder layers, ``model.decoder_cell`` ``"auto"`` (the
  encoder's ``model.cell`` when it is ``"lstm"`` or ``"gru"``), ``"lstm"`` or ``"gru"``.
- ``lstmrs predict RUN word1 word2`` prints the decoded outputs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import Counter
from typing import Any, ClassVar

import numpy as np

from .. import config as C
from ..callbacks import Callback
from ..rnn import resolve_cell
from ..seq2seq import CHECKPOINT_DIR, DECODER_CELLS, Seq2Seq
from .base import Prepared, Task

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
_ALTERNATE = re.compile(r"\(\d+\)$")


def read_dictionary(path: str, keep_stress: bool) -> dict[str, list[list[str]]]:
    """``{word: [pronunciation, ...]}`` from a CMUdict-format file (alternates in file order)."""
    out: dict[str, list[list[str]]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith(";;;"):
                continue
            word, *phones = line.split()
            if not phones:
                raise C.ConfigError(f"data.path: line {n} of {path!r} has a word and no phonemes")
            word = _ALTERNATE.sub("", word)
            if not keep_stress:
                phones = [p.rstrip("012") for p in phones]
            prons = out.setdefault(word, [])
            if phones not in prons:
                prons.append(phones)
    return out


def read_pairs(path: str, fmt: str) -> dict[str, list[str]]:
    """``{source: [target, ...]}`` from a two-column TSV/CSV."""
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",")
        for n, row in enumerate(reader, 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise C.ConfigError(
                    f"data.path: row {n} of {path!r} has {len(row)} column; expected source and target"
                )
            targets = out.setdefault(row[0].strip(), [])
            if row[1].strip() not in targets:
                targets.append(row[1].strip())
    return out


def tokenize(text: str | list[str], unit: str) -> list[str]:
    if isinstance(text, list):
        return text
    return list(text) if unit == "char" else text.split()


def edit_distance(a: list, b: list) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def bleu(hyps: list[list[str]], refs: list[list[list[str]]], n: int = 4) -> float:
    """Corpus BLEU-n (Papineni et al., 2002) with several references, in [0, 1]."""
    match = [0] * n
    total = [0] * n
    hyp_len = ref_len = 0
    for h, rs in zip(hyps, refs):
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
        for k in range(1, n + 1):
            grams = Counter(tuple(h[i : i + k]) for i in range(len(h) - k + 1))
            best: Counter = Counter()
            for r in rs:
                best |= Counter(tuple(r[i : i + k]) for i in range(len(r) - k + 1))
            match[k - 1] += sum(min(c, best[g]) for g, c in grams.items())
            total[k - 1] += max(0, len(h) - k + 1)
    if min(total) == 0 or min(match) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(match, total)) / n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / max(hyp_len, 1))
    return bp * math.exp(log_p)


def score(preds: list[list[str]], refs: list[list[list[str]]]) -> dict[str, float]:
    """Token and sequence error rates; each prediction against its nearest reference."""
    errors = length = wrong = 0
    for p, rs in zip(preds, refs):
        # The nearest reference; among equally near ones the first listed (the main one).
        d, r = min(((edit_distance(p, r), r) for r in rs), key=lambda dr: dr[0])
        errors += d
        length += len(r)
        wrong += d > 0
    return {"token_error_rate": errors / max(length, 1), "sequence_error_rate": wrong / len(preds)}


class _LrDecay(Callback):
    """``train.lr_decay``: the learning rate times this after every epoch."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def on_epoch_end(self, epoch, logs=None):
        self.model.lr *= self.factor


def _check_checkpoint_decoder(path: str, model: Seq2Seq) -> None:
    """A checkpoint written before ``model.decoder_cell`` existed has a one-layer LSTM decoder,
    whatever ``model.cell``; "auto" behind a GRU encoder would build a GRU decoder: say which
    setting resumes it."""
    with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
        saved = json.load(f).get("config", {})
    if "decoder_cell" not in saved and model.get_config()["decoder_cell"] != "lstm":
        raise C.ConfigError(
            f"config: model.decoder_cell = {model.get_config()['decoder_cell']!r} is not allowed "
            f"when resuming {path!r}: that checkpoint's decoder is one LSTM layer (written before "
            "model.decoder_cell existed); resume with --set model.decoder_cell=lstm"
        )


class Seq2SeqTask(Task):
    name = "seq2seq"
    description = (
        "Sequence to sequence (encoder-decoder with attention) on a TSV/CSV of pairs or a "
        "CMUdict-format dictionary; token and sequence error rates, greedy and beam search"
    )
    task_defaults: ClassVar[dict[str, Any]] = {
        "data": {
            "path": "",
            "format": "auto",
            "src_tokens": "char",
            "tgt_tokens": "auto",
            "keep_stress": False,
            "lowercase": False,
            "test_fraction": 0.05,
            "val_fraction": 0.05,
            "max_sources": 0,
        },
        "model": {
            # The one model of this task; the key lets a config say so (other tasks refuse it).
            "kind": "seq2seq",
            "hidden_size": 256,
            "bidirectional": True,
            "embed_size": 64,
            "attention": "general",
            "attention_size": 0,
            "decoder_layers": 1,
            # "auto": model.cell when it is "lstm" or "gru" (a plugin cell needs a choice).
            "decoder_cell": "auto",
        },
        "train": {
            "lr": 0.002,
            "epochs": 30,
            "batch_size": 64,
            "clip_norm": 5.0,
            "label_smoothing": 0.1,
            "sampling_rate": 0.0,
        },
        "eval": {"beam": 5, "alpha": 0.6, "max_len": 0, "examples": 10},
    }
    task_rules: ClassVar[dict[str, C.Rule]] = {
        "data.path": C.Path(),
        "data.format": C.Choice("auto", "dict", "tsv", "csv"),
        "data.src_tokens": C.Choice("char", "word"),
        "data.tgt_tokens": C.Choice("auto", "char", "word"),
        "data.keep_stress": C.Bool(),
        "data.lowercase": C.Bool(),
        "data.test_fraction": C.Float(lo=0.0, hi=0.5, lo_open=True),
        "data.val_fraction": C.Float(lo=0.0, hi=0.5, lo_open=True),
        "data.max_sources": C.Int(lo=0),
        "model.kind": C.Choice("seq2seq"),
        "model.embed_size": C.Int(lo=1),
        "model.decoder_layers": C.Int(lo=1),
        "model.decoder_cell": C.Choice("auto", *DECODER_CELLS),
        "model.attention": C.Choice("general", "additive"),
        "model.attention_size": C.Int(lo=0),
        "train.label_smoothing": C.Float(lo=0.0, hi=1.0, hi_open=True),
        "train.sampling_rate": C.Float(lo=0.0, hi=1.0),
        "eval.beam": C.Int(lo=1),
        "eval.alpha": C.Float(lo=0.0),
        "eval.max_len": C.Int(lo=0),
        "eval.examples": C.Int(lo=0),
    }

    def check(self, config):
        if not config["data"]["path"]:
            raise C.ConfigError(
                'config: data.path = "" is not allowed: expected a TSV/CSV of pairs or a '
                "dictionary file (--set data.path=FILE)"
            )
        m = config["model"]
        if m["decoder_cell"] == "auto" and resolve_cell(m["cell"]).core not in DECODER_CELLS:
            raise C.ConfigError(
                f"config: model.decoder_cell = 'auto' is not allowed with model.cell = "
                f"{m['cell']!r}: the decoder runs 'lstm' or 'gru' (set model.decoder_cell)"
            )

    @staticmethod
    def _format(d: dict) -> str:
        if d["format"] != "auto":
            return d["format"]
        ext = os.path.splitext(d["path"])[1].lower()
        return {".tsv": "tsv", ".csv": "csv"}.get(ext, "dict")

    def _read(self, d: dict) -> tuple[dict[str, list[list[str]]], str, str]:
        """``{source: [target tokens, ...]}`` and the token unit of each side."""
        fmt = self._format(d)
        if not os.path.isfile(d["path"]):
            raise C.ConfigError(f"data.path: {d['path']!r} does not exist")
        tgt_unit = (
            d["tgt_tokens"] if d["tgt_tokens"] != "auto" else ("word" if fmt == "dict" else "char")
        )
        if fmt == "dict":
            table = read_dictionary(d["path"], d["keep_stress"])
        else:
            raw = read_pairs(d["path"], fmt)
            table = {s: [tokenize(t, tgt_unit) for t in ts] for s, ts in raw.items()}
        if d["lowercase"]:
            low: dict[str, list[list[str]]] = {}
            for s, ts in table.items():
                for t in ts:
                    if t not in low.setdefault(s.lower(), []):
                        low[s.lower()].append(t)
            table = low
        table = {s: ts for s, ts in table.items() if s.strip() and all(ts)}
        if len(table) < 3:
            raise C.ConfigError(
                f"data.path: {d['path']!r} holds {len(table)} usable pairs; expected at least 3"
            )
        return table, d["src_tokens"], tgt_unit

    def prepare(self, config, state=None, whole=False):
        d = config["data"]
        table, src_unit, tgt_unit = self._read(d)
        sources = sorted(table)
        rng = np.random.default_rng(config["seed"])
        order = [sources[i] for i in rng.permutation(len(sources))]
        if d["max_sources"]:
            order = order[: d["max_sources"]]
        n = len(order)
        if whole:
            if not state:
                raise C.ConfigError("eval --data: the run directory has no vocabulary")
            test, val, train = order, [], []
        else:
            n_test = max(1, round(n * d["test_fraction"]))
            n_val = max(1, round(n * d["val_fraction"]))
            test, val, train = (
                order[:n_test],
                order[n_test : n_test + n_val],
                order[n_test + n_val :],
            )
        if state:
            src_vocab, tgt_vocab = state["src_vocab"], state["tgt_vocab"]
        else:
            src_set = sorted({tok for s in train for tok in tokenize(s, src_unit)})
            tgt_set = sorted({tok for s in train for t in table[s] for tok in t})
            src_vocab, tgt_vocab = SPECIALS + src_set, SPECIALS + tgt_set
        si = {t: i for i, t in enumerate(src_vocab)}
        ti = {t: i for i, t in enumerate(tgt_vocab)}

        def enc_src(s: str) -> list[int]:
            return [si.get(tok, UNK) for tok in tokenize(s, src_unit)]

        def pairs(words):
            xs, ys = [], []
            for w in words:
                for t in table[w]:
                    xs.append(enc_src(w))
                    ys.append([ti.get(tok, UNK) for tok in t])
            return (xs, ys) if xs else None

        train_pairs, val_pairs = pairs(train), pairs(val)
        test_set = {
            "sources": test,
            "src": [enc_src(w) for w in test],
            "refs": [table[w] for w in test],
            "pairs": pairs(test),
        }
        alternates = sum(len(table[w]) > 1 for w in order)
        info = [
            (
                f"data: {os.path.basename(d['path'])} ({self._format(d)}), {n:,} sources "
                f"({alternates:,} with several targets): {len(train):,} train / {len(val):,} "
                f"validation / {len(test):,} test, split by source with seed {config['seed']}"
            ),
            f"tokens: {src_unit}s in ({len(src_vocab) - len(SPECIALS)}), {tgt_unit}s out "
            f"({len(tgt_vocab) - len(SPECIALS)})"
            + (
                ""
                if self._format(d) != "dict"
                else f"; stress digits {'kept' if d['keep_stress'] else 'dropped'}"
            ),
        ]
        return Prepared(
            train=train_pairs,
            val=val_pairs,
            test=test_set,
            state={
                "src_vocab": src_vocab,
                "tgt_vocab": tgt_vocab,
                "src_tokens": src_unit,
                "tgt_tokens": tgt_unit,
                "format": self._format(d),
            },
            info=info,
        )

    def build_model(self, config, data):

        m = config["model"]
        return Seq2Seq(
            src_vocab=len(data.state["src_vocab"]),
            tgt_vocab=len(data.state["tgt_vocab"]),
            embed_size=m["embed_size"],
            hidden_size=m["hidden_size"],
            num_layers=m["num_layers"],
            bidirectional=m["bidirectional"],
            cell=m["cell"],
            attention=m["attention"],
            attention_size=m["attention_size"] or None,
            dropout=m["dropout"],
            decoder_layers=m["decoder_layers"],
            decoder_cell=None if m["decoder_cell"] == "auto" else m["decoder_cell"],
            bos=BOS,
            eos=EOS,
            seed=config["seed"],
        )

    def compile(self, model, config):
        t = config["train"]
        hyper = {"weight_decay": t["weight_decay"]} if t["weight_decay"] else {}
        model.compile(
            t["optimizer"],
            lr=t["lr"],
            clip_norm=t["clip_norm"],
            label_smoothing=t["label_smoothing"],
            sampling_rate=t["sampling_rate"],
            **hyper,
        )

    def own_checkpoint(self, checkpoint_dir):
        # The runner resumes `Model` checkpoints; a Seq2Seq resumes from its own.
        path = os.path.join(checkpoint_dir, CHECKPOINT_DIR)
        return path if os.path.isfile(os.path.join(path, "state.json")) else None

    def train(self, model, data, config, **fit_kwargs):
        t = config["train"]
        ck = fit_kwargs.get("checkpoint_dir")
        own = self.own_checkpoint(ck) if ck else None
        if own is not None:
            _check_checkpoint_decoder(own, model)
            fit_kwargs["resume"] = True
        callbacks = list(fit_kwargs.pop("callbacks", []))
        if t["lr_decay"] < 1.0:
            callbacks.append(_LrDecay(t["lr_decay"]))
        return model.fit(
            *data.train,
            validation_data=data.val,
            epochs=t["epochs"],
            batch_size=t["batch_size"],
            callbacks=callbacks,
            **fit_kwargs,
        )

    def _decode(self, model, state, src, beam, alpha, max_len) -> list[list[str]]:
        vocab = state["tgt_vocab"]
        out = model.predict(src, beam=beam, alpha=alpha, max_len=max_len or None)
        return [[vocab[i] for i in seq] for seq in out]

    def evaluate(self, model, data, config):
        e = config["eval"]
        test = data.test
        out: dict[str, Any] = {"test_sources": len(test["sources"])}
        if test["pairs"] is not None:
            ev = model.evaluate(*test["pairs"])
            out["test_loss"] = ev["loss"]
            out["test_token_accuracy"] = ev["token_accuracy"]
        words = data.state["format"] != "dict" and data.state["tgt_tokens"] == "word"
        runs = [("greedy", 1)] + ([("beam", e["beam"])] if e["beam"] > 1 else [])
        preds = {}
        for name, beam in runs:
            preds[name] = self._decode(
                model, data.state, test["src"], beam, e["alpha"], e["max_len"]
            )
            s = score(preds[name], test["refs"])
            out[f"{name}_token_error_rate"] = s["token_error_rate"]
            out[f"{name}_sequence_error_rate"] = s["sequence_error_rate"]
            if words:
                out[f"{name}_bleu"] = bleu(preds[name], test["refs"])
        best = runs[-1][0]
        joiner = " " if data.state["tgt_tokens"] == "word" else ""
        out["examples"] = [
            f"{src} -> {joiner.join(p)}  (reference: {' | '.join(joiner.join(r) for r in refs)})"
            for src, p, refs in list(zip(test["sources"], preds[best], test["refs"]))[
                : e["examples"]
            ]
        ]
        out["beam"] = e["beam"]
        return out

    def format_summary(self, s):
        unit = "phoneme" if s.get("examples") is not None else "token"
        lines = [f"{s['test_sources']:,} held-out sources"]
        if "test_loss" in s:
            lines[0] += (
                f"; teacher-forced loss {s['test_loss']:.4f}, token accuracy {s['test_token_accuracy']:.4f}"
            )
        for name in ("greedy", "beam"):
            if f"{name}_token_error_rate" in s:
                label = name if name == "greedy" else f"beam {s['beam']}"
                text = (
                    f"{label}: token ({unit}) error rate {100 * s[f'{name}_token_error_rate']:.2f}%, "
                    f"sequence (word) error rate {100 * s[f'{name}_sequence_error_rate']:.2f}%"
                )
                if f"{name}_bleu" in s:
                    text += f", BLEU {100 * s[f'{name}_bleu']:.2f}"
                lines.append(text)
        lines += [f"  {x}" for x in s.get("examples", [])]
        return "\n".join(lines)

    def predict_words(self, model, config, state, inputs: list[str]) -> list[str]:
        """Decodes each input (beam search with ``eval.beam``); returns the outputs as text."""
        si = {t: i for i, t in enumerate(state["src_vocab"])}
        src = []
        for text in inputs:
            if config["data"]["lowercase"]:
                text = text.lower()
            toks = tokenize(text, state["src_tokens"])
            unknown = sorted({t for t in toks if t not in si})
            if unknown or not toks:
                raise C.ConfigError(
                    f"predict: {text!r} has tokens the model never saw: {unknown}"
                    if unknown
                    else "predict: empty input"
                )
            src.append([si[t] for t in toks])
        e = config["eval"]
        preds = self._decode(model, state, src, e["beam"], e["alpha"], e["max_len"])
        joiner = " " if state["tgt_tokens"] == "word" else ""
        return [joiner.join(p) for p in preds]

    def predict_file(self, model, config, state, input_path, output_path):
        with open(input_path, encoding="utf-8") as f:
            inputs = [line.strip() for line in f if line.strip()]
        outputs = self.predict_words(model, config, state, inputs)
        with open(output_path, "w", encoding="utf-8") as f:
            f.writelines(f"{i}\t{o}\n" for i, o in zip(inputs, outputs))
        return f"{len(inputs)} outputs (beam {config['eval']['beam']})"
