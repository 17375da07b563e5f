"""Hierarchical attention network (Yang et al. 2016) on the movie reviews of
``examples/classify_reviews.toml``: the same file, the same test split (ids ``cv9*``, 200
reviews), the same tokenizer (lower case, words and punctuation) and vocabulary rule (words seen
twice in the training split, 20,000 at most); each review is cut into sentences at ``.``, ``!``
and ``?``, each sentence into its words. 10% of the training reviews (stratified, seeded)
validate; the epoch with the best validation accuracy is kept and scored on the test split.

    python examples/han_reviews.py [--time-limit 600] [--epochs 20] [--seed 0]

Compare with the flat model: ``lstmrs train examples/classify_reviews.toml`` (an LSTM over the
last 400 words, mean-pooled). Measured on a 2-core machine under a load average of about 12:
``LSTMRS_NUM_THREADS=2 python examples/han_reviews.py --time-limit 1200 --epochs 30
--max-words 40`` ran 21 epochs (~55 s each), the best validation accuracy 0.878 (epoch 9),
test accuracy 0.855; the flat model 0.815 (early-stopped at epoch 9, best epoch 4).
"""

from __future__ import annotations

import os

# NumPy's OpenBLAS threads spin-wait for each other: on a machine with other work they made the
# attention pooling's small products 10x slower. lstmrs' own threads do the parallel work.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import csv
import re
import time
from collections import Counter
from pathlib import Path

import lstmrs
import numpy as np
from lstmrs.hierarchical import HierarchicalClassifier, encode_documents
from lstmrs.tasks.classify import tokenize

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sentiment" / "review_polarity.csv"
SENTENCE_END = {".", "!", "?"}


def sentences(text: str) -> list[list[str]]:
    out, cur = [], []
    for tok in tokenize(text, "word", lowercase=True):
        cur.append(tok)
        if tok in SENTENCE_END:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return [s for s in out if any(t not in SENTENCE_END for t in s)]  # drop ". . ." leftovers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds of training")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-sentences", type=int, default=60)
    ap.add_argument("--max-words", type=int, default=50)
    ap.add_argument("--embed", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=48, help="per direction, both levels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with open(args.data, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    test = np.array([bool(re.match(r"^cv9", r["id"])) for r in rows])
    classes = sorted({r["label"] for r in rows})
    y = np.array([classes.index(r["label"]) for r in rows])
    docs = [sentences(r["text"]) for r in rows]
    rng = np.random.default_rng(args.seed)
    train_idx = np.nonzero(~test)[0]
    val = np.concatenate(
        [
            rng.permutation(train_idx[y[train_idx] == c])[: int(0.1 * (y[train_idx] == c).sum())]
            for c in range(len(classes))
        ]
    )
    fit_idx = np.setdiff1d(train_idx, val)
    counts = Counter(t for i in fit_idx for s in docs[i] for t in s)
    kept = sorted(((c, t) for t, c in counts.items() if c >= 2), key=lambda ct: (-ct[0], ct[1]))
    vocab = {"<unk>": 0, **{t: i + 1 for i, (_, t) in enumerate(kept[:20000])}}
    ids, wc = encode_documents(docs, vocab, args.max_sentences, args.max_words)
    n_sent = [len(d) for d in docs]
    print(
        f"{len(rows)} reviews: {len(fit_idx)} train, {len(val)} validation, {test.sum()} test; "
        f"vocabulary {len(vocab) - 1} (+1 unknown); sentences per review: median "
        f"{int(np.median(n_sent))}, cut to {args.max_sentences}; words per sentence cut to "
        f"{args.max_words}; {lstmrs.get_num_threads()} threads"
    )
    model = HierarchicalClassifier(
        len(vocab), len(classes), embed_size=args.embed, word_hidden=args.hidden,
        sentence_hidden=args.hidden, attention_units=2 * args.hidden, seed=args.seed,
    )  # fmt: skip
    print(f"model: {model.num_parameters} parameters")
    start = time.perf_counter()
    model.fit(
        ids[fit_idx], wc[fit_idx], y[fit_idx],
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        validation=(ids[val], wc[val], y[val]), time_limit=args.time_limit, seed=args.seed,
    )  # fmt: skip
    acc = float(np.mean(model.predict(ids[test], wc[test]) == y[test]))
    print(f"test accuracy {acc:.3f} on {test.sum()} reviews ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
