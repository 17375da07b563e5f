"""Run configurations for ``lstmrs train``: TOML files, ``--set key=value`` overrides, validation.

A configuration is a nested dict with the top-level keys ``task`` and ``seed`` and the sections
``data``, ``model``, ``train`` and ``eval``. Every task declares its defaults (which fix the keys
and their types) and rules for the keys that need more than a type (ranges, choices, paths).
Layers are applied in order, each validated as it comes, so an error names where the bad value
came from::

    defaults  <-  CONFIG.toml  <-  --task/--cell/--optimizer  <-  --set a.b=c ...

Errors are :class:`ConfigError` (an :class:`lstmrs.InvalidArgumentError`) and name the key, the
value and what is allowed, e.g. ``config: train.lr = -1 (from --set) is not allowed: expected a
number > 0``.

Relative paths in a file are relative to that file's directory; relative paths given with
``--set`` are relative to the working directory. The configuration saved in a run directory has
them resolved to absolute paths.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from .errors import ConfigError

__all__ = [
    "Bool",
    "Choice",
    "ConfigError",
    "Float",
    "Int",
    "OneOf",
    "Path",
    "Rule",
    "Str",
    "StrList",
    "apply_layer",
    "dumps",
    "flatten",
    "get",
    "load_toml",
    "loads_toml",
    "parse_override",
    "parse_value",
    "rule_for_default",
]


def _toml_module():
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli
    except ImportError:  # pragma: no cover - Python 3.9/3.10 without tomli
        raise ConfigError(
            "reading TOML on Python < 3.11 needs the 'tomli' package: pip install tomli"
        ) from None
    return tomli


def loads_toml(text: str, source: str = "<string>") -> dict[str, Any]:
    """Parses TOML text; a syntax error becomes a :class:`ConfigError` naming ``source``."""
    toml = _toml_module()
    try:
        return toml.loads(text)
    except toml.TOMLDecodeError as e:
        raise ConfigError(f"config: {source} is not valid TOML: {e}") from None
    except RecursionError as e:  # arrays or tables nested thousands deep
        raise ConfigError(f"config: {source} is nested too deeply to read") from e


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a TOML file into a dict."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"config: cannot read {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config: {path!r} is not UTF-8 text (byte {e.start}: {e.reason})") from e
    return loads_toml(text, path)


# --------------------------------------------------------------------------------------------
# Rules


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else dumps_value(v) if _is_scalar_or_list(v) else repr(v)


def _is_scalar_or_list(v: Any) -> bool:
    if isinstance(v, (bool, int, float, str)):
        return True
    return isinstance(v, list) and all(isinstance(x, (bool, int, float, str)) for x in v)


class _Bad(Exception):
    """Raised by a rule's ``coerce``; the caller adds the key and the value."""


class Rule:
    """What a key allows: ``coerce(value, base_dir)`` returns the value to use or raises."""

    def describe(self) -> str:
        raise NotImplementedError

    def coerce(self, value: Any, base_dir: str) -> Any:
        raise NotImplementedError


