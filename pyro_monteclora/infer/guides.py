"""``MonteCLoRAGuide``: the paper's structured variational family.

For every adapted layer :math:`\\ell` (and each random factor of it):

.. math::

    q(\\Sigma_\\ell) = \\mathcal{W}\\big(\\nu, S_\\ell S_\\ell^\\top\\big),\\;
    S_\\ell = \\operatorname{diag}(e^{\\sigma_\\ell})
    \\;(\\text{or } \\operatorname{tril}(S_\\ell) \\text{ learned with } \\texttt{scale\\_tril="full"}),
    \\qquad q(\\pi_\\ell) = \\operatorname{Dir}(e^{\\beta_\\ell}),

and :math:`A_\\ell \\mid \\Sigma_\\ell, \\pi_\\ell` follows the model's own conditional (both draw the same
standard-normal noise site), so that

.. math::

    \\mathrm{ELBO} = E_q[\\log p(y \\mid x, A)]
    - \\lambda \\sum_\\ell \\big[\\mathrm{KL}(q(\\Sigma_\\ell) \\| p(\\Sigma_\\ell))
    + \\mathrm{KL}(q(\\pi_\\ell) \\| p(\\pi_\\ell))\\big].

:math:`\\sigma` starts at 0 (the guide equals the prior on :math:`\\Sigma`) and :math:`\\beta` at
:math:`U(0, 1)`, as the paper. The KLs are taken against the model's own prior object
(``model.prior``), so model and guide cannot disagree about it.

As Pyro's autoguides do, a guide *holds* its model (not as a submodule) and never changes it; the
model does not know its guide. Plain LoRA (and full fine-tuning) is a model with mean adapters
(``MonteCLoRAModel(..., adapter_mode="mean")``: no latent site) and :class:`EmptyGuide`; and any
Pyro guide (``pyro.infer.autoguide.AutoNormal``, say) can guide the Bayesian model instead.
"""

from __future__ import annotations

from typing import Dict, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import kl_divergence

from pyro_monteclora.distributions import StandardNormalMatrix, WishartCholesky
from pyro_monteclora.nn._params import register_parameters
from pyro_monteclora.nn.handlers import PresampledMessenger
from pyro_monteclora.nn.layers import latent_scale
from pyro_monteclora.nn.models import HFPyroModel, MonteCLoRAModel
from pyro_monteclora.nn.sites import LATENT_SITE, factor_site_names, stacked_groups, stacked_site_names
from pyro_monteclora.storage.checkpoint import register_guide

__all__ = [
    "MonteCLoRAGuide",
    "EmptyGuide",
    "FactorPosterior",
    "StackedFactorPosteriors",
    "FactorPosteriorRow",
    "SCALE_TRIL_KINDS",
]

SCALE_TRIL_KINDS = ("diagonal", "full")


class FactorPosterior(nn.Module):
    """Variational parameters of one random factor: :math:`\\sigma \\in \\mathbb{R}^r`,
    :math:`\\beta \\in \\mathbb{R}^N` (and a strictly lower triangle with ``scale_tril="full"``)."""

    def __init__(self, rank: int, num_components: int, scale_tril: str = "diagonal", device=None):
        super().__init__()
        self.rank = rank
        self.log_scale = nn.Parameter(torch.zeros(rank, device=device))
        self.log_concentration = nn.Parameter(torch.rand(num_components, device=device))
        if scale_tril == "full":
            self.scale_offdiag = nn.Parameter(torch.zeros(rank, rank, device=device))
        else:
            self.register_parameter("scale_offdiag", None)

    def scale_tril(self) -> torch.Tensor:
        """:math:`S = \\operatorname{diag}(e^{\\sigma})` plus the learned strict lower triangle."""
        tril = torch.diag_embed(self.log_scale.exp())
        if self.scale_offdiag is not None:
            tril = tril + self.scale_offdiag.tril(-1)
        return tril


