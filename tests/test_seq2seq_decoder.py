"""Stacked and GRU decoders of lstmrs.Seq2Seq: the one-layer LSTM decoder is the model before
stacking bit for bit, PyTorch's semantics for stacked LSTM and GRU decoders (live when torch
imports), finite differences, beam width 1 == greedy, saving, resuming, old saved models, and
`model.kind` / `model.decoder_layers` in the seq2seq task's configuration. The core's tests
(rust/lstmrs-core/tests/seq2seq.rs) check every parameter's gradient against finite differences
and the fast path against the plain reference."""

from __future__ import annotations

import json
import os

import lstmrs
import numpy as np
import pytest
from lstmrs.cells import Cell, tanh
from lstmrs.cli import main
from lstmrs.config import ConfigError
from lstmrs.errors import InvalidArgumentError
from lstmrs.plugins import hookimpl
from lstmrs.seq2seq import CONFIG_FILE
from lstmrs.tasks.runner import lookup_task, resolve_config
from lstmrs.testing import isolated_plugins, register_temporarily


def _tanh_rnn(c: Cell):
    (xg,) = c.x_gates(1)
    (hg,) = c.h_gates(1)
    return {"h": tanh(xg + hg)}


# A plain tanh RNN, as a plugin cell: an encoder may run it, a decoder may not.
TANH_RNN = Cell.define("s2s_tanh_rnn", _tanh_rnn, states=("h",))


class TanhRnnPlugin:
    @hookimpl
    def lstmrs_register_cells(self, register):
        register(TANH_RNN)


@pytest.fixture
def tanh_rnn_plugin():
    with isolated_plugins(), register_temporarily(TanhRnnPlugin(), name="s2s_tanh_rnn"):
        yield TANH_RNN.name


def reverse_data(n: int, rng: np.random.Generator, vocab: int = 8):
    """Sources of 3-6 tokens in 1..vocab-1; targets reversed and shifted by 2 (bos=1, eos=2)."""
    src = [rng.integers(1, vocab, size=rng.integers(3, 7)) for _ in range(n)]
    tgt = [s[::-1] + 2 for s in src]
    return src, tgt


def small(**kw) -> lstmrs.Seq2Seq:
    args = {"src_vocab": 8, "tgt_vocab": 10, "embed_size": 6, "hidden_size": 8, "seed": 0}
    args.update(kw)
    return lstmrs.Seq2Seq(**args)


# Produced by the one-layer model before stacked decoders existed (main at 62cf05d):
#   m = lstmrs.Seq2Seq(src_vocab=8, tgt_vocab=10, embed_size=6, hidden_size=8, seed=0,
#                      dtype="float64", num_layers=2, attention="additive")
#   src, tgt = reverse_data(4, np.random.default_rng(5)); m.compile("adam", label_smoothing=0.1)
#   loss, g = m.loss_and_grad(src, tgt)
#   m.num_params, float(m.params.sum()), loss, float(g.sum()), float(np.abs(g).sum())
#   m.params *= 2.5
#   m.predict(src, return_scores=True), m.predict(src, beam=3, alpha=0.6, return_scores=True)
BEFORE_STACKING = {
    "num_params": 2214,
    "params_sum": -24.241643760599082,
    "loss": 2.264074464297257,
    "grads_sum": -0.015626775968516426,
    "grads_abs_sum": 2.269377603060366,
    "greedy": [
        ([1, 1], -3.6888559567690815),
        ([], -1.2288847179849052),
        ([1, 1], -3.7919135693610473),
        ([1, 1], -3.3755842365475606),
    ],
    "beam3": [
        ([], -1.5907260447210345),
        ([], -1.2288847179849052),
        ([], -1.6569382646040276),
        ([], -1.4253445988557334),
    ],
}


