"""``MeanFieldGuide``: BLoB's mean-field Gaussian posterior over the adapters' random factors.

With the Gaussian prior (``MonteCLoRAConfig(prior="gaussian")``,
:class:`~pyro_monteclora.nn.priors.GaussianPrior`) every adapted layer :math:`\\ell` has one latent
site per random factor, :math:`A_\\ell \\in \\mathbb{R}^{r \\times d_{in}}` with
:math:`p(A_\\ell) = \\prod_{ij} \\mathcal N(A_{\\ell,ij}; 0, \\sigma_p^2)`, and the guide is

.. math::

    q(A_\\ell) = \\prod_{ij} \\mathcal N\\big(A_{\\ell,ij};\\, M_{\\ell,ij},\\, \\sigma_{\\ell,ij}^2\\big),
    \\qquad \\sigma_{\\ell,ij} = e^{\\rho_{\\ell,ij}},

whose mean is the layer's own :math:`M_\\ell` (``lora_A_mean``: the mean adapter :math:`A = M`,
used with :math:`S = 0`, is LoRA's) and whose per-entry scales :math:`\\sigma` are the guide's
parameters. :math:`B` stays a point estimate (unless ``random_B``: then :math:`B_\\ell` gets the same
treatment around ``lora_B``). Draws are reparameterised, :math:`A = M + \\sigma \\odot \\varepsilon`,
:math:`\\varepsilon \\sim \\mathcal N(0, I)`, and the KL is in closed form,

.. math::

    \\mathrm{KL}\\big(q(A_\\ell) \\,\\|\\, p(A_\\ell)\\big)
    = \\sum_{ij} \\Big[\\log\\frac{\\sigma_p}{\\sigma_{\\ell,ij}}
    + \\frac{\\sigma_{\\ell,ij}^2 + M_{\\ell,ij}^2}{2\\sigma_p^2} - \\frac12\\Big],

so that the ELBO :class:`~pyro_monteclora.MonteCLoRAELBO` estimates is BLoB's (Wang et al., NeurIPS
2024), :math:`E_q[\\log p(y \\mid x, A)] - \\lambda \\sum_\\ell \\mathrm{KL}_\\ell`, with the same data
scaling and ``kl_weight`` :math:`\\lambda` as MonteCLoRA's. The KL reaches :math:`M` too (a pull
towards 0 of strength :math:`1/\\sigma_p^2`, like weight decay).

**Initialisation.** BLoB parameterises :math:`\\sigma = G^2` with :math:`G \\sim U(\\epsilon/\\sqrt2,
\\epsilon)`, :math:`\\epsilon = 0.05`, so :math:`\\sigma` starts uniform on
:math:`[\\epsilon^2/2, \\epsilon^2] = [1.25 \\cdot 10^{-3}, 2.5 \\cdot 10^{-3}]`; this guide draws
:math:`\\sigma \\sim U(s_0 / 2, s_0)` with ``init_scale`` :math:`s_0 = 2.5 \\cdot 10^{-3}`, the same
range, and learns :math:`\\rho = \\log \\sigma` (the package's convention, as
:class:`~pyro_monteclora.FactorPosterior`'s :math:`\\sigma`: a step of Adam changes :math:`\\sigma` by
a factor, which suits a scale that must travel from :math:`10^{-3}` towards :math:`\\sigma_p`).
The prior's default :math:`\\sigma_p = 0.2` is BLoB's too.

:func:`build_mean_field` builds the pair from a Hugging Face network (the ``blob`` method).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_monteclora.config import MonteCLoRAConfig
from pyro_monteclora.nn._params import register_parameters
from pyro_monteclora.nn.handlers import PresampledMessenger
from pyro_monteclora.nn.layers import latent_scale
from pyro_monteclora.nn.models import MonteCLoRAModel
from pyro_monteclora.nn.sites import LATENT_SITE, factor_site_names
from pyro_monteclora.storage.checkpoint import register_guide

__all__ = ["MeanFieldGuide", "build_mean_field", "gaussian_kl"]


def gaussian_kl(mean: torch.Tensor, log_scale: torch.Tensor, prior_std: float) -> torch.Tensor:
    """:math:`\\mathrm{KL}(\\mathcal N(m, e^{2\\rho}) \\| \\mathcal N(0, \\sigma_p^2))` per entry:
    :math:`\\log \\sigma_p - \\rho + (e^{2\\rho} + m^2) / (2 \\sigma_p^2) - 1/2`.

    >>> round(gaussian_kl(torch.tensor(0.0), torch.tensor(math.log(0.2)), 0.2).item(), 6)
    0.0
    """
    return math.log(prior_std) - log_scale + ((2 * log_scale).exp() + mean.square()) / (2 * prior_std**2) - 0.5


@register_guide
class MeanFieldGuide(PyroModule):
    """BLoB's mean-field Gaussian guide for a :class:`~pyro_monteclora.MonteCLoRAModel` with the
    Gaussian prior.

    :param model: the model to guide: ``config.prior == "gaussian"`` and ``adapter_mode="sample"``.
        The guide holds it (not as a submodule) and never changes it; its means are the model's
        ``lora_A_mean`` (and ``lora_B`` with ``random_B``).
    :param float init_scale: :math:`s_0 > 0`; each :math:`\\sigma` starts uniform on
        :math:`[s_0/2, s_0]` (default :math:`2.5 \\cdot 10^{-3}`, BLoB's range).
    :param str name: prefix in Pyro's global parameter store (default: the model's name + ``".guide"``).
    """

    def __init__(self, model: MonteCLoRAModel, init_scale: float = 2.5e-3, name: Optional[str] = None):
        if not isinstance(model, MonteCLoRAModel):
            raise ValueError(f"MeanFieldGuide needs a MonteCLoRAModel, got {type(model).__name__}")
        if model.config.prior != "gaussian":
            raise ValueError(
                f"MeanFieldGuide needs a model with the Gaussian prior; this model's prior is "
                f"{model.config.prior!r}: build it with MonteCLoRAConfig(prior='gaussian') "
                f"(or guide it with MonteCLoRAGuide)"
            )
        if model.adapter_mode != "sample":
            raise ValueError(
                "MeanFieldGuide needs a model with adapter_mode='sample' (latent sites); "
                "a model with mean adapters has none: guide it with EmptyGuide"
            )
        if not (
            isinstance(init_scale, (int, float))
            and not isinstance(init_scale, bool)
            and math.isfinite(init_scale)
            and init_scale > 0
        ):
            raise ValueError(f"MeanFieldGuide.init_scale must be a finite number > 0, got {init_scale!r}")
        super().__init__(name or f"{model._pyro_name}.guide")
        self._model = (model,)  # held, not a submodule (as Pyro's AutoGuide)
        self.config = model.config
        self.init_scale = float(init_scale)
        self.log_scales = nn.ParameterDict()
        self._sites = []  # (parameter key, adapter path, factor, site name)
        for path, adapter in model.adapters().items():
            for factor in adapter.random_factors:
                key = f"{path}.{factor}".replace(".", "__")
                mean = adapter.factor_mean(factor)
                scale = torch.empty(mean.shape, device=mean.device).uniform_(self.init_scale / 2, self.init_scale)
                self.log_scales[key] = nn.Parameter(scale.log())
                self._sites.append((key, path, factor, factor_site_names(path, factor)["value"]))
        # the factors of one shape are drawn, and their KLs taken, in one batched operation each
        self._groups: Dict[tuple, list] = {}
        for index, (_, path, factor, _) in enumerate(self._sites):
            shape = tuple(model.adapters()[path].factor_mean(factor).shape)
            self._groups.setdefault(shape, []).append(index)

    @property
    def model(self) -> MonteCLoRAModel:
        """The model this guide covers."""
        return self._model[0]

    @property
    def prior(self):
        """The model's :class:`~pyro_monteclora.nn.priors.GaussianPrior`, which the KLs are taken against."""
        return self._model[0].prior

    def checkpoint_options(self) -> dict:
        """The constructor's options, as saved in a checkpoint (see :mod:`~pyro_monteclora.storage.checkpoint`)."""
        return {"init_scale": self.init_scale}

    def site_names(self) -> list:
        """The latent sites this guide covers, in order: ``<path>.lora_A`` (and ``<path>.lora_B``)."""
        return [name for *_, name in self._sites]

    def scales(self) -> Dict[str, torch.Tensor]:
        """:math:`\\sigma` of every site, keyed by site name (a view of the parameters, exponentiated)."""
        log_scales = self._modules["log_scales"]
        return {name: log_scales[key].exp() for key, _, _, name in self._sites}

    def _group_parameters(self, indices: list) -> Tuple[torch.Tensor, torch.Tensor]:
        """The means :math:`M` and log-scales :math:`\\rho` of the sites ``indices``, stacked."""
        adapters = self.model.adapters()
        log_scales = self._modules["log_scales"]
        means = torch.stack([adapters[self._sites[i][1]].factor_mean(self._sites[i][2]) for i in indices])
        return means, torch.stack([log_scales[self._sites[i][0]] for i in indices])

    def draw_all(self) -> Tuple[Dict[str, torch.Tensor], Dict[str, dist.Distribution]]:
        """One reparameterised draw :math:`M + \\sigma \\odot \\varepsilon` of every site, one batched
        operation per factor shape.

        :returns: ``({site name: draw}, {site name: q})``, the per-site :math:`q` built without
            re-validating its (positive) parameters.
        """
        values, posteriors = {}, {}
        for shape, indices in self._groups.items():
            means, log_scales = self._group_parameters(indices)
            scales = log_scales.exp()
            draws = means + scales * torch.randn_like(means)
            for index, mean, scale, draw in zip(indices, means.unbind(0), scales.unbind(0), draws.unbind(0)):
                name = self._sites[index][3]
                values[name] = draw
                posteriors[name] = dist.Normal(mean, scale, validate_args=False).to_event(len(shape))
        return values, posteriors

    def forward(self, *args, **kwargs) -> Dict[str, torch.Tensor]:
        """Draw every latent site; the arguments (the model's) are ignored. Returns the draws.

        The draws are made together (:meth:`draw_all`) and handed to the per-layer sites, so the
        trace holds one named site per factor with its own :math:`q`.
        """
        register_parameters(self._pyro_name, self._modules["log_scales"].named_parameters())
        if not self._sites:
            return {}
        values, posteriors = self.draw_all()
        draws = {}
        with PresampledMessenger(values), latent_scale(self.config.kl_weight):
            for name in posteriors:
                draws[name] = pyro.sample(name, posteriors[name], infer={LATENT_SITE: True})
        return draws

    def batched_kl(self):
        """Closed-form KLs of every site against the model's :attr:`prior`, as one vector.

        :returns: ``(site names, KLs)`` in the order of :meth:`draw_all`'s sites (unweighted by
            ``kl_weight``); ``([], None)`` for a model without adapters.
        """
        if not self._sites:
            return [], None
        names, kls = [], []
        for indices in self._groups.values():
            means, log_scales = self._group_parameters(indices)
            kls.append(gaussian_kl(means, log_scales, self.prior.std).flatten(1).sum(-1))
            names.extend(self._sites[index][3] for index in indices)
        return names, torch.cat(kls)

    def kl_terms(self) -> Dict[str, torch.Tensor]:
        """``{site name: KL}`` in closed form, unweighted by ``kl_weight``."""
        names, kls = self.batched_kl()
        return dict(zip(names, kls.unbind(0))) if names else {}

    def zero_kl_sites(self) -> set:
        """None: every site of this guide carries a KL."""
        return set()

    def kl_divergence(self) -> torch.Tensor:
        """:math:`\\sum_\\ell \\mathrm{KL}(q(A_\\ell) \\| p(A_\\ell))` in closed form (unweighted by ``kl_weight``)."""
        _, kls = self.batched_kl()
        return kls.sum() if kls is not None else torch.zeros(())


def build_mean_field(
    network: nn.Module, config: MonteCLoRAConfig, init_scale: float = 2.5e-3, **model_kwargs
) -> Tuple[MonteCLoRAModel, MeanFieldGuide]:
    """The ``blob`` method: a :class:`~pyro_monteclora.MonteCLoRAModel` with the Gaussian prior over
    ``network`` (modified in place, as the model's constructor does) and its :class:`MeanFieldGuide`.

    ``config`` is used with ``prior="gaussian"`` (set here if it names the other prior; every other
    field, ``prior_std`` and ``kl_weight`` included, as given). ``model_kwargs`` (``likelihood``,
    ``name``) go to the model.
    """
    if config.prior != "gaussian":
        config = dataclasses.replace(config, prior="gaussian")
    model = MonteCLoRAModel(network, config, adapter_mode="sample", **model_kwargs)
    return model, MeanFieldGuide(model, init_scale=init_scale)