class StackedFactorPosteriors(nn.Module):
    """The variational parameters of ``count`` random factors stored stacked (the stacked site
    layout): :math:`\\sigma` ``(count, r)``, :math:`\\beta` ``(count, N)`` (and the strict lower
    triangles ``(count, r, r)`` with ``scale_tril="full"``), row :math:`k` for factor :math:`k`.
    Three parameters to announce to Pyro per step, however many layers are adapted; initialised as
    ``count`` :class:`FactorPosterior` would be (the same random stream)."""

    def __init__(self, count: int, rank: int, num_components: int, scale_tril: str = "diagonal", device=None):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(count, rank, device=device))
        self.log_concentration = nn.Parameter(torch.rand(count, num_components, device=device))
        if scale_tril == "full":
            self.scale_offdiag = nn.Parameter(torch.zeros(count, rank, rank, device=device))
        else:
            self.register_parameter("scale_offdiag", None)

    def row(self, index: int) -> "FactorPosteriorRow":
        """Factor ``index``'s parameters, as views (read them; train the stacked tensors)."""
        return FactorPosteriorRow(self, index)


class FactorPosteriorRow:
    """One row of :class:`StackedFactorPosteriors`, read like a :class:`FactorPosterior`."""

    def __init__(self, stacked: StackedFactorPosteriors, index: int):
        self.log_scale = stacked.log_scale[index]
        self.log_concentration = stacked.log_concentration[index]
        self.scale_offdiag = stacked.scale_offdiag[index] if stacked.scale_offdiag is not None else None
        self.rank = self.log_scale.shape[-1]

    scale_tril = FactorPosterior.scale_tril


