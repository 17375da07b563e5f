"""The checkpoint file format: saving and reading models and training state, crash-safe and
without executing code. Building a :class:`~lstmrs.Model` from a checkpoint is the model
layer's (:meth:`lstmrs.Model.load`, :func:`lstmrs.checkpoint.load`); this module refers to
``Model`` only for type checking.

A checkpoint is a directory:

- ``model.safetensors``: the weights by name (``rnn.weight_ih_l0``, ``head.0.weight``, ...);
- ``optimizer.safetensors``: the optimizer's state buffers (``exp_avg``, ...), float64, when the
  model was compiled (a plugin optimizer's too: its ``state_dict()``, see
  :mod:`lstmrs.plugins.hookspecs`);
- ``carry.safetensors``: recurrent states carried between truncated-BPTT chunks, when a fit was
  interrupted between two chunks;
- ``config.json``: architecture, loss, optimizer kind, hyper-parameters and step, schedule
  state, training position (epoch, batch, RNG state of the loop, partial epoch sums, history,
  callback states), the lstmrs version, and the SHA-256 of every other file.

Each file is written atomically (a temporary file in the same directory, flushed and fsynced,
``os.replace``d into place, then the directory fsynced); ``config.json`` goes last, and loading
checks the hashes, so a torn set of files is detected rather than half-loaded. Loading reads only
JSON and safetensors: nothing is unpickled or executed.

Training checkpoints (``fit(checkpoint_dir=...)``) are complete checkpoint directories
``step-000000120`` written under a temporary name and renamed into place, with a ``latest`` file
(replaced atomically) naming the newest; older ones are pruned.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np

from ._lstmrs import __version__
from .errors import CheckpointError, InvalidArgumentError, LstmrsError
from .optim import optimizer_class

if TYPE_CHECKING:
    from .models import Model

__all__ = [
    "CARRY_FILE",
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "LATEST_FILE",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "CheckpointError",
    "atomic_write",
    "check_model_config",
    "checkpoint_record",
    "latest_checkpoint",
    "optimizer_state",
    "read_checkpoint",
    "restore_compiled",
    "restore_training",
    "save",
    "write_training_checkpoint",
]

FORMAT = "lstmrs-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
CARRY_FILE = "carry.safetensors"
CONFIG_FILE = "config.json"
#: The flat weights of a model saved by :func:`save_architecture`.
WEIGHTS_NPY = "weights.npy"
LATEST_FILE = "latest"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # Platforms without directory handles (Windows) have nothing to sync.
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(
        directory, f".tmp-{os.path.basename(path)}-{os.getpid()}-{secrets.token_hex(4)}"
    )
    # os.open rather than mkstemp: the file gets the usual umask-based mode, not 0600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def save_architecture(
    path: str | os.PathLike, config_file: str, config: dict, weights: np.ndarray
) -> str:
    """Writes a model that is not a :class:`~lstmrs.Model` (seq2seq, hierarchical): its
    constructor arguments as ``path/config_file`` and its flat weights as
    ``path/weights.npy``, each atomically."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, weights)
    atomic_write(os.path.join(path, WEIGHTS_NPY), buf.getvalue())
    atomic_write(os.path.join(path, config_file), json.dumps(config, indent=2).encode())
    return path


def load_architecture(path: str | os.PathLike, config_file: str) -> tuple[dict, np.ndarray]:
    """What :func:`save_architecture` wrote: the constructor arguments and the flat weights."""
    path = os.fspath(path)
    try:
        with open(os.path.join(path, config_file), encoding="utf-8") as f:
            cfg = json.load(f)
    except OSError as e:
        raise InvalidArgumentError(f"path: no {config_file} in {path!r} ({e})") from e
    return cfg, np.load(os.path.join(path, WEIGHTS_NPY))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save as st_save

    return st_save(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata={"format": FORMAT}
    )


def _version() -> str:
    return str(__version__)


