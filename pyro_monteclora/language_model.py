"""Evaluating a causal language model by its likelihoods under the posterior predictive.

A response :math:`y` to a prompt :math:`x` is scored by its log-likelihood summed over its tokens,
:math:`\\log p(y \\mid x, A) = \\sum_{t} \\log p(y_t \\mid y_{<t}, x, A)`
(:func:`~pyro_monteclora.likelihoods.sequence_log_likelihood`), and the posterior predictive averages
the likelihood over :math:`S` adapter draws :math:`A^{(s)} \\sim q` (:math:`S = 0`: the mean adapter):

.. math::

    \\bar p(y \\mid x) = \\frac1S \\sum_{s=1}^S p(y \\mid x, A^{(s)}).

:func:`language_model_metrics` reports the response-token NLL and perplexity of that average.
"""

from __future__ import annotations

import math
from typing import Dict

import torch

from .distributed import all_reduce_sums
from .likelihoods import sequence_log_likelihood
from .predictive import adapter_draws, move_batch, uses_mean_adapter

__all__ = ["language_model_metrics"]


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
    draws = 1 if uses_mean_adapter(model, guide, num_samples) else num_samples
    was_training = model.training
    model.eval()
    total_log_likelihood, total_tokens = 0.0, 0
    try:
        for batch in loader:
            batch = move_batch(batch, device)
            labels = batch.pop("labels")
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
            per_draw = []
            for run_model in adapter_draws(model, guide, num_samples, inputs):
                log_likelihood, tokens = sequence_log_likelihood(run_model(**inputs), labels)
                per_draw.append(log_likelihood.double())
            log_likelihood = torch.stack(per_draw).logsumexp(0) - math.log(draws)
            total_log_likelihood += log_likelihood.double().sum().item()
            total_tokens += int(tokens.sum())
    finally:
        model.train(was_training)
    total_log_likelihood, total_tokens = all_reduce_sums([total_log_likelihood, total_tokens])
    total_tokens = int(total_tokens)
    if total_tokens == 0:
        raise ValueError("language_model_metrics(): the loader has no response tokens")
    token_nll = -total_log_likelihood / total_tokens
    return {"token_nll": token_nll, "perplexity": math.exp(min(token_nll, 700.0)), "tokens": total_tokens}