@register_guide
class MonteCLoRAGuide(PyroModule):
    """The structured guide for a :class:`~pyro_monteclora.MonteCLoRAModel`.

    :param model: the :class:`~pyro_monteclora.MonteCLoRAModel` to guide, with
        ``adapter_mode="sample"`` (its latent sites are what the guide covers). The guide holds it
        and never changes it.
    :param str scale_tril: ``"diagonal"`` (the paper's) or ``"full"`` lower-triangular Wishart scale.
    :param str name: prefix in Pyro's global parameter store (default: the model's name + ``".guide"``).
    """

    def __init__(self, model: MonteCLoRAModel, scale_tril: str = "diagonal", name: Optional[str] = None):
        if not isinstance(model, MonteCLoRAModel):
            raise ValueError(f"MonteCLoRAGuide needs a MonteCLoRAModel, got {type(model).__name__}")
        if model.adapter_mode != "sample":
            raise ValueError(
                "MonteCLoRAGuide needs a model with adapter_mode='sample' (latent sites); "
                "a model with mean adapters has none: guide it with EmptyGuide"
            )
        if model.config.prior != "wishart-mixture":
            raise ValueError(
                f"MonteCLoRAGuide needs a model with the wishart-mixture prior; this model's prior is "
                f"{model.config.prior!r}: guide it with MeanFieldGuide"
            )
        if scale_tril not in SCALE_TRIL_KINDS:
            raise ValueError(f"MonteCLoRAGuide.scale_tril must be one of {list(SCALE_TRIL_KINDS)}, got {scale_tril!r}")
        super().__init__(name or f"{model._pyro_name}.guide")
        config = model.config
        self._model = (model,)  # held, not a submodule (as Pyro's AutoGuide)
        self.scale_tril_kind = scale_tril
        self.config = config
        self.stacked = config.site_layout == "stacked"
        self._sites = []  # (key, path, factor, rank, width)
        devices = []
        for path, adapter in model.adapters().items():
            factors = [("lora_A", adapter.in_features)]
            if config.random_B:
                factors.append(("lora_B", adapter.out_features))
            for factor, width in factors:
                self._sites.append((f"{path}.{factor}".replace(".", "__"), path, factor, config.rank, width))
                devices.append(adapter.lora_A_mean.device)
        if self.stacked:  # one tensor per kind of parameter, a row per factor
            self.posteriors = StackedFactorPosteriors(
                len(self._sites), config.rank, config.num_components, scale_tril, device=devices[0] if devices else None
            )
        else:
            self.posteriors = nn.ModuleDict(
                {
                    key: FactorPosterior(config.rank, config.num_components, scale_tril, device=device)
                    for (key, *_), device in zip(self._sites, devices)
                }
            )
        # fixed once the guide exists: each site's names, and the noise draws grouped by shape
        self._site_names = [factor_site_names(path, factor) for _, path, factor, _, _ in self._sites]
        self._noise_groups: Dict[tuple, list] = {}
        for index, (_, _, _, rank, width) in enumerate(self._sites):
            self._noise_groups.setdefault((rank, width), []).append(index)
        # the stacked layout: the model's groups of factors of one width, as indices into _sites
        position = {(path, factor): index for index, (_, path, factor, _, _) in enumerate(self._sites)}
        self._stacked_groups = []  # (site names, index tensor, rank, width)
        self._rows_on_device: Dict[tuple, torch.Tensor] = {}
        for (factor, width), members in stacked_groups(list(model.adapters().values())).items():
            indices = torch.tensor([position[layer.path, factor] for layer in members])
            self._stacked_groups.append((stacked_site_names(factor, width), indices, config.rank, width))

    @property
    def model(self) -> MonteCLoRAModel:
        """The model this guide covers."""
        return self._model[0]

    @property
    def prior(self):
        """The model's prior (:attr:`MonteCLoRAModel.prior`), which the KLs are taken against."""
        return self._model[0].prior

    def checkpoint_options(self) -> dict:
        """The constructor's options, as saved in a checkpoint (see :mod:`~pyro_monteclora.storage.checkpoint`)."""
        return {"scale_tril": self.scale_tril_kind}

    def factor_posteriors(self) -> Dict[str, FactorPosterior]:
        """The variational parameters, keyed by the factor's site stem (``<path>.lora_A``); with
        the stacked layout, each factor's row of the stacked parameters
        (:class:`FactorPosteriorRow`, read-only views)."""
        modules = self._modules["posteriors"]
        if self.stacked:
            return {f"{path}.{factor}": modules.row(i) for i, (_, path, factor, _, _) in enumerate(self._sites)}
        return {f"{path}.{factor}": modules[key] for key, path, factor, _, _ in self._sites}

    def forward(self, *args, **kwargs) -> Dict[str, torch.Tensor]:
        """Draw every latent site; the arguments (the model's) are ignored. Returns the draws.

        The draws of all layers are made together (:meth:`draw_all`: one Bartlett, one Dirichlet
        and one noise draw per factor width) and handed to the per-layer sites, so the trace holds
        one named site per layer, with its own distribution, at the cost of a few batched
        operations instead of a dozen per layer. With ``site_layout="stacked"`` the same draws go
        to one site per kind and factor width instead (:meth:`_draw_stacked`).
        """
        posteriors = self._modules["posteriors"]
        register_parameters(self._pyro_name, posteriors.named_parameters())
        if not self._sites:
            return {}
        if self.stacked:
            return self._draw_stacked()
        values, covariances, mixtures = self.draw_all()
        draws = {}
        with PresampledMessenger(values):
            for index, (key, _, _, rank, width) in enumerate(self._sites):
                names = self._site_names[index]
                with latent_scale(self.config.kl_weight):
                    draws[names["covariance"]] = pyro.sample(
                        names["covariance"], covariances[index], infer={LATENT_SITE: True}
                    )
                    draws[names["mixture_weights"]] = pyro.sample(
                        names["mixture_weights"], mixtures[index], infer={LATENT_SITE: True}
                    )
                device = posteriors[key].log_scale.device
                draws[names["noise"]] = pyro.sample(names["noise"], StandardNormalMatrix(rank, width, device))
        return draws

    def draw_all(self):
        """One reparameterised draw of every factor's latent sites, made in batched operations.

        :returns: ``(values, covariances, mixtures)``: ``{site name: draw}``, and the per-factor
            :math:`q(\\Sigma_\\ell)` and :math:`q(\\pi_\\ell)` (slices of the batched ones, built
            without re-validating their parameters).
        """
        df = self.prior.wishart_df
        q_cov, q_mix = self._batched_posteriors()
        if q_cov.log_scale_diagonal is not None:
            covariances = [
                WishartCholesky.from_log_diagonal(df, row, validate_args=False)
                for row in q_cov.log_scale_diagonal.unbind(0)
            ]
        else:
            covariances = [WishartCholesky(df, row, validate_args=False) for row in q_cov.scale_tril.unbind(0)]
        mixtures = [dist.Dirichlet(row, validate_args=False) for row in q_mix.concentration.unbind(0)]
        scale_trils = q_cov.rsample().unbind(0)
        weights = q_mix.rsample().unbind(0)
        device = q_mix.concentration.device
        noise = {}  # the shared noise: one draw per (rank, width)
        for (rank, width), indices in self._noise_groups.items():
            noise.update(zip(indices, torch.randn(len(indices), rank, width, device=device).unbind(0)))
        values = {}
        for index, names in enumerate(self._site_names):
            values[names["covariance"]] = scale_trils[index]
            values[names["mixture_weights"]] = weights[index]
            values[names["noise"]] = noise[index]
        return values, covariances, mixtures

    def _draw_stacked(self) -> Dict[str, torch.Tensor]:
        """The stacked layout's sites: per group of one factor width, :math:`q(\\Sigma)` and
        :math:`q(\\pi)` of its ``L`` layers as one site each (the layer axis an event dimension),
        and the shared noise; drawn from the batched posteriors in one go."""
        q_cov, q_mix = self._batched_posteriors()
        scale_trils, weights = q_cov.rsample(), q_mix.rsample()
        device = q_mix.concentration.device
        draws = {}
        for group, (names, _, rank, width) in enumerate(self._stacked_groups):
            indices = self._group_rows(group, device)
            values = {
                names["covariance"]: scale_trils.index_select(0, indices),
                names["mixture_weights"]: weights.index_select(0, indices),
                names["noise"]: torch.randn(len(indices), rank, width, device=device),
            }
            covariance, mixture = self._posteriors_at(q_cov, q_mix, indices)
            with PresampledMessenger(values), latent_scale(self.config.kl_weight):
                draws[names["covariance"]] = pyro.sample(
                    names["covariance"], covariance.to_event(1), infer={LATENT_SITE: True}
                )
                draws[names["mixture_weights"]] = pyro.sample(
                    names["mixture_weights"], mixture.to_event(1), infer={LATENT_SITE: True}
                )
            with PresampledMessenger(values):
                noise = StandardNormalMatrix(rank, width, device).expand((len(indices),)).to_event(1)
                draws[names["noise"]] = pyro.sample(names["noise"], noise)
        return draws

    def _group_rows(self, group: int, device) -> torch.Tensor:
        """Group ``group``'s rows of the stacked parameters, as an index tensor on ``device`` (made
        once per device: no host-to-device copy per step)."""
        key = (group, str(device))
        if key not in self._rows_on_device:
            self._rows_on_device[key] = self._stacked_groups[group][1].to(device)
        return self._rows_on_device[key]

    def _posteriors_at(self, q_cov, q_mix, indices):
        """The rows ``indices`` of the batched :math:`q(\\Sigma)` and :math:`q(\\pi)`."""
        df = self.prior.wishart_df
        if q_cov.log_scale_diagonal is not None:
            covariance = WishartCholesky.from_log_diagonal(
                df, q_cov.log_scale_diagonal.index_select(0, indices), validate_args=False
            )
        else:
            covariance = WishartCholesky(df, q_cov.scale_tril.index_select(0, indices), validate_args=False)
        return covariance, dist.Dirichlet(q_mix.concentration.index_select(0, indices), validate_args=False)

    def _batched_posteriors(self):
        """:math:`q(\\Sigma)` and :math:`q(\\pi)` of all factors as two batched distributions (the
        parameters stacked in site order; built from positive parameters, so not re-validated).
        :math:`q(\\Sigma)` has the prior's degrees of freedom :math:`\\nu`, as the paper's."""
        df = self.prior.wishart_df
        if self.stacked:
            stacked = self._modules["posteriors"]
            if self.scale_tril_kind == "diagonal":
                q_cov = WishartCholesky.from_log_diagonal(df, stacked.log_scale, validate_args=False)
            else:
                tril = torch.diag_embed(stacked.log_scale.exp()) + stacked.scale_offdiag.tril(-1)
                q_cov = WishartCholesky(df, tril, validate_args=False)
            return q_cov, dist.Dirichlet(stacked.log_concentration.exp(), validate_args=False)
        posteriors = [self._modules["posteriors"][key] for key, *_ in self._sites]
        if self.scale_tril_kind == "diagonal":
            q_cov = WishartCholesky.from_log_diagonal(
                df, torch.stack([p.log_scale for p in posteriors]), validate_args=False
            )
        else:
            q_cov = WishartCholesky(df, torch.stack([p.scale_tril() for p in posteriors]), validate_args=False)
        concentration = torch.stack([p.log_concentration for p in posteriors]).exp()
        return q_cov, dist.Dirichlet(concentration, validate_args=False)

    def batched_kl(self):
        """Closed-form KLs of every factor's covariance and mixture-weight sites, as one vector.

        :returns: ``(site names, KLs)``: the covariance sites' names then the mixture-weight sites',
            and one tensor holding their KLs in that order (unweighted by ``kl_weight``), taken
            against the model's :attr:`prior`; ``([], None)`` for a model without adapters.
        """
        if not self._sites:
            return [], None
        q_cov, q_mix = self._batched_posteriors()
        device = q_mix.concentration.device
        prior_cov = self.prior.covariance(device, q_cov.batch_shape)
        prior_mix = self.prior.mixture_weights(device, q_mix.batch_shape)
        covariance_kls, mixture_kls = kl_divergence(q_cov, prior_cov), kl_divergence(q_mix, prior_mix)
        if self.stacked:  # one KL per stacked site: the sum over its layers
            groups = [(names, self._group_rows(i, device)) for i, (names, *_) in enumerate(self._stacked_groups)]
            kls = torch.stack(
                [covariance_kls.index_select(0, indices).sum() for _, indices in groups]
                + [mixture_kls.index_select(0, indices).sum() for _, indices in groups]
            )
            sites = [names["covariance"] for names, _ in groups] + [names["mixture_weights"] for names, _ in groups]
            return sites, kls
        kls = torch.cat([covariance_kls, mixture_kls])
        names = [names["covariance"] for names in self._site_names] + [
            names["mixture_weights"] for names in self._site_names
        ]
        return names, kls

    def kl_terms(self) -> Dict[str, torch.Tensor]:
        """Closed-form KLs of every latent site, computed for all factors at once (batched).

        :returns: ``{site name: KL}`` for the covariance and mixture-weight sites, unweighted by
            ``kl_weight``. The shared noise sites have KL exactly 0.
        """
        names, kls = self.batched_kl()
        return dict(zip(names, kls.unbind(0))) if names else {}

    def zero_kl_sites(self) -> set:
        """Latent sites whose model and guide distributions are identical (the shared noise)."""
        if self.stacked:
            return {names["noise"] for names, *_ in self._stacked_groups}
        return {names["noise"] for names in self._site_names}

    def kl_divergence(self) -> torch.Tensor:
        """:math:`\\sum_\\ell \\mathrm{KL}(q(\\Sigma_\\ell) \\| p(\\Sigma_\\ell))
        + \\mathrm{KL}(q(\\pi_\\ell) \\| p(\\pi_\\ell))` in closed form (unweighted by ``kl_weight``)."""
        _, kls = self.batched_kl()
        return kls.sum() if kls is not None else torch.zeros(())