def save(
    model: Model,
    path: str | os.PathLike,
    *,
    training: dict | None = None,
    carry: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> str:
    """Writes ``model`` (and its optimizer state when compiled) into directory ``path``."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    hashes: dict[str, str] = {}

    def put(name: str, tensors: dict[str, np.ndarray]) -> None:
        data = _tensors_bytes(tensors)
        atomic_write(os.path.join(path, name), data)
        hashes[name] = _sha256(data)

    put(MODEL_FILE, model.state_dict())
    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lstmrs_version": _version(),
        "model": model.get_config(),
        "param_specs": [[n, list(s)] for n, s in model.param_specs],
    }
    if model.compiled:
        opt = model._opt_core.state_dict()
        put(OPTIMIZER_FILE, dict(opt["buffers"]))
        config["compile"] = model._compile_config()
        config["optimizer_state"] = {"kind": opt["kind"], "step": int(opt["step"])}
        if opt.get("extra") is not None:  # a plugin optimizer's JSON state beside its buffers
            config["optimizer_state"]["extra"] = opt["extra"]
    if carry is not None:
        h, c = carry
        put(CARRY_FILE, {"h": h} if c is None else {"h": h, "c": c})
    if training is not None:
        config["training"] = training
    config["files"] = hashes
    atomic_write(os.path.join(path, CONFIG_FILE), json.dumps(config, indent=1).encode())
    return path


def _resolve(path: str) -> str:
    """A checkpoint directory, following a training directory's ``latest`` pointer."""
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(
            f"path: no checkpoint in {path!r} (no {CONFIG_FILE} or {LATEST_FILE})"
        )
    return found


def _field_error(path: str, field: str, expected: str, got: Any) -> CheckpointError:
    return CheckpointError(
        f"path: {CONFIG_FILE} in {path!r}: field {field!r}: expected {expected}, got {got!r}"
    )


def _check_config(config: Any, path: str) -> None:
    """The fields of ``config.json`` that loading reads, with their types; everything a
    checkpoint's files may not be trusted to hold (the config is not covered by a hash)."""
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"path: {path!r} is not an lstmrs checkpoint")
    version = config.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise _field_error(path, "format_version", "an integer", version)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"path: checkpoint format {version} is newer than this lstmrs "
            f"reads ({FORMAT_VERSION}); upgrade lstmrs"
        )
    if not isinstance(config.get("model"), dict):
        raise _field_error(
            path, "model", "an object (the model's configuration)", config.get("model")
        )
    files = config.get("files", {})
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise _field_error(path, "files", "an object of file name -> SHA-256", files)
    if MODEL_FILE not in files:
        raise _field_error(path, "files", f"an entry for {MODEL_FILE}", sorted(files))
    specs = config.get("param_specs", [])
    if not isinstance(specs, list) or not all(
        isinstance(s, list)
        and len(s) == 2
        and isinstance(s[0], str)
        and isinstance(s[1], list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in s[1])
        for s in specs
    ):
        raise _field_error(path, "param_specs", "a list of [name, shape] pairs", specs)
    if "compile" in config:
        comp = config["compile"]
        opt = comp.get("optimizer") if isinstance(comp, dict) else None
        if not isinstance(opt, dict) or not isinstance(opt.get("name"), str):
            raise _field_error(path, "compile.optimizer.name", "an optimizer name", opt)
        st = config.get("optimizer_state")
        if (
            not isinstance(st, dict)
            or not isinstance(st.get("kind"), str)
            or isinstance(st.get("step"), bool)
            or not isinstance(st.get("step"), int)
        ):
            raise _field_error(
                path, "optimizer_state", "an object with 'kind' (text) and 'step' (integer)", st
            )
    if not isinstance(config.get("training", {}), (dict, type(None))):
        raise _field_error(path, "training", "an object", config.get("training"))


