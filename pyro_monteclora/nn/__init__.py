"""The Pyro model, as :mod:`pyro.nn` holds Pyro's modules: adapter layers, their sites and
effect handlers, likelihoods, and the models over a Hugging Face network.

* :mod:`~pyro_monteclora.nn.sites` -- The names and tags of MonteCLoRA's Pyro sites: the contract
  between the model and any guide.
* :mod:`~pyro_monteclora.nn.handlers` -- Effect handlers for MonteCLoRA's ELBO.
* :mod:`~pyro_monteclora.nn.priors` -- ``MonteCLoRAPrior``: the prior of every adapter's random
  factor, as one object.
* :mod:`~pyro_monteclora.nn.layers` -- The MonteCLoRA adapter layer: a frozen linear layer plus a
  low-rank update whose factor is random.
* :mod:`~pyro_monteclora.nn.likelihoods` -- Likelihoods: how the wrapped network's logits explain
  the labels.
* :mod:`~pyro_monteclora.nn.models` -- ``MonteCLoRAModel``: a ``PyroModule`` that turns any HF model
  into a MonteCLoRA Pyro model.
* :mod:`~pyro_monteclora.nn.baselines` -- Full fine-tuning: the paper's third baseline, in the same
  Pyro code path.
* :mod:`~pyro_monteclora.nn.precision` -- Mixed precision: a frozen base in bf16/fp16, adapters and
  sampler math in fp32.

It imports the leaves and :mod:`pyro_monteclora.storage`; it never knows the guide side
(:mod:`pyro_monteclora.infer`).

Every public name of these modules is importable from ``pyro_monteclora.nn``.
"""

from pyro_monteclora.nn.baselines import FullFineTuneModel
from pyro_monteclora.nn.handlers import KLScaleMessenger, PresampledMessenger, kl_scale
from pyro_monteclora.nn.layers import MonteCLoRALinear, latent_scale, record_value, sample_adapter_factors
from pyro_monteclora.nn.likelihoods import (
    CausalLM,
    Likelihood,
    SequenceClassification,
    get_likelihood,
    sequence_log_likelihood,
)
from pyro_monteclora.nn.models import HFPyroModel, MonteCLoRAModel, inject_adapters
from pyro_monteclora.nn.precision import DTYPES, autocast, cast_frozen, check_precision, device_type
from pyro_monteclora.nn.priors import MonteCLoRAPrior
from pyro_monteclora.nn.sites import LATENT_SITE, factor_site_names

__all__ = [
    "LATENT_SITE",
    "factor_site_names",
    "kl_scale",
    "KLScaleMessenger",
    "PresampledMessenger",
    "MonteCLoRAPrior",
    "MonteCLoRALinear",
    "sample_adapter_factors",
    "latent_scale",
    "record_value",
    "Likelihood",
    "SequenceClassification",
    "CausalLM",
    "get_likelihood",
    "sequence_log_likelihood",
    "HFPyroModel",
    "MonteCLoRAModel",
    "inject_adapters",
    "FullFineTuneModel",
    "DTYPES",
    "check_precision",
    "autocast",
    "cast_frozen",
    "device_type",
]
