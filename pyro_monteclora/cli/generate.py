"""``pyro-monteclora generate``: answers from a causal-lm checkpoint with posterior sampling.

Each of ``--num-samples`` S adapters drawn from the guide decodes greedily; the command writes one
JSON line per prompt with the S generations, the answers extracted from them (``--answer-type``:
the final number for GSM8k-style questions, a normalised short answer, or the text), the majority
answer and the agreement rate (its confidence). S = 0 decodes once with the mean adapter.

Prompts come from ``--prompt`` (repeatable), or ``--prompt-file``: a .txt file (one prompt per
line) or a json/jsonl/csv/tsv/parquet file of records in the schemas of ``train --task-type
causal-lm``. When the records carry reference answers (``answers`` or ``answer``) the lines also
say whether the majority answer is right, and ``--metrics FILE.json`` gets exact match and how
well the agreement rate is calibrated (ECE, Brier, AUROC).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyro_monteclora.cli.options import (
    LOAD_ERRORS,
    UsageError,
    add_dtype_option,
    check_number,
    check_seed,
    load_error,
    resolve_device,
    resolve_model_path,
    resolve_precision,
)
from pyro_monteclora.cli.outputs import check_distinct_outputs, check_file_output, check_file_output_not_input

__all__ = ["add_generate_parser", "run_generate", "open_decoder", "GENERATE_SAMPLES"]

#: default S for a MonteCLoRA checkpoint (each sample is a full decoding pass)
GENERATE_SAMPLES = 5


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``generate`` sub-command and its options."""
    parser = subparsers.add_parser(
        "generate",
        help="generate answers with posterior sampling (JSON lines)",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_argument_group("model (one of)")
    source.add_argument("--checkpoint", default=None, help="a causal-lm run folder from `train`")
    source.add_argument(
        "--model",
        default=None,
        help="with --checkpoint: its base model; alone: a base model without "
        "adapters (folder, hub name or .gguf), for a baseline",
    )
    prompts = parser.add_argument_group("prompts (one of)")
    prompts.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    prompts.add_argument("--prompt-file", default=None, help=".txt (one per line) or a record file")
    prompts.add_argument("--prompt-column", default=None, help="the prompt field of a record file")
    parser.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help=f"S posterior samples per prompt (default: {GENERATE_SAMPLES} for "
        f"monteclora, else 0; 0 = greedy with the mean adapter)",
    )
    parser.add_argument(
        "--answer-type",
        default="short",
        choices=["short", "number", "text"],
        help="how answers are extracted and compared",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="prompt + generation tokens; longer prompts are cut from the left (default: the training run's, else 512)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    parser.add_argument(
        "--samples-per-pass", type=int, default=None, help="posterior samples decoded together (default: all S)"
    )
    parser.add_argument("--max-prompts", type=int, default=None, help="use the first N prompts")
    parser.add_argument("--seed", type=int, default=0, help="seeds the posterior samples")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_dtype_option(parser)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--output", default="-", help="JSONL file, or - for stdout")
    parser.add_argument("--metrics", default=None, help="JSON file for the summary (needs references)")
    parser.add_argument("--ece-bins", type=int, default=10, help="bins of the agreement rate's ECE")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --output/--metrics")
    parser.set_defaults(handler=run_generate)
    return parser


def _read_prompts(args):
    from pyro_monteclora.data.errors import DataError
    from pyro_monteclora.data.files import read_located_records, split_lines
    from pyro_monteclora.data.instructions import InstructionData, records_to_instructions

    if bool(args.prompt) == bool(args.prompt_file):
        raise UsageError("give prompts with --prompt TEXT (repeatable) or --prompt-file FILE, not both")
    if args.prompt:
        if not all(p.strip() for p in args.prompt):
            raise UsageError("--prompt: an empty prompt")
        return InstructionData(list(args.prompt), [None] * len(args.prompt), source="--prompt")
    path = Path(args.prompt_file)
    if path.suffix.lower() in ("", ".txt"):
        if not path.is_file():
            raise UsageError(f"--prompt-file {path}: no such file")
        try:
            lines = [line.strip() for line in split_lines(path.read_bytes().decode("utf-8-sig"))]
        except UnicodeDecodeError:
            raise UsageError(f"--prompt-file {path} is not UTF-8 text") from None
        lines = [line for line in lines if line]
        if not lines:
            raise UsageError(f"--prompt-file {path}: no prompt (one per line)")
        return InstructionData(lines, [None] * len(lines), source=str(path))
    try:
        return records_to_instructions(
            read_located_records(path), str(path), args.prompt_column, require_response=False
        )
    except DataError as error:
        raise UsageError(str(error)) from None