def test_one_layer_lstm_decoder_is_the_model_before_stacking():
    """The same weights from the same seed, loss, gradients and decoding, bit for bit but for
    the gradient sums' rounding."""
    m = small(dtype="float64", num_layers=2, attention="additive")
    assert m.get_config()["decoder_layers"] == 1 and m.get_config()["decoder_cell"] == "lstm"
    m.compile("adam", label_smoothing=0.1)
    src, tgt = reverse_data(4, np.random.default_rng(5))
    loss, g = m.loss_and_grad(src, tgt)
    got = {
        "num_params": m.num_params,
        "params_sum": float(m.params.sum()),
        "loss": loss,
        "grads_sum": float(g.sum()),
        "grads_abs_sum": float(np.abs(g).sum()),
    }
    m.params *= 2.5
    got["greedy"] = m.predict(src, return_scores=True)
    got["beam3"] = m.predict(src, beam=3, alpha=0.6, return_scores=True)
    # The gradient sums to rounding: the recurrent backward sums its bias gradients step by step
    # (reverse time) since the recording, which moves their last bits; the rest is bit for bit.
    for key in ("grads_sum", "grads_abs_sum"):
        assert got.pop(key) == pytest.approx(BEFORE_STACKING[key], rel=1e-12, abs=1e-15), key
    want = {k: v for k, v in BEFORE_STACKING.items() if k not in ("grads_sum", "grads_abs_sum")}
    assert got == want


