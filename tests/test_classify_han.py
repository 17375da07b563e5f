"""``classify`` with ``model.kind = "hierarchical"``: the hierarchical attention network through
``lstmrs train`` / ``eval`` / ``predict`` / ``--resume`` on a small generated text CSV, the
model's own checkpoint resuming bit-exactly, its class-weighted loss, and the typed errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from lstmrs.cli import main
from lstmrs.errors import ConfigError, ShapeError
from lstmrs.hierarchical_model import HierarchicalModel
from lstmrs.tasks import BUILTIN_TASKS
from lstmrs.tasks.classify_han import sentences
from lstmrs.tasks.runner import resolve_config

FILLER = [
    "the",
    "a",
    "film",
    "story",
    "plot",
    "actor",
    "scene",
    "camera",
    "music",
    "ending",
    "script",
    "movie",
]


def write_reviews(path, n: int = 96, seed: int = 0) -> None:
    """Texts of 2-4 filler sentences and one sentence that carries the label's word."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "text"])
        for i in range(n):
            label = ("neg", "pos")[i % 2]
            sents = [" ".join(rng.choice(FILLER, rng.integers(3, 7))) + " ." for _ in range(3)]
            key = (
                ("awful", "dull")[i % 4 // 2] if label == "neg" else ("great", "superb")[i % 4 // 2]
            )
            sents.insert(int(rng.integers(0, 4)), f"it was {key} !")
            w.writerow([f"d{i:03d}", label, " ".join(sents)])


def _train_args(run, path, *extra):
    sets = [
        f"data.path={path}",
        "data.id_column=id",
        "model.kind=hierarchical",
        "model.hidden_size=8",
        "model.embedding_dim=8",
        "data.min_freq=1",
        "train.batch_size=16",
        "train.lr=0.02",
        *extra,
    ]
    return ["train", "--task", "classify", "--run-dir", str(run), "--no-plots", "--quiet"] + [
        a for s in sets for a in ("--set", s)
    ]


def test_sentences_split_after_end_marks_and_drop_punctuation_only():
    toks = ["good", "film", ".", "really", "!", ".", ".", "is", "it", "?", "no", "end"]
    assert sentences(toks) == [
        ["good", "film", "."],
        ["really", "!"],
        ["is", "it", "?"],
        ["no", "end"],
    ]


def test_train_eval_predict_and_resume_on_the_command_line(tmp_path, capsys):
    data = tmp_path / "reviews.csv"
    write_reviews(data)
    run = tmp_path / "run"
    assert main(_train_args(run, data, "train.epochs=12", "train.patience=0")) == 0
    out = capsys.readouterr().out
    assert "hierarchical BiLSTM" in out and "bag-of-words LR" in out
    with open(run / "summary.json") as f:
        summary = json.load(f)
    assert summary["model_kind"] == "hierarchical" and summary["epochs"] == 12
    assert summary["accuracy"] >= 0.9, summary  # one keyword decides the label
    assert "baseline_accuracy" in summary and summary["test_size"] == 20
    assert HierarchicalModel.is_saved(run / "model")

    # eval on the run reloads the saved model and scores the same test split the same way.
    assert main(["eval", str(run), "--json", str(tmp_path / "ev.json")]) == 0
    with open(tmp_path / "ev.json") as f:
        assert json.load(f)["accuracy"] == summary["accuracy"]

    # predict: a file of new texts, probabilities per class.
    new = tmp_path / "new.csv"
    with open(new, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerow(["a", "the plot . it was superb ! the music ."])
        w.writerow(["b", "the actor . it was awful ! the ending ."])
    assert (
        main(["predict", str(run), "--input", str(new), "--output", str(tmp_path / "p.csv")]) == 0
    )
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["pos", "neg"]
    assert all(abs(float(r["p_neg"]) + float(r["p_pos"]) - 1) < 1e-4 for r in rows)

    # What the hierarchical model has not got is a typed error, not an internal one.
    capsys.readouterr()
    assert main(["explain", str(run)]) != 0
    err = capsys.readouterr().err
    assert "has no attribution report" in err and "internal error" not in err
    assert main(["export", str(run), "--format", "onnx"]) != 0
    err = capsys.readouterr().err
    assert "no ONNX export" in err and "internal error" not in err

    # --resume continues from the model's own checkpoint: epochs 13 and 14 only.
    capsys.readouterr()
    args = ["train", "--resume", "--run-dir", str(run), "--no-plots", "--set", "train.epochs=14"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "the task's own checkpoint format" in out and "no checkpoint" not in out
    with open(run / "metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == list(range(14))


def test_resume_is_bit_exact(tmp_path):
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 30, (20, 3, 5))
    counts = rng.integers(1, 6, (20, 3))
    y = rng.integers(0, 2, 20)

    def model():
        m = HierarchicalModel(30, 2, embed_size=6, word_hidden=4, sentence_hidden=4,
                              attention_units=5, class_weights=[1.0, 2.0], seed=3)  # fmt: skip
        m.compile(0.01, clip_norm=1.0, lr_decay=0.9)
        return m

    straight = model()
    straight.fit(ids, y, lengths=counts, epochs=3, batch_size=8, verbose=0)

    def run(path, epochs):
        m = model()
        m.fit(ids, y, lengths=counts, epochs=epochs, batch_size=8, verbose=0,
              checkpoint_dir=path, resume=True)  # fmt: skip
        return m

    run(tmp_path, 2)  # stops after epoch 2; the next run goes on from its checkpoint
    resumed = run(tmp_path, 3)
    np.testing.assert_array_equal(resumed.params, straight.params)
    assert resumed.lr == pytest.approx(0.01 * 0.9**3)


def test_class_weighted_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 12, (5, 2, 4))
    counts = np.array([[4, 2], [3, 0], [1, 1], [2, 2], [4, 0]])
    y = np.array([0, 1, 1, 0, 1])
    m = HierarchicalModel(12, 2, embed_size=3, word_hidden=2, sentence_hidden=2,
                          attention_units=3, class_weights=[0.5, 3.0], seed=0)  # fmt: skip
    _, grad = m._loss_grad(ids, counts, y)
    base = m.params.copy()
    # The head and the attention vectors: float64 NumPy parameters, exact central differences.
    for j in rng.choice(np.flatnonzero(np.abs(grad) > 1e-6), 8, replace=False):
        if j >= len(base) - m.net.word_lstm.num_parameters - m.net.sent_lstm.num_parameters:
            continue  # the LSTMs hold float32 weights: their gradients are tested in test_hierarchical
        e = np.zeros_like(base)
        e[j] = 1e-6
        m.set_weights(base + e)
        up, _ = m._loss_grad(ids, counts, y)
        m.set_weights(base - e)
        down, _ = m._loss_grad(ids, counts, y)
        assert grad[j] == pytest.approx((up - down) / 2e-6, rel=1e-3, abs=1e-6)
    # Equal weights give the unweighted mean of HierarchicalClassifier.loss_and_gradient.
    m.set_weights(base)
    m._config["class_weights"] = [2.0, 2.0]
    loss, g = m._loss_grad(ids, counts, y)
    loss0, g0 = m.net.loss_and_gradient(ids, counts, y)
    assert loss == pytest.approx(loss0) and np.allclose(g, g0)


def test_hierarchical_kind_on_numeric_data_is_a_config_error(tmp_path):
    path = tmp_path / "series.csv"
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        for i in range(20):
            w.writerow([i % 2, *np.round(rng.normal(size=8), 3)])
    task = BUILTIN_TASKS["classify"]
    cfg = resolve_config(task, sets=[f"data.path={path}", "model.kind=hierarchical"])
    with pytest.raises(ConfigError, match=r"model.kind = 'hierarchical' is not allowed for csv"):
        task.prepare(cfg)
    with pytest.raises(ConfigError, match="model.num_layers = 2 is not allowed with model.kind"):
        resolve_config(
            task, sets=[f"data.path={path}", "model.kind=hierarchical", "model.num_layers=2"]
        )


def test_predict_checks_shapes():
    m = HierarchicalModel(10, 2, embed_size=3, word_hidden=2, sentence_hidden=2, attention_units=3)
    with pytest.raises(ShapeError, match="word counts"):
        m.predict(np.ones((2, 3, 4), np.int64), lengths=np.ones((2, 4), np.int64))
