"""``MonteCLoRATrainer``: the Hugging Face :class:`transformers.Trainer` training a MonteCLoRA model and guide.

Users who already train with ``Trainer`` keep their :class:`~transformers.TrainingArguments`
(gradient accumulation, bf16, ``torchrun`` / ``accelerate launch``, evaluation and save strategies,
``load_best_model_at_end``, early stopping, logging integrations): only the loss, the saved files
and the evaluation change.

**The loss** is the negative ELBO per training example, the loss
:func:`~pyro_monteclora.training.svi.fit` minimises,

.. math::

   \\mathcal{L} = -\\frac{1}{B}\\sum_{i \\in \\text{batch}} \\log p(y_i \\mid x_i, A)
   + \\frac{\\lambda_t}{D} \\sum_\\ell \\mathrm{KL}_\\ell \\;(+\\ \\text{the cooperative term}),

computed by :class:`ELBOObjective`: a module holding the model, the guide and the Pyro ELBO, whose
``forward(**batch)`` returns ``{"loss": ...}``. It is what ``Trainer`` sees as its model, so its
optimiser covers exactly the trainable tensors of model and guide, and under ``torchrun`` it is
what ``DistributedDataParallel`` wraps. :math:`D` is ``len(train_dataset)`` (the whole set, also
on every rank), :math:`\\lambda_t` the model's ``kl_weight`` annealed linearly over
``kl_anneal_steps`` optimiser steps. With gradient accumulation the ``Trainer`` divides each
micro-batch's loss by the number of micro-batches, which keeps :math:`\\mathcal{L}` the loss of the
accumulated batch. The logs carry the two parts: ``kl`` (the guide's closed-form KL, summed over
factors) and ``nll`` (the logged loss minus :math:`\\lambda_t \\mathrm{KL} / D`).

**Checkpoints** hold no pickle: the model and guide go through
:func:`~pyro_monteclora.storage.checkpoint.save_pretrained` (``model.safetensors`` and
``monteclora_config.json``: the trained tensors only, not the frozen base), the optimiser,
schedule and random state through
:func:`~pyro_monteclora.training.state.save_training_state`, the arguments as
``training_args.json``; ``resume_from_checkpoint`` and ``load_best_model_at_end`` read them back.

**Evaluation** is the posterior predictive: each evaluation batch is scored with ``num_samples``
adapter draws (0: the mean adapter). For a classifier the predictions handed to
``compute_metrics`` are the log of the predictive probabilities and the mutual information, and
the default :func:`posterior_metrics` reports accuracy, NLL, ECE, Brier, Matthews correlation, the
AUROC of spotting errors and the mean mutual information (``eval_loss`` is the predictive NLL). For
a causal LM they are each sequence's predictive log-likelihood and response-token count, and the
metrics are ``token_nll`` and ``perplexity`` (read ``eval_token_nll``: ``Trainer`` averages each
batch's ``eval_loss`` with the batch's number of sequences as its weight, not its number of tokens).

>>> from pyro_monteclora.training.trainer import posterior_metrics
>>> import numpy as np
>>> log_probs = np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
>>> metrics = posterior_metrics((log_probs, np.zeros(3)), np.array([0, 1, 1]))
>>> round(metrics["accuracy"], 4), round(metrics["nll"], 4)
(0.6667, 0.4149)
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import EvalPrediction

from pyro_monteclora.evaluation.language_model import batch_log_likelihood
from pyro_monteclora.infer.elbo import MonteCLoRAELBO
from pyro_monteclora.infer.guides import EmptyGuide
from pyro_monteclora.infer.predictive import (
    batch_predictive,
    classifier_log_probs,
    entropy,
    evaluation_mode,
)
from pyro_monteclora.nn.handlers import kl_scale
from pyro_monteclora.nn.models import HFPyroModel
from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text
from pyro_monteclora.storage.checkpoint import load_trained_tensors, read_trained_tensors, save_pretrained
from pyro_monteclora.training.state import (
    TrainingState,
    capture_rng_state,
    load_training_state,
    restore_rng_state,
    save_training_state,
)
from pyro_monteclora.validation import FieldError, get_field, parse_json

__all__ = [
    "MonteCLoRATrainer",
    "ELBOObjective",
    "posterior_metrics",
    "language_model_posterior_metrics",
    "read_training_args",
]

TRAINING_ARGS_JSON = "training_args.json"
#: the fp16 gradient scaler's state (``Trainer`` pickles it as ``scaler.pt``)
GRAD_SCALER_JSON = "grad_scaler.json"
SCALER_FACTORS = ("scale", "growth_factor", "backoff_factor")
#: the ``TrainingArguments.optim`` values whose state ``training_state.json`` holds (torch's AdamW)
RESUMABLE_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")


def _name(value) -> str:
    """An enum of ``TrainingArguments`` (or a plain string) as the string a user writes."""
    return str(getattr(value, "value", value))


def _check_arguments(args: Optional[TrainingArguments], kwargs: dict) -> None:
    """Refuse, before any work, what would replace the ELBO by another loss, and what would be
    saved in checkpoints that could not be resumed (found out only at the resume, hours later)."""
    if kwargs.get("compute_loss_func") is not None:
        raise ValueError(
            "MonteCLoRATrainer: compute_loss_func must be None (the loss is the ELBO of the model and "
            "guide); give elbo=... for another Pyro ELBO"
        )
    if args is None:
        return
    for field, given in (("deepspeed", args.deepspeed), ("fsdp", args.fsdp), ("torch_compile", args.torch_compile)):
        if given:
            raise ValueError(
                f"MonteCLoRATrainer: {field} must be off, got {given!r}: its save, load and compile paths are not "
                "this trainer's (DDP through torchrun / accelerate launch is supported)"
            )
    if args.label_smoothing_factor != 0:
        raise ValueError(
            "MonteCLoRATrainer: label_smoothing_factor must be 0 (the loss is the ELBO), "
            f"got {args.label_smoothing_factor!r}"
        )
    if _name(args.save_strategy) == "no" or args.save_only_model:
        return
    optimizer, scheduler = tuple(kwargs.get("optimizers") or (None, None))
    optimizer_class = (kwargs.get("optimizer_cls_and_kwargs") or (None, None))[0]
    if optimizer is not None or optimizer_class is not None:
        given = optimizer_class if optimizer is None else type(optimizer)
        if not (isinstance(given, type) and issubclass(given, (torch.optim.Adam, torch.optim.AdamW))):
            raise ValueError(
                "MonteCLoRATrainer: a checkpointed optimiser must be torch.optim.AdamW or Adam (its state "
                f"is saved as safetensors + JSON), got {getattr(given, '__name__', given)}; or set "
                "save_strategy='no' or save_only_model=True"
            )
    elif _name(args.optim) not in RESUMABLE_OPTIMIZERS:
        raise ValueError(
            f"MonteCLoRATrainer: optim must be one of {list(RESUMABLE_OPTIMIZERS)} when checkpoints are "
            f"saved (their optimiser state is safetensors + JSON), got {_name(args.optim)!r}; or set "
            "save_strategy='no' or save_only_model=True"
        )
    plateau = _name(args.lr_scheduler_type) == "reduce_lr_on_plateau"
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) or (scheduler is None and plateau):
        raise ValueError(
            "MonteCLoRATrainer: lr_scheduler_type must not be 'reduce_lr_on_plateau' when checkpoints are "
            "saved (its state cannot be resumed); use 'linear', 'cosine', 'constant' or another schedule, "
            "or set save_strategy='no' or save_only_model=True"
        )


class ELBOObjective(nn.Module):
    """The negative ELBO per training example of ``model`` and ``guide``, as a module.

    :param model: a :class:`~pyro_monteclora.MonteCLoRAModel` (any
        :class:`~pyro_monteclora.nn.models.HFPyroModel`).
    :param guide: its guide (:class:`~pyro_monteclora.MonteCLoRAGuide`, the mean-field guide, or
        :class:`~pyro_monteclora.infer.guides.EmptyGuide` for LoRA).
    :param int dataset_size: :math:`D`, the divisor of the loss per example.
    :param elbo: the Pyro ELBO (default :class:`~pyro_monteclora.infer.elbo.MonteCLoRAELBO`).

    ``forward(**batch)`` returns ``{"loss": -ELBO / D}`` under the KL factor :attr:`kl_factor`.
    """

    def __init__(self, model: HFPyroModel, guide, dataset_size: int, elbo=None):
        super().__init__()
        self.loss_module = (elbo if elbo is not None else MonteCLoRAELBO())(model, guide)
        self.dataset_size = dataset_size
        #: the annealing factor on the latent sites' KL (set by the trainer before each step)
        self.kl_factor = 1.0

    @property
    def model(self) -> HFPyroModel:
        return self.loss_module.model

    @property
    def guide(self):
        return self.loss_module.guide

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        example_index=None,
        **inputs,
    ) -> Dict[str, torch.Tensor]:
        batch = dict(inputs, input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        with kl_scale(self.kl_factor):
            return {"loss": self.loss_module(**batch) / self.dataset_size}


def _eval_prediction(prediction: Union[EvalPrediction, tuple], labels=None) -> Tuple[Any, Any]:
    if isinstance(prediction, EvalPrediction):
        return prediction.predictions, prediction.label_ids
    return prediction, labels


def posterior_metrics(prediction, labels=None, ece_bins: int = 15) -> Dict[str, float]:
    """The classification metrics of a posterior predictive, for ``Trainer``'s ``compute_metrics``.

    :param prediction: an :class:`~transformers.EvalPrediction` whose ``predictions`` are
        ``(log predictive probabilities (n, K), mutual information (n,))`` and ``label_ids`` the
        labels, or that pair with ``labels`` given separately.
    :returns: ``accuracy``, ``nll``, ``ece``, ``brier``, ``matthews_correlation``, ``error_auroc``
        (the predictive entropy as the score) and ``mean_mutual_information``.
    """
    from pyro_monteclora.evaluation.metrics import classification_metrics

    (log_probs, mutual_information), labels = _eval_prediction(prediction, labels)
    probs = torch.as_tensor(np.asarray(log_probs), dtype=torch.float64).exp()
    probs = probs / probs.sum(-1, keepdim=True)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    metrics = classification_metrics(probs, labels, ece_bins, entropy(probs))
    metrics["mean_mutual_information"] = float(np.mean(mutual_information))
    return metrics


def language_model_posterior_metrics(prediction, labels=None) -> Dict[str, float]:
    """``token_nll`` (nats per response token of the posterior predictive) and ``perplexity`` from
    per-sequence ``(predictive log-likelihood, response tokens)`` predictions."""
    (log_likelihood, tokens), _ = _eval_prediction(prediction, labels)
    total_tokens = float(np.sum(tokens))
    if total_tokens == 0:
        raise ValueError("language_model_posterior_metrics(): the evaluation set has no response tokens")
    token_nll = -float(np.sum(np.asarray(log_likelihood, dtype=np.float64))) / total_tokens
    return {"token_nll": token_nll, "perplexity": math.exp(min(token_nll, 700.0)), "tokens": total_tokens}


class MonteCLoRATrainer(Trainer):
    """A :class:`transformers.Trainer` whose loss is the ELBO of a MonteCLoRA model and guide.

    :param model: a :class:`~pyro_monteclora.MonteCLoRAModel` (LoRA and full fine-tuning models of
        this library too, with an ``EmptyGuide``); anything else is refused with a ``TypeError``.
    :param guide: its guide (default: an :class:`~pyro_monteclora.infer.guides.EmptyGuide`, right
        only for a model without latent sites).
    :param args: the :class:`~transformers.TrainingArguments`.
    :param int num_samples: adapter draws per evaluation batch (0: the mean adapter).
    :param int kl_anneal_steps: ramp the KL weight linearly from 0 to 1 over this many steps.
    :param int dataset_size: :math:`D` (default: ``len(train_dataset)``).
    :param elbo: the Pyro ELBO (default :class:`~pyro_monteclora.infer.elbo.MonteCLoRAELBO`).
    :param kwargs: the rest of ``Trainer``'s arguments (``train_dataset``, ``eval_dataset``,
        ``data_collator``, ``processing_class``, ``callbacks``, ``compute_metrics``: by default
        :func:`posterior_metrics` for a classifier, :func:`language_model_posterior_metrics` for a
        causal LM).

    The model and guide trained are :attr:`monteclora_model` and :attr:`guide`; ``trainer.model`` is
    their :class:`ELBOObjective`.
    """

    def __init__(
        self,
        model: HFPyroModel = None,
        guide=None,
        args: Optional[TrainingArguments] = None,
        *,
        num_samples: int = 10,
        kl_anneal_steps: int = 0,
        dataset_size: Optional[int] = None,
        elbo=None,
        ece_bins: int = 15,
        **kwargs,
    ):
        if not isinstance(model, HFPyroModel):
            raise TypeError(
                "MonteCLoRATrainer: model must be a MonteCLoRAModel (a pyro_monteclora HFPyroModel), got "
                f"{type(model).__name__}; wrap a Hugging Face model with "
                "MonteCLoRAModel(network, MonteCLoRAConfig(...)) and pass its guide"
            )
        for name, value, minimum in (("num_samples", num_samples, 0), ("kl_anneal_steps", kl_anneal_steps, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"MonteCLoRATrainer: {name} must be an integer >= {minimum}, got {value!r}")
        _check_arguments(args, kwargs)
        train_dataset = kwargs.get("train_dataset")
        if dataset_size is None and train_dataset is not None:
            if not hasattr(train_dataset, "__len__"):
                raise ValueError(
                    "MonteCLoRATrainer: the training set has no length (a streaming dataset?); give "
                    "dataset_size=D, the number of training examples, which scales the likelihood"
                )
            dataset_size = len(train_dataset)
        if dataset_size is not None and (not isinstance(dataset_size, int) or dataset_size < 1):
            raise ValueError(f"MonteCLoRATrainer: dataset_size must be an integer >= 1, got {dataset_size!r}")
        if guide is None and model.adapter_mode != "mean":
            raise ValueError(
                "MonteCLoRATrainer: a model with sampled adapters needs its guide, "
                "for example MonteCLoRATrainer(model, MonteCLoRAGuide(model), args, ...)"
            )
        guide = guide if guide is not None else EmptyGuide(model)
        self.monteclora_model, self.guide = model, guide
        self.num_samples, self.kl_anneal_steps, self.ece_bins = num_samples, kl_anneal_steps, ece_bins
        self.is_language_model = model.likelihood.name == "causal-lm"
        if kwargs.get("compute_metrics") is None:
            kwargs["compute_metrics"] = (
                language_model_posterior_metrics
                if self.is_language_model
                else lambda prediction: posterior_metrics(prediction, ece_bins=ece_bins)
            )
        model.dataset_size = dataset_size
        objective = ELBOObjective(model, guide, dataset_size or 1, elbo)
        super().__init__(model=objective, args=args, **kwargs)
        # The loss is a per-batch mean (the Trainer divides it by the accumulation steps), and the
        # objective takes no loss keywords (its ``**inputs`` are the model's)
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        if args is not None and args.label_names is None:
            self.label_names = ["labels"]

    # -- the loss --------------------------------------------------------------------------------
    def kl_factor(self, step: int) -> float:
        """The KL annealing factor :math:`\\min(1, t / T_{anneal})` at optimiser step ``step``."""
        return min(1.0, step / self.kl_anneal_steps) if self.kl_anneal_steps else 1.0

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.monteclora_model.dataset_size is None:
            raise ValueError("MonteCLoRATrainer: give train_dataset (or dataset_size) before training")
        objective = self.accelerator.unwrap_model(model)
        objective.kl_factor = self.kl_factor(self.state.global_step)
        objective.dataset_size = self.monteclora_model.dataset_size  # D, also when set after __init__
        # a checkpointed backward recomputes the forward with the draws of the pass it recomputes
        with self.monteclora_model.retained_draws():
            loss = super().training_step(model, inputs, num_items_in_batch)
        return loss

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        # the optimiser steps whose mean loss a log now would carry: from the last log to this step
        self._logged_steps = (self._globalstep_last_logged, self.state.global_step)
        return super()._maybe_log_save_evaluate(*args, **kwargs)

    def _logged_kl_factor(self) -> float:
        """The mean KL factor of the steps behind the logged ``loss`` (step ``t`` used
        ``kl_factor(t)``, and ``global_step`` is ``t + 1`` when its loss is logged)."""
        start, end = getattr(self, "_logged_steps", (None, None))
        if end != self.state.global_step or start is None or start >= end:
            start, end = max(self.state.global_step - 1, 0), max(self.state.global_step, 1)
        return sum(self.kl_factor(step) for step in range(start, end)) / (end - start)

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        """``Trainer.log``, with ``kl`` and ``nll`` beside each training ``loss``."""
        kl_of = getattr(self.guide, "kl_divergence", None)
        if "loss" in logs and callable(kl_of):
            with torch.no_grad():
                kl = float(kl_of())
            weight = getattr(getattr(self.monteclora_model, "config", None), "kl_weight", 1.0)
            dataset_size = self.monteclora_model.dataset_size or 1
            logs = dict(logs, kl=kl, nll=logs["loss"] - self._logged_kl_factor() * weight * kl / dataset_size)
        super().log(logs, start_time)

    # -- evaluation: the posterior predictive ---------------------------------------------------------
    @torch.no_grad()
    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        label_name = (self.label_names or ["labels"])[0]
        batch = {k: v for k, v in inputs.items() if k not in (label_name, "example_index")}
        labels = inputs.get(label_name)
        monteclora = self.monteclora_model
        if self.is_language_model and labels is None:
            raise ValueError(
                f"MonteCLoRATrainer: a causal LM is scored on its response tokens, but the evaluation batch "
                f"has no {label_name!r} (the prompt masked with -100); its keys are {sorted(inputs)}"
            )
        with evaluation_mode(monteclora), self.autocast_smart_context_manager():
            if self.is_language_model:
                log_likelihood, tokens = batch_log_likelihood(monteclora, self.guide, batch, labels, self.num_samples)
                loss = -log_likelihood.sum() / tokens.sum().clamp_min(1)
                predictions = (log_likelihood.float(), tokens.float())
                return (loss.float(), None, None) if prediction_loss_only else (loss.float(), predictions, labels)
            mean_probs, expected = batch_predictive(
                monteclora, self.guide, batch, classifier_log_probs, self.num_samples
            )
        log_probs = mean_probs.clamp_min(1e-300).log()
        loss = None
        if labels is not None:
            loss = -log_probs.gather(-1, labels[:, None]).mean().float()
        if prediction_loss_only:
            return loss, None, None
        mutual_information = (entropy(mean_probs) - expected).clamp_min(0.0)
        return loss, (log_probs.float(), mutual_information.float()), labels

    # -- checkpoints: safetensors + JSON, no pickle -----------------------------------------------------
    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        save_pretrained(self.monteclora_model, output_dir, guide=self.guide, metadata={"trainer": "MonteCLoRATrainer"})
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        atomic_write_text(Path(output_dir) / TRAINING_ARGS_JSON, self.args.to_json_string())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        tensors = read_trained_tensors(resume_from_checkpoint)
        load_trained_tensors(self.monteclora_model, self.guide, tensors, source=resume_from_checkpoint)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best is not None and os.path.isdir(best):
            self._load_from_checkpoint(best)
        elif best is not None:
            warnings.warn(
                f"MonteCLoRATrainer: the best checkpoint {best} is not on this machine; the model keeps "
                "the last step's tensors (use a shared disk or save_on_each_node=True)",
                stacklevel=2,
            )

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.args.should_save:
            return
        state = TrainingState(
            epoch=int(self.state.epoch or 0),
            step=self.state.global_step,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.lr_scheduler.state_dict(),
            rng=capture_rng_state(),
        )
        save_training_state(output_dir, state)

    def _save_rng_state(self, output_dir: str) -> None:
        pass  # in training_state.safetensors / .json, with the optimiser

    def _load_optimizer_and_scheduler(self, checkpoint: Optional[str]) -> None:
        if checkpoint is None:
            return
        state = load_training_state(checkpoint)
        if state is None:
            raise FileNotFoundError(
                f"MonteCLoRATrainer: {checkpoint} holds no training_state.json to resume from (a checkpoint "
                "saved with save_only_model=True has only the model: start a new run from it instead)"
            )
        self.optimizer.load_state_dict(state.optimizer)
        self.lr_scheduler.load_state_dict(
            dict(state.scheduler, lr_lambdas=self.lr_scheduler.state_dict()["lr_lambdas"])
        )

    def _save_scaler(self, output_dir: str) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        state = scaler.state_dict() if scaler is not None else {}  # {} when the scaler is disabled
        if state and self.args.should_save:
            atomic_write_json(Path(output_dir) / GRAD_SCALER_JSON, state)

    def _load_scaler(self, checkpoint: Optional[str]) -> None:
        """The fp16 gradient scaler from ``grad_scaler.json`` (a ``scaler.pt`` is never unpickled)."""
        scaler = getattr(self.accelerator, "scaler", None)
        path = Path(checkpoint) / GRAD_SCALER_JSON if checkpoint is not None else None
        if scaler is None or path is None or not path.is_file():
            return
        from pyro_monteclora.storage.checkpoint import CheckpointError

        positive = dict(minimum=0, exclusive_minimum=True)
        try:
            record = parse_json(path.read_text(encoding="utf-8"))
            state = {key: get_field(record, key, key, "number", **positive) for key in SCALER_FACTORS}
            for key in ("growth_interval", "_growth_tracker"):
                state[key] = get_field(record, key, key, "integer", minimum=int(key == "growth_interval"))
        except (UnicodeDecodeError, json.JSONDecodeError, FieldError) as error:
            raise CheckpointError(f"{path}: {error}") from None
        scaler.load_state_dict(state)

    def _load_rng_state(self, checkpoint: Optional[str]) -> None:
        if checkpoint is None:
            return
        state = load_training_state(checkpoint)
        if state is not None:
            restore_rng_state(state.rng)


def read_training_args(checkpoint: Union[str, os.PathLike]) -> dict:
    """The ``TrainingArguments`` a checkpoint was written with, as the JSON dictionary it holds."""
    return json.loads((Path(checkpoint) / TRAINING_ARGS_JSON).read_text(encoding="utf-8"))
