"""Evaluators for :func:`~pyro_monteclora.training.svi.fit`: what it measures after every epoch.

An evaluator is any callable ``evaluate(model, guide) -> Dict[str, float]``; ``fit(...,
evaluate=...)`` runs it after each epoch (under the run's autocast) and merges its metrics into
that epoch's entry of :attr:`FitResult.epochs <pyro_monteclora.training.svi.FitResult.epochs>`. Two are
provided, one per likelihood, and the caller picks:

* :class:`ClassificationEvaluator`: accuracy, NLL, ECE, Brier and Matthews correlation of the
  posterior predictive of a sequence classifier;
* :class:`LanguageModelEvaluator`: response-token NLL and perplexity of a causal LM
  (:func:`~pyro_monteclora.data.causal_lm.language_model_metrics`).

:func:`evaluator_for` picks one from the model's likelihood class; ``fit(eval_loader=...)`` uses it.
In a ``torch.distributed`` process group every rank evaluates its shard and the results are
combined, so all ranks must call an evaluator.

>>> evaluate = ClassificationEvaluator([], num_samples=4)
>>> evaluate.num_samples, evaluate.ece_bins
(4, 15)
"""

from __future__ import annotations

import numbers
from typing import Callable, Dict, Iterable

import torch

from pyro_monteclora.distributed import gather_tensors
from pyro_monteclora.evaluation.language_model import language_model_metrics
from pyro_monteclora.evaluation.metrics import classification_metrics
from pyro_monteclora.infer.predictive import predict
from pyro_monteclora.nn.likelihoods import CausalLM

__all__ = ["Evaluator", "ClassificationEvaluator", "LanguageModelEvaluator", "evaluator_for"]

#: ``evaluate(model, guide) -> {metric: value}``
Evaluator = Callable[..., Dict[str, float]]


def _check_count(owner: str, name: str, value, minimum: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")


class ClassificationEvaluator:
    """The posterior predictive's classification metrics on ``loader``.

    :param loader: batches with ``labels`` (in a process group: this rank's shard, for example
        from :func:`~pyro_monteclora.data.samplers.evaluation_sampler`).
    :param int num_samples: :math:`S` adapters per batch (0: the mean adapter).
    :param int ece_bins: bins of the expected calibration error.
    """

    def __init__(self, loader: Iterable[dict], num_samples: int = 0, ece_bins: int = 15):
        _check_count("ClassificationEvaluator", "num_samples", num_samples, 0)
        _check_count("ClassificationEvaluator", "ece_bins", ece_bins, 1)
        self.loader, self.num_samples, self.ece_bins = loader, num_samples, ece_bins

    def __call__(self, model, guide) -> Dict[str, float]:
        if len(self.loader) == 0:  # an empty shard (fewer examples than ranks) contributes nothing
            probs = torch.empty(0, model.network.config.num_labels)
            labels = torch.empty(0, dtype=torch.long)
        else:
            output = predict(model, guide, self.loader, num_samples=self.num_samples)
            probs, labels = output.probs, output.labels
        gathered = gather_tensors({"probs": probs, "labels": labels})  # all ranks' shards
        return classification_metrics(gathered["probs"], gathered["labels"], self.ece_bins)


class LanguageModelEvaluator:
    """Response-token NLL and perplexity of the posterior predictive on ``loader`` (batches from
    :func:`~pyro_monteclora.data.causal_lm.causal_lm_loader`).

    :param int num_samples: :math:`S` adapters per batch (0: the mean adapter).
    """

    def __init__(self, loader: Iterable[dict], num_samples: int = 0):
        _check_count("LanguageModelEvaluator", "num_samples", num_samples, 0)
        self.loader, self.num_samples = loader, num_samples

    def __call__(self, model, guide) -> Dict[str, float]:
        return language_model_metrics(model, guide, self.loader, self.num_samples)


def evaluator_for(model, loader: Iterable[dict], num_samples: int = 0, ece_bins: int = 15) -> Evaluator:
    """The evaluator that suits ``model``'s likelihood: a :class:`LanguageModelEvaluator` for a
    :class:`~pyro_monteclora.nn.likelihoods.CausalLM`, else a :class:`ClassificationEvaluator`
    (``ece_bins`` applies to that one only)."""
    if isinstance(model.likelihood, CausalLM):
        return LanguageModelEvaluator(loader, num_samples)
    return ClassificationEvaluator(loader, num_samples, ece_bins)
