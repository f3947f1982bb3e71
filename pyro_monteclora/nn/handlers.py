"""Effect handlers for MonteCLoRA's ELBO.

:func:`kl_scale` multiplies the log-densities of the latent (KL-bearing) sites by a weight
:math:`\\lambda` in both the model and the guide, which turns the ELBO into

.. math::

    E_q[\\log p(y \\mid x, A)] - \\lambda \\sum_\\ell \\mathrm{KL}_\\ell,

the paper's KL weight and the usual annealing schedules. It composes with the static
``MonteCLoRAConfig.kl_weight`` (the two multiply) and works with any Pyro ELBO:

>>> import pyro, torch
>>> from pyro_monteclora.nn.sites import LATENT_SITE
>>> def model():
...     return pyro.sample("z", pyro.distributions.Normal(0., 1.), infer={LATENT_SITE: True})
>>> with kl_scale(0.25):
...     trace = pyro.poutine.trace(model).get_trace()
>>> trace.nodes["z"]["scale"]
0.25
"""

from __future__ import annotations

from pyro.poutine.messenger import Messenger

from pyro_monteclora.nn.sites import LATENT_SITE

__all__ = ["kl_scale", "KLScaleMessenger", "PresampledMessenger"]


class KLScaleMessenger(Messenger):
    """Scale the sites tagged ``infer={LATENT_SITE: True}`` by ``weight``."""

    def __init__(self, weight: float):
        if not (isinstance(weight, (int, float)) and weight >= 0):
            raise ValueError(f"kl_scale weight must be a number >= 0, got {weight!r}")
        super().__init__()
        self.weight = float(weight)

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and msg["infer"].get(LATENT_SITE):
            msg["scale"] = self.weight * msg["scale"]


def kl_scale(weight: float) -> KLScaleMessenger:
    """Handler (usable as a context manager or decorator) scaling the latent sites by ``weight``."""
    return KLScaleMessenger(weight)


class PresampledMessenger(Messenger):
    """Give the named latent sites values drawn beforehand, as ``poutine.replay`` gives a trace's.

    A site keeps its own distribution (for densities and KLs) and stays latent; only its draw is
    taken from ``values``. :class:`~pyro_monteclora.MonteCLoRAGuide` draws all layers' factors in a
    few batched operations and hands them to the per-layer sites with it. A handler outside this
    one (an outer ``poutine.replay`` or ``condition``) still has the last word.

    >>> import pyro, torch
    >>> def guide():
    ...     return pyro.sample("z", pyro.distributions.Normal(0., 1.))
    >>> with PresampledMessenger({"z": torch.tensor(3.0)}):
    ...     trace = pyro.poutine.trace(guide).get_trace()
    >>> trace.nodes["z"]["value"].item(), trace.nodes["z"]["is_observed"]
    (3.0, False)
    """

    def __init__(self, values: dict):
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["name"] not in self.values:
            return
        msg["value"] = self.values[msg["name"]]
        msg["done"] = True
