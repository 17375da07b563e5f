"""Metrics against hand-computed values (and scikit-learn / torch when installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lstmrs import metrics as M
from lstmrs.errors import InvalidArgumentError, ShapeError

# cm (rows true, cols predicted) = [[2,0,0],[0,1,1],[1,1,1]]
Y_TRUE = np.array([0, 1, 2, 2, 1, 0, 2])
Y_PRED = np.array([0, 2, 2, 1, 1, 0, 0])


def test_confusion_matrix_and_accuracy_by_hand():
    cm = M.confusion_matrix(Y_TRUE, Y_PRED)
    np.testing.assert_array_equal(cm, [[2, 0, 0], [0, 1, 1], [1, 1, 1]])
    assert M.accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 7, abs=1e-15)
    # A class never seen still gets its row and column.
    assert M.confusion_matrix(Y_TRUE, Y_PRED, num_classes=4).shape == (4, 4)
    with pytest.raises(InvalidArgumentError):
        M.confusion_matrix(Y_TRUE, Y_PRED, num_classes=2)


def test_precision_recall_f1_by_hand():
    # tp = [2,1,1]; predicted per class [3,2,2]; true per class [2,2,3].
    np.testing.assert_allclose(M.precision(Y_TRUE, Y_PRED, average=None), [2 / 3, 1 / 2, 1 / 2])
    np.testing.assert_allclose(M.recall(Y_TRUE, Y_PRED, average=None), [1, 1 / 2, 1 / 3])
    np.testing.assert_allclose(M.f1_score(Y_TRUE, Y_PRED, average=None), [0.8, 0.5, 0.4])
    assert M.precision(Y_TRUE, Y_PRED) == pytest.approx(5 / 9)
    assert M.recall(Y_TRUE, Y_PRED) == pytest.approx(11 / 18)
    assert M.f1_score(Y_TRUE, Y_PRED) == pytest.approx(1.7 / 3)
    for f in (M.precision, M.recall, M.f1_score):
        assert f(Y_TRUE, Y_PRED, average="micro") == pytest.approx(4 / 7)
    assert M.precision(Y_TRUE, Y_PRED, average="weighted") == pytest.approx(23 / 42)
    assert M.recall(Y_TRUE, Y_PRED, average="weighted") == pytest.approx(4 / 7)
    assert M.f1_score(Y_TRUE, Y_PRED, average="weighted") == pytest.approx(3.8 / 7)
    with pytest.raises(InvalidArgumentError):
        M.f1_score(Y_TRUE, Y_PRED, average="samples")


def test_ignore_index_and_zero_division():
    t = np.array([1, -100, 0, 1])
    p = np.array([1, 0, 0, 0])
    assert M.accuracy(t, p, ignore_index=-100) == pytest.approx(2 / 3)
    # Class 2 is never predicted: precision 0 (not NaN), as scikit-learn's zero_division=0.
    np.testing.assert_allclose(M.precision([2, 2], [0, 0], average=None), [0.0, 0.0, 0.0])
    with pytest.raises(ShapeError):
        M.accuracy([0, 1], [0])
    with pytest.raises(InvalidArgumentError):
        M.accuracy([0, -1], [0, 1])


def test_against_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    t = rng.integers(0, 5, 300)
    p = np.where(rng.random(300) < 0.6, t, rng.integers(0, 5, 300))
    np.testing.assert_array_equal(M.confusion_matrix(t, p), skm.confusion_matrix(t, p))
    for avg in ("macro", "micro", "weighted", None):
        np.testing.assert_allclose(
            M.f1_score(t, p, average=avg), skm.f1_score(t, p, average=avg), rtol=1e-12
        )
        np.testing.assert_allclose(
            M.precision(t, p, average=avg), skm.precision_score(t, p, average=avg), rtol=1e-12
        )
    yt, yp = rng.uniform(0.5, 2, 50), rng.uniform(0.5, 2, 50)
    assert M.mean_absolute_percentage_error(yt, yp) == pytest.approx(
        skm.mean_absolute_percentage_error(yt, yp), rel=1e-12
    )


def test_regression_by_hand():
    t, p = [1.0, 2.0, 4.0], [1.5, 1.0, 4.0]
    assert M.mean_squared_error(t, p) == pytest.approx(1.25 / 3)
    assert M.root_mean_squared_error(t, p) == pytest.approx(math.sqrt(1.25 / 3))
    assert M.mean_absolute_error(t, p) == pytest.approx(0.5)
    assert M.mean_absolute_percentage_error(t, p) == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    with pytest.raises(ShapeError):
        M.mean_squared_error([1, 2], [1, 2, 3])


def test_perplexity_and_bits_per_char():
    # Uniform logits over 4 classes: H = ln 4 nats, perplexity 4, 2 bits per character.
    logits = np.zeros((6, 4))
    y = np.array([0, 1, 2, 3, 0, 1])
    h = M.cross_entropy(logits, y)
    assert h == pytest.approx(math.log(4), abs=1e-15)
    assert M.perplexity(h) == pytest.approx(4.0)
    assert M.bits_per_char(h) == pytest.approx(2.0)
    # A confident right answer costs -log softmax: logits [2, 0] for class 0 -> log(1 + e^-2).
    assert M.cross_entropy(np.array([[2.0, 0.0]]), np.array([0])) == pytest.approx(
        math.log1p(math.exp(-2.0))
    )


def test_loss_value_matches_core_golden_values():
    # Golden values of rust/lstmrs-core/src/model/loss.rs (from torch.nn.functional, f64):
    # p = [[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]]
    # F.cross_entropy(p, [2, 0], weight=[1, 2, 3]) -> 0.9479770177912326
    # F.huber_loss(p, zeros, delta=1.0) -> 0.4483333333333333
    # F.binary_cross_entropy_with_logits(p, full(0.25)) -> 0.7716704140182741
    p = np.array([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]])
    ce, w = M.loss_value("cross_entropy", p, np.array([2, 0]), class_weights=np.array([1.0, 2, 3]))
    assert ce == pytest.approx(0.9479770177912326, abs=1e-14)
    assert w == 4.0  # weights of the targets: 3 + 1
    hub, n = M.loss_value("huber", p, np.zeros_like(p), delta=1.0)
    assert hub == pytest.approx(0.4483333333333333, abs=1e-14) and n == 6
    bce, _ = M.loss_value("bce_with_logits", p, np.full_like(p, 0.25))
    assert bce == pytest.approx(0.7716704140182741, abs=1e-14)
    # Masked rows and ignored targets do not count.
    ce2, w2 = M.loss_value("cross_entropy", p, np.array([2, -100]))
    assert w2 == 1.0 and ce2 == pytest.approx(-M._log_softmax(p[0])[2])
    mse, n = M.loss_value("mse", p, np.zeros_like(p), mask=np.array([False, True]))
    assert n == 3 and mse == pytest.approx(np.mean(p[1] ** 2))


def test_loss_value_against_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20, 5))
    y = rng.integers(0, 5, 20)
    y[[3, 7]] = -100
    w = rng.uniform(0.5, 2.0, 5)
    got, _ = M.loss_value("cross_entropy", z, y, class_weights=w)
    want = F.cross_entropy(torch.tensor(z), torch.tensor(y), weight=torch.tensor(w)).item()
    assert got == pytest.approx(want, rel=1e-12)
    t = rng.normal(size=(20, 5))
    for name, fn in (("mse", F.mse_loss), ("mae", F.l1_loss)):
        assert M.loss_value(name, z, t)[0] == pytest.approx(
            fn(torch.tensor(z), torch.tensor(t)).item(), rel=1e-12
        )
    assert M.loss_value("huber", z, t, delta=0.7)[0] == pytest.approx(
        F.huber_loss(torch.tensor(z), torch.tensor(t), delta=0.7).item(), rel=1e-12
    )


def _chunks(a, k):
    return [a[i : i + k] for i in range(0, len(a), k)]


@pytest.mark.parametrize(
    "name",
    ["accuracy", "f1", "f1_micro", "precision_weighted", "perplexity", "bpc", "confusion_matrix"],
)
def test_accumulators_over_batches_equal_whole(name):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 4))
    y = rng.integers(0, 4, 50)
    y[::9] = -100
    whole = M.get_metric(name, loss="cross_entropy", outputs=4)
    whole.update(y, logits, None)
    parts = M.get_metric(name, loss="cross_entropy", outputs=4)
    for yy, zz in zip(_chunks(y, 7), _chunks(logits, 7)):
        parts.update(yy, zz, None)
    np.testing.assert_allclose(parts.result(), whole.result(), rtol=1e-12)
    keep = y != -100
    pred = logits.argmax(-1)
    expected = {
        "accuracy": M.accuracy(y[keep], pred[keep]),
        "f1": M.f1_score(y[keep], pred[keep]),
        "f1_micro": M.f1_score(y[keep], pred[keep], average="micro"),
        "precision_weighted": M.precision(y[keep], pred[keep], average="weighted"),
        "perplexity": M.perplexity(M.cross_entropy(logits, y)),
        "bpc": M.bits_per_char(M.cross_entropy(logits, y)),
        "confusion_matrix": M.confusion_matrix(y[keep], pred[keep], num_classes=4),
    }[name]
    np.testing.assert_allclose(whole.result(), expected, rtol=1e-12)
    # A state round trip (what checkpoints store) gives the same value.
    fresh = M.get_metric(name, loss="cross_entropy", outputs=4)
    fresh.load_state_dict(parts.state_dict())
    np.testing.assert_allclose(fresh.result(), parts.result(), rtol=0)


def test_regression_and_binary_accumulators_with_mask():
    rng = np.random.default_rng(2)
    out = rng.normal(size=(3, 5, 2))
    y = rng.normal(size=(3, 5, 2))
    mask = np.arange(5)[None, :] < np.array([5, 2, 3])[:, None]
    for name, fn in (
        ("mse", M.mean_squared_error),
        ("mae", M.mean_absolute_error),
        ("rmse", M.root_mean_squared_error),
        ("mape", M.mean_absolute_percentage_error),
    ):
        m = M.get_metric(name, loss="mse", outputs=2)
        m.update(y, out, mask)
        assert m.result() == pytest.approx(fn(y[mask], out[mask]), rel=1e-12)
    acc = M.get_metric("accuracy", loss="bce_with_logits", outputs=2)
    targets = (rng.random((3, 5, 2)) > 0.5).astype(float)
    acc.update(targets, out, mask)
    assert acc.result() == pytest.approx(np.mean((out[mask] > 0) == (targets[mask] > 0.5)))


def test_metric_names_checked_against_the_loss():
    with pytest.raises(InvalidArgumentError):
        M.get_metric("accuracy", loss="mse", outputs=1)
    with pytest.raises(InvalidArgumentError):
        M.get_metric("perplexity", loss="mse", outputs=1)
    with pytest.raises(InvalidArgumentError):
        M.get_metric("rmse", loss="cross_entropy", outputs=3)
    with pytest.raises(InvalidArgumentError):
        M.get_metric("auc_roc", loss="cross_entropy", outputs=3)
