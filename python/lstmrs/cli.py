"""The ``lstmrs`` command line.

::

    lstmrs train [CONFIG.toml] [--task NAME] [--set key=value ...]   train a task, write a run dir
    lstmrs eval RUN_DIR [--data FILE]                                 evaluate a run's model again
    lstmrs predict RUN_DIR --input FILE --output FILE                 predictions for new data
    lstmrs generate RUN_DIR --prompt TEXT --length N                  sample from a charlm run
    lstmrs tune CONFIG.toml [--storage URL --study NAME] [--workers N]  hyperparameter search
    lstmrs export RUN_DIR --format onnx|safetensors [--output PATH]   the model for deployment
    lstmrs tasks [NAME]                                               the tasks and their defaults
    lstmrs plugins                                                    installed plugins
    lstmrs bench [ARGS]                                               the benchmark (source tree)

``lstmrs train`` with no arguments trains an LSTM on the adding problem (no files needed) in
well under a minute and prints its loss falling and the final test MSE.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from . import config as C
from . import plugins
from .errors import LstmrsError
from .explain_report import write_report
from .rnn import set_num_threads
from .rundir import RunDir, RunDirError, _write_json
from .tasks.runner import (
    EXIT_INTERRUPTED,
    _public,
    _show,
    get_tasks,
    lookup_task,
    resolve_config,
    train_run,
)

__all__ = ["get_tasks", "lookup_task", "main", "resolve_config", "train_run"]

DEFAULT_TASK = "adding"
EXIT_USAGE = 2


# --------------------------------------------------------------------------------------------
# train


def _say_fn(quiet: bool):
    def say(text: str = "") -> None:
        if not quiet:
            print(text, flush=True)

    return say


def _resume_target(args) -> RunDir:
    if args.run_dir:
        return RunDir.open(args.run_dir)
    run = RunDir.latest()
    if run is None:
        raise RunDirError("--resume: no run directory given (--run-dir DIR) and none under runs/")
    return run


def cmd_train(args) -> int:
    say = _say_fn(args.quiet)
    if args.threads is not None:
        set_num_threads(args.threads)
    if args.resume:
        if args.config:
            raise C.ConfigError(
                "--resume: the run's own config.toml is used; change values with --set"
            )
        run = _resume_target(args)
        file_cfg = run.read_config()
        task = lookup_task(args.task or file_cfg.get("task", ""))
        cfg = resolve_config(
            task,
            file_cfg=file_cfg,
            file_source=run.config_path,
            file_dir=run.path,
            cell=args.cell,
            optimizer=args.optimizer,
            sets=args.set or [],
        )
    else:
        file_cfg, file_dir = None, None
        if args.config:
            file_cfg = C.load_toml(args.config)
            file_dir = os.path.dirname(os.path.abspath(args.config))
        name = args.task or (file_cfg or {}).get("task") or DEFAULT_TASK
        if not isinstance(name, str):
            raise C.ConfigError(f"config: task = {name!r} is not allowed: expected a task name")
        task = lookup_task(name)
        cfg = resolve_config(
            task,
            file_cfg=file_cfg,
            file_source=args.config or "",
            file_dir=file_dir,
            cell=args.cell,
            optimizer=args.optimizer,
            sets=args.set or [],
        )
        run = RunDir.create(args.run_dir, task.name)
    return train_run(task, cfg, run, resume=args.resume, say=say, make_plots=not args.no_plots)


# --------------------------------------------------------------------------------------------
# eval, predict, generate


def _open_run(path: str):
    run = RunDir.open(path)
    cfg = run.read_config()
    task = lookup_task(cfg.get("task", ""))
    cfg = resolve_config(task, file_cfg=cfg, file_source=run.config_path, file_dir=run.path)
    return run, task, cfg


def cmd_eval(args) -> int:
    run, task, cfg = _open_run(args.run_dir)
    if args.set:
        cfg = resolve_config(task, file_cfg=cfg, file_source=run.config_path, sets=args.set)
    state = run.read_state().get("task_state") or {}
    whole = False
    if args.data:
        if "path" not in cfg["data"]:
            raise C.ConfigError(f"--data: task {task.name!r} reads no data file")
        cfg["data"]["path"] = os.path.abspath(args.data)
        whole = True
    data = task.prepare(cfg, state=state or None, whole=whole)
    for line in data.info:
        _say_fn(args.quiet)(line)
    model = run.load_model()
    summary = task.evaluate(model, data, cfg)
    print(f"[{task.name}] {task.format_summary(summary)}")
    if args.json:
        _write_json(args.json, _public(summary))
    return 0


def cmd_predict(args) -> int:
    run, task, cfg = _open_run(args.run_dir)
    state = run.read_state().get("task_state") or {}
    model = run.load_model()
    if args.inputs and hasattr(task, "predict_words"):
        for src, out in zip(args.inputs, task.predict_words(model, cfg, state, args.inputs)):
            print(f"{src}\t{out}")
        return 0
    if not args.input or not args.output:
        raise C.ConfigError("predict: expected --input FILE and --output FILE")
    if not os.path.exists(args.input):
        raise C.ConfigError(f"--input: {args.input!r} does not exist")
    message = task.predict_file(model, cfg, state, args.input, args.output)
    print(f"wrote {args.output}: {message}")
    return 0


def cmd_generate(args) -> int:
    run, task, _cfg = _open_run(args.run_dir)
    gen = getattr(task, "generate", None)
    if gen is None:
        raise C.ConfigError(
            f"generate: the run's task {task.name!r} does not generate text (train a charlm)"
        )
    state = run.read_state().get("task_state") or {}
    model = run.load_model()
    gen(
        model,
        state,
        prompt=args.prompt,
        length=args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        out=sys.stdout,
    )
    return 0


def cmd_explain(args) -> int:
    run, task, cfg = _open_run(args.run_dir)
    state = run.read_state().get("task_state") or {}
    whole = False
    if args.input:
        if "path" not in cfg["data"]:
            raise C.ConfigError(f"--input: task {task.name!r} reads no data file")
        if not os.path.exists(args.input):
            raise C.ConfigError(f"--input: {args.input!r} does not exist")
        cfg["data"]["path"] = os.path.abspath(args.input)
        whole = True
    data = task.prepare(cfg, state=state or None, whole=whole)
    out = args.out or os.path.join(run.path, "explain")
    report = write_report(
        task,
        run.load_model(),
        data,
        cfg,
        out,
        index=args.index,
        method=args.method,
        steps=args.steps,
        target=args.target,
        unit=args.unit,
        title=f"lstmrs explain: {os.path.basename(run.path)} ({task.name})",
    )
    for line in report.lines:
        print(line)
    print(f"wrote {_show(report.html)} and {len(report.figures)} figure(s)")
    return 0


def cmd_tune(args) -> int:
    # start-up time: tuning (rich tables, the search) adds ~55 ms to every other command; Optuna,
    # which it needs, is an optional dependency (lstmrs[tune]).
    from .tuning import tune

    tune(
        args.config,
        storage=args.storage,
        study=args.study,
        trials=args.trials,
        timeout=args.timeout,
        workers=args.workers,
        resume=args.resume,
        run_dir=args.run_dir,
        sets=args.set or [],
        threads=args.threads,
        quiet=args.quiet,
        _worker=args.worker_index,
    )
    return 0


def cmd_export(args) -> int:
    onnx_only = [f for f, v in (("--opset", args.opset), ("--no-verify", args.no_verify)) if v]
    if args.format == "onnx" and args.rnn_only:
        raise C.ConfigError("--rnn-only: only with --format safetensors")
    if args.format == "safetensors" and (onnx_only or args.values != "raw"):
        raise C.ConfigError(f"{', '.join(onnx_only) or '--values'}: only with --format onnx")
    run = RunDir.open(args.run_dir)
    model = run.load_model()
    out = args.output or os.path.join(run.path, f"model.{args.format}")
    if args.format == "onnx":
        extra = {} if args.opset is None else {"opset": args.opset}
        proto = model.to_onnx(out, output=args.values, verify=not args.no_verify, **extra)
        opset = proto.opset_import[0].version
        checked = "onnx.checker only" if args.no_verify else "onnx.checker, ONNX Runtime agrees"
        print(f"wrote {out}: ONNX opset {opset}, output {args.values!r} ({checked})")
    else:
        model.save_safetensors(out, rnn_only=args.rnn_only)
        names = "torch.nn.LSTM/GRU names" if args.rnn_only else "PyTorch names (rnn.*, head.*)"
        print(f"wrote {out}: {model.num_params} weights under {names}")
    return 0


def cmd_tasks(args) -> int:
    tasks = get_tasks()
    if args.name:
        task = lookup_task(args.name)
        print(f"# {task.name}: {task.description}")
        print(C.dumps(task.default_config), end="")
        return 0
    width = max(len(n) for n in tasks)
    for name in sorted(tasks):
        print(f"{name:<{width}}  {tasks[name].description}")
    print("\n`lstmrs tasks NAME` prints a task's default configuration (a starting CONFIG.toml).")
    return 0


# --------------------------------------------------------------------------------------------
# plugins, bench and plugin commands


def _find_bench() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (os.getcwd(), os.path.dirname(os.path.dirname(here))):
        p = os.path.join(root, "bench", "bench_rnn.py")
        if os.path.isfile(p):
            return p
    return None


BENCH_HELP = (
    "Runs the benchmark against PyTorch and ONNX Runtime (bench/bench_rnn.py of the lstmrs "
    "source tree; found in the working directory or next to an editable install). Every "
    "argument is passed on to the script, e.g. `lstmrs bench --quick` or `lstmrs bench "
    "--threads 2 --json out.json`."
)


def cmd_bench(argv: list[str]) -> int:
    script = _find_bench()
    if argv[:1] in (["-h"], ["--help"]):
        print("usage: lstmrs bench [ARGS ...]\n\n" + BENCH_HELP)
        if script is not None:
            print("\nThe script's own options:\n")
            sys.stdout.flush()
            subprocess.call([sys.executable, script, "--help"])
        return 0
    if script is None:
        print(
            "lstmrs bench: bench/bench_rnn.py was not found. The benchmark ships with the "
            "lstmrs source repository, not with the installed package: run `lstmrs bench` "
            "from a checkout of the repository.",
            file=sys.stderr,
        )
        return 1
    return subprocess.call([sys.executable, script, *argv])


def _plugin_commands() -> dict[str, Any]:
    # `lstmrs plugins` is one of these: the built-in plugin registers it.
    return plugins.get_commands()


# --------------------------------------------------------------------------------------------
# Argument parsing


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstmrs",
        description="Train and use LSTM/GRU models on the tasks people use them for. "
        "`lstmrs train` with no arguments trains an LSTM on the adding problem.",
        formatter_class=_Formatter,
        epilog="Each command has --help. `lstmrs tasks` lists the tasks; `lstmrs plugins` "
        "lists installed plugins (which add tasks, cells, optimizers and commands).",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a task and write a run directory",
        formatter_class=_Formatter,
        description="Train a task (built-in or from a plugin) from a TOML config, with "
        "overrides, into a run directory: config.toml as used, checkpoints/, metrics.jsonl, "
        "summary.json, model/ and plots/.\n\nWithout CONFIG and --task it trains the "
        f"{DEFAULT_TASK!r} task (the adding problem at T=50, about half a minute).\n\n"
        "Configs have sections [data], [model], [train] and [eval]; `lstmrs tasks NAME` prints "
        "a task's defaults. Relative paths in a config file are relative to that file.",
        epilog="examples:\n  lstmrs train\n  lstmrs train --task adding --set data.seq_len=200\n"
        "  lstmrs train examples/forecast_airline.toml --set train.epochs=50\n"
        "  lstmrs train --resume --run-dir runs/charlm-20250101-120000",
    )
    p.add_argument("config", nargs="?", metavar="CONFIG.toml", help="configuration file")
    p.add_argument(
        "--task", metavar="NAME", help=f"task to train (default: the config's, else {DEFAULT_TASK})"
    )
    p.add_argument("--cell", metavar="NAME", help="recurrent cell: model.cell (lstm, gru, ...)")
    p.add_argument("--optimizer", metavar="NAME", help="optimizer: train.optimizer (adam, ...)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value (repeatable): --set train.lr=0.003 --set data.columns=a,b",
    )
    p.add_argument(
        "--run-dir", metavar="DIR", help="run directory (default: runs/<task>-<date>-<time>)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir (default: the newest under runs/) from its last "
        "checkpoint; --set train.epochs=N trains longer",
    )
    p.add_argument("--quiet", action="store_true", help="print only the final numbers")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="worker threads (default: all cores, or LSTMRS_NUM_THREADS)",
    )
    p.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a run's model again",
        formatter_class=_Formatter,
        description="Evaluate the final model of a run directory on the run's test split, or "
        "on the whole of another data file (--data) with the run's fitted state (vocabulary, "
        "scaler, threshold).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", metavar="FILE", help="evaluate on all of FILE instead")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override eval options")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to FILE as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the numbers")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "predict",
        help="predictions for new data",
        formatter_class=_Formatter,
        description="Run a trained model on FILE and write its predictions. forecast: a CSV "
        "with the run's columns -> the forecast after its end (CSV); classify: a CSV of texts "
        "or an .npz of sequences -> labels and probabilities (CSV); anomaly: a CSV series -> "
        "scores and alarms (CSV); seq2seq: INPUT words on the command line -> printed "
        "outputs, or a file of one source per line -> TSV; charlm: a text file -> bits per character (JSON); adding / "
        "copy: an .npz with X -> predictions (.npy, .npz or CSV).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="seq2seq: sources to decode, outputs printed"
    )
    p.add_argument("--input", metavar="FILE", help="data to predict for")
    p.add_argument("--output", metavar="FILE", help="where to write predictions")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "generate",
        help="sample text from a charlm run",
        formatter_class=_Formatter,
        description="Stream characters sampled from a character language model (a charlm "
        "run), one step at a time, after feeding it the prompt.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--prompt", default="\n", help="text to start from")
    p.add_argument("--length", type=int, default=500, help="characters to generate")
    p.add_argument(
        "--temperature", type=float, default=0.8, help="softmax temperature (lower: safer)"
    )
    p.add_argument("--top-k", type=int, default=0, help="sample from the K likeliest (0: all)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "explain",
        help="attributions and gate traces of a run, as PNG figures and one HTML page",
        formatter_class=_Formatter,
        description="Explain a trained run: which input steps and features made its "
        "predictions (integrated gradients by default) and what its recurrent layers hold. "
        "Reads the run's own test data, or FILE (all of it) as the task reads its data file; "
        "writes PNG figures and one self-contained HTML page to RUN_DIR/explain (--out).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--input", metavar="FILE", help="data to explain (default: the test split)")
    p.add_argument("--index", type=int, default=None, help="which item (window, text, offset)")
    p.add_argument(
        "--method",
        default="integrated_gradients",
        choices=["integrated_gradients", "gradient_x_input", "occlusion"],
    )
    p.add_argument("--steps", type=int, default=50, help="integrated-gradients steps")
    p.add_argument("--target", type=int, default=None, help="output index (class, forecast step)")
    p.add_argument("--unit", type=int, default=None, help="charlm: the unit to colour the text by")
    p.add_argument("--out", metavar="DIR", help="output directory (default RUN_DIR/explain)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "tune",
        help="search a config's [tune] space with Optuna",
        formatter_class=_Formatter,
        description="Hyperparameter search with Optuna (pip install 'lstmrs[tune]'): every "
        "trial trains CONFIG with values sampled from its [tune.params] table (TPE), reports "
        "its validation metric each epoch (poor trials are pruned) and is a run directory of "
        "its own. Writes a leaderboard, best.toml (which `lstmrs train` runs unchanged) and "
        "plots into the tune directory.\n\nOne machine: the study is an SQLite file in the "
        "tune directory; --workers N runs N trials at once. Several machines: start the same "
        "command with the same --storage URL (any database Optuna supports, e.g. "
        "postgresql://user:pass@host/db) and --study NAME on each; they share the study, and "
        "a trial whose worker died is retried by another.",
        epilog="examples:\n  lstmrs tune examples/tune_forecast_airline.toml --trials 30\n"
        "  lstmrs tune cfg.toml --workers 2 --timeout 1200\n"
        "  lstmrs tune cfg.toml --storage postgresql://lstmrs@db/optuna --study airline\n"
        "  lstmrs tune --resume --run-dir runs/tune-forecast-20250101-120000",
    )
    p.add_argument("config", nargs="?", metavar="CONFIG.toml", help="config with a [tune] table")
    p.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage URL shared by all workers (default: RUN_DIR/study.db, SQLite)",
    )
    p.add_argument("--study", metavar="NAME", help="study name (default: the tune directory's)")
    p.add_argument(
        "--trials", type=int, metavar="N", help="finished trials in the study (tune.trials)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="time budget of each worker (tune.timeout)",
    )
    p.add_argument(
        "--workers", type=int, default=1, metavar="N", help="worker processes on this machine"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the study of --run-dir (default: the newest runs/tune-*)",
    )
    p.add_argument(
        "--run-dir", metavar="DIR", help="tune directory (default: runs/tune-<task>-<date>-<time>)"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, tune.* included (repeatable): --set tune.metric=val_mse",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads per worker (default: the cores divided among --workers)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the result")
    # Set by --workers for the processes it starts.
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser(
        "export",
        help="write a run's model as ONNX or safetensors",
        formatter_class=_Formatter,
        description="Export the final model of a run directory. onnx: the whole model (input, "
        "recurrent layers, pooling, head) as an ONNX graph with inputs x [batch, time, ...] and "
        "lengths [batch], checked with onnx.checker and against lstmrs in ONNX Runtime before "
        "it is written (needs the onnx and onnxruntime packages). safetensors: the weights "
        "under PyTorch's names.",
        epilog="examples:\n  lstmrs export runs/adding-20250101-120000 --format onnx\n"
        "  lstmrs export runs/classify-x --format onnx --values probabilities\n"
        "  lstmrs export runs/adding-x --format safetensors --rnn-only --output lstm.safetensors",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=("onnx", "safetensors"))
    p.add_argument(
        "--output",
        metavar="PATH",
        help="file to write (default: RUN_DIR/model.onnx or .safetensors)",
    )
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's, 17)")
    p.add_argument(
        "--values",
        choices=("raw", "probabilities", "labels"),
        default="raw",
        help="what the ONNX output y holds: raw (as lstmrs predict), probabilities or labels",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the ONNX Runtime comparison (not the checker)",
    )
    p.add_argument(
        "--rnn-only",
        action="store_true",
        help="safetensors: only the recurrent layers, under torch.nn.LSTM/GRU's own names",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "tasks",
        help="list the tasks, or print one's default config",
        formatter_class=_Formatter,
        description="List the registered tasks (built-in and from plugins); with NAME, print "
        "that task's default configuration as TOML.",
    )
    p.add_argument("name", nargs="?", metavar="NAME")
    p.set_defaults(func=cmd_tasks)

    sub.add_parser("plugins", help="list installed plugins (see `lstmrs plugins --help`)")
    sub.add_parser("bench", help="run the benchmark (see `lstmrs bench --help`)")
    return parser


_PASSTHROUGH = {"bench": cmd_bench}
_BUILTIN_COMMANDS = {
    "train",
    "eval",
    "predict",
    "generate",
    "explain",
    "tune",
    "export",
    "tasks",
    *_PASSTHROUGH,
}


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, LstmrsError):
        return text
    if isinstance(e, (OSError, ValueError, MemoryError, RecursionError, TypeError, KeyError)):
        return f"{type(e).__name__}: {text}"
    return f"internal error ({type(e).__name__}: {text}); rerun with --debug for the traceback"


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status. Every error is one line on stderr and a
    non-zero status; ``--debug`` (anywhere before ``--``) shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end] or bool(os.environ.get("LSTMRS_DEBUG"))
    argv = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    prog = "lstmrs"
    try:
        if argv and argv[0] in _PASSTHROUGH:
            prog = f"lstmrs {argv[0]}"
            return _PASSTHROUGH[argv[0]](argv[1:])
        if argv and not argv[0].startswith("-") and argv[0] not in _BUILTIN_COMMANDS:
            commands = _plugin_commands()
            if argv[0] in commands:
                prog = f"lstmrs {argv[0]}"
                return int(commands[argv[0]].func(argv[1:]) or 0)
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        prog = f"lstmrs {args.command}"
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if debug:
            raise
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, (C.ConfigError, RunDirError)) else 1


if __name__ == "__main__":
    sys.exit(main())