def open_decoder(args, device):
    """The model (a MonteCLoRA checkpoint, or a bare base model), its guide, tokenizer and record."""
    from pyro_monteclora.cli.checkpoints import load_for_inference, open_model

    if args.checkpoint is not None:
        directory, record, _ = load_for_inference(args, ("causal-lm",))
        model, guide, tokenizer = open_model(directory, record, args, device)
        return model, guide, tokenizer, record
    if args.model is None:
        raise UsageError("give --checkpoint (a causal-lm run) or --model (a base model alone)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pyro_monteclora.hf_defaults import ensure_pad_token
    from pyro_monteclora.nn.baselines import FullFineTuneModel

    path = resolve_model_path(args.model, "causal-lm")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=args.trust_remote_code)
    except Exception as error:  # see LOAD_ERRORS: a bad tokenizer.json raises a bare Exception
        raise UsageError(
            f"--model {args.model}: its tokenizer: {type(error).__name__}: {error}".splitlines()[0]
        ) from None
    try:
        network = AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=args.trust_remote_code, use_safetensors=True
        )
    except LOAD_ERRORS as error:
        raise UsageError(f"--model {args.model}: {load_error(error)}") from None
    ensure_pad_token(tokenizer)
    model = FullFineTuneModel(network).to(device)
    if args.torch_dtype != torch.float32:
        network.to(args.torch_dtype)  # nothing is trained here: the whole base in half precision
    return model, None, tokenizer, None


def run_generate(args, parser_defaults: dict) -> int:
    """Validate, generate with posterior sampling, write JSON lines (and metrics); returns 0."""
    _check_options(args)
    data = _read_prompts(args)
    if args.max_prompts:
        data = data.subset(args.max_prompts)
    has_references = all(ref is not None for ref in data.references)
    if args.metrics and not has_references:
        raise UsageError("--metrics needs a reference answer (answers or answer field) for every prompt")
    if args.checkpoint is None and args.num_samples:
        raise UsageError("--num-samples > 0 needs a MonteCLoRA --checkpoint (a base model has no posterior)")
    device = resolve_device(args.device)
    args.torch_dtype = resolve_precision(args.dtype, device)
    model, guide, tokenizer, record = open_decoder(args, device)

    from pyro_monteclora.cli.checkpoints import default_samples

    num_samples = args.num_samples
    if num_samples is None:
        num_samples = GENERATE_SAMPLES if record is not None and default_samples(record, None) else 0
    max_length = _max_length(args, model, record)
    results = _generate(args, model, guide, tokenizer, data, num_samples, max_length, has_references, device)
    _write_generations(args, results)
    if has_references:
        _report_exact_match(args, results, num_samples)
    return 0