def _load_tensors(data: bytes, name: str, path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load as st_load

    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own SafetensorError, not a ValueError
        raise CheckpointError(
            f"path: {name} in {path!r} is not a valid safetensors file ({type(e).__name__}: {e})"
        ) from e
    for key, value in tensors.items():
        if value.dtype.kind != "f":
            raise CheckpointError(
                f"path: {name} in {path!r}: tensor {key!r} has dtype {value.dtype}; expected "
                "float32 or float64"
            )
    return tensors


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """The config and the tensors of each file of a checkpoint, after checking the hashes and
    the types of the config's fields."""
    path = _resolve(os.fspath(path))
    config_path = os.path.join(path, CONFIG_FILE)
    try:
        with open(config_path, "rb") as f:
            config = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise CheckpointError(f"path: cannot read {CONFIG_FILE} in {path!r}: {e}") from e
    except UnicodeDecodeError as e:
        raise CheckpointError(
            f"path: {CONFIG_FILE} in {path!r} is not UTF-8 text (byte {e.start})"
        ) from e
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"path: {CONFIG_FILE} in {path!r} is not valid JSON: {e}") from e
    _check_config(config, path)
    tensors = {}
    for name, digest in config.get("files", {}).items():
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise CheckpointError(f"path: bad file name {name!r} in {CONFIG_FILE}")
        try:
            with open(os.path.join(path, name), "rb") as f:
                data = f.read()
        except OSError as e:
            raise CheckpointError(f"path: cannot read {name} in {path!r}: {e}") from e
        if _sha256(data) != digest:
            raise CheckpointError(
                f"path: {name} in {path!r} does not match {CONFIG_FILE} (a torn or edited "
                f"checkpoint)"
            )
        tensors[name] = _load_tensors(data, name, path)
    config["_path"] = path
    return config, tensors


def _shape(tensors: dict[str, np.ndarray], name: str) -> tuple[int, ...] | None:
    t = tensors.get(name)
    return None if t is None else tuple(t.shape)


