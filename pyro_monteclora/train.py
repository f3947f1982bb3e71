"""``fit``: stochastic variational inference for a MonteCLoRA model and guide.

The loop is Pyro's ELBO used as a ``torch.nn.Module`` (``Trace_ELBO()(model, guide)``) with a torch
optimiser, which works whether or not ``pyro.settings`` has ``module_local_params`` on. It minimises
the negative ELBO **per training example**,

.. math::

    \\mathcal{L} = -\\frac{1}{D}\\Big(\\frac{D}{B}\\sum_{i \\in \\text{batch}} \\log p(y_i \\mid x_i, A)
    - \\lambda_t \\sum_\\ell \\mathrm{KL}_\\ell\\Big),

so that learning rates and gradient clipping mean what they mean for LoRA's mean cross-entropy (in
``"lora"`` mode :math:`\\mathcal{L}` *is* the mean cross-entropy). :math:`\\lambda_t` is
``config.kl_weight`` times the annealing factor :math:`\\min(1, t / T_{anneal})`.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Union

import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from .distributed import all_ranks_agree, barrier, gather_tensors, world
from .elbo import MonteCLoRAELBO
from .handlers import kl_scale
from .model import MonteCLoRAModel
from .precision import DTYPES, autocast, check_precision
from .predictive import move_batch, predict
from .training_state import TrainingState, capture_rng_state, restore_rng_state

__all__ = ["fit", "FitResult", "linear_schedule", "evaluate_loader"]

ELBO_KINDS = {"monteclora": MonteCLoRAELBO, "meanfield": TraceMeanField_ELBO, "trace": Trace_ELBO}


@dataclass
class FitResult:
    """What :func:`fit` returns.

    :ivar steps: one dict per optimiser step: ``step``, ``loss`` (negative ELBO per example),
        ``kl`` (closed-form KL of the guide, unweighted; ``None`` between ``log_every`` steps),
        ``nll`` (the data term per example, ``loss - kl_factor * kl_weight * kl / D``, on the
        steps that have ``kl``), ``kl_factor`` and ``lr``.
    :ivar epochs: one dict per epoch: ``epoch``, ``loss`` (mean over the epoch) and, with an
        ``eval_loader``, the evaluation metrics.
    :ivar train_seconds: wall time spent in optimiser steps (evaluation excluded).
    """

    steps: List[Dict[str, float]] = field(default_factory=list)
    epochs: List[Dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0


def linear_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up from 0 over ``warmup_steps``, then linear decay to 0."""
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        remaining = max(1, total_steps - warmup_steps)
        return max(0.0, (total_steps - step) / remaining)
    return factor


def evaluate_loader(model, guide, loader, num_samples: int = 0, ece_bins: int = 15) -> Dict[str, float]:
    """The per-epoch evaluation of :func:`fit`: accuracy, NLL, ECE and Brier of the posterior
    predictive for a classifier; response-token NLL and perplexity for a causal LM. In a process
    group every rank evaluates its shard and the results are gathered (all ranks must call it)."""
    if model.likelihood.task == "causal-lm":
        from .causal_lm import language_model_metrics

        return language_model_metrics(model, guide, loader, num_samples)
    from .metrics import classification_metrics

    if len(loader) == 0:  # an empty shard (fewer examples than ranks) contributes nothing
        probs = torch.empty(0, model.network.config.num_labels)
        labels = torch.empty(0, dtype=torch.long)
    else:
        output = predict(model, guide, loader, num_samples=num_samples)
        probs, labels = output.probs, output.labels
    gathered = gather_tensors({"probs": probs, "labels": labels})  # all ranks' shards
    return classification_metrics(gathered["probs"], gathered["labels"], ece_bins)