def _check_options(args) -> None:
    """The numbers, and the ``--output`` and ``--metrics`` files: writable, not replacing one
    another or an input without ``--overwrite``."""
    for name, value, low in (
        ("--num-samples", args.num_samples, 0),
        ("--max-new-tokens", args.max_new_tokens, 1),
        ("--batch-size", args.batch_size, 1),
        ("--samples-per-pass", args.samples_per_pass, 1),
        ("--max-prompts", args.max_prompts, 1),
        ("--ece-bins", args.ece_bins, 1),
    ):
        check_number(name, value, minimum=low, integer=True)
    check_seed("--seed", args.seed)
    check_number("--max-length", args.max_length, minimum=args.max_new_tokens + 1, integer=True)
    if args.metrics == "-":
        raise UsageError("--metrics - : give a file name (the generations go to standard output)")
    check_file_output(args.output, "--output", args.overwrite)
    check_file_output(args.metrics, "--metrics", args.overwrite)
    check_distinct_outputs([("--output", args.output), ("--metrics", args.metrics)])
    from pyro_monteclora.cli.checkpoints import find_checkpoint

    # the saved-model folder, not the run folder around it (where earlier outputs may live)
    saved = find_checkpoint(args.checkpoint) if args.checkpoint is not None else None
    for option in ("--output", "--metrics"):
        check_file_output_not_input(
            getattr(args, option[2:]),
            option,
            [("--prompt-file", args.prompt_file), ("--checkpoint", saved), ("--model", args.model)],
        )


def _max_length(args, model, record) -> int:
    """Prompt + generation tokens: ``--max-length``, else the training run's (at least
    ``--max-new-tokens`` + 64), capped at the model's positions; a given one past them is refused."""
    metadata = (record or {}).get("metadata", {})
    max_length = args.max_length or max(metadata.get("max_length", 512), args.max_new_tokens + 64)
    limit = getattr(model.network.config, "max_position_embeddings", None)
    if limit and max_length > limit:
        if args.max_length or args.max_new_tokens >= limit:
            raise UsageError(
                f"--max-length {max_length} (prompt + --max-new-tokens) is more than the model's {limit} positions"
            )
        max_length = limit
    return max_length


def _generate(args, model, guide, tokenizer, data, num_samples: int, max_length: int, has_references: bool, device):
    """The prompts' generations, seeded with ``--seed``; warnings (prompts cut) as plain lines on stderr."""
    import warnings

    import pyro

    from pyro_monteclora.evaluation.generation import generate_answers
    from pyro_monteclora.nn.precision import autocast

    pyro.set_rng_seed(args.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with autocast(device, args.torch_dtype):
            results = generate_answers(
                model,
                guide,
                tokenizer,
                data.prompts,
                num_samples,
                inputs=data.inputs,
                references=data.references if has_references else None,
                answer_type=args.answer_type,
                max_new_tokens=args.max_new_tokens,
                max_length=max_length,
                batch_size=args.batch_size,
                samples_per_pass=args.samples_per_pass,
                progress=True,
            )
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    return results


def _write_generations(args, results) -> None:
    """One JSON line per prompt, to ``--output`` (atomically) or standard output."""
    from pyro_monteclora.storage.atomic import atomic_write_text, json_line

    lines = "".join(json_line(result.to_dict()) + "\n" for result in results)
    if args.output == "-":
        sys.stdout.write(lines)
        sys.stdout.flush()
    else:
        atomic_write_text(args.output, lines)


def _report_exact_match(args, results, num_samples: int) -> None:
    """Exact match and the agreement rate's calibration: one line on stderr and, with
    ``--metrics``, a JSON file with the reliability curve."""
    import torch

    from pyro_monteclora.evaluation.metrics import confidence_metrics, confidence_reliability_curve
    from pyro_monteclora.storage.atomic import atomic_write_json

    confidence = torch.tensor([r.agreement for r in results])
    correct = torch.tensor([bool(r.correct) for r in results])
    summary = confidence_metrics(confidence, correct, args.ece_bins)
    summary = {"exact_match": summary.pop("accuracy"), **summary}
    print(" ".join(f"{k}={v:.4f}" for k, v in summary.items()), file=sys.stderr, flush=True)
    if args.metrics:
        atomic_write_json(
            args.metrics,
            {
                "units": "exact_match, mean_confidence (agreement rate), ece, auroc are fractions; brier is in [0, 1]",
                "metrics": summary,
                "num_samples": results[0].num_samples if results else num_samples,
                "answer_type": args.answer_type,
                "prompts": len(results),
                "seed": args.seed,
                "max_new_tokens": args.max_new_tokens,
                "checkpoint": args.checkpoint,
                "model": args.model,
                "reliability": confidence_reliability_curve(confidence, correct, args.ece_bins),
            },
        )
