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

from pyro_monteclora.nn import baselines, handlers, layers, likelihoods, models, precision, priors, sites
from pyro_monteclora.nn.baselines import *  # noqa: F403
from pyro_monteclora.nn.handlers import *  # noqa: F403
from pyro_monteclora.nn.layers import *  # noqa: F403
from pyro_monteclora.nn.likelihoods import *  # noqa: F403
from pyro_monteclora.nn.models import *  # noqa: F403
from pyro_monteclora.nn.precision import *  # noqa: F403
from pyro_monteclora.nn.priors import *  # noqa: F403
from pyro_monteclora.nn.sites import *  # noqa: F403

#: every public name of the modules, in the order the docstring lists them
__all__ = [
    *sites.__all__,
    *handlers.__all__,
    *priors.__all__,
    *layers.__all__,
    *likelihoods.__all__,
    *models.__all__,
    *baselines.__all__,
    *precision.__all__,
]
