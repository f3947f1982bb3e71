"""Inference, as :mod:`pyro.infer`: the structured guide, the ELBO and the posterior predictive.

* :mod:`~pyro_monteclora.infer.guides` -- ``MonteCLoRAGuide``: the paper's structured variational
  family.
* :mod:`~pyro_monteclora.infer.mean_field` -- ``MeanFieldGuide``: BLoB's mean-field Gaussian
  posterior over the adapters' random factors (with the Gaussian prior).
* :mod:`~pyro_monteclora.infer.elbo` -- ``MonteCLoRAELBO``: ``TraceMeanField_ELBO`` specialised to
  MonteCLoRA's structure.
* :mod:`~pyro_monteclora.infer.predictive` -- Streaming posterior predictive for classifiers.
* :mod:`~pyro_monteclora.infer.temperature` -- Temperature scaling of any predictive, fitted on
  validation.
* :mod:`~pyro_monteclora.infer.mc_dropout` -- MC dropout on the LoRA adapters.
* :mod:`~pyro_monteclora.infer.ensembles` -- Deep and checkpoint ensembles as one predictive.
* :mod:`~pyro_monteclora.infer.methods` -- Every method's predictive behind one call.
* :mod:`~pyro_monteclora.infer.laplace` -- Laplace-LoRA: a post-hoc KFAC Laplace posterior over a
  trained LoRA adapter, through ``laplace-torch`` (an optional dependency, imported on use).

It imports :mod:`pyro_monteclora.nn`, :mod:`pyro_monteclora.storage` and the leaves.

Every public name of these modules is importable from ``pyro_monteclora.infer``.
"""

from pyro_monteclora.infer import (
    elbo,
    ensembles,
    guides,
    laplace,
    mc_dropout,
    mean_field,
    methods,
    predictive,
    temperature,
)
from pyro_monteclora.infer.elbo import *  # noqa: F403
from pyro_monteclora.infer.ensembles import *  # noqa: F403
from pyro_monteclora.infer.guides import *  # noqa: F403
from pyro_monteclora.infer.laplace import *  # noqa: F403
from pyro_monteclora.infer.mc_dropout import *  # noqa: F403
from pyro_monteclora.infer.mean_field import *  # noqa: F403
from pyro_monteclora.infer.methods import *  # noqa: F403
from pyro_monteclora.infer.predictive import *  # noqa: F403
from pyro_monteclora.infer.temperature import *  # noqa: F403

#: every public name of the modules, in the order the docstring lists them
__all__ = [
    *guides.__all__,
    *mean_field.__all__,
    *elbo.__all__,
    *predictive.__all__,
    *temperature.__all__,
    *mc_dropout.__all__,
    *ensembles.__all__,
    *laplace.__all__,
    *methods.__all__,
]
