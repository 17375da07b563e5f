"""Hardening (issue 15): sizes that cannot be allocated raise MemoryLimitError instead of aborting,
a forked child never deadlocks on a lock another thread held at the fork, every broken
checkpoint, run directory, config and data file raises one typed error naming the file and field,
and the CLI prints one line per error. Each numbered failure of the issue has a test here named
after it (``test_issue15_N_...``)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import warnings

import lstmrs
import numpy as np
import pytest
from lstmrs import checkpoint as ckpt
from lstmrs.callbacks import read_jsonl
from lstmrs.cells import CellSpec, is_name
from lstmrs.cli import main
from lstmrs.config import ConfigError, load_toml, parse_value
from lstmrs.datasets import load_arrays
from lstmrs.rundir import RunDir, RunDirError

ENV = {**os.environ, "LSTMRS_NUM_THREADS": "2", "LSTMRS_PLUGINS": "", "PYTHONUNBUFFERED": "1"}
# An address-space cap for the subprocesses that ask for impossible sizes: whatever a regression
# allocates fails fast instead of swapping the machine, and an abort shows as exit 134.
ULIMIT_KB = 8 * 1024 * 1024


def run_capped(code: str, timeout: float = 60, env: dict | None = None):
    return subprocess.run(
        ["bash", "-c", f'ulimit -v {ULIMIT_KB}; exec "{sys.executable}" -c "$0"', code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or ENV,
        check=False,
    )


@pytest.fixture
def memory_limit():
    before = lstmrs.get_memory_limit()
    yield
    lstmrs.set_memory_limit(before)


# --------------------------------------------------------------------------------------------
# 1. Sizes that cannot be allocated


@pytest.mark.parametrize(
    "code, arg",
    [
        ("lstmrs.LSTM(8, 100000)", "parameters"),
        ("lstmrs.GRU(8, 20000, num_layers=2)", "parameters"),
        ("lstmrs.Model(input_size=1, hidden_size=200000)", "parameters"),
        ("lstmrs.Model(vocab_size=1 << 40, embedding_dim=4, hidden_size=4)", "embedding"),
        ("lstmrs.Model(input_size=1, hidden_size=4, head_hidden=[1 << 62])", "head_hidden"),
        (
            "lstmrs.LSTM(1, 256)(np.zeros((64, 200000, 1), np.float32))",
            "x",
        ),
    ],
)
def test_issue15_1_huge_sizes_raise_memory_limit_error_under_ulimit(code, arg):
    prog = textwrap.dedent(f"""
        import lstmrs, numpy as np
        try:
            {code}
        except lstmrs.MemoryLimitError as e:
            assert isinstance(e, MemoryError) and isinstance(e, lstmrs.LstmrsError)
            print("TYPED", e)
        """)
    res = run_capped(prog)
    assert res.returncode == 0, f"exit {res.returncode}: {res.stderr[-2000:]}"
    line = res.stdout.strip()
    assert line.startswith(f"TYPED {arg}: needs ") and "memory limit" in line, line


def test_issue15_1_limit_is_configurable_and_names_bytes_and_limit(memory_limit):
    lstmrs.set_memory_limit("64M")
    assert lstmrs.get_memory_limit() == 64 << 20
    with pytest.raises(lstmrs.MemoryLimitError, match=r"^parameters: needs \d+ bytes.*67108864"):
        lstmrs.LSTM(64, 2048)
    layer = lstmrs.LSTM(4, 64, seed=0)
    x = np.zeros((16, 20000, 4), np.float32)
    with pytest.raises(lstmrs.MemoryLimitError, match="^x: needs"):
        layer(x)
    with pytest.raises(lstmrs.MemoryLimitError, match="^x: needs"):
        layer.forward_train(x)
    with pytest.raises(lstmrs.MemoryLimitError, match="^batch: needs"):
        lstmrs.Stepper(lstmrs.Model(input_size=2, hidden_size=512, seed=0), batch=100000)
    lstmrs.set_memory_limit(None)
    # Back to the default: the same calls run.
    out, _ = layer(x[:2, :10])
    assert out.shape == (2, 10, 64)
    for bad in (0, -1, "lots", 1.5, True):
        with pytest.raises(lstmrs.InvalidArgumentError, match="memory_limit"):
            lstmrs.set_memory_limit(bad)


def test_issue15_1_env_var_sets_the_limit():
    env = {**ENV, "LSTMRS_MEMORY_LIMIT": "256M"}
    res = run_capped("import lstmrs; print(lstmrs.get_memory_limit())", env=env)
    assert res.stdout.strip() == str(256 << 20), res.stderr
    env["LSTMRS_MEMORY_LIMIT"] = "plenty"
    res = run_capped("import lstmrs; print(lstmrs.get_memory_limit() > 0)", env=env)
    assert res.stdout.strip() == "True" and "LSTMRS_MEMORY_LIMIT='plenty'" in res.stderr


def _tiny_checkpoint(path, **kw):
    m = lstmrs.Model(input_size=3, hidden_size=5, output_size=2, seed=0, **kw)
    m.compile("adam", lr=1e-3)
    m.fit(np.ones((4, 6, 3), np.float32), np.ones((4, 2), np.float32), epochs=1, verbose=0)
    return m, m.save(path)


def _edit_config(path, edit):
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    edit(cfg)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)


def test_issue15_1_checkpoint_with_huge_hidden_size_is_refused_before_building(tmp_path):
    _, path = _tiny_checkpoint(tmp_path / "m")
    _edit_config(path, lambda c: c["model"].update(hidden_size=1000000))
    res = run_capped(
        f"import lstmrs\ntry:\n lstmrs.load({str(path)!r})\nexcept lstmrs.CheckpointError as e:\n print('TYPED', e)"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "TYPED" in res.stdout and "model.hidden_size" in res.stdout
    assert "rnn.weight_hh_l0" in res.stdout and "config.json" in res.stdout


# --------------------------------------------------------------------------------------------
# 2. Fork while other threads are inside each public call

FORK_PROG = r"""
import os, sys, threading, time
import numpy as np
import lstmrs

