"""``pyro-monteclora sweep``: train and evaluate every cell of a learning-rate × batch-size (× seed)
grid for each method, then summarise the spread of the results (the paper's robustness study).

.. code-block:: bash

    pyro-monteclora sweep --methods monteclora,lora,full --learning-rates 1e-4,5e-4,1e-3 \\
        --batch-sizes 16,32 --full-learning-rates 1e-5,5e-5 --output runs/sweep

Each cell runs ``train`` and then ``evaluate`` (the posterior predictive for MonteCLoRA) in a
process of its own, so nothing (parameter store, random state, caches) carries over from one cell
to the next. The output folder holds ``sweep.json`` (the grid and the options), ``cells/<cell>/``
(each cell's run and ``evaluation/``), ``logs/<cell>.log``, ``results/<cell>.json`` (written when a
cell is done) and, at the end, ``summary.json``, ``summary.md`` (best, median, worst, spread and
standard deviation of each metric per method) and ``sweep.png`` (box plots). ``--resume`` continues
an interrupted sweep: finished cells are kept, a cell stopped mid-training resumes from its last
epoch, and the summary is written again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from pyro_monteclora.cli.options import (
    METHODS,
    UsageError,
    add_adapter_options,
    add_data_options,
    add_model_options,
    check_values,
)
from pyro_monteclora.cli.outputs import (
    check_inputs_outside,
    check_output_folder,
    check_replaceable,
    lock_output_folder,
    run_inputs,
)
from pyro_monteclora.cli.sources import evaluation_split
from pyro_monteclora.infer.methods import SAMPLED_METHODS

__all__ = ["add_sweep_parser", "run_sweep", "train_forwarded", "SWEEP_FILE"]

SWEEP_FILE = "sweep.json"
#: options ``train`` shares with ``sweep`` that stay the sweep's own (its folder, not a cell's)
SWEEP_OWN = ("help", "output", "overwrite", "resume")
#: ``sweep`` options passed on to each cell's ``evaluate`` (``--eval-*`` name them in ``sweep``)
EVALUATE_FORWARDED = {
    "trust_remote_code": "--trust-remote-code",
    "device": "--device",
    "dtype": "--dtype",
    "split": "--split",
    "max_eval_samples": "--max-samples",
    "eval_batch_size": "--batch-size",
    "max_new_tokens": "--max-new-tokens",
}


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``sweep`` sub-command and its options."""
    parser = subparsers.add_parser(
        "sweep",
        help="a learning-rate x batch-size grid per method: the spread of accuracy and NLL",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    group = parser.add_argument_group("grid")
    group.add_argument("--methods", default="monteclora,lora,full", help=f"comma-separated, from {', '.join(METHODS)}")
    group.add_argument("--learning-rates", default="1e-4,5e-4,1e-3", help="comma-separated peak rates")
    group.add_argument("--batch-sizes", default="16,32", help="comma-separated")
    group.add_argument("--seeds", default="0", help="comma-separated; each seeds a cell's inits, noise and data order")
    group.add_argument(
        "--full-learning-rates", default=None, help="learning rates for full fine-tuning (default: --learning-rates)"
    )
    group.add_argument(
        "--full-batch-sizes", default=None, help="batch sizes for full fine-tuning (default: --batch-sizes)"
    )
    add_model_options(parser)
    parser.add_argument(
        "--task-type", default="sequence-classification", choices=["sequence-classification", "causal-lm"]
    )
    add_data_options(parser, ("train", "validation", "test"))
    add_adapter_options(parser, method=False)
    group = parser.add_argument_group("training (every cell)")
    group.add_argument("--epochs", type=int, default=3)
    group.add_argument("--weight-decay", type=float, default=0.0)
    group.add_argument("--warmup-ratio", type=float, default=0.1)
    group.add_argument("--max-train-samples", type=int, default=None, help="use the first N training examples")
    group.add_argument("--gradient-checkpointing", action="store_true")
    group = parser.add_argument_group("evaluation (every cell)")
    group.add_argument(
        "--num-samples",
        type=int,
        default=10,
        help="S posterior samples of the MonteCLoRA cells' predictive (the others use their point estimate)",
    )
    group.add_argument(
        "--split",
        default=None,
        choices=["test", "validation"],
        help="where the cells are scored (default: test when it has labels, else validation)",
    )
    group.add_argument("--max-eval-samples", type=int, default=None, help="score the first N examples")
    group.add_argument("--eval-batch-size", type=int, default=None)
    group.add_argument("--max-new-tokens", type=int, default=None, help="generation tasks (gsm8k)")
    group = parser.add_argument_group("output")
    group.add_argument("--output", required=True, help="sweep folder")
    group.add_argument("--overwrite", action="store_true", help="replace an existing sweep folder")
    group.add_argument("--resume", action="store_true", help="continue the sweep in --output")
    parser.set_defaults(handler=run_sweep, sweep_actions=parser._actions)
    return parser


def _numbers(option: str, text: str, kind) -> list:
    values = []
    for part in (text or "").split(","):
        part = part.strip()
        try:
            value = kind(part)
        except ValueError:
            raise UsageError(
                f"{option}: {part!r} is not {'an integer' if kind is int else 'a number'}; "
                f"give a comma-separated list such as {'16,32' if kind is int else '1e-4,5e-4'}"
            ) from None
        # (an integer is never converted to a float: a 400-digit one would overflow)
        ok = (isinstance(value, int) or math.isfinite(value)) and (value > 0 if option != "--seeds" else value >= 0)
        if not ok:
            raise UsageError(f"{option}: {part} must be {'>= 0' if option == '--seeds' else '> 0'}")
        if value in values:
            raise UsageError(f"{option}: {part} is given twice")
        values.append(value)
    if not values:
        raise UsageError(f"{option}: give at least one value")
    return values


def _grid(args):
    from pyro_monteclora.evaluation.sweep import sweep_grid

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "deep-ensemble" in methods:
        raise UsageError(
            "--methods: deep-ensemble trains M runs per cell; sweep lora and join its runs with "
            "'pyro-monteclora ensemble'"
        )
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise UsageError(f"--methods: {args.methods!r}; give distinct names from {', '.join(METHODS)}")
    per_method = {}
    if args.full_learning_rates or args.full_batch_sizes:
        if "full" not in methods:
            raise UsageError("--full-learning-rates/--full-batch-sizes need full in --methods")
        per_method["full"] = {
            "learning_rates": _numbers("--full-learning-rates", args.full_learning_rates, float)
            if args.full_learning_rates
            else None,
            "batch_sizes": _numbers("--full-batch-sizes", args.full_batch_sizes, int)
            if args.full_batch_sizes
            else None,
        }
    cells = sweep_grid(
        methods,
        _numbers("--learning-rates", args.learning_rates, float),
        _numbers("--batch-sizes", args.batch_sizes, int),
        _numbers("--seeds", args.seeds, int),
        per_method,
    )
    from pyro_monteclora.cli.runs import RUN_CHECKS

    grid_options = {"learning_rate": "--learning-rates", "batch_size": "--batch-sizes", "seed": "--seeds"}
    for cell in cells:  # each value as the cell's train will check it (a seed below 2**32, ...)
        check_values(
            {key: getattr(cell, key) for key in grid_options},
            {key: RUN_CHECKS[key] for key in grid_options},
            grid_options.get,
        )
    names = [cell.name for cell in cells]
    clash = next((name for name in names if names.count(name) > 1), None)
    if clash is not None:  # rates equal to 6 significant digits would share a cell folder
        raise UsageError(
            f"two cells would share the folder {clash!r}; give learning rates that differ "
            f"in their first 6 significant digits"
        )
    return cells


def train_forwarded(sweep_actions) -> Tuple[str, ...]:
    """The ``sweep`` options passed on unchanged to each cell's ``train``: every option the two
    commands share (model, data, adapter and training options) but :data:`SWEEP_OWN`."""
    from pyro_monteclora.cli.options import OneLineParser
    from pyro_monteclora.cli.train import add_train_parser

    commands = OneLineParser(prog="pyro-monteclora").add_subparsers(dest="command", parser_class=OneLineParser)
    train = {action.dest for action in add_train_parser(commands)._actions if action.option_strings}
    return tuple(
        dict.fromkeys(
            action.dest
            for action in sweep_actions
            if action.option_strings and action.dest in train and action.dest not in SWEEP_OWN
        )
    )


def _forward(parser_actions, args, names: Sequence[str]) -> List[str]:
    """The command-line words that give ``names`` their values in ``args`` (defaults left out)."""
    argv = []
    for action in parser_actions:
        if action.dest not in names or not action.option_strings:
            continue
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        elif isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def _cell_commands(cell, args, train_options: List[str], output: Path) -> Dict[str, List[str]]:
    run = output / "cells" / cell.name
    train = [
        "train",
        *train_options,
        "--method",
        cell.method,
        "--learning-rate",
        repr(cell.learning_rate),
        "--batch-size",
        str(cell.batch_size),
        "--seed",
        str(cell.seed),
        "--no-validation",
        "--output",
        str(run),
    ]
    evaluate = [
        "evaluate",
        "--checkpoint",
        str(run),
        "--seed",
        str(cell.seed),
        "--num-samples",
        str(args.num_samples if cell.method in SAMPLED_METHODS else 0),
        "--output",
        str(run / "evaluation"),
    ]
    for name, flag in EVALUATE_FORWARDED.items():
        value = getattr(args, name)
        if value not in (None, False):
            evaluate += [flag] if value is True else [flag, str(value)]
    return {"train": train, "evaluate": evaluate}


def _validate(args, cells, train_options):
    """Check every option and the data with ``train``'s own rules, before any cell runs.

    :returns: ``(the split the cells are scored on, the base model's path)``.
    """
    from pyro_monteclora.cli.options import OneLineParser, check_number, resolve_model_path
    from pyro_monteclora.cli.sources import resolve_data
    from pyro_monteclora.cli.train import _check_arguments, add_train_parser

    check_number("--num-samples", args.num_samples, minimum=0, integer=True)
    check_number("--max-eval-samples", args.max_eval_samples, minimum=1, integer=True)
    check_number("--eval-batch-size", args.eval_batch_size, minimum=1, integer=True)
    check_number("--max-new-tokens", args.max_new_tokens, minimum=1, integer=True)
    first = cells[0]
    commands = OneLineParser(prog="pyro-monteclora").add_subparsers(dest="command", parser_class=OneLineParser)
    add_train_parser(commands)  # train's own parser, as `pyro-monteclora train` parses
    probe = commands.choices["train"].parse_args(
        [
            *train_options,
            "--method",
            first.method,
            "--learning-rate",
            repr(first.learning_rate),
            "--batch-size",
            str(first.batch_size),
            "--output",
            str(args.output),
        ]
    )
    _check_arguments(probe)
    if probe.task_type == "causal-lm":
        from pyro_monteclora.cli.lm_data import resolve_instruction_data

        splits, spec = resolve_instruction_data(probe, ("train", "validation", "test"))
    else:
        splits, spec = resolve_data(
            probe, ("train", "validation", "test"), optional_unlabelled=("test",), training=True
        )
    probe.split = args.split
    split = evaluation_split(probe, None)
    if split not in splits:
        raise UsageError(
            f"no labelled {split} data to score the cells on: pass --test-file, or "
            f"--split validation with --validation-file"
        )
    model_path = resolve_model_path(probe.model, probe.task_type)
    if any(cell.method != "full" for cell in cells):
        _check_rank_on_meta(probe, model_path)
    return split, model_path


def _check_rank_on_meta(probe, model_path: str) -> None:
    """``--rank`` against the adapted layers of the base model built on the meta device (no weight
    read, nothing allocated), so that a rank too large is refused before the sweep makes its folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from pyro_monteclora.cli.options import LOAD_ERRORS, adapter_config
    from pyro_monteclora.cli.train import check_rank

    kind = AutoModelForCausalLM if probe.task_type == "causal-lm" else AutoModelForSequenceClassification
    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=probe.trust_remote_code)
        with torch.device("meta"):
            network = kind.from_config(config, trust_remote_code=probe.trust_remote_code)
    except LOAD_ERRORS:
        return  # each cell's train says what is wrong with the model
    check_rank(network, adapter_config(vars(probe), network))


def _model_name(model_path: str) -> str:
    """A short name of the base model for titles: the folder (its parent for a packaged
    ``.../<package>/model`` folder) or the hub name."""
    path = Path(model_path)
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def _prepare_output(args, record: dict) -> Path:
    output = check_output_folder(args)
    if args.resume:
        from pyro_monteclora.validation import parse_json

        try:
            saved = parse_json((output / SWEEP_FILE).read_text(encoding="utf-8"))
            if not isinstance(saved, dict):
                raise json.JSONDecodeError("not an object", "", 0)
        except FileNotFoundError:
            raise UsageError(f"--resume: {output} holds no sweep ({SWEEP_FILE} is missing)") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UsageError(f"--resume: {output / SWEEP_FILE} is not readable JSON") from None
        changed = [key for key in ("grid", "train_options", "evaluate_options") if saved.get(key) != record[key]]
        if changed:
            raise UsageError(
                f"--resume continues the saved sweep and cannot change its "
                f"{' or '.join(changed).replace('_', ' ')}; start a new --output"
            )
    else:
        check_replaceable(output, args.overwrite, SWEEP_FILE, "sweep")
        check_inputs_outside(output, run_inputs(args))
    return output


def _plan(cell, commands, output: Path) -> dict:
    """What is left of a cell: its train (resumed or restarted) and evaluate commands, or ``None``."""
    from pyro_monteclora.cli.runs import latest_checkpoint

    run = output / "cells" / cell.name
    plan = {"train": None, "evaluate": None}
    if not (run / "train_summary.json").is_file():
        if latest_checkpoint(run) is not None:
            plan["train"] = commands["train"] + ["--resume"]
        else:
            if run.exists():  # started but no epoch finished: start the cell again
                shutil.rmtree(run)
            plan["train"] = commands["train"]
    if plan["train"] is not None or not (run / "evaluation" / "metrics.json").is_file():
        plan["evaluate"] = commands["evaluate"]
    return plan


def _cell_result(cell, run: Path, status: int, log: Path) -> Optional[dict]:
    """The cell's record for ``results/``; ``None`` when it failed in a way a rerun may fix."""
    row = cell.to_dict()
    if status == 1:  # training stopped on a non-finite loss: a real outcome of this setting
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return dict(row, status="diverged", error=lines[-1] if lines else "")
    if status != 0:
        return None
    evaluation = json.loads((run / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    summary = json.loads((run / "train_summary.json").read_text(encoding="utf-8"))
    metrics = {k: v for k, v in evaluation["metrics"].items() if isinstance(v, (int, float))}
    return dict(
        row,
        status="ok",
        metrics=metrics,
        task=evaluation.get("task"),
        task_metric=evaluation.get("task_metric"),
        num_samples=evaluation.get("num_samples"),
        examples=evaluation.get("examples"),
        split=evaluation.get("split"),
        train_seconds=summary.get("train_seconds"),
        eval_seconds=evaluation.get("eval_seconds"),
    )


def _summary_metrics(results: List[dict]) -> List[str]:
    headline = next((r["task_metric"] for r in results if r.get("task_metric")), "accuracy")
    wanted = [headline, "accuracy", "nll", "token_nll", "ece"]
    present = {k for r in results for k in r.get("metrics", {})}
    return [m for m in dict.fromkeys(wanted) if m in present]


def write_summary(output: Path, record: dict, results: List[dict]) -> str:
    """``summary.json``, ``summary.md`` and ``sweep.png`` from the finished cells' results;
    returns the markdown table."""
    from pyro_monteclora.evaluation.sweep import summarize, summary_markdown
    from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text

    metrics = _summary_metrics(results)
    summary = summarize(results, metrics)
    source = record["data"]
    title = (
        f"{record['model']} on {source}; {record['epochs']} epoch(s); {len(results)} cells scored on {record['split']}"
    )
    atomic_write_json(
        output / "summary.json",
        {
            "metrics": metrics,
            "summary": summary,
            "results": results,
            "grid": record["grid"],
            "command": record["command"],
            "versions": record["versions"],
            "title": title,
        },
    )
    table = summary_markdown(summary, metrics)
    atomic_write_text(output / "summary.md", f"{title}\n\n{table}\n")
    try:
        from pyro_monteclora.evaluation.plots import plot_sweep_boxes

        if any(r["status"] == "ok" for r in results):
            plot_sweep_boxes(
                results,
                [m for m in metrics if m != "ece"],
                output / "sweep.png",
                title=title if len(title) < 110 else None,
            )
    except ImportError:
        print("sweep.png skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
    return table


def run_sweep(args, parser_defaults: dict) -> int:
    """Validate, then run every unfinished cell in its own process and summarise; returns 0, or
    1 when a cell failed for a reason other than divergence (rerun with ``--resume``)."""
    import pyro
    import torch
    import transformers

    from pyro_monteclora.storage.atomic import atomic_write_json

    cells = _grid(args)
    train_options = _forward(args.sweep_actions, args, train_forwarded(args.sweep_actions))
    args.split, model_path = _validate(args, cells, train_options)
    data = args.task or (Path(args.train_file).name if args.train_file else args.dataset) or "rotten-tomatoes"
    record = {
        "grid": [cell.to_dict() for cell in cells],
        "train_options": train_options,
        "evaluate_options": {name: getattr(args, name) for name in ("num_samples", *EVALUATE_FORWARDED)},
        "model": _model_name(model_path),
        "data": data,
        "epochs": args.epochs,
        "split": args.split,
        "command": " ".join(["pyro-monteclora"] + args.command_line),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "transformers": transformers.__version__,
        },
    }
    output = _prepare_output(args, record)
    lock = lock_output_folder(output, args, SWEEP_FILE, "sweep")  # held until the sweep ends
    try:
        for folder in ("cells", "logs", "results", "plans"):
            (output / folder).mkdir(parents=True, exist_ok=True)
        if not args.resume:
            atomic_write_json(output / SWEEP_FILE, record)
        return _run_cells(args, cells, train_options, output, record)
    finally:
        lock.release()


def _run_cells(args, cells, train_options: List[str], output: Path, record: dict) -> int:
    """Run every cell without a result in its own process, then write the summary; returns 0,
    or 1 when a cell failed."""
    from tqdm.auto import tqdm

    from pyro_monteclora.storage.atomic import atomic_write_json

    failed = []
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    runner = "import sys; from pyro_monteclora.cli import run_cell; sys.exit(run_cell(sys.argv[1]))"
    progress = tqdm(cells, desc="sweep", unit="cell")
    for cell in progress:
        result_file = output / "results" / f"{cell.name}.json"
        if result_file.is_file():
            continue
        progress.set_postfix_str(cell.name)
        plan = _plan(cell, _cell_commands(cell, args, train_options, output), output)
        plan_file = output / "plans" / f"{cell.name}.json"
        atomic_write_json(plan_file, plan)
        log = output / "logs" / f"{cell.name}.log"
        with open(log, "a", encoding="utf-8") as handle:
            status = subprocess.run(
                [sys.executable, "-c", runner, str(plan_file)], stdout=handle, stderr=subprocess.STDOUT, env=env
            ).returncode
        if status in (-2, 130):  # Ctrl-C reached the cell too: stop the sweep
            raise KeyboardInterrupt
        result = _cell_result(cell, output / "cells" / cell.name, status, log)
        if result is None:
            failed.append(cell.name)
            tqdm.write(f"cell {cell.name} failed (exit {status}); see {log}", file=sys.stderr)
            continue
        atomic_write_json(result_file, result)
    results = [
        json.loads((output / "results" / f"{cell.name}.json").read_text(encoding="utf-8"))
        for cell in cells
        if (output / "results" / f"{cell.name}.json").is_file()
    ]
    print(write_summary(output, record, results), flush=True)
    print(f"wrote {output}/summary.json, summary.md, sweep.png", file=sys.stderr)
    if failed:
        print(
            f"pyro-monteclora sweep: {len(failed)} cell(s) failed ({', '.join(failed)}); their logs "
            f"are in {output / 'logs'}; rerun with --resume",
            file=sys.stderr,
        )
        return 1
    return 0
