"""Inference, as :mod:`pyro.infer`: the structured guide, the ELBO and the posterior predictive.

* :mod:`~pyro_monteclora.infer.guides` -- ``MonteCLoRAGuide``: the paper's structured variational
  family.
* :mod:`~pyro_monteclora.infer.elbo` -- ``MonteCLoRAELBO``: ``TraceMeanField_ELBO`` specialised to
  MonteCLoRA's structure.
* :mod:`~pyro_monteclora.infer.predictive` -- Streaming posterior predictive for classifiers.

It imports :mod:`pyro_monteclora.nn`, :mod:`pyro_monteclora.storage` and the leaves.

Every public name of these modules is importable from ``pyro_monteclora.infer``.
"""

from pyro_monteclora.infer.elbo import MonteCLoRAELBO
from pyro_monteclora.infer.guides import SCALE_TRIL_KINDS, EmptyGuide, FactorPosterior, MonteCLoRAGuide
from pyro_monteclora.infer.predictive import (
    PredictiveOutput,
    adapter_draws,
    entropy,
    move_batch,
    posterior_predictive,
    predict,
    uses_mean_adapter,
)

__all__ = [
    "MonteCLoRAGuide",
    "EmptyGuide",
    "FactorPosterior",
    "SCALE_TRIL_KINDS",
    "MonteCLoRAELBO",
    "predict",
    "posterior_predictive",
    "PredictiveOutput",
    "entropy",
    "move_batch",
    "adapter_draws",
    "uses_mean_adapter",
]