call = sys.argv[1]
layer = lstmrs.LSTM(8, 256, seed=0)
model = lstmrs.Model(input_size=8, hidden_size=128, output_size=2, seed=0)
model.compile("adam", lr=1e-3)
x = np.random.default_rng(0).standard_normal((16, 200, 8)).astype(np.float32)
y = np.zeros((16, 2), np.float32)
sd = layer.state_dict()
flat = layer.parameters_flat()
work = {
    "forward": lambda: layer(x),
    "predict": lambda: model.predict(x),
    "fit": lambda: model.fit(x, y, epochs=1, batch_size=16, verbose=0),
    "load_state_dict": lambda: layer.load_state_dict(sd),
    "set_parameters_flat": lambda: layer.set_parameters_flat(flat),
}[call]
inside = threading.Event()
stop = False

def busy():
    while not stop:
        inside.set()
        work()

threads = [threading.Thread(target=busy, daemon=True) for _ in range(2)]
for t in threads:
    t.start()
inside.wait()
time.sleep(0.05)
pid = os.fork()
if pid == 0:
    # The child: every public call must complete, though the parent's threads held locks.
    try:
        small = x[:4, :20]
        layer(small)
        layer.load_state_dict(sd)
        layer.set_parameters_flat(flat)
        model.predict(small)
        model.fit(small, y[:4], epochs=1, batch_size=4, verbose=0)
        model.load_state_dict(model.state_dict())
        os._exit(0)
    except BaseException as e:
        print("child failed:", type(e).__name__, e, flush=True)
        os._exit(3)
_, status = os.waitpid(pid, 0)
stop = True
print("child status", os.waitstatus_to_exitcode(status), flush=True)
os._exit(0 if os.waitstatus_to_exitcode(status) == 0 else 1)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize(
    "call", ["forward", "predict", "fit", "load_state_dict", "set_parameters_flat"]
)
def test_issue15_2_fork_while_threads_are_inside_a_call_never_deadlocks(call):
    try:
        res = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", FORK_PROG, call],
            capture_output=True,
            text=True,
            timeout=float(os.environ.get("LSTMRS_FORK_TIMEOUT", "90")),
            env=ENV,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"forked child deadlocked while another thread was inside {call}")
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    assert "child status 0" in res.stdout


# --------------------------------------------------------------------------------------------
# 3. Malformed checkpoints


def _rehash(path, name):
    with open(os.path.join(path, name), "rb") as f:
        digest = ckpt._sha256(f.read())
    _edit_config(path, lambda c: c["files"].update({name: digest}))


