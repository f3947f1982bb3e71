"""The ``pyro-monteclora`` command: ``train``, ``evaluate``, ``predict``, ``generate``, ``lm-eval``,
``humaneval``, ``sweep``, ``ensemble`` and ``calibrate``.

.. code-block:: bash

    pyro-monteclora train --method monteclora --output runs/rt        # offline MiniLM + Rotten Tomatoes
    pyro-monteclora evaluate --checkpoint runs/rt --num-samples 10    # metrics.json, reliability.png
    echo "a tender, funny film" | pyro-monteclora predict --checkpoint runs/rt

    # decoders (offline SmolLM2-135M-Instruct): instruction tuning, multiple choice, generation
    pyro-monteclora train --task-type causal-lm --train-file qa.jsonl --output runs/qa
    pyro-monteclora evaluate --checkpoint runs/qa --multiple-choice --test-file mc.jsonl
    pyro-monteclora generate --checkpoint runs/qa --prompt "What is the capital of Peru?" --num-samples 5
    pyro-monteclora lm-eval --checkpoint runs/qa --tasks arc_easy --num-samples 10 --output lm_eval.json
    pyro-monteclora humaneval --checkpoint runs/code --num-samples 4 --output runs/code/humaneval

    # the robustness study: a learning-rate x batch-size grid per method, summarised and plotted
    pyro-monteclora sweep --methods monteclora,lora --learning-rates 1e-4,1e-3 --output runs/sweep

Bad input (a missing file or column, a label outside the label set, an empty text, an unknown
method, an existing ``--output`` without ``--overwrite``) is reported as one line on stderr with exit
status 2, before anything is written.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from pyro_monteclora.cli.options import OneLineParser, UsageError
from pyro_monteclora.cli.train import TrainingFault

__all__ = ["main", "build_parser", "UsageError", "run_cell"]


def build_parser() -> OneLineParser:
    """The ``pyro-monteclora`` argument parser with its ``train``, ``evaluate``, ``predict``,
    ``generate``, ``lm-eval``, ``humaneval``, ``sweep``, ``ensemble`` and ``calibrate`` sub-commands
    (the CLI reference in the docs is generated from it)."""
    from pyro_monteclora.cli.calibrate import add_calibrate_parser
    from pyro_monteclora.cli.deep_ensemble import add_ensemble_parser
    from pyro_monteclora.cli.evaluate import add_evaluate_parser
    from pyro_monteclora.cli.generate import add_generate_parser
    from pyro_monteclora.cli.harness import add_lm_eval_parser
    from pyro_monteclora.cli.humaneval import add_humaneval_parser
    from pyro_monteclora.cli.predict import add_predict_parser
    from pyro_monteclora.cli.sweep import add_sweep_parser
    from pyro_monteclora.cli.train import add_train_parser

    parser = OneLineParser(prog="pyro-monteclora", description="MonteCLoRA (Bayesian LoRA) fine-tuning with Pyro")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_train_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_predict_parser(subparsers)
    add_generate_parser(subparsers)
    add_lm_eval_parser(subparsers)
    add_humaneval_parser(subparsers)
    add_sweep_parser(subparsers)
    add_ensemble_parser(subparsers)
    add_calibrate_parser(subparsers)
    return parser


def _defaults(parser: OneLineParser, command: str) -> dict:
    for action in parser._subparsers._group_actions:  # the sub-command's own defaults
        if command in action.choices:
            sub = action.choices[command]
            return {a.dest: a.default for a in sub._actions}
    return {}


def main(argv: Optional[List[str]] = None, *, os_error_status: int = 1) -> int:
    """Run the command line; returns the exit status: 2 for bad input, 1 when training stopped on
    a non-finite loss or a file could not be written (no space left on the device, say: every file
    is written to a temporary name and renamed when complete, so what was on disk is intact), 130
    when interrupted.

    :param os_error_status: the status of a failed read or write (``sweep`` gives its cells
        another, so that such a cell is run again by ``--resume`` instead of counted as diverged).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        return _run(parser, args, argv)
    except UsageError as error:
        if _first_process():  # under torchrun every rank finds the same error: say it once
            print(_usage_line(error, _command(args)), file=sys.stderr)
        return 2
    except TrainingFault as error:
        if _first_process():
            print(f"pyro-monteclora train: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # after validation: a write that failed (ENOSPC), a disk gone
        if _first_process():
            print(_write_failure_line(error, _command(args)), file=sys.stderr)
        return os_error_status
    except KeyboardInterrupt:
        print(_interrupted_line(_command(args)), file=sys.stderr)
        return 130


def _run(parser: OneLineParser, args, argv: Optional[List[str]]) -> int:
    """Run the parsed command's handler from a clean state: an empty Pyro parameter store, quiet
    transformers logging, and one process unless the command is ``train``."""
    args.command_line = list(sys.argv[1:] if argv is None else argv)
    import pyro
    import transformers

    pyro.clear_param_store()  # each command starts clean, also when called in-process
    if args.command != "train" and os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise UsageError(
            f"{args.command} runs in one process (only train is multi-process); launch it without torchrun / accelerate"
        )

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return args.handler(args, _defaults(parser, args.command))


def _command(args) -> Optional[str]:
    """The sub-command's name, or ``None`` when the command line did not parse."""
    return getattr(args, "command", None)


def _usage_line(error: UsageError, command: Optional[str]) -> str:
    """A usage error as one line that starts with the program (and sub-command) name."""
    message = str(error)
    if not message.startswith("pyro-monteclora"):
        message = f"pyro-monteclora{' ' + command if command else ''}: error: {message}"
    return message


def _write_failure_line(error: OSError, command: Optional[str]) -> str:
    """A failed read or write as one line: what and where, that the files on disk are intact, and
    for ``train`` how to continue."""
    where = f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    hint = "; `train --resume --output DIR` continues from the last finished epoch" if command == "train" else ""
    return (
        f"pyro-monteclora{' ' + command if command else ''}: error: {where}; the files already "
        f"on disk are intact (each is replaced only once complete){hint}"
    )


def _interrupted_line(command: Optional[str]) -> str:
    """What an interrupt says: for ``train`` and ``sweep``, how ``--resume`` continues."""
    if command in ("train", "sweep"):
        where = "epoch" if command == "train" else "cell (and a cell from its last epoch)"
        return (
            f"pyro-monteclora: interrupted; `{command} --resume --output DIR` continues from the last finished {where}"
        )
    return "pyro-monteclora: interrupted"


def _first_process() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def console_main() -> None:
    """The console-script entry point: :func:`main` with ``sys.argv``, then exit with its status."""
    sys.exit(main())


#: a cell's exit status when it crashed (an exception), as opposed to 1: training diverged
CELL_CRASHED = 3


def run_cell(plan_file: str) -> int:
    """Run one cell's ``train`` then ``evaluate`` (in the process the sweep started for it).

    :returns: 0, 1 when training stopped on a non-finite loss, 2 for bad input, or
        :data:`CELL_CRASHED` for any exception (printed to the cell's log).
    """
    import traceback

    plan = json.loads(Path(plan_file).read_text(encoding="utf-8"))
    for step in ("train", "evaluate"):
        if plan.get(step):
            try:
                status = main(plan[step], os_error_status=CELL_CRASHED)
            except Exception:  # out of memory, a network error, a bug: rerun by --resume
                traceback.print_exc()
                return CELL_CRASHED
            if status != 0:
                return status
    return 0
