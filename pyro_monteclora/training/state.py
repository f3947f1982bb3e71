"""What a resumed run needs besides the model: optimiser, schedule, random state, progress.

:class:`TrainingState` is what :func:`~pyro_monteclora.fit` hands to its callbacks (``on_epoch_end``)
and takes back as ``resume=``. :func:`save_training_state` writes it next to a saved model as
``training_state.safetensors`` (the optimiser's moment tensors and the torch random state) and
``training_state.json`` (the step, the epoch, the learning-rate schedule, Python's and NumPy's random
state and the loss history): no pickle. Restoring all of it makes a resumed run draw the same noise,
dropout masks and data order as an uninterrupted one, so it ends with the same parameters.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from safetensors.torch import save_file

from pyro_monteclora.storage.atomic import atomic_file, atomic_write_json
from pyro_monteclora.validation import FieldError, check_value, get_field, number_problem, parse_json, shown

__all__ = [
    "TrainingState",
    "save_training_state",
    "load_training_state",
    "capture_rng_state",
    "restore_rng_state",
    "check_state_fits",
    "STATE_TENSORS",
    "STATE_JSON",
]

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


@dataclass
class TrainingState:
    """The state of :func:`~pyro_monteclora.fit` at the end of an epoch.

    :ivar epoch: epochs completed.
    :ivar step: optimiser steps taken.
    :ivar optimizer: ``optimizer.state_dict()``.
    :ivar scheduler: ``scheduler.state_dict()``.
    :ivar rng: :func:`capture_rng_state` at the end of the epoch (after any evaluation).
    :ivar history: :class:`~pyro_monteclora.FitResult` as a dict.
    """

    epoch: int
    step: int
    optimizer: Dict[str, Any]
    scheduler: Dict[str, Any]
    rng: Dict[str, Any]
    history: Dict[str, Any] = field(default_factory=dict)


def capture_rng_state() -> Dict[str, Any]:
    """torch (CPU and every CUDA device), Python ``random`` and NumPy generator states."""
    state = {"torch": torch.get_rng_state(), "random": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state` (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_json(value):
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def save_training_state(directory: Union[str, os.PathLike], state: TrainingState) -> None:
    """Write ``state`` into ``directory`` (safetensors + JSON, each written atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: Dict[str, torch.Tensor] = {"rng.torch": state.rng["torch"].clone()}
    for index, cuda_state in enumerate(state.rng.get("cuda", [])):
        tensors[f"rng.cuda.{index}"] = cuda_state.clone()
    optimizer_state = {}
    for index, slots in state.optimizer["state"].items():
        plain = {}
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                plain[key] = value
        optimizer_state[str(index)] = plain
    numpy_state = state.rng["numpy"]
    record = {
        "epoch": state.epoch,
        "step": state.step,
        "optimizer": {"param_groups": _to_json(state.optimizer["param_groups"]), "state": optimizer_state},
        "scheduler": _to_json({k: v for k, v in state.scheduler.items() if k != "lr_lambdas"}),
        "rng": {
            "random": _to_json(state.rng["random"]),
            "numpy": [numpy_state[0], _to_json(numpy_state[1])] + _to_json(list(numpy_state[2:])),
            "cuda_devices": len(state.rng.get("cuda", [])),
        },
        "history": state.history,
    }
    with atomic_file(directory / STATE_TENSORS) as temporary:
        save_file(tensors, str(temporary))
    atomic_write_json(directory / STATE_JSON, record)


def load_training_state(directory: Union[str, os.PathLike]) -> Optional[TrainingState]:
    """Read what :func:`save_training_state` wrote (``None`` if the folder has no state).

    Every field is checked before use (its type, its range, the size of each random state, the
    optimiser tensors against the parameter groups), so a damaged file is a
    :class:`~pyro_monteclora.storage.checkpoint.CheckpointError` naming the file and the field.
    """
    from pyro_monteclora.storage.checkpoint import CheckpointError, _read_tensors

    directory = Path(directory)
    path = directory / STATE_JSON
    if not path.is_file():
        return None
    try:
        record = parse_json(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    tensors = _read_tensors(directory / STATE_TENSORS)
    try:
        return _state_from_record(record, tensors, directory)
    except FieldError as error:
        raise CheckpointError(f"{path}: {error}") from None


def _state_from_record(record, tensors: Dict[str, torch.Tensor], directory: Path) -> TrainingState:
    """The :class:`TrainingState` of a parsed ``training_state.json``, or :class:`FieldError`."""
    epoch = get_field(record, "epoch", "epoch", "integer", minimum=0)
    step = get_field(record, "step", "step", "integer", minimum=0)
    history = get_field(record, "history", "history", "object", default={})
    for key in ("steps", "epochs"):
        for index, entry in enumerate(get_field(history, key, f"history.{key}", "list", default=[])):
            check_value(f"history.{key}[{index}]", entry, "object")
    get_field(history, "train_seconds", "history.train_seconds", "number", minimum=0, default=0.0)
    optimizer = _optimizer_from_record(get_field(record, "optimizer", "optimizer", "object"), tensors, directory)
    scheduler = get_field(record, "scheduler", "scheduler", "object")
    base_lrs = get_field(scheduler, "base_lrs", "scheduler.base_lrs", "list")
    if len(base_lrs) != len(optimizer["param_groups"]):
        raise FieldError(
            f"scheduler.base_lrs has {len(base_lrs)} entries for {len(optimizer['param_groups'])} parameter group(s)"
        )
    for index, rate in enumerate(base_lrs):
        check_value(f"scheduler.base_lrs[{index}]", rate, "number", minimum=0)
    get_field(scheduler, "last_epoch", "scheduler.last_epoch", "integer", minimum=-1)
    get_field(scheduler, "_step_count", "scheduler._step_count", "integer", minimum=0, default=0)
    for index, rate in enumerate(get_field(scheduler, "_last_lr", "scheduler._last_lr", "list", default=[])):
        check_value(f"scheduler._last_lr[{index}]", rate, "number", minimum=0)
    rng = _rng_from_record(get_field(record, "rng", "rng", "object"), tensors, directory)
    scheduler = dict(scheduler, lr_lambdas=[None] * len(optimizer["param_groups"]))
    return TrainingState(epoch=epoch, step=step, optimizer=optimizer, scheduler=scheduler, rng=rng, history=history)


def _optimizer_from_record(record: dict, tensors: Dict[str, torch.Tensor], directory: Path) -> dict:
    """AdamW's state dict: parameter groups with finite hyper-parameters over distinct indices, and
    per parameter the moment tensors (of one shape) and the step."""
    groups = get_field(record, "param_groups", "optimizer.param_groups", "list")
    if not groups:
        raise FieldError("optimizer.param_groups is empty")
    indices = []
    param_groups = []
    for number, group in enumerate(groups):
        name = f"optimizer.param_groups[{number}]"
        for key in ("lr", "eps", "weight_decay"):
            get_field(group, key, f"{name}.{key}", "number", minimum=0)
        betas = get_field(group, "betas", f"{name}.betas", "list")
        if len(betas) != 2:
            raise FieldError(f"{name}.betas must be a list of two numbers, got {shown(betas)}")
        for index, beta in enumerate(betas):
            check_value(f"{name}.betas[{index}]", beta, "number", minimum=0, maximum=1)
        for key in ("amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay"):
            get_field(group, key, f"{name}.{key}", "flag", default=False)
        for key in ("foreach", "fused"):  # None: let torch choose
            get_field(group, key, f"{name}.{key}", "flag", nullable=True, default=None)
        get_field(group, "initial_lr", f"{name}.initial_lr", "number", minimum=0, default=None)
        for index, value in enumerate(get_field(group, "params", f"{name}.params", "list")):
            check_value(f"{name}.params[{index}]", value, "integer", minimum=0)
            indices.append(value)
        param_groups.append(dict(group, betas=tuple(betas)))
    if len(set(indices)) != len(indices):
        raise FieldError("optimizer.param_groups list a parameter index twice")
    amsgrad = {i for group in param_groups if group.get("amsgrad") for i in group["params"]}
    optimizer_state = {}
    for index, plain in get_field(record, "state", "optimizer.state", "object").items():
        name = f"optimizer.state.{index}"
        if not (index.isascii() and index.isdigit()) or int(index) not in indices:
            raise FieldError(f"{name}: no parameter group holds parameter {index!r}")
        check_value(name, plain, "object")
        prefix = f"optimizer.{index}."
        slots = dict(plain)
        slots.update({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if int(index) in amsgrad else ()):
            moment = slots.get(key)
            if not isinstance(moment, torch.Tensor) or not moment.is_floating_point():
                raise FieldError(
                    f"{name}: the tensor {key} is missing from {directory / STATE_TENSORS} or not floating point"
                )
            if moment.shape != slots["exp_avg"].shape:
                raise FieldError(
                    f"{name}: {key} has shape {tuple(moment.shape)}, exp_avg {tuple(slots['exp_avg'].shape)}"
                )
        if "step" not in slots:
            raise FieldError(f"{name}.step is missing")
        if isinstance(slots["step"], torch.Tensor):
            if slots["step"].numel() != 1:
                raise FieldError(f"{name}: the tensor step must hold one number")
        else:
            check_value(f"{name}.step", slots["step"], "number", minimum=0)
        optimizer_state[int(index)] = slots
    return {"state": optimizer_state, "param_groups": param_groups}


def _rng_from_record(record: dict, tensors: Dict[str, torch.Tensor], directory: Path) -> Dict[str, Any]:
    """The random states, each tried on a scratch generator of its kind (so a state of the wrong
    size or type is refused here, not when the run restores it)."""
    state = get_field(record, "random", "rng.random", "list")
    try:
        version, internal, gauss = state
        python_state = (version, tuple(internal), gauss)
        # the last word is the position in the 624-word key; the cached gauss is a float or None
        if not (isinstance(internal[-1], int) and 0 <= internal[-1] <= 624) or not (
            gauss is None or number_problem(gauss) is None
        ):
            raise ValueError
        random.Random().setstate(python_state)
    except (TypeError, ValueError, OverflowError, IndexError, KeyError):  # KeyError: an object, not a list
        raise FieldError("rng.random is not a Python random state (version, 625 integers, gauss)") from None
    numpy_record = get_field(record, "numpy", "rng.numpy", "list")
    try:
        name, key, position, has_gauss, cached = numpy_record
        # NumPy takes a position outside [0, 624] and then reads outside its key: refused here
        if number_problem(position, 0, 624, integer=True) or has_gauss not in (0, 1) or number_problem(cached):
            raise ValueError
        numpy_state = (name, np.asarray(key, dtype=np.uint32), position, has_gauss, cached)
        if numpy_state[1].shape != (624,):
            raise ValueError
        np.random.RandomState().set_state(numpy_state)
    except (TypeError, ValueError, OverflowError, IndexError):
        raise FieldError(
            "rng.numpy is not a NumPy random state ('MT19937', 624 integers, a position "
            "in [0, 624], has_gauss, cached_gaussian)"
        ) from None
    rng = {"random": python_state, "numpy": numpy_state, "torch": _rng_tensor(tensors, "rng.torch", directory)}
    try:
        torch.Generator().set_state(rng["torch"])
    except (TypeError, RuntimeError):
        raise FieldError(f"the tensor rng.torch in {directory / STATE_TENSORS} is not a torch random state") from None
    devices = get_field(record, "cuda_devices", "rng.cuda_devices", "integer", minimum=0, default=0)
    if devices:
        rng["cuda"] = [_rng_tensor(tensors, f"rng.cuda.{i}", directory) for i in range(devices)]
    return rng


def _rng_tensor(tensors: Dict[str, torch.Tensor], name: str, directory: Path) -> torch.Tensor:
    value = tensors.get(name)
    if value is None or value.dtype != torch.uint8 or value.dim() != 1:
        raise FieldError(f"the tensor {name} is missing from {directory / STATE_TENSORS} or is not a byte vector")
    return value


def check_state_fits(state: TrainingState, parameters, source: Union[str, os.PathLike]) -> None:
    """Raise :class:`~pyro_monteclora.storage.checkpoint.CheckpointError` unless the optimiser state of
    ``state`` fits ``parameters``, the trained tensors in the order :func:`~pyro_monteclora.fit`
    hands them to its optimiser (as many, and each moment of its parameter's shape)."""
    from pyro_monteclora.storage.checkpoint import CheckpointError

    parameters = list(parameters)
    listed = sum(len(group["params"]) for group in state.optimizer["param_groups"])
    if listed != len(parameters):
        raise CheckpointError(
            f"{source}: optimizer.param_groups list {listed} parameter(s); the "
            f"model has {len(parameters)} trained tensors"
        )
    order = [index for group in state.optimizer["param_groups"] for index in group["params"]]
    for position, index in enumerate(order):
        slots = state.optimizer["state"].get(index)
        if slots is not None and slots["exp_avg"].shape != parameters[position].shape:
            raise CheckpointError(
                f"{source}: optimizer.state.{index} has shape "
                f"{tuple(slots['exp_avg'].shape)}; its parameter has "
                f"{tuple(parameters[position].shape)}"
            )