@register_guide
class EmptyGuide(PyroModule):
    """The guide of a model with no latent site: plain LoRA (a
    :class:`~pyro_monteclora.MonteCLoRAModel` with ``adapter_mode="mean"``) or full fine-tuning
    (:class:`~pyro_monteclora.nn.baselines.FullFineTuneModel`).

    It samples nothing and holds no parameter, so the ELBO is the data log-likelihood alone and
    :func:`~pyro_monteclora.fit` minimises the mean cross-entropy: maximum likelihood through the
    same code path as MonteCLoRA.

    :param model: an :class:`~pyro_monteclora.nn.models.HFPyroModel` with ``adapter_mode="mean"``.
    :param str name: prefix in Pyro's parameter store (default: the model's name + ``".guide"``).
    """

    def __init__(self, model: HFPyroModel, name: Optional[str] = None):
        if not isinstance(model, HFPyroModel):
            raise ValueError(f"EmptyGuide needs an HFPyroModel, got {type(model).__name__}")
        if model.adapter_mode != "mean":
            raise ValueError(
                "EmptyGuide needs a model without latent sites (adapter_mode='mean'); "
                "guide a model with adapter_mode='sample' with MonteCLoRAGuide or a "
                "Pyro autoguide"
            )
        super().__init__(name or f"{model._pyro_name}.guide")
        self._model = (model,)

    @property
    def model(self) -> HFPyroModel:
        """The model this guide covers."""
        return self._model[0]

    def checkpoint_options(self) -> dict:
        """No options (see :mod:`~pyro_monteclora.storage.checkpoint`)."""
        return {}

    def forward(self, *args, **kwargs) -> Dict[str, torch.Tensor]:
        """Samples nothing; returns ``{}``."""
        return {}

    def kl_divergence(self) -> torch.Tensor:
        """0: there is no latent site."""
        return torch.zeros(())
