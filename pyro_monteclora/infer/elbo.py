"""``MonteCLoRAELBO``: ``TraceMeanField_ELBO`` specialised to MonteCLoRA's structure.

It estimates exactly what ``TraceMeanField_ELBO`` estimates for a MonteCLoRA model and guide,

.. math::

    \\mathrm{ELBO} = \\sum_{\\text{observed}} \\text{scale} \\cdot \\log p(y \\mid x, A)
    - \\sum_{\\text{latent}} \\text{scale} \\cdot \\mathrm{KL}(q \\,\\|\\, p),

from the same draws (the guide is traced, the model replayed on it), but it

* takes the KLs of all layers' covariance and mixture-weight sites from
  :meth:`~pyro_monteclora.MonteCLoRAGuide.kl_terms` in a few batched operations, instead of one
  ``kl_divergence`` dispatch per site;
* knows the shared noise sites' KL is exactly 0;
* computes no log-density that the estimate does not use (``TraceMeanField_ELBO`` computes every
  site's, then discards the latent ones).

The scale of each latent site (``kl_weight`` and any :func:`~pyro_monteclora.kl_scale`) is read from
the guide trace, as Pyro does. Latent sites the guide does not know fall back to Pyro's rule: the
analytic KL when one is registered, else :math:`\\log p - \\log q`. Use it like any Pyro ELBO:
``SVI(model, guide, optim, MonteCLoRAELBO())`` or ``MonteCLoRAELBO()(model, guide)`` as a module.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.util import torch_item
from pyro.poutine.util import prune_subsample_sites
from pyro.util import warn_if_nan
from torch.distributions import kl_divergence

__all__ = ["MonteCLoRAELBO"]


def _scaled_sum(value: torch.Tensor, site: dict) -> torch.Tensor:
    return scale_and_mask(value, site["scale"], site["mask"]).sum()


class MonteCLoRAELBO(ELBO):
    """The mean-field ELBO of a MonteCLoRA model and guide, with batched closed-form KLs.

    :param int num_particles: draws averaged per estimate.
    """

    def __init__(self, num_particles: int = 1, **kwargs):
        super().__init__(num_particles=num_particles, vectorize_particles=False, **kwargs)

    def _get_trace(self, model, guide, args, kwargs):
        """The guide traced, and the model replayed on its draws (no log-density computed yet)."""
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)

    def _elbo_particle(self, model, guide, args, kwargs) -> torch.Tensor:
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        zero_kl = guide.zero_kl_sites() if hasattr(guide, "zero_kl_sites") else set()
        elbo, kl_terms = self._batched_kl_part(guide, guide_trace, model_trace)
        if kl_terms is None:  # scales that differ, a mask, or no batched KLs: one KL per site
            kl_terms = guide.kl_terms() if hasattr(guide, "kl_terms") else {}
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site["infer"].get("_deterministic"):
                continue
            if site["is_observed"]:
                elbo = elbo + _scaled_sum(site["fn"].log_prob(site["value"]), site)
                continue
            if name in zero_kl:
                continue
            if name not in guide_trace.nodes:
                raise ValueError(f"MonteCLoRAELBO: the model's latent site {name!r} is not in the guide")
            guide_site = guide_trace.nodes[name]
            if name in kl_terms:
                if kl_terms[name] is not None:  # None: already in the batched KL part
                    elbo = elbo - _scaled_sum(kl_terms[name], guide_site)
                continue
            try:
                kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:
                kl = guide_site["fn"].log_prob(guide_site["value"]) - site["fn"].log_prob(site["value"])
            elbo = elbo - _scaled_sum(kl, guide_site)
        return elbo

    @staticmethod
    def _batched_kl_part(guide, guide_trace, model_trace):
        """``(-scale * sum of the guide's batched KLs, {their sites: None})`` when every one of
        those sites is latent in the model and has, in the guide, the same scale and no mask (the
        usual case: one ``kl_weight``), else ``(0.0, None)``; summing the KL vector once saves a
        select, a scale and a sum per site."""
        if not hasattr(guide, "batched_kl"):
            return 0.0, None
        names, kls = guide.batched_kl()
        if not names:
            return 0.0, {}
        sites = [guide_trace.nodes.get(name) for name in names]
        if any(site is None or site["mask"] is not None for site in sites):
            return 0.0, None
        for name in names:  # a site conditioned or never reached in the model has no KL term
            model_site = model_trace.nodes.get(name)
            if model_site is None or model_site["type"] != "sample" or model_site["is_observed"]:
                return 0.0, None
        scales = {
            float(site["scale"]) if not torch.is_tensor(site["scale"]) or site["scale"].dim() == 0 else None
            for site in sites
        }
        if len(scales) != 1 or None in scales:
            return 0.0, None
        scale = scales.pop()
        handled = dict.fromkeys(names, None)
        return -(scale * kls.sum()), handled

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative ELBO, differentiable in the model's and guide's parameters."""
        loss = 0.0
        for _ in range(self.num_particles):
            loss = loss - self._elbo_particle(model, guide, args, kwargs)
        loss = loss / self.num_particles
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The negative ELBO as a number."""
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The negative ELBO, with its gradients accumulated into the parameters (for ``SVI``)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if torch.is_tensor(loss) and loss.requires_grad:
            loss.backward()
        return torch_item(loss)