def _check_model_sizes(model_cfg: dict, tensors: dict[str, np.ndarray], path: str) -> None:
    """Compares the sizes ``config.json`` gives the model with the shapes of the weights file,
    before the model is built: the config is not covered by a hash, and a size in it allocates."""

    def mismatch(field: str, tensor: str, want: Any) -> CheckpointError:
        return CheckpointError(
            f"path: {CONFIG_FILE} in {path!r}: field 'model.{field}' is "
            f"{model_cfg.get(field)!r}, but {MODEL_FILE} holds {tensor} of shape "
            f"{_shape(tensors, tensor)} (expected {want})"
        )

    def want_int(field: str, value: Any) -> None:
        if model_cfg.get(field) != value:
            raise mismatch(field, _WHERE[field], value)

    _WHERE = {
        "hidden_size": "rnn.weight_hh_l0",
        "input_size": "rnn.weight_ih_l0",
        "vocab_size": "embedding.weight",
        "embedding_dim": "embedding.weight",
        "num_layers": "rnn.weight_ih_l*",
        "bidirectional": "rnn.weight_ih_l0_reverse",
        "output_size": "the last head bias",
        "attention_units": "attention.bias",
        "proj_size": "rnn.weight_hr_l0",
    }
    # Every field must be a plain value before it is compared or used.
    for field in _WHERE:
        v = model_cfg.get(field)
        if v is not None and (not isinstance(v, (int, bool)) or (isinstance(v, int) and v < 0)):
            raise _field_error(path, f"model.{field}", "a non-negative integer", v)
    hh = _shape(tensors, "rnn.weight_hh_l0")
    hr = _shape(tensors, "rnn.weight_hr_l0")
    if hr is not None and len(hr) == 2:
        # A projected LSTM: W_hr is [proj_size, hidden_size] and W_hh reads proj_size features.
        _WHERE["hidden_size"] = _WHERE["proj_size"] = "rnn.weight_hr_l0"
        want_int("hidden_size", hr[1])
        want_int("proj_size", hr[0])
    elif model_cfg.get("proj_size", 0):
        raise mismatch("proj_size", "rnn.weight_hr_l0", "a [proj_size, hidden_size] matrix")
    elif hh is not None and len(hh) == 2:
        want_int("hidden_size", hh[1])
    emb = _shape(tensors, "embedding.weight")
    if model_cfg.get("vocab_size") is not None:
        if emb is None or len(emb) != 2:
            raise mismatch("vocab_size", "embedding.weight", "a [vocab_size, embedding_dim] matrix")
        want_int("vocab_size", emb[0])
        want_int("embedding_dim", emb[1])
    else:
        ih = _shape(tensors, "rnn.weight_ih_l0")
        if ih is None or len(ih) != 2:
            raise mismatch("input_size", "rnn.weight_ih_l0", "a matrix")
        want_int("input_size", ih[1])
    layers = sum(
        1 for k in tensors if k.startswith("rnn.weight_ih_l") and not k.endswith("_reverse")
    )
    want_int("num_layers", layers)
    if bool(model_cfg.get("bidirectional", False)) != ("rnn.weight_ih_l0_reverse" in tensors):
        raise mismatch("bidirectional", "rnn.weight_ih_l0_reverse", "matching tensors")
    heads = sorted(
        int(k[len("head.") : -len(".bias")])
        for k in tensors
        if k.startswith("head.") and k.endswith(".bias") and k[5:-5].isdigit()
    )
    if heads:
        _WHERE["output_size"] = f"head.{heads[-1]}.bias"
        last = _shape(tensors, f"head.{heads[-1]}.bias")
        want_int("output_size", last[0] if last else None)
        hidden = model_cfg.get("head_hidden", [])
        if isinstance(hidden, int) and not isinstance(hidden, bool):
            hidden = [hidden]
        if not isinstance(hidden, list):
            raise _field_error(path, "model.head_hidden", "a list of sizes", hidden)
        got = [(_shape(tensors, f"head.{k}.bias") or (None,))[0] for k in heads[:-1]]
        if list(hidden) != got:
            raise CheckpointError(
                f"path: {CONFIG_FILE} in {path!r}: field 'model.head_hidden' is {hidden!r}, "
                f"but {MODEL_FILE}'s head layers have sizes {got}"
            )
    att = _shape(tensors, "attention.bias")
    if model_cfg.get("pooling") == "attention" and att is not None:
        want_int("attention_units", att[0])


def check_model_config(config: dict, tensors: dict[str, dict[str, np.ndarray]]) -> None:
    """Compares the saved model configuration with the saved weights' shapes, before a model is
    built from them; :class:`CheckpointError` naming the field that disagrees."""
    _check_model_sizes(config["model"], tensors.get(MODEL_FILE, {}), config["_path"])


def optimizer_state(config: dict, tensors: dict[str, dict[str, np.ndarray]]) -> dict:
    """The saved optimizer state as ``OptimizerCore.load_state_dict`` takes it."""
    st = config["optimizer_state"]
    state = {
        "kind": st["kind"],
        "step": int(st["step"]),
        "buffers": tensors.get(OPTIMIZER_FILE, {}),
    }
    if "extra" in st:
        state["extra"] = st["extra"]
    return state


