"""Evaluating a causal language model by its likelihoods under the posterior predictive.

A response :math:`y` to a prompt :math:`x` is scored by its log-likelihood summed over its tokens,
:math:`\\log p(y \\mid x, A) = \\sum_{t} \\log p(y_t \\mid y_{<t}, x, A)`
(:func:`~pyro_monteclora.nn.likelihoods.sequence_log_likelihood`), and the posterior predictive averages
the likelihood over :math:`S` adapter draws :math:`A^{(s)} \\sim q` (:math:`S = 0`: the mean adapter):

.. math::

    \\bar p(y \\mid x) = \\frac1S \\sum_{s=1}^S p(y \\mid x, A^{(s)}).

:func:`language_model_metrics` reports the response-token NLL and perplexity of that average.

:func:`predict_multiple_choice` scores each option :math:`c_k` of a question :math:`x` as the
response, :math:`\\ell_k(A) = \\log p(c_k \\mid x, A)`, so an adapter draw gives a distribution over
the options, and the posterior predictive averages those:

.. math::

    p(k \\mid x, A) = \\frac{e^{\\ell_k(A)}}{\\sum_j e^{\\ell_j(A)}}, \\qquad
    \\bar p(k \\mid x) = \\frac1S \\sum_{s=1}^S p(k \\mid x, A^{(s)}).

Accuracy, NLL, ECE and Brier then follow as for a classifier. All options of a question share one
draw (they sit in the same batch, see :func:`~pyro_monteclora.data.multiple_choice.multiple_choice_loader`).
``length_normalize=True`` divides :math:`\\ell_k` by the option's token count first
(lm-eval-harness's ``acc_norm`` style).
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch

from pyro_monteclora.distributed import all_reduce_sums
from pyro_monteclora.infer.predictive import (
    PredictiveOutput,
    adapter_draws,
    evaluation_mode,
    move_batch,
    posterior_predictive,
)
from pyro_monteclora.nn.likelihoods import sequence_log_likelihood

__all__ = ["language_model_metrics", "batch_log_likelihood", "predict_multiple_choice"]


@torch.no_grad()
def batch_log_likelihood(
    model, guide, batch: dict, labels: torch.Tensor, num_samples: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each sequence's predictive log-likelihood of its response tokens,
    :math:`\\log \\frac1S \\sum_s p(y_i \\mid x_i, A^{(s)})` (float64, ``(n,)``), and its number of
    response tokens (``(n,)``), for one batch (``input_ids``, ``attention_mask``; the caller puts the
    model in evaluation mode). :math:`S = 0` is the mean adapter."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    per_draw, tokens = [], None
    for run_model in adapter_draws(model, guide, num_samples, inputs):
        log_likelihood, tokens = sequence_log_likelihood(run_model(**inputs), labels)
        per_draw.append(log_likelihood.double())
    return torch.stack(per_draw).logsumexp(0) - math.log(len(per_draw)), tokens


@torch.no_grad()
def language_model_metrics(model, guide, loader, num_samples: int = 0, device=None) -> Dict[str, float]:
    """Response-token NLL and perplexity of the posterior predictive.

    With :math:`S > 0` each response's predictive likelihood is the sample average
    :math:`\\bar p(y \\mid x) = \\frac1S \\sum_s p(y \\mid x, A^{(s)})` (a log-mean-exp); :math:`S = 0`
    uses the mean adapter. ``token_nll`` is :math:`-\\sum_i \\log \\bar p(y_i \\mid x_i) / \\sum_i |y_i|`
    (nats per token) and ``perplexity`` its exponential. In a process group the sums are taken over
    every rank's shard (all ranks must call it).
    """
    if device is None:
        device = next(model.parameters()).device
    total_log_likelihood, total_tokens = 0.0, 0
    with evaluation_mode(model):
        for batch in loader:
            batch = move_batch(batch, device)
            labels = batch.pop("labels")
            log_likelihood, tokens = batch_log_likelihood(model, guide, batch, labels, num_samples)
            total_log_likelihood += log_likelihood.double().sum().item()
            total_tokens += int(tokens.sum())
    total_log_likelihood, total_tokens = all_reduce_sums([total_log_likelihood, total_tokens])
    total_tokens = int(total_tokens)
    if total_tokens == 0:
        raise ValueError("language_model_metrics(): the loader has no response tokens")
    token_nll = -total_log_likelihood / total_tokens
    return {"token_nll": token_nll, "perplexity": math.exp(min(token_nll, 700.0)), "tokens": total_tokens}


def predict_multiple_choice(
    model, guide, loader, num_samples: int = 10, device=None, progress: bool = False, length_normalize: bool = False
) -> PredictiveOutput:
    """The posterior predictive over each question's options (see the module), for batches of
    :func:`~pyro_monteclora.data.multiple_choice.multiple_choice_loader`.

    :returns: a :class:`~pyro_monteclora.infer.predictive.PredictiveOutput` whose ``probs`` are
        ``(questions, most options)``, zero where a question has fewer options.
    """
    if model.likelihood.name != "causal-lm":
        raise ValueError(f"multiple-choice scoring needs a causal-lm model, got {model.likelihood.name!r}")

    width = max(len(choices) for choices in loader.dataset.choices)

    def option_log_probs(run_model, batch: dict) -> torch.Tensor:
        logits = run_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        scores, tokens = sequence_log_likelihood(logits, batch["target_ids"])
        scores = scores.double()
        if length_normalize:
            scores = scores / tokens.clamp_min(1)
        table = torch.full(
            (int(batch["num_questions"]), width), float("-inf"), dtype=torch.float64, device=scores.device
        )
        table[batch["option_question"], batch["option_slot"]] = scores
        return table.log_softmax(-1)

    return posterior_predictive(
        model, guide, loader, option_log_probs, num_samples, device, progress, desc="multiple choice"
    )
