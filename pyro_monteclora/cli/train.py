"""``pyro-monteclora train``: fine-tune with MonteCLoRA, LoRA or full fine-tuning, checkpointing
every epoch.

``--task-type sequence-classification`` (the default) puts a classifier head on ``--model`` and
reads labelled texts; ``--task-type causal-lm`` instruction-tunes a decoder on prompt/response
records (:mod:`pyro_monteclora.data.instructions`), with the loss on the response tokens only.

The output folder holds ``run.json`` (the arguments, the data and the versions), ``checkpoint/``
(the model after the last finished epoch: ``monteclora_config.json`` + ``model.safetensors``, and
the optimiser, schedule and random state in ``training_state.*``; replaced atomically each epoch)
and, once training ends, ``train_summary.json``. ``--resume`` continues from ``checkpoint/`` with
the arguments in ``run.json`` and ends with exactly the parameters of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from pyro_monteclora.cli.options import (
    LOAD_ERRORS,
    UsageError,
    adapter_config,
    add_adapter_options,
    add_data_options,
    add_model_options,
    check_adapter_options,
    check_values,
    load_error,
    option_message,
    resolve_device,
    resolve_model_path,
    resolve_precision,
)
from pyro_monteclora.cli.outputs import (
    check_inputs_outside,
    check_output_folder,
    check_replaceable,
    lock_output_folder,
    run_inputs,
)
from pyro_monteclora.cli.quantize import (
    check_quantize_options,
    check_resumed_compute_dtype,
    load_options,
    resolve_quantization,
    unquantized_fresh_modules,
)
from pyro_monteclora.cli.runs import (
    CALIBRATIONS,
    CHECKPOINT_DIR,
    RUN_CHECKS,
    RUN_FILE,
    RUN_OPTIONS,
    TASK_TYPES,
    fit_parameters,
    latest_checkpoint,
    option_name,
    read_resume_state,
    read_run,
)
from pyro_monteclora.cli.sources import resolve_data
from pyro_monteclora.quantization import QUANTIZE_CHOICES

__all__ = ["add_train_parser", "run_train", "TrainingFault", "TRAIN_DEFAULTS"]


class TrainingFault(Exception):
    """Training stopped on a numerical fault (exit status 1, one line naming the step and the
    last good checkpoint)."""


TRAIN_DEFAULTS = {
    "learning_rate": 1e-3,
    "full_learning_rate": 5e-5,
    "batch_size": 16,
    "epochs": 3,
    "max_length": 128,
    "causal_lm_max_length": 256,
}


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command and its options."""
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a model (MonteCLoRA, LoRA or full) and checkpoint every epoch",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(parser)
    parser.add_argument(
        "--quantize",
        default=None,
        choices=QUANTIZE_CHOICES,
        help="load the frozen base quantised (bitsandbytes: 4bit is NF4 with double quantisation, 8bit "
        "LLM.int8); the adapters, head, guide and sampler stay fp32, the head is never quantised, "
        "--dtype sets the 4-bit compute dtype; needs the quantize extra",
    )
    parser.add_argument(
        "--task-type",
        default="sequence-classification",
        choices=TASK_TYPES,
        help="sequence-classification (a classifier head on --model) or causal-lm "
        "(instruction tuning of a decoder on prompt/response records; the loss "
        "is on the response tokens only)",
    )
    add_data_options(parser, ("train", "validation", "test"))
    add_adapter_options(parser)
    group = parser.add_argument_group("training")
    group.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="peak AdamW learning rate (default: 1e-3 for the adapters, 5e-5 for full fine-tuning)",
    )
    group.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS["batch_size"])
    group.add_argument("--epochs", type=int, default=TRAIN_DEFAULTS["epochs"])
    group.add_argument("--weight-decay", type=float, default=0.0)
    group.add_argument("--warmup-ratio", type=float, default=0.1)
    group.add_argument("--max-train-samples", type=int, default=None, help="use the first N training examples")
    group.add_argument("--seed", type=int, default=0, help="seeds the inits, SVI and data order")
    group.add_argument(
        "--eval-num-samples",
        type=int,
        default=0,
        help="posterior samples for the per-epoch validation (0: mean adapter)",
    )
    group.add_argument("--no-validation", action="store_true", help="skip the per-epoch validation")
    group.add_argument(
        "--ensemble-size",
        type=int,
        default=None,
        help="members of --method deep-ensemble (seeded runs; default 5) or checkpoint-ensemble (the last K "
        "epochs; default 3)",
    )
    group.add_argument(
        "--calibrate",
        default="none",
        choices=CALIBRATIONS,
        help="temperature: once training ends, fit a temperature on the validation split with the method's "
        "own predictive; evaluate and predict apply it",
    )
    group.add_argument(
        "--skip-nonfinite", action="store_true", help="skip a step whose loss is NaN or infinite instead of stopping"
    )
    group.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute the base's activations in the backward pass (less memory)",
    )
    group = parser.add_argument_group("output")
    group.add_argument("--output", required=True, help="run folder")
    group.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    group.add_argument("--resume", action="store_true", help="continue the run in --output")
    parser.set_defaults(handler=run_train)
    return parser


