"""The priors of the adapters' random factors, one object per model: ``MonteCLoRAPrior`` (the
paper's) and ``GaussianPrior`` (BLoB's), chosen by ``MonteCLoRAConfig.prior``.

For a factor of rank :math:`r` the paper's prior (``prior="wishart-mixture"``) is

.. math::

    p(\\Sigma) = \\mathcal{W}(\\nu, I_r) \\;(\\text{in Cholesky form: the site's value is }
    L,\\ \\Sigma = L L^\\top), \\qquad p(\\pi) = \\operatorname{Dir}(\\alpha_0 \\mathbf 1_N),

and BLoB's (``prior="gaussian"``) puts :math:`\\mathcal N(0, \\sigma_p^2)` on every entry of the
factor itself, :math:`p(A) = \\prod_{ij} \\mathcal N(A_{ij}; 0, \\sigma_p^2)`.

The prior is built once from a :class:`~pyro_monteclora.MonteCLoRAConfig` (by
:class:`~pyro_monteclora.MonteCLoRAModel`, which holds it as ``model.prior``; see
:func:`prior_from_config`) and read by both sides of the ELBO: the model's sites draw from it, and
the guide's closed-form KLs (:meth:`~pyro_monteclora.MonteCLoRAGuide.batched_kl`,
:meth:`~pyro_monteclora.MeanFieldGuide.batched_kl`) are taken against it. So the two cannot
disagree (as they could when each built its own from a config changed in between).

>>> from pyro_monteclora import MonteCLoRAConfig
>>> prior = MonteCLoRAPrior.from_config(MonteCLoRAConfig(rank=4, num_components=3))
>>> prior.covariance().df, prior.mixture_weights().concentration.tolist()
(4.0, [1.0, 1.0, 1.0])
>>> prior.covariance(batch_shape=(5,)).batch_shape
torch.Size([5])
>>> gaussian = prior_from_config(MonteCLoRAConfig(rank=4, prior="gaussian", prior_std=0.5))
>>> gaussian.factor((4, 16)).event_shape, gaussian.factor((4, 16)).base_dist.scale[0, 0].item()
(torch.Size([4, 16]), 0.5)
"""

from __future__ import annotations

import math
from typing import Dict, Tuple, Union

import pyro.distributions as dist
import torch

from pyro_monteclora.config import MonteCLoRAConfig
from pyro_monteclora.distributions import WishartCholesky

__all__ = ["MonteCLoRAPrior", "GaussianPrior", "prior_from_config"]