@pytest.mark.parametrize(
    "corrupt, field",
    [
        (lambda b: b[:8] + b"\x00" * (len(b) - 8), "model.safetensors"),  # header says empty
        (lambda b: (2**62).to_bytes(8, "little") + b[8:], "model.safetensors"),  # header length
        (lambda b: b[:20], "model.safetensors"),  # truncated
        (lambda b: b[:8] + b"[" + b[9:], "model.safetensors"),
    ],
)
def test_issue15_3_corrupt_safetensors_with_matching_hash_is_a_checkpoint_error(
    tmp_path, corrupt, field
):
    _, path = _tiny_checkpoint(tmp_path / "m")
    target = os.path.join(path, "model.safetensors")
    with open(target, "rb") as f:
        data = f.read()
    with open(target, "wb") as f:
        f.write(corrupt(data))
    _rehash(path, "model.safetensors")
    with pytest.raises(ckpt.CheckpointError, match=field) as e:
        lstmrs.load(path)
    assert isinstance(e.value, ValueError) and isinstance(e.value, lstmrs.LstmrsError)


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda c: c.pop("model"), "'model'"),
        (lambda c: c["model"].pop("hidden_size"), "hidden_size"),
        (lambda c: c.update(files=["model.safetensors"]), "'files'"),
        (lambda c: c.update(files={"model.safetensors": 5}), "'files'"),
        (lambda c: c.update(format_version="1"), "'format_version'"),
        (lambda c: c["compile"]["optimizer"].pop("name"), "compile.optimizer.name"),
        (lambda c: c.update(optimizer_state={"kind": "adam"}), "'optimizer_state'"),
        (lambda c: c["model"].update(num_layers=3), "model.num_layers"),
        (lambda c: c["model"].update(input_size=-4), "model.input_size"),
        (lambda c: c["model"].update(output_size=7), "model.output_size"),
        (lambda c: c["model"].update(head_hidden=[9]), "model.head_hidden"),
        (lambda c: c["model"].update(bidirectional=True), "model.bidirectional"),
        (lambda c: c["model"].update(cell="no such cell"), "'model'"),
        (lambda c: c["model"].update(bogus=1), "'model'"),
        (lambda c: c.update(param_specs=[["x", "y"]]), "'param_specs'"),
        (lambda c: c.update(training=[1]), "'training'"),
    ],
)
def test_issue15_3_bad_config_fields_are_checkpoint_errors_naming_the_field(tmp_path, edit, field):
    _, path = _tiny_checkpoint(tmp_path / "m")
    _edit_config(path, edit)
    with pytest.raises(ckpt.CheckpointError, match=field):
        lstmrs.load(path)


def test_checkpoint_config_not_json_or_not_utf8(tmp_path):
    _, path = _tiny_checkpoint(tmp_path / "m")
    cfg = os.path.join(path, "config.json")
    with open(cfg, "wb") as f:
        f.write(b'{"format": "lstmrs-checkpoint", "x": "\xff\xfe"}')
    with pytest.raises(ckpt.CheckpointError, match="not UTF-8") as e:
        lstmrs.load(path)
    assert isinstance(e.value.__cause__, UnicodeDecodeError)
    with open(cfg, "w") as f:
        f.write("[" * 100000)
    with pytest.raises(ckpt.CheckpointError, match="not valid JSON"):
        lstmrs.load(path)