def _positive(name: str, value, integer: bool = False, allow_zero: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok_type and not isinstance(value, bool) and math.isfinite(value) and (
        value >= 0 if allow_zero else value > 0
    )
    if not ok:
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"fit(): {name} must be {kind} {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def fit(model: MonteCLoRAModel, guide, train_loader: Iterable[dict], *, epochs: int = 1,
        max_steps: Optional[int] = None, learning_rate: float = 1e-3, weight_decay: float = 0.0,
        warmup_ratio: float = 0.0, max_grad_norm: Optional[float] = 1.0,
        loss: Union[str, ELBO] = "monteclora", num_particles: int = 1, kl_anneal_steps: int = 0,
        eval_loader: Optional[Iterable[dict]] = None, eval_num_samples: int = 0,
        ece_bins: int = 15, seed: Optional[int] = None, device=None,
        progress: bool = True, desc: str = "SVI", log_every: int = 10,
        validate_args: bool = False,
        on_epoch_end: Optional[Callable[[TrainingState], None]] = None,
        resume: Optional[TrainingState] = None, skip_nonfinite: bool = False,
        dtype: Optional[torch.dtype] = None) -> FitResult:
    """Train ``model`` and ``guide`` with SVI (AdamW, linear warm-up and decay, clipping).

    :param model: a :class:`~pyro_monteclora.MonteCLoRAModel`.
    :param guide: its :class:`~pyro_monteclora.MonteCLoRAGuide` (any Pyro guide module works).
    :param train_loader: batches (dicts with ``labels``); its ``dataset`` length sets :math:`D`
        unless ``model.dataset_size`` is already set.
    :param int epochs: passes over ``train_loader``.
    :param int max_steps: stop after this many optimiser steps (default: all of ``epochs``).
    :param float learning_rate: peak AdamW learning rate.
    :param float weight_decay: AdamW's decoupled weight decay.
    :param float warmup_ratio: fraction of the steps spent warming up, in ``[0, 1)``.
    :param float max_grad_norm: clip the global gradient norm (``None``: no clipping).
    :param loss: ``"monteclora"`` (:class:`~pyro_monteclora.elbo.MonteCLoRAELBO`: the mean-field
        estimate with batched closed-form KLs, the default), ``"meanfield"``
        (``TraceMeanField_ELBO``, the same estimate), ``"trace"`` (``Trace_ELBO``) or any Pyro ``ELBO``.
    :param int num_particles: ELBO particles per step (ignored for an ``ELBO`` instance).
    :param int kl_anneal_steps: ramp the KL weight linearly from 0 to 1 over this many steps.
    :param eval_loader: if given, :func:`evaluate_loader` runs on it after every epoch
        (the posterior predictive's metrics; token NLL and perplexity for a causal LM).
    :param int eval_num_samples: :math:`S` for that evaluation (0: mean adapter).
    :param int ece_bins: bins of the evaluation's ECE.
    :param int seed: seeds Pyro, torch, numpy and random (``pyro.set_rng_seed``).
    :param device: move model and guide there first.
    :param bool progress: show a tqdm bar with the loss and its two parts (data term and KL).
    :param str desc: the progress bar's label.
    :param int log_every: compute the guide's closed-form KL for the log every this many steps
        (and at the last step); other steps record ``kl`` as ``None``.
    :param bool validate_args: keep Pyro's argument and support validation on during the steps
        (off by default: it costs about 10% of a step here and the sites are valid by construction).
    :param on_epoch_end: called with a :class:`~pyro_monteclora.training_state.TrainingState` after
        every epoch (after its evaluation), for example to write a checkpoint.
    :param resume: a :class:`~pyro_monteclora.training_state.TrainingState` from an earlier call
        with the same arguments: training continues after its epoch with the same optimiser
        moments, schedule, random state and history, and ends where an uninterrupted run ends.

    :param bool skip_nonfinite: on a NaN or infinite loss, skip that step (no update; recorded with
        ``"skipped": True`` and a NaN loss) instead of raising :class:`FloatingPointError`.
    :param dtype: run the forward passes (training and evaluation) under ``torch.autocast`` to this
        dtype (``torch.bfloat16`` or ``torch.float16``; see :mod:`~pyro_monteclora.precision`).
        Trainable tensors and the sampler stay fp32; fp16 on CUDA uses a gradient scaler.

    If ``train_loader.sampler`` has ``set_epoch`` (as :func:`~pyro_monteclora.data.classification_loader`'s
    and ``DistributedSampler`` do), it is called at the start of every epoch, so the data order
    depends on the seed and the epoch only.

    In a ``torch.distributed`` process group (``torchrun``, ``accelerate launch``; see
    :mod:`~pyro_monteclora.distributed`) the same call trains with ``DistributedDataParallel``: give
    each rank a loader over its shard (``train_loader.dataset`` the whole training set, so that
    :math:`D` is global), and every rank must call ``fit``.
    """
    _positive("epochs", epochs, integer=True)
    if max_steps is not None:
        _positive("max_steps", max_steps, integer=True)
    _positive("learning_rate", learning_rate)
    _positive("weight_decay", weight_decay, allow_zero=True)
    if not (isinstance(warmup_ratio, (int, float)) and 0 <= warmup_ratio < 1):
        raise ValueError(f"fit(): warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
    if max_grad_norm is not None:
        _positive("max_grad_norm", max_grad_norm)
    _positive("num_particles", num_particles, integer=True)
    _positive("kl_anneal_steps", kl_anneal_steps, integer=True, allow_zero=True)
    _positive("eval_num_samples", eval_num_samples, integer=True, allow_zero=True)
    _positive("log_every", log_every, integer=True)
    if getattr(model, "gradient_checkpointing", False) and (num_particles > 1 or (
            isinstance(loss, ELBO) and getattr(loss, "num_particles", 1) > 1)):
        raise ValueError("fit(): gradient checkpointing needs num_particles=1 (each particle "
                         "draws its own adapters, and the recomputed forward must see the draw "
                         "of the pass it recomputes)")
    if isinstance(loss, str):
        if loss not in ELBO_KINDS:
            raise ValueError(f"fit(): loss must be one of {sorted(ELBO_KINDS)} or a pyro ELBO, got {loss!r}")
        elbo = ELBO_KINDS[loss](num_particles=num_particles) if loss == "monteclora" else ELBO_KINDS[loss](
            num_particles=num_particles, vectorize_particles=False)
    elif isinstance(loss, ELBO):
        elbo = loss
    else:
        raise ValueError(f"fit(): loss must be one of {sorted(ELBO_KINDS)} or a pyro ELBO, got {loss!r}")
    if dtype is not None:
        check_precision({v: k for k, v in DTYPES.items()}.get(dtype, str(dtype)),
                        device if device is not None else next(model.parameters()).device)
    dataset_size = model.dataset_size
    if dataset_size is None:
        dataset = getattr(train_loader, "dataset", None)
        if dataset is None:
            raise ValueError("fit(): set model.dataset_size, or pass a DataLoader with a dataset")
        dataset_size = len(dataset)
    if dataset_size < 1:
        raise ValueError("fit(): the training set is empty")
    steps_per_epoch = len(train_loader)
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    if total_steps < 1:
        raise ValueError("fit(): train_loader yields no batch")

    if seed is not None:
        pyro.set_rng_seed(seed)
    if device is not None:
        model.to(device)
        guide.to(device)
    device = next(model.parameters()).device
    model.dataset_size = dataset_size
    # Instantiate the guide's lazily-created state, then optimise every trainable tensor once.
    loss_module = elbo(model, guide)
    parameters, seen = [], set()
    for parameter in loss_module.parameters():
        if parameter.requires_grad and id(parameter) not in seen:
            seen.add(id(parameter))
            parameters.append(parameter)
    rank, world_size = world()
    if world_size > 1:  # PyTorch DDP: rank 0's parameters broadcast once, gradients all-reduced
        from torch.nn.parallel import DistributedDataParallel

        frozen = [name for name, p in loss_module.named_parameters() if not p.requires_grad]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(loss_module, frozen)
        # buffers (position ids and the like) are the same on every rank: never re-sent per step
        buffers = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})
        loss_module = DistributedDataParallel(
            loss_module, device_ids=[device] if device.type == "cuda" else None, **buffers)
        progress = progress and rank == 0
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_schedule(total_steps, int(warmup_ratio * total_steps))
    )
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    kl_of = getattr(guide, "kl_divergence", None)
    result = FitResult()
    start_epoch = step = 0
    if resume is not None:
        if resume.step > total_steps or resume.epoch > epochs:
            raise ValueError(f"fit(): the resumed state is at epoch {resume.epoch}, step {resume.step}, "
                             f"past this run's {epochs} epochs / {total_steps} steps")
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        restore_rng_state(resume.rng)
        start_epoch, step = resume.epoch, resume.step
        result = FitResult(steps=list(resume.history.get("steps", [])),
                           epochs=list(resume.history.get("epochs", [])),
                           train_seconds=resume.history.get("train_seconds", 0.0))
    sampler = getattr(train_loader, "sampler", None)
    kl_weight = getattr(getattr(model, "config", None), "kl_weight", 1.0)

    def take_step(batch: dict, step: int, epoch: int) -> Dict[str, float]:
        started = time.perf_counter()
        batch = move_batch(batch, device)
        kl_factor = min(1.0, step / kl_anneal_steps) if kl_anneal_steps else 1.0
        optimizer.zero_grad(set_to_none=True)
        with model.retained_draws():  # a checkpointed backward recomputes with the same draws
            return _forward_backward(batch, step, epoch, kl_factor, started)

    def _forward_backward(batch: dict, step: int, epoch: int, kl_factor: float, started: float):
        with kl_scale(kl_factor), autocast(device, dtype):
            value = loss_module(**batch) / dataset_size
        if not all_ranks_agree(bool(torch.isfinite(value))):  # every rank takes the same branch
            if not torch.isfinite(value):
                value = torch.tensor(float("nan"))
            if not skip_nonfinite:
                raise FloatingPointError(
                    f"fit(): the loss is {value.item()} at step {step} (epoch {epoch}); "
                    f"lower the learning rate or check the data"
                )
            scheduler.step()  # the step is skipped, the schedule goes on
            return {"step": step, "loss": float("nan"), "kl": None, "nll": None,
                    "kl_factor": kl_factor, "lr": scheduler.get_last_lr()[0], "skipped": True}
        if scaler is None:
            value.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
            optimizer.step()
        else:  # fp16: scale the loss so that small gradients do not underflow
            scaler.scale(value).backward()
            scaler.unscale_(optimizer)
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        scheduler.step()
        result.train_seconds += time.perf_counter() - started
        record = {"step": step, "loss": value.item(), "kl": None, "nll": None,
                  "kl_factor": kl_factor, "lr": scheduler.get_last_lr()[0]}
        if callable(kl_of) and (step % log_every == 0 or step == total_steps - 1):
            with torch.no_grad():
                record["kl"] = float(kl_of())
            # the data term: loss - lambda_t KL / D
            record["nll"] = record["loss"] - kl_factor * kl_weight * record["kl"] / dataset_size
        return record

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, desc=desc, dynamic_ncols=True)
    model.train()
    try:
        with pyro.validation_enabled(validate_args):
            for epoch in range(start_epoch, epochs):
                if step >= total_steps:
                    break
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)
                if world_size > 1:  # independent noise per rank, the same after a resume
                    pyro.set_rng_seed(((seed or 0) * 1_000_003 + epoch) * 1_009 + rank)
                epoch_losses = []
                for batch in train_loader:
                    if step >= total_steps:
                        break
                    record = take_step(batch, step, epoch)
                    result.steps.append(record)
                    if not record.get("skipped"):
                        epoch_losses.append(record["loss"])
                    step += 1
                    if bar is not None:
                        bar.update(1)
                        postfix = {"epoch": epoch, "loss": f"{record['loss']:.4f}"}
                        if record["kl"] is not None:
                            postfix.update(nll=f"{record['nll']:.4f}", kl=f"{record['kl']:.3g}")
                        bar.set_postfix(postfix)
                summary = {"epoch": epoch, "loss": sum(epoch_losses) / max(1, len(epoch_losses))}
                if eval_loader is not None:
                    with autocast(device, dtype):
                        summary.update(evaluate_loader(model, guide, eval_loader, eval_num_samples, ece_bins))
                    model.train()
                    if bar is not None:
                        bar.write(f"epoch {epoch}: " + ", ".join(
                            f"{k}={v:.4f}" for k, v in summary.items() if k != "epoch"))
                result.epochs.append(summary)
                if on_epoch_end is not None and rank == 0:
                    on_epoch_end(TrainingState(
                        epoch=epoch + 1, step=step, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), rng=capture_rng_state(),
                        history=asdict(result)))
                barrier()  # rank 0's checkpoint is complete before any rank goes on
    finally:
        if bar is not None:
            bar.close()
    return result
