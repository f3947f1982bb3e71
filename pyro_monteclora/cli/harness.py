"""``pyro-monteclora lm-eval``: lm-evaluation-harness tasks on a checkpoint, through the posterior predictive.

.. code-block:: bash

    pyro-monteclora lm-eval --checkpoint runs/qa --tasks arc_easy,gsm8k --num-samples 10 \\
        --output lm_eval.json --generations generations.jsonl
    pyro-monteclora lm-eval --checkpoint runs/qa --tasks my_task --include-path my_tasks/ --output r.json

Each request is answered by :class:`~pyro_monteclora.evaluation.harness.MonteCLoRALM` (S posterior
draws; 0: the mean adapter). ``--output`` gets lm-eval's results (every task's metrics, the
configuration, the versions) as JSON; ``--generations`` one JSON line per ``generate_until``
request with every draw's text and the agreement rate. A task whose data should come from local
files is a YAML file in ``--include-path`` with ``dataset_path: json`` (or csv, parquet) and
``dataset_kwargs: {data_files: {test: FILE}}`` (see the docs' *lm-eval* section).

Bad input (an unknown task, a checkpoint that is not a decoder, a number out of range, an existing
output without ``--overwrite``) is one line and exit status 2, before the model loads or anything
is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_monteclora.cli.options import UsageError, add_dtype_option, check_number, check_seed
from pyro_monteclora.cli.outputs import check_distinct_outputs, check_file_output, check_file_output_not_input

__all__ = ["add_lm_eval_parser", "run_lm_eval"]


def add_lm_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``lm-eval`` sub-command and its options."""
    parser = subparsers.add_parser(
        "lm-eval",
        help="lm-evaluation-harness tasks through the posterior predictive",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="a causal-lm run folder from `train`")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task or group names")
    parser.add_argument("--include-path", default=None, help="a folder of task YAML files (local data)")
    parser.add_argument(
        "--num-samples", type=int, default=None, help="S posterior samples (default: 10 for monteclora, else 0)"
    )
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's)")
    parser.add_argument("--limit", type=int, default=None, help="the first N documents of each task")
    parser.add_argument("--batch-size", type=int, default=8, help="requests per batch")
    parser.add_argument(
        "--samples-per-pass", type=int, default=None, help="posterior samples run together (default: all S)"
    )
    parser.add_argument("--max-length", type=int, default=None, help="context length (default: the model's)")
    parser.add_argument("--max-gen-toks", type=int, default=256, help="new tokens unless a task says otherwise")
    parser.add_argument(
        "--answer-type",
        default="text",
        choices=["text", "number", "short"],
        help="what the draws of generate_until vote on",
    )
    parser.add_argument("--model", default=None, help="the base model (default: the one the checkpoint was trained on)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the posterior samples and lm-eval's sampling")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_dtype_option(parser)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--output", required=True, help="JSON file for lm-eval's results")
    parser.add_argument("--generations", default=None, help="JSONL file: every draw of every generation")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --output/--generations")
    parser.set_defaults(handler=run_lm_eval)
    return parser


def _check_options(args) -> Path:
    """Numbers and output files; returns the saved-model folder."""
    from pyro_monteclora.cli.checkpoints import find_checkpoint

    for name, value, low in (
        ("--num-samples", args.num_samples, 0),
        ("--num-fewshot", args.num_fewshot, 0),
        ("--limit", args.limit, 1),
        ("--batch-size", args.batch_size, 1),
        ("--samples-per-pass", args.samples_per_pass, 1),
        ("--max-gen-toks", args.max_gen_toks, 1),
    ):
        check_number(name, value, minimum=low, integer=True)
    check_number("--max-length", args.max_length, minimum=args.max_gen_toks + 1, integer=True)
    check_seed("--seed", args.seed)
    if args.output == "-" or args.generations == "-":
        raise UsageError("--output and --generations take file names")
    check_file_output(args.output, "--output", args.overwrite)
    check_file_output(args.generations, "--generations", args.overwrite)
    check_distinct_outputs([("--output", args.output), ("--generations", args.generations)])
    saved = find_checkpoint(args.checkpoint)
    inputs = [("--checkpoint", saved), ("--model", args.model)]
    for option in ("--output", "--generations"):
        check_file_output_not_input(getattr(args, option[2:]), option, inputs)
    return saved


def _task_names(args):
    """The requested task names, each known to lm-eval (its own tasks and ``--include-path``'s),
    and lm-eval's ``TaskManager`` that knows them."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UsageError('lm-eval needs the harness extra: pip install -e ".[harness]"') from None
    names = [name.strip() for name in args.tasks.split(",")]
    if not all(names):
        raise UsageError(f"--tasks {args.tasks!r}: an empty task name")
    if args.include_path is not None and not Path(args.include_path).is_dir():
        raise UsageError(f"--include-path {args.include_path}: no such folder")
    manager = TaskManager(include_path=args.include_path)
    known = set(manager.all_tasks)
    unknown = [name for name in names if name not in known]
    if unknown:
        where = f" or in --include-path {args.include_path}" if args.include_path else " (yours: --include-path)"
        raise UsageError(f"--tasks: {', '.join(unknown)} is not an lm-eval task or group{where}")
    return names, manager


def run_lm_eval(args, parser_defaults: dict) -> int:
    """Validate, open the checkpoint, run lm-eval, write the results; returns 0."""
    from pyro_monteclora.cli.checkpoints import default_samples, load_for_inference, open_model

    _check_options(args)
    names, manager = _task_names(args)
    directory, record, device = load_for_inference(args, ("causal-lm",))
    num_samples = default_samples(record, args.num_samples)
    model, guide, tokenizer = open_model(directory, record, args, device)

    import lm_eval
    import pyro

    from pyro_monteclora.evaluation.harness import MonteCLoRALM
    from pyro_monteclora.nn.precision import autocast
    from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text, json_line

    harness_model = MonteCLoRALM(
        model=model,
        guide=guide,
        tokenizer=tokenizer,
        num_samples=num_samples,
        batch_size=args.batch_size,
        samples_per_pass=args.samples_per_pass,
        max_length=args.max_length,
        max_gen_toks=args.max_gen_toks,
        answer_type=args.answer_type,
    )
    pyro.set_rng_seed(args.seed)
    with autocast(device, args.torch_dtype):
        results = lm_eval.simple_evaluate(
            model=harness_model,
            tasks=names,
            num_fewshot=args.num_fewshot,
            limit=args.limit,
            task_manager=manager,
            log_samples=False,
            random_seed=args.seed,
            numpy_random_seed=args.seed,
            torch_random_seed=args.seed,
            fewshot_random_seed=args.seed,
        )
    summary = {
        "results": results["results"],
        "configs": results.get("configs"),
        "versions": results.get("versions"),
        "n-shot": results.get("n-shot"),
        "checkpoint": str(directory),
        "num_samples": num_samples,
    }
    atomic_write_json(args.output, _plain(summary))
    if args.generations:
        atomic_write_text(args.generations, "".join(json_line(row) + "\n" for row in harness_model.generations))
    _print_table(results)
    return 0


def _plain(summary: dict) -> dict:
    """lm-eval's results as plain JSON values (its own encoder for the rest; NaN becomes null when written)."""
    import json

    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(summary, default=handle_non_serializable))


def _print_table(results: dict) -> None:
    import sys

    from lm_eval.utils import make_table

    sys.stderr.write(make_table(results) + "\n")