def torch_loss(m: lstmrs.Seq2Seq, src, tgt, smoothing: float):
    """The model's loss written in PyTorch (LSTM bidirectional encoder, any decoder stack),
    and the gradients of its parameters by name."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    c = m.get_config()
    sd = {k: torch.tensor(v, requires_grad=True) for k, v in m.state_dict().items()}
    enc_rnn = nn.LSTM(
        c["embed_size"], c["encoder_hidden"], c["num_layers"], bidirectional=True, batch_first=True
    ).double()
    enc_rnn.load_state_dict({k[len("encoder.") :]: sd[k] for k in sd if k.startswith("encoder.")})
    lengths = torch.tensor([len(s) for s in src])
    S = int(lengths.max())
    x = torch.zeros(len(src), S, dtype=torch.long)
    for i, s in enumerate(src):
        x[i, : len(s)] = torch.tensor(s)
    packed = nn.utils.rnn.pack_padded_sequence(
        sd["src_embedding"][x], lengths, batch_first=True, enforce_sorted=False
    )
    out, (h_n, c_n) = enc_rnn(packed)
    enc, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=S)
    L, H = c["decoder_layers"], c["hidden_size"]
    gru = c["decoder_cell"] == "gru"
    h0 = torch.tanh(
        torch.cat([h_n[-2], h_n[-1]], 1) @ sd["bridge_h.weight"].T + sd["bridge_h.bias"]
    )
    hs = list(h0.split(H, 1))
    if gru:
        cs = [None] * L
    else:
        fin_c = torch.cat([c_n[-2], c_n[-1]], 1)
        cs = list(torch.tanh(fin_c @ sd["bridge_c.weight"].T + sd["bridge_c.bias"]).split(H, 1))
    name = (
        (lambda base, l: f"decoder.{base}") if L == 1 else (lambda base, l: f"decoder.{base}_l{l}")
    )
    mask = torch.arange(S)[None, :] < lengths[:, None]
    att = torch.zeros(len(src), H, dtype=torch.float64)
    T = max(len(t) for t in tgt) + 1
    y = torch.zeros(len(tgt), T, dtype=torch.long)
    tmask = torch.zeros(len(tgt), T, dtype=torch.bool)
    for i, t in enumerate(tgt):
        y[i, : len(t)] = torch.tensor(t)
        y[i, len(t)] = c["eos"]
        tmask[i, : len(t) + 1] = True
    prev = torch.full((len(tgt),), c["bos"], dtype=torch.long)
    logits_all = []
    for t in range(T):
        inp = torch.cat([sd["tgt_embedding"][prev], att], 1)
        for l in range(L):
            gi = inp @ sd[name("weight_ih", l)].T + sd[name("bias_ih", l)]
            gh = hs[l] @ sd[name("weight_hh", l)].T + sd[name("bias_hh", l)]
            if gru:  # torch.nn.GRUCell
                ir, iz, i_n = gi.chunk(3, 1)
                hr, hz, h_n_ = gh.chunk(3, 1)
                r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                n = torch.tanh(i_n + r * h_n_)
                hs[l] = (1 - z) * n + z * hs[l]
            else:  # torch.nn.LSTMCell
                i_, f_, g_, o_ = (gi + gh).chunk(4, 1)
                cs[l] = torch.sigmoid(f_) * cs[l] + torch.sigmoid(i_) * torch.tanh(g_)
                hs[l] = torch.sigmoid(o_) * torch.tanh(cs[l])
            inp = hs[l]
        h = hs[-1]
        score = torch.einsum("bh,bsh->bs", h, enc @ sd["attention.weight"].T)
        alpha = torch.softmax(score.masked_fill(~mask, float("-inf")), 1)
        ctx = torch.einsum("bs,bsd->bd", alpha, enc)
        att = torch.tanh(torch.cat([ctx, h], 1) @ sd["combine.weight"].T + sd["combine.bias"])
        logits_all.append(att @ sd["out.weight"].T + sd["out.bias"])
        prev = y[:, t]
    logits = torch.stack(logits_all, 1)
    ref = nn.functional.cross_entropy(logits[tmask], y[tmask], label_smoothing=smoothing)
    ref.backward()
    enc_params = dict(enc_rnn.named_parameters())
    grads = {
        k: (enc_params[k[len("encoder.") :]] if k.startswith("encoder.") else v).grad.numpy()
        for k, v in sd.items()
    }
    return ref.item(), grads


@pytest.mark.parametrize("layers,cell", [(2, "lstm"), (2, "gru"), (1, "gru")])
def test_stacked_and_gru_decoders_match_pytorch(layers, cell, rng):
    m = small(dtype="float64", bidirectional=True, decoder_layers=layers, decoder_cell=cell)
    m.compile("adam", label_smoothing=0.1)
    src, tgt = reverse_data(5, rng)
    loss, grads = m.loss_and_grad(src, tgt)
    want, want_grads = torch_loss(m, src, tgt, 0.1)
    assert abs(want - loss) < 1e-10
    offset = 0
    for name, arr in m.state_dict().items():
        got = grads[offset : offset + arr.size].reshape(arr.shape)
        offset += arr.size
        np.testing.assert_allclose(got, want_grads[name], atol=1e-10, err_msg=name)


@pytest.mark.parametrize("cell,decoder_cell", [("gru", None), ("lstm", "gru"), ("gru", "lstm")])
def test_stacked_decoder_gradient_matches_finite_differences(cell, decoder_cell, rng):
    m = small(dtype="float64", cell=cell, decoder_cell=decoder_cell, decoder_layers=3)
    m.compile("adam", label_smoothing=0.1)
    src, tgt = reverse_data(3, rng)
    _, grads = m.loss_and_grad(src, tgt)
    for i in rng.choice(m.num_params, size=40, replace=False):
        keep = m.params[i]
        m.params[i] = keep + 1e-6
        up = m.loss_and_grad(src, tgt)[0]
        m.params[i] = keep - 1e-6
        down = m.loss_and_grad(src, tgt)[0]
        m.params[i] = keep
        fd = (up - down) / 2e-6
        assert abs(fd - grads[i]) < 1e-6 * (1 + abs(fd)), (i, fd, grads[i])


@pytest.mark.parametrize("layers,cell", [(3, "lstm"), (2, "gru")])
def test_beam_width_one_is_greedy(layers, cell, rng):
    m = small(decoder_layers=layers, cell=cell, attention="additive")
    m.params += np.float32(0.3) * np.sign(m.params)  # sharper outputs than the initial weights
    src, _ = reverse_data(6, rng)
    s = np.zeros((len(src), max(map(len, src))), np.int64)
    for i, x in enumerate(src):
        s[i, : len(x)] = x
    lens = np.array([len(x) for x in src], np.int64)
    kw = {"bos": 1, "eos": 2, "max_len": 9, "attention": True}
    greedy = m._net.decode(m.params, s, lens, **kw)
    beam1 = m._net.decode(m.params, s, lens, force_beam=True, **kw)
    for (tg, lg, fg, ag), (tb, lb, fb, ab) in zip(greedy, beam1):
        assert (tg, lg, fg) == (tb, lb, fb)
        np.testing.assert_array_equal(ag, ab)
    assert len(m.predict(src, beam=4)) == len(src)


def test_stacked_gru_decoder_learns_saves_and_resumes_exactly(tmp_path, rng):
    src, tgt = reverse_data(80, rng)

    def run(epochs, **kw):
        m = small(cell="gru", decoder_layers=2, dropout=0.2)
        m.compile("adam", lr=0.01)
        hist = m.fit(src, tgt, epochs=epochs, batch_size=16, verbose=0, seed=3, **kw)
        return m, hist

    straight, hist = run(3)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    run(2, checkpoint_dir=tmp_path)
    resumed, _ = run(3, checkpoint_dir=tmp_path, resume=True)
    np.testing.assert_array_equal(resumed.params, straight.params)
    straight.save(tmp_path / "m")
    back = lstmrs.Seq2Seq.load(tmp_path / "m")
    assert back.get_config() == straight.get_config()
    assert back.predict(src[:5], beam=2) == straight.predict(src[:5], beam=2)
    # A checkpoint of another decoder says which key differs.
    other = small(cell="gru", decoder_layers=2, dropout=0.2, decoder_cell="lstm")
    other.compile("adam", lr=0.01)
    with pytest.raises(InvalidArgumentError, match="decoder_cell: 'gru' there, 'lstm' here"):
        other.fit(
            src, tgt, epochs=3, batch_size=16, verbose=0, checkpoint_dir=tmp_path, resume=True
        )


def test_a_model_saved_before_stacking_loads_as_one_lstm_layer(tmp_path, rng):
    m = small(cell="gru", decoder_cell="lstm")
    m.params += 0.01
    path = m.save(tmp_path / "old")
    cfg_path = os.path.join(path, CONFIG_FILE)
    with open(cfg_path) as f:
        saved = json.load(f)
    # What a model saved before stacked decoders wrote: no decoder keys, and a GRU encoder
    # whose decoder was an LSTM.
    config = saved.get("config", saved)
    del config["decoder_layers"], config["decoder_cell"]
    with open(cfg_path, "w") as f:
        json.dump(saved, f)
    back = lstmrs.Seq2Seq.load(path)
    assert back.get_config()["decoder_cell"] == "lstm" and back.num_params == m.num_params
    src, _ = reverse_data(3, rng)
    assert back.predict(src) == m.predict(src)


def test_bad_decoder_arguments_are_typed_errors(tanh_rnn_plugin):
    with pytest.raises(InvalidArgumentError, match="decoder_layers"):
        small(decoder_layers=0)
    with pytest.raises(InvalidArgumentError, match="decoder_cell: expected 'lstm' or 'gru'"):
        small(decoder_cell="rnn")
    # A cell the decoder cannot run is never replaced by an LSTM behind the user's back.
    with pytest.raises(InvalidArgumentError, match="decoder_cell: the decoder runs"):
        small(cell=tanh_rnn_plugin)
    m = small(cell=tanh_rnn_plugin, decoder_cell="gru", decoder_layers=2)
    assert "gru decoder 2x8" in repr(m)
    src, tgt = reverse_data(2, np.random.default_rng(0))
    assert np.isfinite(m.loss_and_grad(src, tgt)[0])


def test_task_config_model_kind_and_decoder_layers(tanh_rnn_plugin):
    task = lookup_task("seq2seq")
    cfg = resolve_config(
        task,
        file_cfg={"model": {"kind": "seq2seq", "decoder_layers": 2}, "data": {"path": "x.dict"}},
        sets=["model.cell=gru"],
    )
    assert cfg["model"]["kind"] == "seq2seq" and cfg["model"]["decoder_layers"] == 2
    with pytest.raises(ConfigError, match="model.kind = 'lstm'"):
        resolve_config(task, sets=["data.path=x.dict", "model.kind=lstm"])
    with pytest.raises(ConfigError, match="model.decoder_layers = 0"):
        resolve_config(task, sets=["data.path=x.dict", "model.decoder_layers=0"])
    with pytest.raises(ConfigError, match="model.decoder_cell = 'auto' is not allowed"):
        resolve_config(task, sets=["data.path=x.dict", f"model.cell={tanh_rnn_plugin}"])
    # A task with one kind of model names model.kind and the task that has the kind asked for.
    forecast = lookup_task("forecast")
    with pytest.raises(ConfigError, match=r"model.kind = 'seq2seq' .*task 'seq2seq'"):
        resolve_config(forecast, file_cfg={"model": {"kind": "seq2seq"}})
    with pytest.raises(ConfigError, match=r"model.kind = 'seq2seq' \(--set"):
        resolve_config(forecast, sets=["model.kind=seq2seq"])


def write_dict(path, n_words: int = 120, seed: int = 0) -> None:
    """A pronouncing dictionary where each letter is one phoneme."""
    rng = np.random.default_rng(seed)
    letters = "abcdeikost"
    words = set()
    while len(words) < n_words:
        words.add("".join(rng.choice(list(letters), size=rng.integers(2, 6))))
    with open(path, "w") as f:
        f.writelines(f"{w} {' '.join(c.upper() + 'H' for c in w)}\n" for w in sorted(words))


def test_train_and_predict_with_a_stacked_gru_decoder(tmp_path, capsys):
    p = tmp_path / "d.dict"
    write_dict(p, 120)
    run = tmp_path / "run"
    sets = [f"data.path={p}", "model.hidden_size=16", "model.embed_size=8", "model.cell=gru"]
    sets += ["model.kind=seq2seq", "model.decoder_layers=2", "train.epochs=2"]
    sets += ["train.batch_size=16", "eval.beam=2"]
    args = ["train", "--task", "seq2seq", "--run-dir", str(run), "--no-plots", "--quiet"]
    assert main(args + [a for kv in sets for a in ("--set", kv)]) == 0
    with open(run / "model" / CONFIG_FILE) as f:
        saved = json.load(f)
    config = saved.get("config", saved)
    assert (config["decoder_layers"], config["decoder_cell"]) == (2, "gru")
    capsys.readouterr()
    assert main(["predict", str(run), "cab", "tide"]) == 0
    assert [ln.split("\t")[0] for ln in capsys.readouterr().out.strip().splitlines()] == [
        "cab",
        "tide",
    ]


def test_resuming_a_run_from_before_decoder_cell_says_how(tmp_path, capsys):
    """A GRU-encoder run written before decoder_cell existed has an LSTM decoder; resuming it
    with the default "auto" (a GRU decoder) is a ConfigError naming the setting that resumes it."""
    p = tmp_path / "d.dict"
    write_dict(p, 60)
    run = tmp_path / "run"
    sets = [f"data.path={p}", "model.hidden_size=8", "model.embed_size=4", "model.cell=gru"]
    sets += ["model.decoder_cell=lstm", "train.epochs=1", "train.batch_size=32", "eval.beam=1"]
    args = ["train", "--task", "seq2seq", "--run-dir", str(run), "--no-plots", "--quiet"]
    assert main(args + [a for kv in sets for a in ("--set", kv)]) == 0
    # What such a run holds: no decoder keys in its configuration or its checkpoint.
    state_path = run / "checkpoints" / "seq2seq-checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    del state["config"]["decoder_cell"], state["config"]["decoder_layers"]
    state_path.write_text(json.dumps(state))
    toml = run / "config.toml"
    lines = toml.read_text().splitlines()
    toml.write_text("\n".join(ln for ln in lines if not ln.startswith("decoder_")) + "\n")
    capsys.readouterr()
    resume = ["train", "--resume", "--run-dir", str(run), "--no-plots", "--quiet"]
    assert main([*resume, "--set", "train.epochs=2"]) == 2
    out = capsys.readouterr()
    assert "--set model.decoder_cell=lstm" in out.out + out.err
    assert main([*resume, "--set", "train.epochs=2", "--set", "model.decoder_cell=lstm"]) == 0
