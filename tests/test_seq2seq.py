"""lstmrs.Seq2Seq: gradients (finite differences, live PyTorch), training, exact resume, decoding
and the typed errors. The core's own tests (rust/lstmrs-core/tests/seq2seq.rs) hold the attention
golden values, the reference-loss parity and beam width 1 == greedy."""

from __future__ import annotations

import json
import signal

import lstmrs
import numpy as np
import pytest
from lstmrs.errors import DTypeError, InvalidArgumentError, ShapeError
from lstmrs.seq2seq import CHECKPOINT_DIR


def reverse_data(n: int, rng: np.random.Generator, vocab: int = 8):
    """Sources of 3-6 tokens in 1..vocab-1; targets are the sources reversed, shifted by 3 (so
    the target side needs bos=1 and eos=2 free)."""
    src = [rng.integers(1, vocab, size=rng.integers(3, 7)) for _ in range(n)]
    tgt = [s[::-1] + 2 for s in src]
    return src, tgt


def small(**kw) -> lstmrs.Seq2Seq:
    args = {"src_vocab": 8, "tgt_vocab": 10, "embed_size": 6, "hidden_size": 8, "seed": 0}
    args.update(kw)
    return lstmrs.Seq2Seq(**args)


@pytest.mark.parametrize("attention", ["general", "additive"])
def test_gradient_matches_finite_differences(attention, rng):
    m = small(attention=attention, dtype="float64", num_layers=2, cell="gru")
    m.compile("adam", label_smoothing=0.1)
    src, tgt = reverse_data(4, rng)
    loss, grads = m.loss_and_grad(src, tgt)
    assert grads.shape == (m.num_params,) and np.isfinite(loss)
    for i in rng.choice(m.num_params, size=40, replace=False):
        keep = m.params[i]
        m.params[i] = keep + 1e-6
        up = m.loss_and_grad(src, tgt)[0]
        m.params[i] = keep - 1e-6
        down = m.loss_and_grad(src, tgt)[0]
        m.params[i] = keep
        fd = (up - down) / 2e-6
        assert abs(fd - grads[i]) < 1e-6 * (1 + abs(fd)), (i, fd, grads[i])


