"""``MonteCLoRAPrior``: the prior of every adapter's random factor, as one object.

For a factor of rank :math:`r` the prior is

.. math::

    p(\\Sigma) = \\mathcal{W}(\\nu, I_r) \\;(\\text{in Cholesky form: the site's value is }
    L,\\ \\Sigma = L L^\\top), \\qquad p(\\pi) = \\operatorname{Dir}(\\alpha_0 \\mathbf 1_N).

It is built once from a :class:`~pyro_monteclora.MonteCLoRAConfig` (by
:class:`~pyro_monteclora.MonteCLoRAModel`, which holds it as ``model.prior``) and read by both
sides of the ELBO: the model's sites draw from it, and
:meth:`~pyro_monteclora.MonteCLoRAGuide.batched_kl` takes its closed-form KLs against it. So
the two cannot disagree (as they could when each built its own from a config changed in between).

>>> from pyro_monteclora import MonteCLoRAConfig
>>> prior = MonteCLoRAPrior.from_config(MonteCLoRAConfig(rank=4, num_components=3))
>>> prior.covariance().df, prior.mixture_weights().concentration.tolist()
(4.0, [1.0, 1.0, 1.0])
>>> prior.covariance(batch_shape=(5,)).batch_shape
torch.Size([5])
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import pyro.distributions as dist
import torch

from pyro_monteclora.config import MonteCLoRAConfig
from pyro_monteclora.distributions import WishartCholesky

__all__ = ["MonteCLoRAPrior"]


class MonteCLoRAPrior:
    """:math:`p(\\Sigma) = \\mathcal{W}(\\nu, I_r)` and :math:`p(\\pi) = \\operatorname{Dir}(\\alpha_0 \\mathbf 1_N)`.

    :param int rank: :math:`r`.
    :param int num_components: :math:`N`.
    :param float wishart_df: :math:`\\nu > r - 1`.
    :param float dirichlet_concentration: :math:`\\alpha_0 > 0`.

    The distributions are built once per device and batch shape and cached (they are fixed: the
    prior has no learnable parameter), without re-validating their parameters.
    """

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
