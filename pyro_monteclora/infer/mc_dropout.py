"""MC dropout (Gal and Ghahramani, 2016) on the LoRA adapters: a baseline the paper compares.

A plain LoRA model (``MonteCLoRAModel(..., adapter_mode="mean")``) trained with adapter dropout
:math:`p > 0` (``MonteCLoRAConfig(dropout=p)``) keeps that dropout on at prediction time, and the
predictive averages :math:`S` passes, each with its own dropout mask on every adapter's input:

.. math::

    \\bar p(y \\mid x) = \\frac1S \\sum_{s=1}^S p\\big(y \\mid x, W_0 + \\gamma B A\\,
    \\operatorname{diag}(m^{(s)}) / (1 - p)\\big), \\qquad m^{(s)}_j \\sim \\operatorname{Bernoulli}(1 - p).

Only the adapters' dropout is switched on (the frozen base's own dropout stays off), so with
:math:`p = 0`, or :math:`S = 0`, this is exactly the LoRA predictive. The uncertainty terms
(expected entropy, mutual information) are those of :func:`~pyro_monteclora.infer.predictive.predict`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch

from pyro_monteclora.infer.predictive import PredictiveOutput, classifier_log_probs, posterior_predictive
from pyro_monteclora.nn.models import HFPyroModel

__all__ = ["mc_dropout_predict", "dropout_draws", "adapter_dropout"]


@contextlib.contextmanager
def adapter_dropout(model: HFPyroModel) -> Iterator[HFPyroModel]:
    """Within the context every adapter's input dropout is on (training mode), whatever the
    model's own mode; each goes back to the mode it had."""
    modules = [adapter.dropout for adapter in model.adapters().values()]
    modes = [module.training for module in modules]
    for module in modules:
        module.train()
    try:
        yield model
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


def dropout_draws(model: HFPyroModel, guide, num_samples: int, inputs: dict) -> Iterator[Callable[..., torch.Tensor]]:
    """Yield ``num_samples`` functions that run the mean-adapter model with fresh adapter dropout
    masks (one, without dropout, for ``num_samples = 0``); ``guide`` is not used."""

    def with_dropout(**batch) -> torch.Tensor:
        with model.mean_adapters(), adapter_dropout(model):
            return model.logits(**batch)

    def without_dropout(**batch) -> torch.Tensor:
        with model.mean_adapters():
            return model.logits(**batch)

    if num_samples == 0:
        yield without_dropout
        return
    for _ in range(num_samples):
        yield with_dropout


def mc_dropout_predict(
    model: HFPyroModel,
    loader: Iterable[dict],
    num_samples: int = 10,
    device=None,
    progress: bool = False,
) -> PredictiveOutput:
    """The MC-dropout predictive of a LoRA classifier over every batch of ``loader``.

    :param model: a model with adapters and ``adapter_mode="mean"`` (plain LoRA), trained with
        adapter dropout; a sequence-classification likelihood.
    :param int num_samples: :math:`S \\ge 0` dropout masks per batch; 0 is the LoRA predictive.
    """
    if model.likelihood.name != "sequence-classification":
        raise ValueError(f"MC dropout needs a sequence-classification model, got {model.likelihood.name!r}")
    if not model.adapters() or model.adapter_mode != "mean":
        raise ValueError(
            "MC dropout applies to a LoRA model (adapters with adapter_mode='mean'); "
            f"this one is a {type(model).__name__} with adapter_mode={model.adapter_mode!r}"
        )
    return posterior_predictive(
        model,
        None,
        loader,
        classifier_log_probs,
        num_samples=num_samples,
        device=device,
        progress=progress,
        desc="MC dropout",
        draws=dropout_draws,
    )
