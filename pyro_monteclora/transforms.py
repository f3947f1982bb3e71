"""A bijection onto lower-triangular matrices with positive diagonal, so Pyro autoguides can
guide the ``<path>.covariance`` sites (whose value is the Wishart's Cholesky factor :math:`L`).

torch registers ``transform_to(constraints.lower_cholesky)`` but no ``biject_to``: its
``LowerCholeskyTransform`` maps a whole :math:`r \\times r` matrix onto the
:math:`r(r+1)/2`-dimensional set of Cholesky factors, so it cannot be inverted. Autoguides
(``AutoNormal``, ``AutoDelta``, ...) need a bijection. :class:`LowerCholeskyBijection` maps a vector
:math:`x \\in \\mathbb{R}^{r(r+1)/2}` to :math:`L` by filling the lower triangle row by row and
exponentiating the diagonal:

.. math::

    L_{ij} = x_{k(i, j)} \\;(j < i), \\qquad L_{ii} = e^{x_{k(i, i)}}, \\qquad
    \\log \\lvert \\det J \\rvert = \\sum_i \\log L_{ii}.

Importing this module registers it as ``biject_to(constraints.lower_cholesky)`` unless something
else already has (``pyro_monteclora`` imports it).

>>> import torch
>>> t = LowerCholeskyBijection()
>>> L = t(torch.tensor([0.0, 2.0, 0.0]))
>>> L
tensor([[1., 0.],
        [2., 1.]])
>>> t.inv(L)
tensor([0., 2., 0.])
"""

from __future__ import annotations

import math

import torch
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import Transform

__all__ = ["LowerCholeskyBijection"]


def _side(length: int) -> int:
    """:math:`r` with :math:`r(r+1)/2` = ``length``."""
    side = int(round((math.sqrt(8 * length + 1) - 1) / 2))
    if side * (side + 1) // 2 != length:
        raise ValueError(f"a lower triangle needs r(r+1)/2 entries, got {length}")
    return side


class LowerCholeskyBijection(Transform):
    """:math:`\\mathbb{R}^{r(r+1)/2} \\to` lower-triangular :math:`r \\times r` matrices with a
    positive diagonal (the strict lower triangle as is, the diagonal through ``exp``)."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.lower_cholesky
    bijective = True

    def __eq__(self, other):
        return isinstance(other, LowerCholeskyBijection)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        side = _side(x.shape[-1])
        rows, cols = torch.tril_indices(side, side, device=x.device)
        on_diagonal = rows == cols
        values = torch.where(on_diagonal, x.exp(), x)
        L = x.new_zeros(x.shape[:-1] + (side, side))
        L[..., rows, cols] = values
        return L

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        side = y.shape[-1]
        rows, cols = torch.tril_indices(side, side, device=y.device)
        entries = y[..., rows, cols]
        return torch.where(rows == cols, entries.clamp_min(torch.finfo(y.dtype).tiny).log(), entries)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def forward_shape(self, shape):
        side = _side(shape[-1])
        return torch.Size(shape[:-1]) + (side, side)

    def inverse_shape(self, shape):
        side = shape[-1]
        return torch.Size(shape[:-2]) + (side * (side + 1) // 2,)


if type(constraints.lower_cholesky) not in biject_to._registry:  # leave another registration alone
    biject_to.register(constraints.lower_cholesky, lambda constraint: LowerCholeskyBijection())