def _range_text(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


def _in_range(v, lo, hi, lo_open, hi_open) -> bool:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return not (hi is not None and (v >= hi if hi_open else v > hi))


class Int(Rule):
    def __init__(self, lo: int | None = None, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi

    def describe(self) -> str:
        r = _range_text(self.lo, self.hi, False, False)
        return f"an integer {r}".rstrip()

    def coerce(self, value, base_dir):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad
        if not _in_range(value, self.lo, self.hi, False, False):
            raise _Bad
        return value


class Float(Rule):
    def __init__(
        self,
        lo: float | None = None,
        hi: float | None = None,
        lo_open: bool = False,
        hi_open: bool = False,
    ) -> None:
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def describe(self) -> str:
        r = _range_text(self.lo, self.hi, self.lo_open, self.hi_open)
        return f"a number {r}".rstrip()

    def coerce(self, value, base_dir):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad
        value = float(value)
        if not math.isfinite(value) or not _in_range(
            value, self.lo, self.hi, self.lo_open, self.hi_open
        ):
            raise _Bad
        return value


class Bool(Rule):
    _WORDS: ClassVar[dict[str, bool]] = {
        "true": True,
        "yes": True,
        "on": True,
        "false": False,
        "no": False,
        "off": False,
    }

    def describe(self) -> str:
        return "true or false"

    def coerce(self, value, base_dir):
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in self._WORDS:
            return self._WORDS[value.lower()]
        raise _Bad


class Str(Rule):
    def __init__(self, nonempty: bool = False) -> None:
        self.nonempty = nonempty

    def describe(self) -> str:
        return "a non-empty string" if self.nonempty else "a string"

    def coerce(self, value, base_dir):
        if isinstance(value, (bool, list, dict)):
            raise _Bad
        if isinstance(value, (int, float)):
            value = str(value)  # `--set data.label_column=2` names a column "2"
        if not isinstance(value, str) or (self.nonempty and not value):
            raise _Bad
        return value


class Choice(Rule):
    """One of a fixed set of strings; ``options`` may be a callable giving them at check time
    (plugin registries)."""

    def __init__(self, *options: str, dynamic=None) -> None:
        self._options = options
        self._dynamic = dynamic

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(self._dynamic()) if self._dynamic is not None else self._options

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)

    def coerce(self, value, base_dir):
        if not isinstance(value, str) or value.lower() not in self.options:
            raise _Bad
        return value.lower()


class Path(Rule):
    """A file path; relative paths are resolved against the directory of the layer that set
    them. ``optional``: the empty string means "none"."""

    def __init__(self, optional: bool = False) -> None:
        self.optional = optional

    def describe(self) -> str:
        return "a file path" + (' (or "" for none)' if self.optional else "")

    def coerce(self, value, base_dir):
        if not isinstance(value, str):
            raise _Bad
        if not value:
            return value
        value = os.path.expanduser(value)
        if not os.path.isabs(value):
            value = os.path.join(base_dir, value)
        return os.path.normpath(value)


class StrList(Rule):
    """A list of strings; a single string (``--set data.columns=a,b``) is split at commas."""

    def describe(self) -> str:
        return 'a list of strings (["a", "b"], or "a,b" on the command line)'

    def coerce(self, value, base_dir):
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        if isinstance(value, list) and all(
            isinstance(x, (str, int)) and not isinstance(x, bool) for x in value
        ):
            return [str(x) for x in value]
        raise _Bad


class OneOf(Rule):
    """The first of ``rules`` that accepts the value."""

    def __init__(self, *rules: Rule) -> None:
        self.rules = rules

    def describe(self) -> str:
        return " or ".join(r.describe() for r in self.rules)

    def coerce(self, value, base_dir):
        for r in self.rules:
            try:
                return r.coerce(value, base_dir)
            except _Bad:
                continue
        raise _Bad


def rule_for_default(default: Any) -> Rule:
    """The rule implied by a default value's type (for keys without an explicit rule)."""
    if isinstance(default, bool):
        return Bool()
    if isinstance(default, int):
        return Int()
    if isinstance(default, float):
        return Float()
    if isinstance(default, str):
        return Str()
    if isinstance(default, list):
        return StrList()
    raise TypeError(f"no rule for a default of type {type(default).__name__}")


# --------------------------------------------------------------------------------------------
# Layers


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _suggest(key: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} Allowed: {', '.join(known)}"


def apply_layer(
    cfg: dict[str, Any],
    layer: Mapping[str, Any],
    rules: Mapping[str, Rule],
    *,
    source: str,
    base_dir: str | None = None,
    where: str = "",
) -> dict[str, Any]:
    """``cfg`` updated with the nested ``layer`` after checking every key and value.

    ``cfg`` fixes the known keys (its own nesting) and, for keys without an entry in ``rules``,
    their types. Returns a new dict; ``cfg`` is not modified.
    """
    base_dir = os.getcwd() if base_dir is None else base_dir
    out = copy.deepcopy(cfg)
    for key, value in flatten(layer).items():
        _set_checked(out, key, value, rules, source, base_dir, where)
    return out


def _set_checked(out, key, value, rules, source, base_dir, where) -> None:
    parts = key.split(".")
    node = out
    for i, part in enumerate(parts[:-1]):
        sub = node.get(part)
        if not isinstance(sub, dict):
            prefix = ".".join(parts[: i + 1])
            raise ConfigError(
                f"config: unknown key {key!r} ({source}){where}: {prefix!r} is not a section"
                + _suggest(key, flatten(out))
            )
        node = sub
    last = parts[-1]
    if last not in node:
        raise ConfigError(
            f"config: unknown key {key!r} ({source}){where}" + _suggest(key, flatten(out))
        )
    if isinstance(node[last], dict):
        raise ConfigError(
            f"config: {key!r} ({source}) is a section; set its keys "
            f"({', '.join(sorted(node[last]))}), not a value"
        )
    rule = rules.get(key) or rule_for_default(node[last])
    try:
        node[last] = rule.coerce(value, base_dir)
    except _Bad:
        raise ConfigError(
            f"config: {key} = {_show(value)} ({source}) is not allowed: expected {rule.describe()}"
        ) from None


def parse_value(text: str) -> Any:
    """A command-line value: TOML syntax when it parses (``3``, ``1e-3``, ``true``, ``[1, 2]``,
    ``"x"``), else the text itself (``lstm``, ``data/x.csv``)."""
    toml = _toml_module()
    try:
        return toml.loads(f"v = {text}")["v"]
    except toml.TOMLDecodeError:
        return text
    except RecursionError as e:  # "[[[[...]]]]" thousands deep
        raise ConfigError(f"--set: value nested too deeply to read: {text[:40]!r}...") from e


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=c"`` -> ``("a.b", parsed c)``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(
            f"--set: expected KEY=VALUE with a dotted key (train.lr=0.01), got {text!r}"
        )
    return key, parse_value(raw.strip())


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------------------------
# Writing TOML (the configuration a run used)


def _toml_key(k: str) -> str:
    if k and all(c.isalnum() or c in "-_" for c in k):
        return k
    return dumps_value(k)


def dumps_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        out = ['"']
        for ch in v:
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\t":
                out.append("\\t")
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(dumps_value(x) for x in v) + "]"
    raise ConfigError(f"config: cannot write a value of type {type(v).__name__} to TOML: {v!r}")


def dumps(cfg: Mapping[str, Any]) -> str:
    """TOML text for a nested dict of scalars, lists and tables (no None: TOML has no null)."""
    lines: list[str] = []

    def table(node: Mapping[str, Any], path: list[str]) -> None:
        scalars = [(k, v) for k, v in node.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in node.items() if isinstance(v, Mapping)]
        if path and (scalars or not tables):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
        for k, v in scalars:
            lines.append(f"{_toml_key(k)} = {dumps_value(v)}")
        for k, v in tables:
            table(v, [*path, k])

    table(cfg, [])
    return "\n".join(lines) + "\n"