def _check_arguments(args) -> None:
    if args.task is not None:  # a decoder task (piqa, gsm8k, ...) implies --task-type causal-lm
        from pyro_monteclora.data.tasks import get_task

        needed = get_task(args.task).task_type
        if needed == "causal-lm" and args.task_type == "sequence-classification":
            args.task_type = needed
        elif needed != args.task_type:
            raise UsageError(
                f"--task {args.task} is a classification task; leave out --task-type "
                f"causal-lm (or use a decoder task: piqa, siqa, winogrande, arc-e, "
                f"arc-c, obqa, gsm8k)"
            )
    if args.task_type == "causal-lm" and args.calibrate != "none":
        raise UsageError("--calibrate temperature is for sequence classification, not causal-lm")
    check_values(vars(args), RUN_CHECKS, option_name)
    check_quantize_options(args)
    if not args.resume:  # a resumed run keeps its recorded (validated) options; changes are refused
        check_adapter_options(args)


def _prepare_output(args, parser_defaults: dict):
    """Check the output folder against --overwrite/--resume.

    :returns: ``(arguments, recorded data specification or None)``; with --resume both are the
        saved run's.
    """
    output = check_output_folder(args)
    if args.resume:
        run_file = output / RUN_FILE
        if not run_file.is_file():
            raise UsageError(f"--resume: {output} holds no run ({RUN_FILE} is missing)")
        saved, recorded, processes = read_run(run_file)
        from pyro_monteclora.distributed import launched_world_size

        if launched_world_size() != processes:  # the step count and data shards depend on it
            raise UsageError(
                f"--resume: the run was trained by {processes} process(es); resume it "
                f"with the same number (this launch has {launched_world_size()})"
            )
        changed = [
            name
            for name in RUN_OPTIONS
            if name != "model"
            and getattr(args, name) != parser_defaults.get(name)
            and getattr(args, name) != saved.get(name)
        ]
        if changed:
            raise UsageError(
                "--resume continues the saved run and cannot change "
                + ", ".join("--" + name.replace("_", "-") for name in changed)
            )
        return saved, recorded
    check_replaceable(output, args.overwrite, RUN_FILE, "pyro-monteclora run")
    check_inputs_outside(output, run_inputs(args))
    return {name: getattr(args, name) for name in RUN_OPTIONS}, None


def build_model(method: str, network, arguments: dict, fresh_modules=()):
    """The Pyro model and guide of ``method`` over ``network`` (a fresh HF model).

    ``fresh_modules`` (newly initialised by ``from_pretrained``) are trained as point estimates
    with the classification head, so nothing random and frozen stays in the model.
    """
    from pyro_monteclora import EmptyGuide, MonteCLoRAGuide, MonteCLoRAModel
    from pyro_monteclora.nn.baselines import FullFineTuneModel

    if method == "full":
        model = FullFineTuneModel(network)
        return model, EmptyGuide(model)
    config = adapter_config(arguments, network, fresh_modules)
    check_rank(network, config)
    try:
        if method == "blob":
            from pyro_monteclora.infer.mean_field import build_mean_field

            return build_mean_field(network, config)
        model = MonteCLoRAModel(network, config, adapter_mode="sample" if method == "monteclora" else "mean")
        return model, (MonteCLoRAGuide(model) if method == "monteclora" else EmptyGuide(model))
    except ValueError as error:  # targets that match no layer; a prior this guide does not cover
        raise UsageError(option_message(error)) from None