def restore_compiled(model: Model, config: dict, tensors: dict) -> None:
    """Compiles ``model`` as the checkpoint was and restores its optimizer state;
    :class:`CheckpointError` when the state does not restore."""
    try:
        model._restore_compile(config["compile"])
        model._opt_core.load_state_dict(optimizer_state(config, tensors))
    except CheckpointError:
        raise
    except (LstmrsError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(
            f"path: {CONFIG_FILE} or {OPTIMIZER_FILE} in {config['_path']!r}: the "
            f"optimizer state does not restore ({type(e).__name__}: {e})"
        ) from e


def checkpoint_record(config: dict, tensors: dict, optimizer_missing: str | None) -> dict:
    """What a model loaded from a checkpoint keeps of it (``Model._checkpoint``): its path,
    training position and carried states, and the optimizer it lacks (None: none)."""
    return {
        "path": config["_path"],
        "training": config.get("training"),
        "carry": tensors.get(CARRY_FILE),
        "optimizer_missing": optimizer_missing,
    }


def restore_training(model: Model, path: str) -> dict:
    """Loads the training checkpoint ``path`` into ``model`` (weights, compile settings,
    optimizer state), for ``fit(resume=True)``; returns its :func:`checkpoint_record`.
    :class:`CheckpointError` when the optimizer it was trained with is not installed."""
    config, tensors = read_checkpoint(path)
    check_model_config(config, tensors)
    compiled = "compile" in config
    name = config["compile"]["optimizer"]["name"] if compiled else None
    if name is not None and not _optimizer_known(name):
        raise CheckpointError(
            f"path: {path!r} was trained with optimizer {name!r}, which no installed plugin "
            "provides; install that plugin to resume the training (`lstmrs plugins` lists "
            "what is installed)"
        )
    try:
        model.load_state_dict(tensors.get(MODEL_FILE, {}))
    except (LstmrsError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"path: {MODEL_FILE} in {config['_path']!r}: {e}") from e
    if compiled:
        restore_compiled(model, config, tensors)
    return checkpoint_record(config, tensors, None)


def _optimizer_known(name: str) -> bool:
    return optimizer_class(name) is not None


def _require_optimizer(model: Model, path: str) -> None:
    """Raises :class:`CheckpointError` when ``model`` came from a checkpoint whose optimizer is
    not installed (training cannot continue without it)."""
    name = (model._checkpoint or {}).get("optimizer_missing")
    if name is not None:
        raise CheckpointError(
            f"path: {path!r} was trained with optimizer {name!r}, which no installed plugin "
            "provides; install that plugin to resume the training (`lstmrs plugins` lists "
            "what is installed)"
        )


def latest_checkpoint(directory: str | os.PathLike) -> str | None:
    """The newest complete checkpoint under a training directory, or None."""
    directory = os.fspath(directory)
    pointer = os.path.join(directory, LATEST_FILE)
    if os.path.isfile(pointer):
        try:
            with open(pointer, encoding="utf-8") as f:
                name = json.load(f)["checkpoint"]
            candidate = os.path.join(directory, os.path.basename(name))
            if os.path.isfile(os.path.join(candidate, CONFIG_FILE)):
                return candidate
        except (OSError, ValueError, KeyError, TypeError):
            pass  # Fall back to scanning.
    if not os.path.isdir(directory):
        return None
    names = sorted(
        n
        for n in os.listdir(directory)
        if n.startswith("step-") and os.path.isfile(os.path.join(directory, n, CONFIG_FILE))
    )
    return os.path.join(directory, names[-1]) if names else None


def write_training_checkpoint(
    model: Model,
    directory: str | os.PathLike,
    name: str,
    training: dict,
    carry: tuple[np.ndarray, np.ndarray | None] | None = None,
    keep: int = 2,
) -> str:
    """Writes checkpoint ``directory/name`` whole or not at all, points ``latest`` at it and
    removes all but the ``keep`` newest."""
    if keep < 1:
        raise InvalidArgumentError(f"keep_checkpoints: expected at least 1, got {keep}")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{name}-{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    save(model, tmp, training=training, carry=carry)
    final = os.path.join(directory, name)
    if os.path.exists(final):
        # Left by a run that died before pointing `latest` at it; `latest` names an older one.
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(directory)
    atomic_write(os.path.join(directory, LATEST_FILE), json.dumps({"checkpoint": name}).encode())
    ours = sorted(n for n in os.listdir(directory) if n.startswith("step-"))
    for old in ours[:-keep]:
        if old != name:
            shutil.rmtree(os.path.join(directory, old), ignore_errors=True)
    for n in os.listdir(directory):
        if n.startswith(".tmp-step-"):
            shutil.rmtree(os.path.join(directory, n), ignore_errors=True)
    return final