@pytest.mark.parametrize("attention", ["general", "additive"])
def test_loss_and_gradients_match_pytorch(attention, rng):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    m = small(attention=attention, dtype="float64", num_layers=2, bidirectional=True)
    m.compile("adam", label_smoothing=0.1)
    src, tgt = reverse_data(5, rng)
    loss, grads = m.loss_and_grad(src, tgt)

    sd = {k: torch.tensor(v, requires_grad=True) for k, v in m.state_dict().items()}
    c = m.get_config()
    lstm = nn.LSTM(6, c["encoder_hidden"], 2, bidirectional=True, batch_first=True).double()
    lstm.load_state_dict({k[len("encoder.") :]: sd[k] for k in sd if k.startswith("encoder.")})
    enc_params = dict(lstm.named_parameters())
    lengths = torch.tensor([len(s) for s in src])
    S = int(lengths.max())
    x = torch.zeros(len(src), S, dtype=torch.long)
    for i, s in enumerate(src):
        x[i, : len(s)] = torch.tensor(s)
    emb = sd["src_embedding"][x]
    packed = nn.utils.rnn.pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
    out, (h_n, c_n) = lstm(packed)
    enc, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=S)
    fin_h = torch.cat([h_n[-2], h_n[-1]], 1)
    fin_c = torch.cat([c_n[-2], c_n[-1]], 1)
    h = torch.tanh(fin_h @ sd["bridge_h.weight"].T + sd["bridge_h.bias"])
    cc = torch.tanh(fin_c @ sd["bridge_c.weight"].T + sd["bridge_c.bias"])
    mask = torch.arange(S)[None, :] < lengths[:, None]
    att = torch.zeros_like(h)
    T = max(len(t) for t in tgt) + 1
    y = torch.zeros(len(tgt), T, dtype=torch.long)
    tmask = torch.zeros(len(tgt), T, dtype=torch.bool)
    for i, t in enumerate(tgt):
        y[i, : len(t)] = torch.tensor(t)
        y[i, len(t)] = 2
        tmask[i, : len(t) + 1] = True
    prev = torch.full((len(tgt),), 1, dtype=torch.long)
    logits_all = []
    for t in range(T):
        xin = torch.cat([sd["tgt_embedding"][prev], att], 1)
        g = (
            xin @ sd["decoder.weight_ih"].T
            + sd["decoder.bias_ih"]
            + h @ sd["decoder.weight_hh"].T
            + sd["decoder.bias_hh"]
        )
        i_, f_, g_, o_ = g.chunk(4, 1)
        cc = torch.sigmoid(f_) * cc + torch.sigmoid(i_) * torch.tanh(g_)
        h = torch.sigmoid(o_) * torch.tanh(cc)
        if attention == "general":
            score = torch.einsum("bh,bsh->bs", h, enc @ sd["attention.weight"].T)
        else:
            k = enc @ sd["attention.key"].T
            q = h @ sd["attention.query"].T
            score = torch.tanh(k + q[:, None, :]) @ sd["attention.v"]
        alpha = torch.softmax(score.masked_fill(~mask, float("-inf")), 1)
        ctx = torch.einsum("bs,bsd->bd", alpha, enc)
        att = torch.tanh(torch.cat([ctx, h], 1) @ sd["combine.weight"].T + sd["combine.bias"])
        logits_all.append(att @ sd["out.weight"].T + sd["out.bias"])
        prev = y[:, t]
    logits = torch.stack(logits_all, 1)
    ref = nn.functional.cross_entropy(logits[tmask], y[tmask], label_smoothing=0.1)
    ref.backward()
    assert abs(ref.item() - loss) < 1e-10
    g = m.state_dict()  # views of the flat params: reuse the layout for the gradients
    offset = 0
    for name, arr in g.items():
        n = arr.size
        got = grads[offset : offset + n].reshape(arr.shape)
        offset += n
        want = (
            enc_params[name[len("encoder.") :]] if name.startswith("encoder.") else sd[name]
        ).grad
        np.testing.assert_allclose(got, want.numpy(), atol=1e-10, err_msg=name)


def test_fit_learns_to_reverse_and_beam_decodes(rng):
    lstmrs.set_num_threads(1)
    m = small(embed_size=16, hidden_size=32)
    m.compile("adam", lr=0.01, clip_norm=5.0)
    src, tgt = reverse_data(600, rng)
    vsrc, vtgt = reverse_data(50, np.random.default_rng(7))
    hist = m.fit(src, tgt, epochs=12, batch_size=32, validation_data=(vsrc, vtgt), verbose=0)
    losses = hist.history["val_loss"]
    assert losses[-1] < 0.5 * losses[0]
    greedy = m.predict(vsrc)
    beam = m.predict(vsrc, beam=4, alpha=0.6)
    exact = np.mean([list(p) == list(t) for p, t in zip(greedy, vtgt)])
    exact_beam = np.mean([list(p) == list(t) for p, t in zip(beam, vtgt)])
    assert exact > 0.5 and exact_beam > 0.5, (exact, exact_beam)
    (tokens, att), *_ = m.predict(vsrc[:1], return_attention=True)
    assert att.shape == (len(tokens) + 1, len(vsrc[0]))
    np.testing.assert_allclose(att.sum(1), 1.0, atol=1e-5)


def test_batches_cover_every_pair_once_with_little_padding(rng):
    src, tgt = reverse_data(3000, rng)
    m = small()
    batches = m._batches(src, tgt, 16, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(3000))
    assert m._batches(src, tgt, 16, np.random.default_rng(0))[5].tolist() == batches[5].tolist()
    lens = np.array([len(s) for s in src])
    useful = sum(lens[b].sum() for b in batches) / sum(len(b) * lens[b].max() for b in batches)
    assert useful > 0.95, useful