def check_rank(network, config) -> None:
    """Refuse a rank above ``min(d_in, d_out)`` of a layer the adapters would go into, before
    anything is allocated: a low-rank update wider than its layer has no use, and its prior's
    ``rank x rank`` factors are what run out of memory. (``network`` may be on the meta device.)"""
    from pyro_monteclora.nn.models import _is_adaptable
    from pyro_monteclora.quantization import linear_shape

    widths = [
        (min(linear_shape(module)), path, linear_shape(module))
        for path, module in network.named_modules()
        if path and _is_adaptable(module) and config.matches_target(path) and not config.matches_saved(path)
    ]
    if widths and config.rank > min(widths)[0]:
        width, path, shape = min(widths)
        raise UsageError(
            f"--rank must be at most {width}, the smaller side of the adapted layer {path} "
            f"({shape[0]} x {shape[1]}), got {config.rank}"
        )


def _load_network(
    model_path: str, arguments: dict, label_names, trust_remote_code: bool, quantization=None, device=None
):
    """The tokenizer, the HF network (a classifier with ``len(label_names)`` labels, or a causal LM)
    and the modules ``from_pretrained`` initialised afresh; loading errors become exit 2. With
    ``quantization`` the base loads quantised straight onto ``device``, its heads and
    ``--modules-to-save`` in full precision."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from pyro_monteclora.hf_defaults import prepare_base

    causal = arguments.get("task_type") == "causal-lm"
    options = {"trust_remote_code": trust_remote_code, "use_safetensors": True, "output_loading_info": True}
    if quantization is not None:  # --modules-to-save stays in full precision
        options.update(load_options(quantization, device, arguments.get("modules_to_save")))
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except Exception as error:  # see LOAD_ERRORS: a bad tokenizer.json raises a bare Exception
        raise UsageError(
            f"--model {arguments['model'] or model_path}: its tokenizer: {type(error).__name__}: {error}".splitlines()[
                0
            ]
        ) from None

    def load(options):
        try:
            if causal:
                return AutoModelForCausalLM.from_pretrained(model_path, **options)
            return AutoModelForSequenceClassification.from_pretrained(
                model_path, num_labels=len(label_names), **options
            )
        except LOAD_ERRORS as error:
            raise UsageError(f"--model {arguments['model'] or model_path}: {load_error(error)}") from None

    network, loading = load(options)
    fresh = unquantized_fresh_modules(network, loading) if quantization is not None else []
    if fresh:  # modules the file lacks are trained with the head: load again with them unquantised
        network, loading = load(
            dict(options, **load_options(quantization, device, arguments.get("modules_to_save"), fresh))
        )
    # weights the checkpoint lacks are newly initialised: train (and save) them with the head
    fresh_modules = prepare_base(network, tokenizer, None if causal else label_names, loading)
    return tokenizer, network, fresh_modules


def run_train(args, parser_defaults: dict) -> int:
    """Validate everything, then train (or resume) and checkpoint every epoch; returns 0."""
    _check_arguments(args)
    arguments, recorded_data = _prepare_output(args, parser_defaults)
    output = Path(args.output)
    if arguments["method"] == "deep-ensemble":
        return _train_deep_ensemble(args, parser_defaults, arguments, recorded_data)
    checkpoint = latest_checkpoint(output) if args.resume else None
    if args.resume and checkpoint is None:
        raise UsageError(f"--resume: {output} has no finished epoch to resume from; start it again with --overwrite")
    resume_state = read_resume_state(checkpoint, arguments, output) if checkpoint is not None else None
    device = resolve_device(args.device)
    torch_dtype = resolve_precision(args.dtype, device)
    quantization = resolve_quantization(arguments, device, torch_dtype)
    causal = arguments.get("task_type", "sequence-classification") == "causal-lm"
    splits, data_spec = _training_data(args, arguments, recorded_data, causal)
    from pyro_monteclora.cli.baselines import check_method_options
    from pyro_monteclora.distributed import launched_world_size

    check_method_options(arguments, causal, splits, launched_world_size(), _evaluated_split(splits))
    model_path = resolve_model_path(arguments["model"], arguments.get("task_type", "sequence-classification"))
    max_length = arguments["max_length"] or TRAIN_DEFAULTS["causal_lm_max_length" if causal else "max_length"]
    learning_rate = (
        arguments["learning_rate"]
        or TRAIN_DEFAULTS["full_learning_rate" if arguments["method"] == "full" else "learning_rate"]
    )
    job = _load_job(
        args,
        arguments,
        checkpoint,
        _TrainingJob(
            args=args,
            arguments=arguments,
            splits=splits,
            data_spec=data_spec,
            model_path=model_path,
            output=output,
            causal=causal,
            max_length=max_length,
            learning_rate=learning_rate,
            device=device,
            torch_dtype=torch_dtype,
            quantization=quantization,
            resume_state=resume_state,
        ),
    )
    _check_world_size(splits, arguments)
    return _run_locked(job)


def _train_deep_ensemble(args, parser_defaults: dict, arguments: dict, recorded_data) -> int:
    """Validate a ``--method deep-ensemble`` run, then train its members
    (:func:`~pyro_monteclora.cli.deep_ensemble.train_deep_ensemble`)."""
    from pyro_monteclora.cli.baselines import check_method_options
    from pyro_monteclora.cli.deep_ensemble import train_deep_ensemble
    from pyro_monteclora.distributed import launched_world_size

    causal = arguments.get("task_type", "sequence-classification") == "causal-lm"
    splits, data_spec = _training_data(args, arguments, recorded_data, causal)
    check_method_options(arguments, causal, splits, launched_world_size(), _evaluated_split(splits))
    device = resolve_device(args.device)
    resolve_quantization(arguments, device, resolve_precision(args.dtype, device))  # before any member starts
    job = _TrainingJob(
        args=args,
        arguments=arguments,
        splits=splits,
        data_spec=data_spec,
        model_path=resolve_model_path(arguments["model"], "sequence-classification"),
        output=Path(args.output),
        causal=False,
        max_length=arguments["max_length"] or TRAIN_DEFAULTS["max_length"],
        learning_rate=arguments["learning_rate"] or TRAIN_DEFAULTS["learning_rate"],
        device=device,
        torch_dtype=resolve_precision(args.dtype, device),
    )
    return train_deep_ensemble(job, parser_defaults, run_train, _write_run_record)


def _evaluated_split(splits: dict) -> str:
    """The split ``evaluate`` scores by default: the test split when the data has a labelled one."""
    test = splits.get("test")
    labelled = test is not None and getattr(test, "labels", None) is not None and len(test) > 0
    return "test" if labelled else "validation"


def _training_data(args, arguments: dict, recorded_data: Optional[dict], causal: bool):
    """The train, validation and test splits (the training set cut to ``--max-train-samples``):
    from the command line, or with --resume exactly as recorded (absolute paths).

    :returns: ``(splits, data specification)``.
    """
    data_args = argparse.Namespace(**{**vars(args), **arguments})
    if recorded_data is not None:  # resume: the data exactly as recorded (absolute paths)
        for name in ("task", "train_file", "validation_file", "test_file", "dataset", "text_column", "label_column"):
            setattr(data_args, name, None)
    if causal:
        from pyro_monteclora.cli.lm_data import resolve_instruction_data

        splits, data_spec = resolve_instruction_data(data_args, ("train", "validation", "test"), recorded=recorded_data)
    else:
        splits, data_spec = resolve_data(
            data_args,
            ("train", "validation", "test"),
            recorded=recorded_data,
            optional_unlabelled=("test",),
            training=True,
        )
    if arguments["max_train_samples"]:
        splits["train"] = splits["train"].subset(arguments["max_train_samples"])
    return splits, data_spec


def _run_locked(job: _TrainingJob) -> int:
    """Train once everything is validated: rank 0 holds the output folder's lock until the command
    ends, and a launched process group is started, then torn down when every rank is done."""
    from pyro_monteclora.distributed import init_distributed, launched_rank

    # everything is validated: from here on a process group may start and rank 0 writes the output,
    # holding its lock until the command ends
    args, output = job.args, job.output
    lock = lock_output_folder(output, args, RUN_FILE, "pyro-monteclora run") if launched_rank() == 0 else None
    distributed = finished = False
    try:
        distributed = init_distributed(job.device)
        status = _train(job)
        finished = True
        return status
    finally:
        if distributed:
            import torch.distributed as dist

            if finished:  # no rank tears the group down while another still receives
                dist.barrier()
            dist.destroy_process_group()
        if lock is not None:
            lock.release()


@dataclass
class _TrainingJob:
    """What :func:`run_train` has resolved and checked, for :func:`_train`: the run's arguments,
    data and settings, then (from :func:`_load_job`) the tokenizer, network, model, guide and, with
    --resume, the saved training state."""

    args: argparse.Namespace
    arguments: dict
    splits: dict
    data_spec: dict
    model_path: str
    output: Path
    causal: bool
    max_length: int
    learning_rate: float
    device: Any
    torch_dtype: Any
    quantization: Any = None
    tokenizer: Any = None
    network: Any = None
    model: Any = None
    guide: Any = None
    resume_state: Any = None


def _load_job(args, arguments: dict, checkpoint: Optional[Path], job: _TrainingJob) -> _TrainingJob:
    """Load the network and build (or, with --resume, load) the model and guide into ``job``; cast
    the frozen base to --dtype and turn on gradient checkpointing. Problems become exit 2."""
    import pyro
    import torch

    from pyro_monteclora.storage.checkpoint import CheckpointError, load_pretrained
    from pyro_monteclora.training.state import STATE_JSON, check_state_fits

    pyro.set_rng_seed(arguments["seed"])  # the same head and adapter initialisation for every method
    if checkpoint is not None:
        check_resumed_compute_dtype(checkpoint, job.quantization)
    tokenizer, network, fresh_modules = _load_network(
        job.model_path,
        arguments,
        job.data_spec.get("label_names"),
        args.trust_remote_code,
        quantization=job.quantization,
        device=job.device,
    )
    limit = getattr(network.config, "max_position_embeddings", None)
    if limit and job.max_length > limit:
        raise UsageError(f"--max-length {job.max_length} is more than the model's {limit} positions")
    if checkpoint is not None:  # job.resume_state was read and checked field by field already
        try:
            model, guide = load_pretrained(checkpoint, base_model=network)
            check_state_fits(job.resume_state, fit_parameters(model, guide), checkpoint / STATE_JSON)
        except CheckpointError as error:
            raise UsageError(f"--resume: {error}") from None
    else:
        model, guide = build_model(arguments["method"], network, arguments, fresh_modules)
    if job.torch_dtype != torch.float32:
        from pyro_monteclora.nn.precision import cast_frozen

        cast_frozen(model.network, job.torch_dtype)
    if args.gradient_checkpointing:
        try:
            model.enable_gradient_checkpointing()
        except ValueError as error:
            raise UsageError(f"--gradient-checkpointing: {error}") from None
    return replace(job, tokenizer=tokenizer, network=network, model=model, guide=guide)


def _check_world_size(splits: dict, arguments: dict) -> None:
    """Every launched process needs at least one training (and validation) example."""
    from pyro_monteclora.distributed import launched_world_size

    world_size = launched_world_size()
    if world_size > len(splits["train"]):
        raise UsageError(
            f"WORLD_SIZE={world_size} processes for {len(splits['train'])} training examples: "
            f"every process needs at least one; launch at most {len(splits['train'])}"
        )
    if "validation" in splits and not arguments["no_validation"] and world_size > len(splits["validation"]):
        raise UsageError(
            f"WORLD_SIZE={world_size} processes for {len(splits['validation'])} validation "
            f"examples: pass --no-validation or a larger validation set"
        )


def _train(job: _TrainingJob) -> int:
    """Build the (sharded) loaders, write the run folder on rank 0, train, summarise."""
    from pyro_monteclora.distributed import barrier, is_main_process

    arguments = job.arguments
    train_loader, evaluate = _loaders(job)
    steps = arguments["epochs"] * len(train_loader)
    if job.resume_state is not None and job.resume_state.step > steps:
        raise UsageError(
            f"--resume: the checkpoint's training_state.json is at step {job.resume_state.step}, "
            f"past this run's {steps} steps"
        )
    _write_run_record(job)
    barrier()  # the run folder exists before any rank trains
    if is_main_process():
        _announce(job)
    started = time.perf_counter()
    result = _fit(job, train_loader, evaluate)
    if is_main_process():
        from pyro_monteclora.cli.baselines import finish_training

        finish_training(job, job.output / CHECKPOINT_DIR)
        _write_summary(job, result, time.perf_counter() - started)
    return 0


def _announce(job: _TrainingJob) -> None:
    """One line on stderr: the method, the network, the data, the trainable parameters, where."""
    import torch

    labels_note = "" if job.causal else f"{len(job.data_spec.get('label_names'))} labels, "
    world_note = f", {torch.distributed.get_world_size()} processes" if torch.distributed.is_initialized() else ""
    quantization = job.quantization
    quantized_note = f", base quantised {quantization.name} ({quantization.quant_type})" if quantization else ""
    print(
        f"{job.arguments['method']}: {type(job.network).__name__} from {job.model_path}, "
        f"{len(job.splits['train']):,} training examples, {labels_note}"
        f"{job.model.num_trainable_parameters():,} trainable parameters, device {job.device}{world_note}"
        f"{quantized_note}",
        file=sys.stderr,
        flush=True,
    )


def _fit(job: _TrainingJob, train_loader, evaluate):
    """:func:`~pyro_monteclora.fit` with the run's settings, a checkpoint after every epoch; a
    non-finite loss becomes a :class:`TrainingFault` naming the last good checkpoint."""
    from pyro_monteclora.training.svi import TrainConfig, fit

    arguments = job.arguments
    config = TrainConfig(
        epochs=arguments["epochs"],
        learning_rate=job.learning_rate,
        weight_decay=arguments["weight_decay"],
        warmup_ratio=arguments["warmup_ratio"],
        seed=arguments["seed"],
        desc=arguments["method"],
        skip_nonfinite=job.args.skip_nonfinite,
        dtype=job.torch_dtype,
    )
    try:
        return fit(
            job.model,
            job.guide,
            train_loader,
            config,
            evaluate=evaluate,
            callbacks=[_checkpointer(job)],
            resume=job.resume_state,
            device=job.device,
        )
    except FloatingPointError as error:
        last = latest_checkpoint(job.output)
        where = (
            f"the last good checkpoint is {last} (epoch "
            f"{json.loads((last / 'training_state.json').read_text())['epoch']}); "
            f"continue from it with --resume --skip-nonfinite"
            if last
            else "no epoch finished, so there is no checkpoint yet"
        )
        raise TrainingFault(f"{error}; {where}") from None


def _loaders(job: _TrainingJob):
    """The training loader (this rank's shard) and the per-epoch evaluator (``None`` with
    --no-validation or no validation split), each for the run's task type."""
    from pyro_monteclora.evaluation.evaluators import ClassificationEvaluator, LanguageModelEvaluator

    arguments, splits = job.arguments, job.splits
    batch_size, seed, max_length = arguments["batch_size"], arguments["seed"], job.max_length
    validate = "validation" in splits and not arguments["no_validation"]
    evaluate = None
    if job.causal:
        import warnings

        from pyro_monteclora.data.causal_lm import causal_lm_loader
        from pyro_monteclora.distributed import is_main_process

        with warnings.catch_warnings(record=True) as caught:  # shown as plain lines
            warnings.simplefilter("always")
            train_loader = causal_lm_loader(
                splits["train"], job.tokenizer, batch_size, max_length, shuffle=True, seed=seed
            )
            if validate:
                evaluate = LanguageModelEvaluator(
                    causal_lm_loader(splits["validation"], job.tokenizer, batch_size, max_length),
                    arguments["eval_num_samples"],
                )
        for warning in caught if is_main_process() else ():
            print(f"warning: {warning.message}", file=sys.stderr)
    else:
        from pyro_monteclora.data.classification import classification_loader

        train_loader = classification_loader(
            splits["train"], job.tokenizer, batch_size, max_length, shuffle=True, seed=seed
        )
        if validate:
            evaluate = ClassificationEvaluator(
                classification_loader(splits["validation"], job.tokenizer, 64, max_length),
                arguments["eval_num_samples"],
            )
    return train_loader, evaluate