class MonteCLoRAPrior:
    """:math:`p(\\Sigma) = \\mathcal{W}(\\nu, I_r)` and :math:`p(\\pi) = \\operatorname{Dir}(\\alpha_0 \\mathbf 1_N)`.

    :param int rank: :math:`r`.
    :param int num_components: :math:`N`.
    :param float wishart_df: :math:`\\nu > r - 1`.
    :param float dirichlet_concentration: :math:`\\alpha_0 > 0`.

    The distributions are built once per device and batch shape and cached (they are fixed: the
    prior has no learnable parameter), without re-validating their parameters.
    """

    #: the :attr:`MonteCLoRAConfig.prior` value that builds this class
    kind = "wishart-mixture"

    def __init__(self, rank: int, num_components: int, wishart_df: float, dirichlet_concentration: float):
        if not (isinstance(rank, int) and rank >= 1):
            raise ValueError(f"MonteCLoRAPrior.rank must be an integer >= 1, got {rank!r}")
        if not (isinstance(num_components, int) and num_components >= 1):
            raise ValueError(f"MonteCLoRAPrior.num_components must be an integer >= 1, got {num_components!r}")
        if not (math.isfinite(wishart_df) and wishart_df > rank - 1):
            raise ValueError(
                f"MonteCLoRAPrior.wishart_df must be a finite number > rank - 1 = {rank - 1}, got {wishart_df!r}"
            )
        if not (math.isfinite(dirichlet_concentration) and dirichlet_concentration > 0):
            raise ValueError(
                f"MonteCLoRAPrior.dirichlet_concentration must be a finite number > 0, got {dirichlet_concentration!r}"
            )
        self.rank = rank
        self.num_components = num_components
        self.wishart_df = float(wishart_df)
        self.dirichlet_concentration = float(dirichlet_concentration)
        self._cache: Dict[Tuple, object] = {}

    @classmethod
    def from_config(cls, config: MonteCLoRAConfig) -> "MonteCLoRAPrior":
        """The prior a :class:`~pyro_monteclora.MonteCLoRAConfig` describes."""
        return cls(config.rank, config.num_components, config.wishart_df, config.dirichlet_concentration)

    def covariance(self, device=None, batch_shape=()) -> WishartCholesky:
        """:math:`p(\\Sigma)` in Cholesky form, with ``batch_shape`` independent copies."""
        key = ("covariance", torch.device(device or "cpu"), tuple(batch_shape))
        if key not in self._cache:
            zeros = torch.zeros(tuple(batch_shape) + (self.rank,), device=key[1])  # log diag of I_r
            self._cache[key] = WishartCholesky.from_log_diagonal(self.wishart_df, zeros, validate_args=False)
        return self._cache[key]

    def mixture_weights(self, device=None, batch_shape=()) -> dist.Dirichlet:
        """:math:`p(\\pi)`, with ``batch_shape`` independent copies."""
        key = ("mixture_weights", torch.device(device or "cpu"), tuple(batch_shape))
        if key not in self._cache:
            concentration = torch.full(
                tuple(batch_shape) + (self.num_components,), self.dirichlet_concentration, device=key[1]
            )
            self._cache[key] = dist.Dirichlet(concentration, validate_args=False)
        return self._cache[key]

    def __repr__(self) -> str:
        return (
            f"MonteCLoRAPrior(rank={self.rank}, num_components={self.num_components}, "
            f"wishart_df={self.wishart_df:g}, dirichlet_concentration={self.dirichlet_concentration:g})"
        )


class GaussianPrior:
    """:math:`p(A_{ij}) = \\mathcal N(0, \\sigma_p^2)` for every entry of a random factor (BLoB's prior).

    :param float std: :math:`\\sigma_p > 0`.

    Each adapted layer's factor is one site ``<path>.lora_A`` (:func:`~pyro_monteclora.nn.sites.factor_site_names`'s
    ``"value"``) drawn from :meth:`factor`: the layer uses the draw as :math:`A`. Like
    :class:`MonteCLoRAPrior` it has no learnable parameter and caches its distributions.
    """

    #: the :attr:`MonteCLoRAConfig.prior` value that builds this class
    kind = "gaussian"

    def __init__(self, std: float):
        if not (isinstance(std, (int, float)) and not isinstance(std, bool) and math.isfinite(std) and std > 0):
            raise ValueError(f"GaussianPrior.std must be a finite number > 0, got {std!r}")
        self.std = float(std)
        self._cache: Dict[Tuple, object] = {}

    @classmethod
    def from_config(cls, config: MonteCLoRAConfig) -> "GaussianPrior":
        """The prior a :class:`~pyro_monteclora.MonteCLoRAConfig` with ``prior="gaussian"`` describes."""
        return cls(config.prior_std)

    def factor(self, shape, device=None, batch_shape=()) -> dist.Independent:
        """:math:`\\mathcal N(0, \\sigma_p^2)` over a factor of ``shape`` (its entries one event),
        with ``batch_shape`` independent copies."""
        key = ("factor", tuple(shape), torch.device(device or "cpu"), tuple(batch_shape))
        if key not in self._cache:
            full = tuple(batch_shape) + tuple(shape)
            normal = dist.Normal(
                torch.zeros(full, device=key[2]), torch.full(full, self.std, device=key[2]), validate_args=False
            )
            self._cache[key] = normal.to_event(len(shape))
        return self._cache[key]

    def __repr__(self) -> str:
        return f"GaussianPrior(std={self.std:g})"


def prior_from_config(config: MonteCLoRAConfig) -> Union[MonteCLoRAPrior, GaussianPrior]:
    """The prior ``config.prior`` names: :class:`MonteCLoRAPrior` (``"wishart-mixture"``) or
    :class:`GaussianPrior` (``"gaussian"``)."""
    return GaussianPrior.from_config(config) if config.prior == "gaussian" else MonteCLoRAPrior.from_config(config)
