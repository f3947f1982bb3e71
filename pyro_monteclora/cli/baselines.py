"""What ``train`` does differently for the calibration baselines (deep ensembles, and the
``ensemble`` command, are in :mod:`~pyro_monteclora.cli.deep_ensemble`).

* ``--method mc-dropout``, ``laplace``, ``checkpoint-ensemble``, ``deep-ensemble`` train plain
  LoRA; ``blob`` trains a mean-field Gaussian over :math:`A` (:mod:`pyro_monteclora.infer.guides`).
* ``checkpoint-ensemble`` keeps the trained tensors of the last ``--ensemble-size`` :math:`K`
  epochs in the checkpoint (``ensemble.safetensors``), so ``--resume`` keeps them too.
* ``laplace`` fits Laplace-LoRA on the training split once training ends
  (``laplace.safetensors`` + ``laplace.json`` in the checkpoint).
* ``--calibrate temperature`` fits a temperature on the validation split with the method's own
  predictive, once training ends (``calibration.json`` in the checkpoint).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from pyro_monteclora.cli.options import UsageError
from pyro_monteclora.infer.methods import ENSEMBLE_METHODS, default_num_samples

__all__ = [
    "ENSEMBLE_DEFAULTS",
    "LORA_BASED",
    "check_method_options",
    "ensemble_size",
    "keep_epoch_member",
    "finish_training",
    "fit_temperature_into",
]

#: ``--ensemble-size`` when not given: M = 5 members (deep), the last K = 3 epochs (checkpoint)
ENSEMBLE_DEFAULTS = {"deep-ensemble": 5, "checkpoint-ensemble": 3}
#: methods that train plain LoRA (their difference is in the predictive)
LORA_BASED = ("lora", "mc-dropout", "laplace", "checkpoint-ensemble", "deep-ensemble")


def ensemble_size(arguments: dict) -> int:
    """``--ensemble-size``, else the method's default (:data:`ENSEMBLE_DEFAULTS`)."""
    return arguments.get("ensemble_size") or ENSEMBLE_DEFAULTS[arguments["method"]]


def check_method_options(
    arguments: dict, causal: bool, splits: dict, world_size: int, evaluation_split: Optional[str] = None
) -> None:
    """Refuse, before any work, a baseline option that cannot apply (one line, exit 2)."""
    method = arguments["method"]
    calibrate = arguments.get("calibrate", "none") != "none"
    if causal and method not in ("monteclora", "lora", "full"):
        raise UsageError(f"--method {method} is for sequence classification; causal-lm takes monteclora, lora or full")
    if causal and calibrate:
        raise UsageError("--calibrate temperature is for sequence classification, not causal-lm")
    if world_size > 1 and (method == "laplace" or calibrate):
        raise UsageError(
            f"{'--method laplace' if method == 'laplace' else '--calibrate temperature'} fits on the whole split "
            f"in one process; launched with {world_size}, train without it and run 'pyro-monteclora calibrate' "
            f"on the checkpoint afterwards"
        )
    if arguments.get("ensemble_size") is not None and method not in ENSEMBLE_METHODS:
        raise UsageError(f"--ensemble-size applies to --method deep-ensemble or checkpoint-ensemble, not {method}")
    if method == "checkpoint-ensemble" and ensemble_size(arguments) > arguments["epochs"]:
        raise UsageError(
            f"--ensemble-size {ensemble_size(arguments)} is more than --epochs {arguments['epochs']}: a "
            f"checkpoint ensemble takes the last K epochs of one run"
        )
    if method == "mc-dropout" and not (arguments.get("lora_dropout") or 0) > 0:
        raise UsageError("--method mc-dropout needs --lora-dropout above 0 (for example 0.1): the masks are the draws")
    if method == "deep-ensemble" and world_size > 1:
        raise UsageError(
            "--method deep-ensemble trains its members one after the other in one process; launched "
            "with several processes, train the members as separate lora runs and join them with "
            "'pyro-monteclora ensemble'"
        )
    if calibrate and "validation" not in splits:
        raise UsageError(
            "--calibrate temperature fits the temperature on the validation split, and this data has "
            "none: give --validation-file (or a --task/--dataset with a validation split)"
        )
    if calibrate and evaluation_split is not None and evaluation_split != "test":
        raise UsageError(
            "--calibrate temperature fits on the validation split, which is also the split this data is "
            "evaluated on (it has no labelled test split): give --test-file, so the temperature never sees "
            "the examples it is scored on"
        )


def keep_epoch_member(staging: Path, previous: Path, tensors: dict, epoch: int, size: int) -> None:
    """Write into the checkpoint being staged the ensemble of the last ``size`` epochs: those kept
    in the ``previous`` checkpoint (if any) and this epoch's ``tensors``."""
    from pyro_monteclora.storage.ensembles import read_ensemble_members, save_ensemble_members

    saved = read_ensemble_members(previous) if previous is not None and previous.is_dir() else None
    details, members = (list(saved[1]), list(saved[2])) if saved else ([], [])
    details, members = details + [{"epoch": epoch}], members + [tensors]
    save_ensemble_members(staging, members[-size:], "checkpoint", details[-size:])


def finish_training(job, checkpoint: Path) -> None:
    """After the last epoch, on rank 0: fit Laplace-LoRA (``laplace``) and the temperature
    (``--calibrate temperature``) into ``checkpoint``."""
    arguments = job.arguments
    if arguments["method"] == "laplace":
        _fit_laplace(job, checkpoint)
    if arguments.get("calibrate", "none") == "temperature":
        loader = _evaluation_loader(job, "validation")
        fit_temperature_into(
            checkpoint, job.model, job.guide, arguments["method"], loader, arguments["seed"], job.device
        )


def _evaluation_loader(job, split: str):
    from pyro_monteclora.data.classification import classification_loader

    return classification_loader(job.splits[split], job.tokenizer, 64, job.max_length)


def _fit_laplace(job, checkpoint: Path) -> None:
    from pyro_monteclora.infer.laplace import fit_laplace

    print("laplace: fitting the Kronecker-factored Laplace approximation on the training split", file=sys.stderr)
    laplace = fit_laplace(job.model, _evaluation_loader(job, "train"), progress=True)
    laplace.save(checkpoint)


def fit_temperature_into(checkpoint: Path, model, guide, method: str, loader, seed: int, device, num_samples=None):
    """Fit a temperature on ``loader`` (the validation split) with ``method``'s own predictive of
    the checkpoint, write ``calibration.json`` into it, and return the temperature."""
    import pyro

    from pyro_monteclora.infer.methods import method_predictive
    from pyro_monteclora.infer.temperature import fit_temperature, tempered_nll
    from pyro_monteclora.storage.calibration import save_calibration

    predictive = method_predictive(model, guide, method, checkpoint, calibration=False)
    num_samples = default_num_samples(method) if num_samples is None else num_samples
    pyro.set_rng_seed(seed)
    output = predictive(loader, num_samples, device=device, progress=True)
    if output.labels is None:
        raise UsageError("the validation split has no labels: a temperature is fitted on labelled examples")
    temperature = fit_temperature(output.probs, output.labels)
    save_calibration(
        checkpoint,
        temperature,
        {
            "fitted_on": "validation",
            "examples": int(output.labels.numel()),
            "num_samples": num_samples,
            "nll_before": tempered_nll(output.probs, output.labels, 1.0),
            "nll_after": tempered_nll(output.probs, output.labels, temperature),
        },
    )
    print(
        f"calibrate: temperature {temperature:.3f} fitted on {output.labels.numel():,} validation examples",
        file=sys.stderr,
    )
    return temperature