def _write_run_record(job: _TrainingJob) -> None:
    """On rank 0: (re)create the run folder and, for a new run, write ``run.json``."""
    import pyro
    import torch
    import transformers

    from pyro_monteclora.distributed import is_main_process
    from pyro_monteclora.storage.atomic import atomic_write_json

    args, output = job.args, job.output
    if not is_main_process():
        return
    output.mkdir(parents=True, exist_ok=True)  # made (and emptied, without --resume) under its lock
    if not args.resume:
        atomic_write_json(
            output / RUN_FILE,
            {
                "arguments": job.arguments,
                "data": job.data_spec,
                "model_path": job.model_path,
                "processes": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
                "versions": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "pyro": pyro.__version__,
                    "transformers": transformers.__version__,
                },
                "command": " ".join(["pyro-monteclora"] + args.command_line),
            },
        )


def _checkpointer(job: _TrainingJob):
    """The callback that replaces ``checkpoint/`` atomically after every epoch: the model and guide,
    the training state and the tokenizer."""
    from pyro_monteclora.storage.atomic import atomic_directory
    from pyro_monteclora.storage.checkpoint import save_pretrained
    from pyro_monteclora.training.state import save_training_state

    metadata = {
        "method": job.arguments["method"],
        "model_path": job.model_path,
        "data": job.data_spec,
        "max_length": job.max_length,
        "arguments": job.arguments,
    }

    keep_members = job.arguments["method"] == "checkpoint-ensemble"

    def on_epoch_end(state) -> None:
        previous = latest_checkpoint(job.output) if keep_members else None
        with atomic_directory(job.output / CHECKPOINT_DIR) as staging:
            save_pretrained(job.model, staging, guide=job.guide, metadata=dict(metadata, epoch=state.epoch))
            save_training_state(staging, state)
            job.tokenizer.save_pretrained(staging)
            if keep_members:
                from pyro_monteclora.cli.baselines import ensemble_size, keep_epoch_member
                from pyro_monteclora.storage.checkpoint import trained_tensors

                tensors = trained_tensors(job.model, job.guide)
                keep_epoch_member(staging, previous, tensors, state.epoch, ensemble_size(job.arguments))

    return on_epoch_end


def _write_summary(job: _TrainingJob, result, wall_seconds: float) -> None:
    """``train_summary.json``: the epochs' losses and metrics, times and sizes."""
    import torch

    from pyro_monteclora.storage.atomic import atomic_write_json

    atomic_write_json(
        job.output / "train_summary.json",
        {
            "method": job.arguments["method"],
            "learning_rate": job.learning_rate,
            "epochs": result.epochs,
            "train_seconds": result.train_seconds,
            "wall_seconds_this_session": wall_seconds,
            "trainable_parameters": job.model.num_trainable_parameters(),
            "train_examples": len(job.splits["train"]),
            "steps": len(result.steps),
            "processes": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
            "final_loss": result.epochs[-1]["loss"] if result.epochs else None,
        },
    )
    print(f"wrote {job.output / CHECKPOINT_DIR}", file=sys.stderr)