def test_checkpoint_resume_is_exact(tmp_path, rng):
    src, tgt = reverse_data(80, rng)

    def run(epochs, **kw):
        m = small(dropout=0.0, num_layers=2)
        m.compile("adam", lr=0.01, sampling_rate=0.25)
        m.fit(src, tgt, epochs=epochs, batch_size=16, verbose=0, seed=3, **kw)
        return m

    straight = run(3)
    run(2, checkpoint_dir=tmp_path)
    resumed = run(3, checkpoint_dir=tmp_path, resume=True)
    np.testing.assert_array_equal(resumed.params, straight.params)


class _CtrlC(lstmrs.callbacks.Callback):
    """Presses Ctrl-C (a real SIGINT) during batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.at, self.epoch = (epoch, batch), -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_mid_epoch_saves_and_resume_is_exact(tmp_path, rng, capsys):
    src, tgt = reverse_data(80, rng)
    vsrc, vtgt = reverse_data(10, np.random.default_rng(7))

    def run(epochs, **kw):
        m = small(num_layers=2)
        m.compile("adam", lr=0.01, sampling_rate=0.25)
        hist = m.fit(
            src,
            tgt,
            epochs=epochs,
            batch_size=16,
            validation_data=(vsrc, vtgt),
            verbose=0,
            seed=3,
            **kw,
        )
        return m, hist

    straight, straight_hist = run(3)
    with pytest.raises(KeyboardInterrupt):
        run(3, checkpoint_dir=tmp_path, callbacks=[_CtrlC(epoch=1, batch=2)])
    err = capsys.readouterr().err
    assert "finishing this batch" in err and "checkpoint saved to" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    with open(tmp_path / CHECKPOINT_DIR / "state.json") as f:
        state = json.load(f)
    # Batch 2 of epoch 1 finished before the interrupt took effect.
    assert (state["epoch"], state["batch"]) == (1, 3)
    # The resumed run starts at batch 3 with the epoch's running totals: same weights, and the
    # same per-epoch logs (the history of epoch 0 comes back from the checkpoint).
    resumed, hist = run(3, checkpoint_dir=tmp_path, resume=True)
    np.testing.assert_array_equal(resumed.params, straight.params)
    for k in ("loss", "token_accuracy", "val_loss"):
        assert hist.history[k] == straight_hist.history[k], k


def test_save_load_round_trip(tmp_path, rng):
    m = small()
    m.params += 0.01
    m.save(tmp_path / "m")
    back = lstmrs.Seq2Seq.load(tmp_path / "m")
    np.testing.assert_array_equal(back.params, m.params)
    src, _ = reverse_data(3, rng)
    assert back.predict(src) == m.predict(src)


def test_bad_input_raises_typed_errors():
    with pytest.raises(InvalidArgumentError, match="attention"):
        small(attention="dot")
    with pytest.raises(InvalidArgumentError, match="eos"):
        small(eos=10)
    m = small()
    with pytest.raises(InvalidArgumentError, match=r"src\[0\]: expected token ids in 0..7"):
        m.loss_and_grad([[1, 8]], [[3]])
    with pytest.raises(ShapeError, match="tgt: expected 2 sequences"):
        m.loss_and_grad([[1], [2]], [[3]])
    with pytest.raises(InvalidArgumentError, match="src\\[0\\]: expected at least one token"):
        m.predict([[]])
    with pytest.raises(InvalidArgumentError, match="beam"):
        m.predict([[1, 2]], beam=0)
    with pytest.raises(ShapeError):
        m.set_weights(np.zeros(3, np.float32))
    with pytest.raises(InvalidArgumentError, match="label_smoothing"):
        m.compile("adam", label_smoothing=1.0)
    with pytest.raises(DTypeError):
        m._net.loss_and_grad(
            m.params.astype(np.int32),
            np.ones((1, 2), np.int64),
            np.array([2]),
            np.ones((1, 2), np.int64),
            np.array([2]),
            bos=1,
        )
