"""``pyro-monteclora evaluate`` for causal-lm checkpoints.

* ``--multiple-choice``: every option of each question is scored by its log-likelihood under
  :math:`S` posterior samples (:func:`~pyro_monteclora.evaluation.language_model.predict_multiple_choice`);
  writes ``metrics.json`` (accuracy, NLL, ECE, Brier, error AUROC), ``reliability.png`` and
  ``predictions.jsonl``.
* otherwise: the posterior predictive's response-token NLL and perplexity on (prompt, response)
  data (``metrics.json``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_monteclora.cli.options import UsageError

__all__ = ["run_evaluate_causal_lm", "CAUSAL_LM_BATCH_SIZE"]

#: default sequences per batch for a decoder (its logits span the whole vocabulary)
CAUSAL_LM_BATCH_SIZE = 16


def _choice_rows(data, output):
    for index in range(len(data)):
        choices = data.choices[index]
        probs = output.probs[index, : len(choices)].tolist()
        predicted = max(range(len(probs)), key=probs.__getitem__)
        row = {
            "index": index,
            "question": data.questions[index],
            "choices": choices,
            "predicted": predicted,
            "probabilities": probs,
            "predictive_entropy": output.predictive_entropy[index].item(),
            "mutual_information": output.mutual_information[index].item(),
        }
        if data.answers is not None:
            row.update(answer=data.answers[index], correct=predicted == data.answers[index])
        yield row


def _exact_match(run, metrics):
    """A generation task's exact match (GSM8k: the final number) of the majority answer over the
    posterior draws, with the calibration of its agreement rate; adds them to ``metrics``."""
    import torch

    from pyro_monteclora.evaluation.generation import generate_answers
    from pyro_monteclora.evaluation.metrics import confidence_metrics
    from pyro_monteclora.nn.precision import autocast

    args, data = run.args, run.data
    references = [refs or [response] for refs, response in zip(data.references, data.responses)]
    with autocast(run.device, args.torch_dtype):
        results = generate_answers(
            run.model,
            run.guide,
            run.tokenizer,
            data.prompts,
            run.num_samples,
            inputs=data.inputs,
            references=references,
            answer_type="number",
            max_new_tokens=args.max_new_tokens,
            max_length=run.max_length + args.max_new_tokens,
            batch_size=max(1, run.batch_size // max(1, run.num_samples)),
            progress=True,
        )
    correct = torch.tensor([bool(r.correct) for r in results])
    agreement = torch.tensor([r.agreement for r in results], dtype=torch.float64)
    scored = confidence_metrics(agreement, correct, args.ece_bins)
    metrics = dict(metrics)
    metrics.update({"exact_match" if k == "accuracy" else f"agreement_{k}": v for k, v in scored.items()})
    return metrics, results


@dataclass
class _Evaluation:
    """A causal-lm evaluation once its inputs are checked and its model is open: what
    :func:`_score_responses` and :func:`_score_choices` need."""

    args: Any
    directory: Path
    output: Path
    device: Any
    data: Any
    data_spec: dict
    task: Any
    model: Any
    guide: Any
    tokenizer: Any
    num_samples: int
    max_length: int
    batch_size: int
    method: str


def run_evaluate_causal_lm(args, directory, record, device, output) -> int:
    """Validate the data, load the checkpoint, evaluate and write the results; returns 0."""
    import pyro

    from pyro_monteclora.cli.checkpoints import check_evaluation_inputs, default_samples, open_model

    metadata = record.get("metadata", {})
    data, data_spec, task = _evaluation_data(args, metadata)
    check_evaluation_inputs(args, output, directory, record, data_spec)
    model, guide, tokenizer = open_model(directory, record, args, device)
    num_samples = default_samples(record, args.num_samples)
    max_length = args.max_length or metadata.get("max_length", 256)
    limit = getattr(model.network.config, "max_position_embeddings", None)
    if limit and max_length > limit:
        raise UsageError(f"--max-length {max_length} is more than the model's {limit} positions")
    run = _Evaluation(
        args=args,
        directory=directory,
        output=output,
        device=device,
        data=data,
        data_spec=data_spec,
        task=task,
        model=model,
        guide=guide,
        tokenizer=tokenizer,
        num_samples=num_samples,
        max_length=max_length,
        batch_size=args.batch_size or CAUSAL_LM_BATCH_SIZE,
        method=metadata.get("method", record["model_class"]),
    )
    pyro.set_rng_seed(args.seed)
    started = time.perf_counter()
    if args.multiple_choice:
        _score_choices(run, started)
    else:
        _score_responses(run, started)
    return 0


def _evaluation_data(args, metadata: dict):
    """The split to evaluate (its first ``--max-samples``): multiple-choice questions (with
    ``--multiple-choice`` or a commonsense task) or (prompt, response) pairs, from the command
    line's data or the recorded data.

    :returns: ``(data, data specification, task or None)``.
    """
    from pyro_monteclora.cli.options import check_number
    from pyro_monteclora.cli.sources import evaluation_split, task_of

    if args.split not in (None, "test") and args.test_file:
        raise UsageError("--split names a split of the recorded data or --dataset; with --test-file leave it out")
    check_number("--max-new-tokens", args.max_new_tokens, minimum=1, integer=True)
    recorded = metadata.get("data") or {}
    args.split = evaluation_split(args, recorded)
    task = task_of(args, recorded)
    if task is not None and task.kind == "classification":
        raise UsageError(f"--task {task.name} is a classification task; {args.checkpoint} holds a causal LM")
    if task is not None and task.kind == "multiple-choice":
        args.multiple_choice = True  # a commonsense task is scored over its options
    if args.multiple_choice:
        from pyro_monteclora.cli.lm_data import load_multiple_choice_split

        commonsense_record = recorded if task is not None and task.kind == "multiple-choice" else None
        data, data_spec = load_multiple_choice_split(args, args.split, recorded=commonsense_record)
        task = task_of(args, data_spec)
    else:
        from pyro_monteclora.cli.lm_data import resolve_instruction_data

        if args.length_normalize:
            raise UsageError("--length-normalize applies to --multiple-choice only")
        splits, data_spec = resolve_instruction_data(args, (args.split,), recorded=metadata.get("data"))
        data = splits[args.split]
    if args.max_samples:
        data = data.subset(args.max_samples)
    return data, data_spec, task


def _score_responses(run: _Evaluation, started: float) -> None:
    """The responses' token NLL and perplexity under the posterior predictive and, for a generation
    task, the exact match of generated answers; writes ``metrics.json`` (and ``predictions.jsonl``
    of the generations)."""
    from pyro_monteclora.data.causal_lm import causal_lm_loader
    from pyro_monteclora.evaluation.language_model import language_model_metrics
    from pyro_monteclora.nn.precision import autocast

    args, task = run.args, run.task
    loader = causal_lm_loader(run.data, run.tokenizer, run.batch_size, run.max_length)
    with autocast(run.device, args.torch_dtype):
        metrics = language_model_metrics(run.model, run.guide, loader, run.num_samples)
    generated = None
    if task is not None and task.kind == "generation":
        metrics, generated = _exact_match(run, metrics)
    _write_response_results(run, metrics, generated, started)
    print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
    print(f"wrote {run.output}/metrics.json", file=sys.stderr)


def _write_response_results(run: _Evaluation, metrics: dict, generated, started: float) -> None:
    """``metrics.json`` and, with generations, ``predictions.jsonl``: together or not at all."""
    from pyro_monteclora.storage.atomic import atomic_directory, atomic_write_json, atomic_write_text, json_line

    args, task = run.args, run.task
    with atomic_directory(run.output) as staging:
        if generated is not None:
            atomic_write_text(staging / "predictions.jsonl", "".join(json_line(r.to_dict()) + "\n" for r in generated))
        atomic_write_json(
            staging / "metrics.json",
            {
                "units": "token_nll is in nats per response token; exact_match and agreement are fractions",
                "metrics": metrics,
                "task": task.name if task else None,
                "task_metric": task.metric if task else "token_nll",
                "method": run.method,
                "num_samples": run.num_samples,
                "examples": len(run.data),
                "split": args.split,
                "seed": args.seed,
                "checkpoint": str(run.directory),
                "data": run.data_spec,
                "eval_seconds": time.perf_counter() - started,
            },
        )


def _score_choices(run: _Evaluation, started: float) -> None:
    """The posterior predictive over each question's options; writes ``metrics.json``,
    ``reliability.png`` and ``predictions.jsonl``."""
    from pyro_monteclora.cli.reports import predictive_metrics, write_results
    from pyro_monteclora.data.multiple_choice import multiple_choice_loader
    from pyro_monteclora.evaluation.language_model import predict_multiple_choice
    from pyro_monteclora.nn.precision import autocast

    args, data, task = run.args, run.data, run.task
    widest = max(len(choices) for choices in data.choices)
    loader = multiple_choice_loader(data, run.tokenizer, max(1, run.batch_size // widest), run.max_length)
    with autocast(run.device, args.torch_dtype):
        result = predict_multiple_choice(
            run.model, run.guide, loader, run.num_samples, progress=True, length_normalize=args.length_normalize
        )
    seconds = time.perf_counter() - started
    if result.labels is None:
        raise UsageError("--multiple-choice: the questions have no answer field to score against")
    metrics, curve = predictive_metrics(result, args.ece_bins)
    write_results(
        run.output,
        _choice_rows(data, result),
        curve,
        f"{run.method} (S={run.num_samples})",
        f"{len(data):,} questions",
        {
            "metrics": metrics,
            "method": run.method,
            "num_samples": run.num_samples,
            "ece_bins": args.ece_bins,
            "examples": len(data),
            "split": args.split,
            "task": task.name if task else None,
            "task_metric": task.metric if task else "accuracy",
            "length_normalize": args.length_normalize,
            "seed": args.seed,
            "checkpoint": str(run.directory),
            "data": run.data_spec,
            "eval_seconds": seconds,
        },
    )