def _mutations(data: bytes):
    """Flips, truncations and extensions of one file's bytes, spread over the file."""
    n = len(data)
    positions = sorted({0, 1, 7, 8, 9, n // 4, n // 2, n - 9, n - 1} & set(range(n)))
    for p in positions:
        yield f"flip@{p}", data[:p] + bytes([data[p] ^ 0xFF]) + data[p + 1 :]
    for cut in sorted({0, 1, 8, n // 3, n - 1} & set(range(n))):
        yield f"truncate@{cut}", data[:cut]
    yield "extend", data + b"\x00" * 17
    yield "extend-json", data + b'{"x": 1}'


def test_corrupt_checkpoints_every_file_flipped_truncated_extended(tmp_path):
    """Every file of a compiled checkpoint, each mutation, with the hash in config.json left as
    it was (then loading must refuse) or recomputed (then the bytes are all the checkpoint says:
    a typed CheckpointError, or a model that predicts). A mutated config.json gives the error or
    a model equal to the original."""
    m, path = _tiny_checkpoint(tmp_path / "m")
    x = np.ones((2, 6, 3), np.float32)
    ref = m.predict(x)
    tried = 0
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            original = f.read()
        for label, data in _mutations(original):
            for rehash in (False, True) if name != "config.json" else (False,):
                with open(os.path.join(path, name), "wb") as f:
                    f.write(data)
                if rehash:
                    _rehash(path, name)
                tried += 1
                try:
                    back = lstmrs.load(path)
                except ckpt.CheckpointError:
                    pass
                else:
                    where = f"{name} {label} rehash={rehash}"
                    assert rehash or name == "config.json", f"{where}: loaded"
                    with np.errstate(all="ignore"):
                        got = back.predict(x)
                    assert got.shape == ref.shape, where
                    if name == "config.json":
                        np.testing.assert_array_equal(got, ref, err_msg=where)
                with open(os.path.join(path, name), "wb") as f:
                    f.write(original)
                if rehash:
                    _rehash(path, name)
    assert tried > 60
    np.testing.assert_array_equal(lstmrs.load(path).predict(x), ref)


# --------------------------------------------------------------------------------------------
# 4. The CLI prints one line per error, a traceback only with --debug


def cli(*args, cwd, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "lstmrs.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=timeout,
        check=False,
    )


def one_line_error(res, *needles):
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_issue15_4_cli_deep_toml_in_set_and_in_config(tmp_path):
    deep = "[" * 50000 + "]" * 50000
    one_line_error(cli("train", "--set", f"train.epochs={deep}", cwd=tmp_path), "--set")
    cfg = tmp_path / "deep.toml"
    cfg.write_text(f"task = 'adding'\nx = {deep}\n")
    one_line_error(cli("train", cfg, cwd=tmp_path), "deep.toml", "nested too deeply")


def test_issue15_4_cli_task_not_text_and_broken_model_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("task = 5\n")
    (run / "state.json").write_text("{}")
    one_line_error(cli("train", "--resume", "--run-dir", run, cwd=tmp_path), "task = 5")
    one_line_error(cli("eval", run, cwd=tmp_path), "task = 5")

    _, path = _tiny_checkpoint(run / "model")
    (run / "config.toml").write_text("task = 'adding'\n")
    target = os.path.join(path, "model.safetensors")
    with open(target, "r+b") as f:
        f.write(b"\xff" * 8)
    _rehash(path, "model.safetensors")
    one_line_error(cli("eval", run, cwd=tmp_path), "model.safetensors")
    res = cli("--debug", "eval", run, cwd=tmp_path)
    assert res.returncode != 0 and "Traceback" in res.stderr and "CheckpointError" in res.stderr

    _edit_config(path, lambda c: c.pop("model"))
    one_line_error(cli("eval", run, cwd=tmp_path), "'model'")


# --------------------------------------------------------------------------------------------
# 5. A torn last line of metrics.jsonl


def test_issue15_5_resume_drops_a_torn_metrics_line(tmp_path):
    args = ["--no-plots", "--set", "data.seq_len=10", "--set", "data.n_train=256"]
    args += ["--set", "model.hidden_size=8", "--set", "train.target_val_loss=0"]
    res = cli(
        "train",
        "--task",
        "adding",
        "--run-dir",
        "run",
        *args,
        "--set",
        "train.epochs=2",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = tmp_path / "run" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"epoch": 2, "loss": 0.12')  # the process died mid-write
    res = cli(
        "train", "--resume", "--run-dir", "run", *args, "--set", "train.epochs=3", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "torn" in res.stderr and "metrics.jsonl" in res.stderr
    records = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]


def test_read_jsonl_torn_last_line_vs_bad_middle_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epo')
    with pytest.warns(RuntimeWarning, match="line 3 is torn"):
        assert read_jsonl(p) == [{"epoch": 0}, {"epoch": 1}]
    p.write_text('{"epoch": 0}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(lstmrs.DataFileError, match="m.jsonl: line 2"):
        read_jsonl(p)
    run = RunDir(str(tmp_path))
    os.rename(p, run.metrics_path)
    with pytest.raises(RunDirError, match="line 2"):
        run.read_metrics()


# --------------------------------------------------------------------------------------------
# 6. Deep JSON in CellSpec.from_json; one rule for cell names


def test_issue15_6_deep_cell_json_is_a_typed_error():
    text = "[" * 10000 + "]" * 10000
    with pytest.raises(lstmrs.InvalidArgumentError, match="cell description"):
        CellSpec.from_json(text)
    with pytest.raises(lstmrs.InvalidArgumentError):
        lstmrs.RNN(2, 3, cell=text)


def _cell_json(name: str) -> str:
    return json.dumps(
        {
            "name": name,
            "states": ["h"],
            "x_gates": 1,
            "h_gates": 1,
            "nodes": [
                {"op": "xg", "index": 0},
                {"op": "hg", "index": 0},
                {"op": "add", "args": [0, 1]},
                {"op": "tanh", "args": [2]},
            ],
            "outputs": {"h": 3},
        }
    )


@pytest.mark.parametrize(
    "name", ["a\x00b", "zelle_ä", "x" * 100000, "Upper", "_x", "9a", "", "x" * 65, "a b"]
)
def test_issue15_6_rust_compiler_rejects_names_the_dsl_rejects(name):
    from lstmrs import _lstmrs

    assert not is_name(name)
    with pytest.raises(lstmrs.InvalidArgumentError, match="cell.name") as e:
        _lstmrs.compile_cell(_cell_json(name))
    assert len(str(e.value)) < 400  # a 100,000-character name is not echoed whole
    for ok_name in ("a", "elman2", "x" * 64, "my_cell_1"):
        assert is_name(ok_name)
        _lstmrs.compile_cell(_cell_json(ok_name))


# --------------------------------------------------------------------------------------------
# 7. Messages that name the file or field


def test_issue15_7_torn_state_json_names_the_file(tmp_path):
    run = RunDir(str(tmp_path))
    with open(run.state_path, "w") as f:
        f.write('{"status": "trai')
    with pytest.raises(RunDirError, match="state.json") as e:
        run.read_state()
    assert isinstance(e.value.__cause__, json.JSONDecodeError)
    with open(run.state_path, "w") as f:
        f.write("[1, 2]")
    with pytest.raises(RunDirError, match="state.json.*JSON object"):
        run.read_state()


def test_issue15_7_config_with_invalid_utf8_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_bytes(b"[train]\nlr = 0.1 # \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bad.toml.*not UTF-8 text \(byte 19") as e:
        load_toml(p)
    assert isinstance(e.value.__cause__, UnicodeDecodeError)
    res = cli("train", p, cwd=tmp_path)
    one_line_error(res, "bad.toml", "UTF-8")


@pytest.mark.parametrize(
    "content",
    [b"this is not numpy at all", b"PK\x03\x04garbage", b"\x93NUMPY\x01\x00{'descr'", b""],
)
def test_issue15_7_garbage_npz_is_a_data_file_error(tmp_path, content):
    p = tmp_path / "x.npz"
    p.write_bytes(content)
    with pytest.raises(lstmrs.DataFileError, match=r"--input: .*x.npz.*not a valid NumPy") as e:
        load_arrays(str(p), "--input")
    assert "pickled" not in str(e.value) and e.value.__cause__ is not None
    with pytest.raises(lstmrs.DataFileError, match="data.path"):
        load_arrays(str(tmp_path / "missing.npz"), "data.path")


def test_main_in_process_returns_nonzero_without_traceback(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.toml")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.toml" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------
# Leaks


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_no_leak_over_20000_calls_including_failing_ones(memory_limit):
    layer = lstmrs.LSTM(4, 8, seed=0)
    x = np.ones((2, 3, 4), np.float32)
    bad = np.ones((2, 3, 5), np.float32)

    def calls(n):
        for i in range(n):
            if i % 4 == 0:
                try:
                    layer(bad)
                except lstmrs.ShapeError:
                    pass
            elif i % 4 == 1:
                lstmrs.set_memory_limit(1 << 10)
                try:
                    layer(x)
                except lstmrs.MemoryLimitError:
                    pass
                lstmrs.set_memory_limit(None)
            else:
                layer(x)

    calls(2000)  # warm up allocator caches
    gc.collect()
    before = _rss_kb()
    calls(20000)
    gc.collect()
    grown = _rss_kb() - before
    assert grown < 20 * 1024, f"RSS grew by {grown} KiB over 20,000 calls"


def test_warnings_from_torn_line_are_runtime_warnings(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"a": 1}\n[')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert read_jsonl(p) == [{"a": 1}]
    assert [x.category for x in w] == [RuntimeWarning]


def test_parse_value_deep_nesting_is_config_error():
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_value("[" * 50000 + "]" * 50000)
