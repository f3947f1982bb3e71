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

The pieces, each usable on its own:

* :class:`TrainConfig` -- the optimisation settings, validated once and frozen;
* :class:`SVIStep` -- one optimiser step (forward, a non-finite check every rank agrees on,
  backward, clipping, the optimiser and schedule steps, the step's record), and the optimiser,
  schedule and history it advances;
* :func:`train_epoch` -- one pass over a loader with an :class:`SVIStep`;
* evaluation passed in as a callable ``evaluate(model, guide) -> metrics`` (see
  :mod:`~pyro_monteclora.evaluation.evaluators`), and callbacks called with a
  :class:`~pyro_monteclora.training.state.TrainingState` after every epoch;
* :func:`fit`, which wires them together and keeps its keyword arguments (``epochs=``,
  ``eval_loader=``, ``on_epoch_end=``, ...) as shorthands for the pieces.
"""

from __future__ import annotations

import inspect
import numbers
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_monteclora.distributed import all_ranks_agree, barrier, world
from pyro_monteclora.evaluation.evaluators import Evaluator, evaluator_for
from pyro_monteclora.infer.elbo import MonteCLoRAELBO
from pyro_monteclora.infer.predictive import move_batch
from pyro_monteclora.nn.handlers import kl_scale
from pyro_monteclora.nn.models import MonteCLoRAModel
from pyro_monteclora.nn.precision import DTYPES, autocast, check_precision
from pyro_monteclora.training.state import TrainingState, capture_rng_state, restore_rng_state
from pyro_monteclora.validation import number_problem

__all__ = [
    "fit",
    "FitResult",
    "TrainConfig",
    "SVIStep",
    "train_epoch",
    "rank_seed",
    "Callback",
    "linear_schedule",
    "evaluate_loader",
]

ELBO_KINDS = {"monteclora": MonteCLoRAELBO, "meanfield": TraceMeanField_ELBO, "trace": Trace_ELBO}

#: called with the :class:`~pyro_monteclora.training.state.TrainingState` after every epoch
Callback = Callable[[TrainingState], None]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    :ivar steps: one dict per optimiser step: ``step``, ``loss`` (negative ELBO per example),
        ``kl`` (closed-form KL of the guide, unweighted; ``None`` between ``log_every`` steps),
        ``nll`` (the data term per example, ``loss - kl_factor * kl_weight * kl / D``, on the
        steps that have ``kl``), ``kl_factor`` and ``lr``.
    :ivar epochs: one dict per epoch: ``epoch``, ``loss`` (mean over the epoch) and, with an
        evaluator, its metrics.
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
    """The metrics of :func:`~pyro_monteclora.evaluation.evaluators.evaluator_for` on ``loader``: accuracy, NLL,
    ECE and Brier of the posterior predictive for a classifier; response-token NLL and perplexity for
    a causal LM. Kept for earlier callers: pick a
    :class:`~pyro_monteclora.evaluation.evaluators.ClassificationEvaluator` or
    :class:`~pyro_monteclora.evaluation.evaluators.LanguageModelEvaluator` instead."""
    return evaluator_for(model, loader, num_samples, ece_bins)(model, guide)


# -- the settings ---------------------------------------------------------------------------------
def _positive(name: str, value, integer: bool = False, allow_zero: bool = False) -> None:
    problem = number_problem(value, minimum=0, integer=integer, exclusive_minimum=not allow_zero)
    if problem:
        raise ValueError(f"fit(): {name} {problem}")


def _check_loss(loss) -> None:
    if not (isinstance(loss, ELBO) or (isinstance(loss, str) and loss in ELBO_KINDS)):
        raise ValueError(f"fit(): loss must be one of {sorted(ELBO_KINDS)} or a pyro ELBO, got {loss!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`fit` optimises: validated on construction, immutable after (derive a changed copy
    with :meth:`replace`). Every invalid field raises ``ValueError("fit(): <field> must be ...")``.

    :param int epochs: passes over the training loader.
    :param int max_steps: stop after this many optimiser steps (default: all of ``epochs``).
    :param float learning_rate: peak AdamW learning rate.
    :param float weight_decay: AdamW's decoupled weight decay.
    :param float warmup_ratio: fraction of the steps spent warming up, in ``[0, 1)``.
    :param float max_grad_norm: clip the global gradient norm (``None``: no clipping).
    :param loss: ``"monteclora"`` (:class:`~pyro_monteclora.infer.elbo.MonteCLoRAELBO`: the mean-field
        estimate with batched closed-form KLs, the default), ``"meanfield"``
        (``TraceMeanField_ELBO``, the same estimate), ``"trace"`` (``Trace_ELBO``) or any Pyro ``ELBO``.
    :param int num_particles: ELBO particles per step (ignored for an ``ELBO`` instance).
    :param int kl_anneal_steps: ramp the KL weight linearly from 0 to 1 over this many steps.
    :param int log_every: compute the guide's closed-form KL for the log every this many steps
        (and at the last step); other steps record ``kl`` as ``None``.
    :param int seed: seeds Pyro, torch, numpy and random (``pyro.set_rng_seed``) before training.
    :param bool skip_nonfinite: on a NaN or infinite loss, skip that step (no update; recorded with
        ``"skipped": True`` and a NaN loss) instead of raising :class:`FloatingPointError`.
    :param dtype: run the forward passes (training and evaluation) under ``torch.autocast`` to this
        dtype (``torch.bfloat16`` or ``torch.float16``; see :mod:`~pyro_monteclora.nn.precision`).
        Trainable tensors and the sampler stay fp32; fp16 on CUDA uses a gradient scaler.
    :param bool validate_args: keep Pyro's argument and support validation on during the steps
        (off by default: it costs about 10% of a step here and the sites are valid by construction).
    :param bool progress: show a tqdm bar with the loss and its two parts (data term and KL).
    :param str desc: the progress bar's label.

    >>> TrainConfig(epochs=3, learning_rate=2e-3).replace(epochs=5).epochs
    5
    >>> TrainConfig(warmup_ratio=1.0)
    Traceback (most recent call last):
    ...
    ValueError: fit(): warmup_ratio must be in [0, 1), got 1.0
    """

    epochs: int = 1
    max_steps: Optional[int] = None
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    loss: Union[str, ELBO] = "monteclora"
    num_particles: int = 1
    kl_anneal_steps: int = 0
    log_every: int = 10
    seed: Optional[int] = None
    skip_nonfinite: bool = False
    dtype: Optional[torch.dtype] = None
    validate_args: bool = False
    progress: bool = True
    desc: str = "SVI"

    def __post_init__(self) -> None:
        _positive("epochs", self.epochs, integer=True)
        if self.max_steps is not None:
            _positive("max_steps", self.max_steps, integer=True)
        _positive("learning_rate", self.learning_rate)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        if not (
            isinstance(self.warmup_ratio, (numbers.Integral, float))
            and not isinstance(self.warmup_ratio, bool)
            and 0 <= self.warmup_ratio < 1
        ):
            raise ValueError(f"fit(): warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.max_grad_norm is not None:
            _positive("max_grad_norm", self.max_grad_norm)
        _check_loss(self.loss)
        _positive("num_particles", self.num_particles, integer=True)
        _positive("kl_anneal_steps", self.kl_anneal_steps, integer=True, allow_zero=True)
        _positive("log_every", self.log_every, integer=True)
        if self.seed is not None:
            _positive("seed", self.seed, integer=True, allow_zero=True)
        for name in ("skip_nonfinite", "validate_args", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"fit(): {name} must be True or False, got {getattr(self, name)!r}")
        if self.dtype is not None and self.dtype not in DTYPES.values():
            raise ValueError(
                f"fit(): dtype must be None or one of torch.float32, torch.bfloat16, torch.float16, got {self.dtype!r}"
            )
        if not isinstance(self.desc, str):
            raise ValueError(f"fit(): desc must be a string, got {self.desc!r}")

    def replace(self, **changes) -> "TrainConfig":
        """A validated copy with ``changes`` (unknown names raise ``TypeError``)."""
        return replace(self, **changes)

    @property
    def particles(self) -> int:
        """ELBO particles per step: ``num_particles``, or an ``ELBO`` instance's own."""
        return getattr(self.loss, "num_particles", 1) if isinstance(self.loss, ELBO) else self.num_particles

    def make_elbo(self) -> ELBO:
        """The Pyro ``ELBO`` that ``loss`` names (an ``ELBO`` instance is used as it is)."""
        if isinstance(self.loss, ELBO):
            return self.loss
        if self.loss == "monteclora":
            return MonteCLoRAELBO(num_particles=self.num_particles)
        return ELBO_KINDS[self.loss](num_particles=self.num_particles, vectorize_particles=False)


_CONFIG_FIELDS = frozenset(f.name for f in fields(TrainConfig))
#: ``fit``'s shorthands for an evaluator and a callback
_SHORTHANDS = frozenset({"eval_loader", "eval_num_samples", "ece_bins", "on_epoch_end"})


# -- one step -------------------------------------------------------------------------------------
def _trainable(module: torch.nn.Module) -> List[torch.nn.Parameter]:
    """Every trainable tensor of ``module`` once, in registration order."""
    parameters, seen = [], set()
    for parameter in module.parameters():
        if parameter.requires_grad and id(parameter) not in seen:
            seen.add(id(parameter))
            parameters.append(parameter)
    return parameters


def _data_parallel(loss_module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``loss_module`` in PyTorch DDP (rank 0's parameters broadcast once, gradients all-reduced)."""
    from torch.nn.parallel import DistributedDataParallel

    frozen = [name for name, p in loss_module.named_parameters() if not p.requires_grad]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(loss_module, frozen)
    # buffers (position ids and the like) are the same on every rank: never re-sent per step
    buffers = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(loss_module, device_ids=[device] if device.type == "cuda" else None, **buffers)


class SVIStep:
    """One SVI optimiser step, and the optimiser, schedule and history it advances.

    Built once per run: the ELBO module over ``model`` and ``guide`` (in
    ``DistributedDataParallel`` within a process group), AdamW over its trainable tensors, the
    :func:`linear_schedule` over ``total_steps`` and, for fp16, a gradient scaler. Calling it with a
    batch takes one step and appends its record to :attr:`result`.

    :param int dataset_size: :math:`D`, the divisor of the per-example loss.
    :param int total_steps: the run's optimiser steps (the schedule's length; the KL is always
        logged at the last one).
    :param device: where batches go (default: the model's).
    """

    def __init__(self, model, guide, config: TrainConfig, dataset_size: int, total_steps: int, device=None):
        self.model, self.guide, self.config = model, guide, config
        self.dataset_size, self.total_steps = dataset_size, total_steps
        self.device = device if device is not None else next(model.parameters()).device
        # Instantiate the guide's lazily-created state, then optimise every trainable tensor once.
        self.loss_module = config.make_elbo()(model, guide)
        self.parameters = _trainable(self.loss_module)
        self.rank, self.world_size = world()
        if self.world_size > 1:
            self.loss_module = _data_parallel(self.loss_module, self.device)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(total_steps, int(config.warmup_ratio * total_steps))
        )
        self.scaler = torch.amp.GradScaler("cuda") if config.dtype == torch.float16 else None
        self.kl_of = getattr(guide, "kl_divergence", None)
        self.kl_weight = getattr(getattr(model, "config", None), "kl_weight", 1.0)
        #: the steps so far (and, from :func:`fit`, the epochs)
        self.result = FitResult()

    def kl_factor(self, step: int) -> float:
        """The KL annealing factor :math:`\\min(1, t / T_{anneal})` at ``step``."""
        anneal = self.config.kl_anneal_steps
        return min(1.0, step / anneal) if anneal else 1.0

    def __call__(self, batch: dict, step: int, epoch: int) -> Dict[str, Any]:
        """Take optimiser step ``step`` (of epoch ``epoch``) on ``batch``; returns its record."""
        started = time.perf_counter()
        batch = move_batch(batch, self.device)
        kl_factor = self.kl_factor(step)
        self.optimizer.zero_grad(set_to_none=True)
        with self.model.retained_draws():  # a checkpointed backward recomputes with the same draws
            value = self.loss(batch, kl_factor)
            if not self._finite(value, step, epoch):
                self.scheduler.step()  # the step is skipped, the schedule goes on
                record = {
                    "step": step,
                    "loss": float("nan"),
                    "kl": None,
                    "nll": None,
                    "kl_factor": kl_factor,
                    "lr": self.scheduler.get_last_lr()[0],
                    "skipped": True,
                }
            else:
                self._update(value)
                self.result.train_seconds += time.perf_counter() - started
                record = self._record(value.item(), step, kl_factor)
        self.result.steps.append(record)
        return record

    def loss(self, batch: dict, kl_factor: float = 1.0) -> torch.Tensor:
        """The negative ELBO per training example on ``batch`` (differentiable)."""
        with kl_scale(kl_factor), autocast(self.device, self.config.dtype):
            return self.loss_module(**batch) / self.dataset_size

    def _finite(self, value: torch.Tensor, step: int, epoch: int) -> bool:
        """Whether every rank's loss is finite (all ranks take the same branch); raises
        :class:`FloatingPointError` when it is not and the config does not skip such steps."""
        if all_ranks_agree(bool(torch.isfinite(value))):
            return True
        if not self.config.skip_nonfinite:
            shown = value.item() if torch.isfinite(value) else float("nan")
            raise FloatingPointError(
                f"fit(): the loss is {shown} at step {step} (epoch {epoch}); lower the learning rate or check the data"
            )
        return False

    def _update(self, value: torch.Tensor) -> None:
        """Backward, clip, optimiser step (through the scaler for fp16) and schedule step."""
        clip = self.config.max_grad_norm
        if self.scaler is None:
            value.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(self.parameters, clip)
            self.optimizer.step()
        else:  # fp16: scale the loss so that small gradients do not underflow
            self.scaler.scale(value).backward()
            self.scaler.unscale_(self.optimizer)
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(self.parameters, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()

    def _record(self, loss: float, step: int, kl_factor: float) -> Dict[str, Any]:
        record = {
            "step": step,
            "loss": loss,
            "kl": None,
            "nll": None,
            "kl_factor": kl_factor,
            "lr": self.scheduler.get_last_lr()[0],
        }
        if callable(self.kl_of) and (step % self.config.log_every == 0 or step == self.total_steps - 1):
            with torch.no_grad():
                record["kl"] = float(self.kl_of())
            # the data term: loss - lambda_t KL / D
            record["nll"] = loss - kl_factor * self.kl_weight * record["kl"] / self.dataset_size
        return record

    def state(self, epoch: int, step: int) -> TrainingState:
        """What a resumed run needs, after ``epoch`` finished epochs and ``step`` steps."""
        return TrainingState(
            epoch=epoch,
            step=step,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            rng=capture_rng_state(),
            history=asdict(self.result),
        )

    def load_state(self, state: TrainingState) -> None:
        """Continue from ``state``: optimiser moments, schedule, random state and history."""
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        restore_rng_state(state.rng)
        self.result = FitResult(
            steps=list(state.history.get("steps", [])),
            epochs=list(state.history.get("epochs", [])),
            train_seconds=state.history.get("train_seconds", 0.0),
        )


# -- one epoch ------------------------------------------------------------------------------------
class _Progress:
    """The tqdm bar of a run (nothing when ``enabled`` is false)."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def step(self, record: Dict[str, Any], epoch: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            postfix = {"epoch": epoch, "loss": f"{record['loss']:.4f}"}
            if record["kl"] is not None:
                postfix.update(nll=f"{record['nll']:.4f}", kl=f"{record['kl']:.3g}")
            self.bar.set_postfix(postfix)

    def write(self, summary: Dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.write(
                f"epoch {summary['epoch']}: " + ", ".join(f"{k}={v:.4f}" for k, v in summary.items() if k != "epoch")
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of ``rank``'s noise in ``epoch`` of a multi-process run: independent across ranks,
    the same after a resume, and below :math:`2^{32}` as numpy requires (without the modulus a seed
    of 5 or more overflowed at the first epoch).

    >>> rank_seed(0, 1, 1), rank_seed(10**9, 3, 1) < 2**32
    (1010, True)
    """
    return ((seed * 1_000_003 + epoch) * 1_009 + rank) % 2**32


def train_epoch(
    svi_step: SVIStep, loader: Iterable[dict], epoch: int, step: int, progress: Optional[_Progress] = None
) -> Tuple[Dict[str, float], int]:
    """Train on ``loader`` for epoch ``epoch``, from optimiser step ``step`` until the loader ends
    or ``svi_step.total_steps`` is reached.

    Calls ``loader.sampler.set_epoch(epoch)`` when it exists (the data order depends on the seed and
    the epoch only) and, in a process group, reseeds from ``(seed, epoch, rank)`` (independent noise
    per rank, the same after a resume).

    :returns: ``({"epoch": epoch, "loss": mean loss of the steps not skipped}, next step)``.
    """
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if svi_step.world_size > 1:
        pyro.set_rng_seed(rank_seed(svi_step.config.seed or 0, epoch, svi_step.rank))
    losses = []
    for batch in loader:
        if step >= svi_step.total_steps:
            break
        record = svi_step(batch, step, epoch)
        if not record.get("skipped"):
            losses.append(record["loss"])
        step += 1
        if progress is not None:
            progress.step(record, epoch)
    return {"epoch": epoch, "loss": sum(losses) / max(1, len(losses))}, step


# -- the run --------------------------------------------------------------------------------------
def _resolve_arguments(
    model, config: Optional[TrainConfig], evaluate: Optional[Evaluator], callbacks: Sequence[Callback], kwargs: dict
):
    """``fit``'s keyword shorthands made into ``(config, evaluate, callbacks)``: config fields
    override ``config``'s, ``eval_loader=`` picks :func:`~pyro_monteclora.evaluation.evaluators.evaluator_for`
    (the one place that looks at the likelihood) and ``on_epoch_end=`` is the last callback."""
    unknown = sorted(set(kwargs) - _CONFIG_FIELDS - _SHORTHANDS)
    if unknown:
        raise TypeError(f"fit() got an unexpected keyword argument {unknown[0]!r}")
    overrides = {name: value for name, value in kwargs.items() if name in _CONFIG_FIELDS}
    if config is None:
        config = TrainConfig(**overrides)
    elif isinstance(config, TrainConfig):
        config = config.replace(**overrides) if overrides else config
    else:
        raise ValueError(f"fit(): config must be a TrainConfig or None, got {type(config).__name__}")
    eval_num_samples, ece_bins = kwargs.get("eval_num_samples", 0), kwargs.get("ece_bins", 15)
    _positive("eval_num_samples", eval_num_samples, integer=True, allow_zero=True)
    _positive("ece_bins", ece_bins, integer=True)
    if kwargs.get("eval_loader") is not None:
        if evaluate is not None:
            raise ValueError("fit(): pass evaluate= or eval_loader=, not both")
        evaluate = evaluator_for(model, kwargs["eval_loader"], eval_num_samples, ece_bins)
    if evaluate is not None and not callable(evaluate):
        raise ValueError(f"fit(): evaluate must be a callable evaluate(model, guide), got {evaluate!r}")
    callbacks = list(callbacks) + ([kwargs["on_epoch_end"]] if kwargs.get("on_epoch_end") is not None else [])
    if not all(callable(callback) for callback in callbacks):
        raise ValueError(f"fit(): callbacks must be callables callback(state), got {callbacks!r}")
    return config, evaluate, callbacks


def _dataset_size(model, train_loader) -> int:
    """:math:`D`: ``model.dataset_size``, else the length of ``train_loader.dataset``."""
    dataset_size = model.dataset_size
    if dataset_size is None:
        dataset = getattr(train_loader, "dataset", None)
        if dataset is None:
            raise ValueError("fit(): set model.dataset_size, or pass a DataLoader with a dataset")
        dataset_size = len(dataset)
    if dataset_size < 1:
        raise ValueError("fit(): the training set is empty")
    return dataset_size


def _check_run(model, config: TrainConfig, train_loader, device, resume: Optional[TrainingState]) -> int:
    """Everything about this run that can be wrong before it starts; returns its step count."""
    if getattr(model, "gradient_checkpointing", False) and config.particles > 1:
        raise ValueError(
            "fit(): gradient checkpointing needs num_particles=1 (each particle "
            "draws its own adapters, and the recomputed forward must see the draw "
            "of the pass it recomputes)"
        )
    if config.dtype is not None:
        check_precision(
            {v: k for k, v in DTYPES.items()}[config.dtype],
            device if device is not None else next(model.parameters()).device,
        )
    available = config.epochs * len(train_loader)
    total_steps = available if config.max_steps is None else min(config.max_steps, available)
    if total_steps < 1:
        raise ValueError("fit(): train_loader yields no batch")
    if resume is not None and (resume.step > total_steps or resume.epoch > config.epochs):
        raise ValueError(
            f"fit(): the resumed state is at epoch {resume.epoch}, step {resume.step}, "
            f"past this run's {config.epochs} epochs / {total_steps} steps"
        )
    return total_steps


def _end_epoch(
    svi_step: SVIStep,
    summary: Dict[str, float],
    step: int,
    *,
    evaluate: Optional[Evaluator],
    callbacks: Sequence[Callback],
    progress: _Progress,
) -> None:
    """Evaluate (under the run's autocast), record the epoch, call the callbacks on rank 0, and wait
    for every rank (rank 0's checkpoint is complete before any rank goes on)."""
    model = svi_step.model
    if evaluate is not None:
        with autocast(svi_step.device, svi_step.config.dtype):
            summary.update(evaluate(model, svi_step.guide))
        model.train()
        progress.write(summary)
    svi_step.result.epochs.append(summary)
    if callbacks and svi_step.rank == 0:
        state = svi_step.state(summary["epoch"] + 1, step)
        for callback in callbacks:
            callback(state)
    barrier()


def fit(
    model: MonteCLoRAModel,
    guide,
    train_loader: Iterable[dict],
    config: Optional[TrainConfig] = None,
    *,
    evaluate: Optional[Evaluator] = None,
    callbacks: Sequence[Callback] = (),
    resume: Optional[TrainingState] = None,
    device=None,
    **kwargs,
) -> FitResult:
    """Train ``model`` and ``guide`` with SVI (AdamW, linear warm-up and decay, clipping).

    :param model: a :class:`~pyro_monteclora.MonteCLoRAModel`.
    :param guide: its :class:`~pyro_monteclora.MonteCLoRAGuide` (any Pyro guide module works).
    :param train_loader: batches (dicts with ``labels``); its ``dataset`` length sets :math:`D`
        unless ``model.dataset_size`` is already set.
    :param config: a :class:`TrainConfig`; its fields may also be given as keywords (``epochs=3,
        learning_rate=2e-3``), which override ``config``'s.
    :param evaluate: ``evaluate(model, guide) -> {metric: value}``, run after every epoch under the
        run's autocast, its metrics merged into that epoch's entry of :attr:`FitResult.epochs`
        (see :mod:`~pyro_monteclora.evaluation.evaluators`). In a process group every rank calls it.
    :param callbacks: each is called with a :class:`~pyro_monteclora.training.state.TrainingState`
        after every epoch (after its evaluation), on rank 0 only, for example to write a checkpoint.
    :param resume: a :class:`~pyro_monteclora.training.state.TrainingState` from an earlier call
        with the same arguments: training continues after its epoch with the same optimiser
        moments, schedule, random state and history, and ends where an uninterrupted run ends.
    :param device: move model and guide there first.
    :param kwargs: :class:`TrainConfig` fields, and the shorthands ``eval_loader=`` (with
        ``eval_num_samples=`` :math:`S`, 0: the mean adapter, and ``ece_bins=``) for the evaluator
        :func:`~pyro_monteclora.evaluation.evaluators.evaluator_for` picks from the likelihood, and
        ``on_epoch_end=`` for one more callback.

    If ``train_loader.sampler`` has ``set_epoch`` (as
    :func:`~pyro_monteclora.data.classification.classification_loader`'s
    and ``DistributedSampler`` do), it is called at the start of every epoch, so the data order
    depends on the seed and the epoch only.

    In a ``torch.distributed`` process group (``torchrun``, ``accelerate launch``; see
    :mod:`~pyro_monteclora.distributed`) the same call trains with ``DistributedDataParallel``: give
    each rank a loader over its shard (``train_loader.dataset`` the whole training set, so that
    :math:`D` is global), and every rank must call ``fit``.

    It stays one function: its body only chains the helpers (argument checks, the SVI step,
    :func:`train_epoch` and the end of each epoch), and its length is this documentation.
    """
    config, evaluate, callbacks = _resolve_arguments(model, config, evaluate, callbacks, kwargs)
    dataset_size = _dataset_size(model, train_loader)
    total_steps = _check_run(model, config, train_loader, device, resume)
    if config.seed is not None:
        pyro.set_rng_seed(config.seed)
    if device is not None:
        model.to(device)
        guide.to(device)
    model.dataset_size = dataset_size
    svi_step = SVIStep(model, guide, config, dataset_size, total_steps)
    epoch = step = 0
    if resume is not None:
        svi_step.load_state(resume)
        epoch, step = resume.epoch, resume.step
    progress = _Progress(config.progress and svi_step.rank == 0, total_steps, step, config.desc)
    model.train()
    try:
        with pyro.validation_enabled(config.validate_args):
            for epoch in range(epoch, config.epochs):
                if step >= total_steps:
                    break
                summary, step = train_epoch(svi_step, train_loader, epoch, step, progress)
                _end_epoch(svi_step, summary, step, evaluate=evaluate, callbacks=callbacks, progress=progress)
    finally:
        progress.close()
    return svi_step.result
