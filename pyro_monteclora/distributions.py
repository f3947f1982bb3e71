"""Distributions behind MonteCLoRA: a Bartlett-sampled Wishart in Cholesky form, its KL, and the
mixture noise that perturbs the LoRA factor.

Why a Cholesky-form Wishart
---------------------------
``torch.distributions.Wishart.rsample`` warns ``Singular sample detected`` at the paper's
``df = r`` and may resample. :class:`WishartCholesky` instead samples the Cholesky factor
:math:`L` of :math:`\\Sigma = L L^\\top \\sim \\mathcal{W}(\\nu, V)` directly by the Bartlett
decomposition

.. math::

    L = S\\,T, \\qquad V = S S^\\top,\\qquad
    T_{jj} = \\sqrt{c_j},\\; c_j \\sim \\chi^2_{\\nu - j}\\;(j = 0, \\dots, r - 1),\\qquad
    T_{ij} \\sim \\mathcal{N}(0, 1)\\;(i > j),

which is reparameterised in :math:`S`, needs no Cholesky decomposition, and is valid for every
:math:`\\nu > r - 1`. Its value is the factor :math:`L` (support ``lower_cholesky``, for which torch
registers a bijection, so Pyro autoguides can handle the site), and :meth:`WishartCholesky.log_prob`
is the density *of* :math:`L`:

.. math::

    \\log p(L) = \\sum_j (\\nu - j - 1) \\log L_{jj} - \\tfrac12 \\lVert S^{-1} L \\rVert_F^2
    - \\nu \\sum_j \\log S_{jj} - \\tfrac{\\nu r}{2} \\log 2 + r \\log 2 - \\log \\Gamma_r(\\nu / 2),

that is the Wishart density of :math:`\\Sigma = L L^\\top` times the Jacobian
:math:`|\\partial \\Sigma / \\partial L| = 2^r \\prod_j L_{jj}^{r - j}`.
:meth:`WishartCholesky.matrix_log_prob` gives the Wishart density of :math:`\\Sigma` itself.
KL divergences do not depend on the parameterisation, so the KL between two
:class:`WishartCholesky` equals the KL between the Wisharts they describe; entropies do, and
:meth:`WishartCholesky.entropy` is the entropy of :math:`L`, the one that goes with ``log_prob``.
All of this math runs with autocast off, in fp32 or, when a parameter is fp64, in fp64 (never in
bf16/fp16, whatever torch's default dtype).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import Wishart, constraints, register_kl

__all__ = [
    "WishartCholesky",
    "wishart_kl",
    "multivariate_digamma",
    "StandardNormalMatrix",
    "lora_perturbation",
    "lora_perturbation_mixture",
]


class _Fp32:
    """Autocast off (only where it is on: entering the context costs more than this check)."""

    def __init__(self, tensor: torch.Tensor):
        self.device_type = tensor.device.type
        self.context = None

    def __enter__(self):
        if torch.is_autocast_enabled(self.device_type):
            self.context = torch.autocast(device_type=self.device_type, enabled=False)
            self.context.__enter__()

    def __exit__(self, *exc):
        if self.context is not None:
            self.context.__exit__(*exc)


def _math_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype the math runs in: fp32, or fp64 when one of ``tensors`` is fp64 (bf16/fp16 are
    promoted to fp32; torch's default dtype plays no part)."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _mvlgamma(a: float, p: int) -> float:
    """:math:`\\log \\Gamma_p(a)` of a Python number."""
    return p * (p - 1) / 4 * math.log(math.pi) + sum(math.lgamma(a - i / 2) for i in range(p))


def multivariate_digamma(a: torch.Tensor, p: int) -> torch.Tensor:
    """The multivariate digamma :math:`\\psi_p(a) = \\sum_{i=0}^{p-1} \\psi(a - i / 2)`."""
    a = torch.as_tensor(a, dtype=torch.float64)
    offsets = torch.arange(p, dtype=a.dtype, device=a.device) / 2
    return torch.digamma(a.unsqueeze(-1) - offsets).sum(-1)


def _as_df(df, rank: int) -> float:
    if isinstance(df, torch.Tensor):
        if df.numel() != 1:
            raise ValueError("WishartCholesky.df must be a single number (a hyper-parameter)")
        if df.requires_grad:
            raise ValueError(
                "WishartCholesky.df must be a number (a fixed hyper-parameter), got a tensor "
                "that requires grad: its gradient would be lost; use "
                "torch.distributions.Wishart for a learnable df"
            )
        df = df.item()
    if not (isinstance(df, (int, float)) and not isinstance(df, bool) and math.isfinite(df) and df > rank - 1):
        raise ValueError(f"WishartCholesky.df must be a finite number > r - 1 = {rank - 1}, got {df!r}")
    return float(df)


class WishartCholesky(TorchDistribution):
    """The Cholesky factor :math:`L` of a Wishart matrix :math:`L L^\\top \\sim \\mathcal{W}(\\nu, V)`.

    :param float df: degrees of freedom :math:`\\nu > r - 1` (a number: it is a hyper-parameter).
    :param torch.Tensor scale_tril: lower-triangular :math:`S` with positive diagonal,
        :math:`V = S S^\\top`, shape ``batch_shape + (r, r)``.

    :meth:`from_log_diagonal` builds the common case :math:`S = \\operatorname{diag}(e^{\\sigma})`
    (the paper's guide, and the prior with :math:`\\sigma = 0`), whose sampling, density and KL
    need no triangular solve and a fraction of the operations.

    >>> import torch
    >>> d = WishartCholesky(3.0, torch.eye(3))
    >>> L = d.rsample((2,))
    >>> L.shape, bool((L.triu(1) == 0).all())
    (torch.Size([2, 3, 3]), True)
    """

    arg_constraints = {"scale_tril": constraints.lower_cholesky}
    support = constraints.lower_cholesky
    has_rsample = True

    def __init__(
        self,
        df,
        scale_tril: Optional[torch.Tensor] = None,
        validate_args: Optional[bool] = None,
        *,
        log_scale_diagonal: Optional[torch.Tensor] = None,
    ):
        if (scale_tril is None) == (log_scale_diagonal is None):
            raise ValueError("WishartCholesky needs exactly one of scale_tril and log_scale_diagonal")
        if scale_tril is not None:
            if scale_tril.dim() < 2 or scale_tril.shape[-1] != scale_tril.shape[-2]:
                raise ValueError(
                    f"WishartCholesky.scale_tril must have shape (..., r, r), got {tuple(scale_tril.shape)}"
                )
            batch_shape, rank = scale_tril.shape[:-2], scale_tril.shape[-1]
        else:
            if log_scale_diagonal.dim() < 1:
                raise ValueError("WishartCholesky.log_scale_diagonal must have shape (..., r)")
            batch_shape, rank = log_scale_diagonal.shape[:-1], log_scale_diagonal.shape[-1]
        self.rank = rank
        self.df = _as_df(df, rank)
        self._scale_tril = scale_tril
        self.log_scale_diagonal = log_scale_diagonal
        super().__init__(batch_shape, torch.Size((rank, rank)), validate_args=validate_args)

    @classmethod
    def from_log_diagonal(cls, df, log_scale: torch.Tensor, validate_args: Optional[bool] = None) -> "WishartCholesky":
        """The Wishart with :math:`S = \\operatorname{diag}(e^{\\sigma})`, ``log_scale`` :math:`= \\sigma`."""
        return cls(df, None, validate_args, log_scale_diagonal=log_scale)

    @property
    def scale_tril(self) -> torch.Tensor:
        """:math:`S` (built from :math:`\\sigma` on first use for a diagonal scale)."""
        if self._scale_tril is None:
            self._scale_tril = torch.diag_embed(self.log_scale_diagonal.exp())
        return self._scale_tril

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(WishartCholesky, _instance)
        batch_shape = torch.Size(batch_shape)
        new.df, new.rank = self.df, self.rank
        if self.log_scale_diagonal is not None:
            new.log_scale_diagonal = self.log_scale_diagonal.expand(batch_shape + (self.rank,))
            new._scale_tril = None
        else:
            new.log_scale_diagonal = None
            new._scale_tril = self._scale_tril.expand(batch_shape + self.event_shape)
        super(WishartCholesky, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _log_normalizer(self) -> float:
        rank, df = self.rank, self.df
        return -0.5 * df * rank * math.log(2.0) - _mvlgamma(0.5 * df, rank)

    def _reference(self) -> torch.Tensor:
        return self.log_scale_diagonal if self.log_scale_diagonal is not None else self._scale_tril

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        rank = self.rank
        reference = self._reference()
        with _Fp32(reference):
            device, dtype = reference.device, _math_dtype(reference)
            # Bartlett: chi-square diagonal with nu - j degrees of freedom, N(0, 1) below it.
            offsets = torch.arange(rank, device=device, dtype=dtype)
            half_dfs = (0.5 * self.df - 0.5 * offsets).expand(shape[:-1])
            chi2 = 2.0 * torch._standard_gamma(half_dfs.contiguous())
            diagonal = chi2.clamp_min(torch.finfo(chi2.dtype).tiny).sqrt()
            bartlett = torch.randn(shape, device=device, dtype=dtype).tril(-1) + torch.diag_embed(diagonal)
            if self.log_scale_diagonal is not None:  # diag(e^sigma) T scales the rows of T
                return self.log_scale_diagonal.to(dtype).exp().unsqueeze(-1) * bartlett
            return self._scale_tril.to(dtype) @ bartlett

    def log_abs_det_jacobian(self, value: torch.Tensor) -> torch.Tensor:
        """:math:`\\log |\\partial (L L^\\top) / \\partial L| = r \\log 2 + \\sum_j (r - j) \\log L_{jj}`."""
        rank = self.rank
        powers = torch.arange(rank, 0, -1, device=value.device, dtype=value.dtype)
        log_diag = value.diagonal(dim1=-2, dim2=-1).log()
        return rank * math.log(2.0) + (powers * log_diag).sum(-1)

    def _log_kernel(self, value: torch.Tensor, powers: torch.Tensor) -> torch.Tensor:
        log_diag = value.diagonal(dim1=-2, dim2=-1).log()
        if self.log_scale_diagonal is not None:
            log_scale = self.log_scale_diagonal.to(value.dtype)
            whitened = value * (-log_scale).exp().unsqueeze(-1)
            log_det_scale = log_scale.sum(-1)
        else:
            scale_tril = self._scale_tril.to(value.dtype)
            whitened = torch.linalg.solve_triangular(scale_tril, value, upper=False)
            log_det_scale = scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return (
            (powers * log_diag).sum(-1)
            - 0.5 * whitened.pow(2).sum((-2, -1))
            - self.df * log_det_scale
            + self._log_normalizer()
        )

    def matrix_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Wishart log density of :math:`\\Sigma = L L^\\top`, evaluated from ``value`` :math:`= L`."""
        with _Fp32(value):
            value = value.to(_math_dtype(value, self._reference()))
            powers = torch.full((self.rank,), self.df - self.rank - 1.0, device=value.device, dtype=value.dtype)
            return self._log_kernel(value, powers)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        with _Fp32(value):
            value = value.to(_math_dtype(value, self._reference()))
            # (nu - r - 1) from the Wishart density plus (r - j) from the Jacobian, and r log 2.
            powers = self.df - 1.0 - torch.arange(self.rank, device=value.device, dtype=value.dtype)
            return self._log_kernel(value, powers) + self.rank * math.log(2.0)

    def entropy(self) -> torch.Tensor:
        """Entropy of :math:`L`, :math:`-E[\\log p(L)]` with ``log_prob``'s density.

        It is the Wishart's entropy (of :math:`\\Sigma`, what ``torch.distributions.Wishart.entropy``
        returns) minus :math:`E \\log |\\partial \\Sigma / \\partial L|`, in closed form by the
        Bartlett decomposition: :math:`\\log L_{jj} = \\log S_{jj} + \\tfrac12 \\log c_j` with
        :math:`E \\log c_j = \\psi(\\tfrac{\\nu - j}{2}) + \\log 2`, and
        :math:`E \\lVert S^{-1} L \\rVert_F^2 = E \\lVert T \\rVert_F^2 = \\nu r`, so

        .. math::

            H(L) = \\sum_{j=0}^{r-1} (j + 1) \\log S_{jj}
            - \\tfrac12 \\sum_j (\\nu - j - 1) \\big(\\psi(\\tfrac{\\nu - j}{2}) + \\log 2\\big)
            + \\tfrac{\\nu r}{2} (1 + \\log 2) - r \\log 2 + \\log \\Gamma_r(\\nu / 2).
        """
        rank, df = self.rank, self.df
        reference = self._reference()
        with _Fp32(reference):
            dtype = _math_dtype(reference)
            if self.log_scale_diagonal is not None:
                log_diag = self.log_scale_diagonal.to(dtype)
            else:
                log_diag = self._scale_tril.to(dtype).diagonal(dim1=-2, dim2=-1).log()
            weights = torch.arange(1, rank + 1, device=reference.device, dtype=dtype)
            return (weights * log_diag).sum(-1) + _cholesky_entropy_constant(df, rank)


def _cholesky_entropy_constant(df: float, rank: int) -> float:
    """The part of :meth:`WishartCholesky.entropy` that does not depend on the scale."""
    offsets = torch.arange(rank, dtype=torch.float64)
    expected_log_chi2 = torch.digamma(0.5 * (df - offsets)) + math.log(2.0)  # E log chi^2_{nu - j}
    return (
        -0.5 * ((df - offsets - 1.0) * expected_log_chi2).sum().item()
        + 0.5 * df * rank * (1.0 + math.log(2.0))
        - rank * math.log(2.0)
        + _mvlgamma(0.5 * df, rank)
    )


def _df_terms(df_p: float, df_q: float, rank: int) -> float:
    if df_p == df_q:
        return 0.0
    return (
        _mvlgamma(0.5 * df_q, rank)
        - _mvlgamma(0.5 * df_p, rank)
        + 0.5 * (df_p - df_q) * multivariate_digamma(0.5 * df_p, rank).item()
    )


def _df_tensor(df, rank: int, device) -> torch.Tensor:
    """``df`` as an fp64 tensor, still attached to the graph of a tensor ``df`` (no ``.item()``)."""
    if isinstance(df, bool) or not isinstance(df, (int, float, torch.Tensor)):
        raise ValueError(f"wishart_kl df must be a number or a tensor, got {df!r}")
    value = torch.as_tensor(df, dtype=torch.float64, device=device)
    if not bool(torch.all(torch.isfinite(value) & (value > rank - 1))):
        raise ValueError(f"wishart_kl df must be finite and > r - 1 = {rank - 1}, got {df!r}")
    return value


def _df_terms_tensor(df_p: torch.Tensor, df_q: torch.Tensor, rank: int) -> torch.Tensor:
    """:func:`_df_terms` of tensors (fp64), differentiable in both degrees of freedom."""
    return (
        torch.mvlgamma(0.5 * df_q, rank)
        - torch.mvlgamma(0.5 * df_p, rank)
        + 0.5 * (df_p - df_q) * multivariate_digamma(0.5 * df_p, rank)
    )


def wishart_kl(df_q, scale_tril_q: torch.Tensor, df_p, scale_tril_p: torch.Tensor) -> torch.Tensor:
    """:math:`\\mathrm{KL}(\\mathcal{W}(\\nu_q, V_q) \\,\\|\\, \\mathcal{W}(\\nu_p, V_p))` in closed form.

    .. math::

        \\mathrm{KL} = \\frac{\\nu_p}{2}\\left(\\log|V_p| - \\log|V_q|\\right)
        + \\frac{\\nu_q}{2}\\left(\\operatorname{tr}(V_p^{-1} V_q) - r\\right)
        + \\log\\Gamma_r\\!\\left(\\tfrac{\\nu_p}{2}\\right) - \\log\\Gamma_r\\!\\left(\\tfrac{\\nu_q}{2}\\right)
        + \\frac{\\nu_q - \\nu_p}{2} \\psi_r\\!\\left(\\tfrac{\\nu_q}{2}\\right)

    The names follow the ELBO's :math:`\\mathrm{KL}(q \\,\\|\\, p)`: the first Wishart is the
    guide's (:math:`q`), the second the prior's (:math:`p`); the function itself holds for any pair.
    Computed from the scale factors (:math:`\\operatorname{tr}(V_p^{-1} V_q) = \\lVert S_p^{-1} S_q \\rVert_F^2`).
    With equal degrees of freedom given as numbers the last three terms vanish and are not computed.
    A degree of freedom given as a tensor may carry a batch shape and a gradient: the KL is then
    computed with tensors (the :math:`\\nu`-terms in fp64), so the gradient reaches it.
    """
    rank = scale_tril_q.shape[-1]
    dtype = _math_dtype(scale_tril_q, scale_tril_p)
    if torch.is_tensor(df_q) or torch.is_tensor(df_p):
        df_q, df_p = _df_tensor(df_q, rank, scale_tril_q.device), _df_tensor(df_p, rank, scale_tril_q.device)
        df_terms = _df_terms_tensor(df_q, df_p, rank).to(dtype)
        df_q, df_p = df_q.to(dtype), df_p.to(dtype)
    else:
        df_q, df_p = _as_df(df_q, rank), _as_df(df_p, rank)
        df_terms = _df_terms(df_q, df_p, rank)
    with _Fp32(scale_tril_q):
        scale_tril_q, scale_tril_p = scale_tril_q.to(dtype), scale_tril_p.to(dtype)
        shape = torch.broadcast_shapes(scale_tril_q.shape, scale_tril_p.shape)
        whitened = torch.linalg.solve_triangular(scale_tril_p.expand(shape), scale_tril_q.expand(shape), upper=False)
        trace = whitened.pow(2).sum((-2, -1))
        log_det_q = 2.0 * scale_tril_q.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_det_p = 2.0 * scale_tril_p.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        kl = 0.5 * df_p * (log_det_p - log_det_q) + 0.5 * df_q * (trace - rank)
        return kl + df_terms


@register_kl(WishartCholesky, WishartCholesky)
def _kl_wishart_cholesky(p: WishartCholesky, q: WishartCholesky) -> torch.Tensor:
    if p.log_scale_diagonal is not None and q.log_scale_diagonal is not None:
        # diagonal scales: log|V| = 2 sum sigma, tr(V_q^-1 V_p) = sum exp(2 (sigma_p - sigma_q))
        with _Fp32(p.log_scale_diagonal):
            dtype = _math_dtype(p.log_scale_diagonal, q.log_scale_diagonal)
            sigma_p, sigma_q = p.log_scale_diagonal.to(dtype), q.log_scale_diagonal.to(dtype)
            kl = q.df * (sigma_q.sum(-1) - sigma_p.sum(-1)) + 0.5 * p.df * (
                (2.0 * (sigma_p - sigma_q)).exp().sum(-1) - p.rank
            )
            return kl + _df_terms(p.df, q.df, p.rank)
    return wishart_kl(p.df, p.scale_tril, q.df, q.scale_tril)


@register_kl(Wishart, Wishart)
def _kl_wishart(p: Wishart, q: Wishart) -> torch.Tensor:
    # df stays a tensor (batched, and learnable: the gradient reaches it)
    return wishart_kl(p.df, p.scale_tril, q.df, q.scale_tril)


class StandardNormalMatrix(TorchDistribution):
    """I.i.d. :math:`\\mathcal{N}(0, 1)` entries of a ``(rows, columns)`` matrix, as one event.

    The noise site that model and guide share. It is ``Normal(0, 1).expand(shape).to_event(2)``
    with less Python on the hot path, and the KL between two of them is registered as the exact
    zero it is, so ``TraceMeanField_ELBO`` spends nothing on it.
    """

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, rows: int, columns: int, device=None, validate_args: Optional[bool] = None):
        self.device = torch.device("cpu") if device is None else torch.device(device)
        super().__init__(torch.Size(), torch.Size((rows, columns)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StandardNormalMatrix, _instance)
        new.device = self.device
        super(StandardNormalMatrix, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        return new

    @property
    def mean(self) -> torch.Tensor:
        return torch.zeros(self.batch_shape + self.event_shape, device=self.device)

    @property
    def variance(self) -> torch.Tensor:
        return torch.ones(self.batch_shape + self.event_shape, device=self.device)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return torch.randn(self._extended_shape(sample_shape), device=self.device)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        count = self.event_shape.numel()
        value = value.to(_math_dtype(value))
        return -0.5 * value.pow(2).sum((-2, -1)) - 0.5 * count * math.log(2 * math.pi)

    def entropy(self) -> torch.Tensor:
        count = self.event_shape.numel()
        return torch.full(self.batch_shape, 0.5 * count * (1 + math.log(2 * math.pi)), device=self.device)


@register_kl(StandardNormalMatrix, StandardNormalMatrix)
def _kl_standard_normal(p: StandardNormalMatrix, q: StandardNormalMatrix) -> torch.Tensor:
    if p.event_shape != q.event_shape:
        raise ValueError(f"KL between noise matrices of shapes {p.event_shape} and {q.event_shape}")
    return torch.zeros(torch.broadcast_shapes(p.batch_shape, q.batch_shape), device=p.device)


def lora_perturbation(
    scale_tril: torch.Tensor, weights: torch.Tensor, noise: torch.Tensor, sample_scaler: float
) -> torch.Tensor:
    """The MonteCLoRA perturbation of a factor from a single noise draw (the fast form).

    Given :math:`\\Sigma = L L^\\top` and mixture weights :math:`\\pi`, the columns of
    :math:`s \\sum_k \\pi_k E_k` with :math:`E_k[:, j] \\sim \\mathcal{N}(0, \\Sigma)` i.i.d. are
    :math:`\\mathcal{N}(0, s^2 \\lVert\\pi\\rVert^2 \\Sigma)`, which is exactly the law of
    :math:`s \\lVert\\pi\\rVert L Z` with :math:`Z` standard normal. One draw serves all components.

    :param scale_tril: :math:`L`, shape ``(..., r, r)``.
    :param weights: :math:`\\pi`, shape ``(..., N)``.
    :param noise: :math:`Z`, shape ``(..., r, d)``.
    :param sample_scaler: :math:`s`.
    :returns: :math:`s \\lVert\\pi\\rVert L Z`, shape ``(..., r, d)``, in fp32 (fp64 if an input is).
    """
    with _Fp32(noise):
        dtype = _math_dtype(scale_tril, weights, noise)
        norm = torch.linalg.vector_norm(weights.to(dtype), dim=-1)
        # scale the (r, r) factor rather than the (r, d) product: the same number, less work
        return ((sample_scaler * norm)[..., None, None] * scale_tril.to(dtype)) @ noise.to(dtype)


def lora_perturbation_mixture(
    scale_tril: torch.Tensor, weights: torch.Tensor, noises: torch.Tensor, sample_scaler: float
) -> torch.Tensor:
    """The paper's form :math:`s \\sum_k \\pi_k L Z_k`, with one noise draw per component.

    :param noises: :math:`Z_k`, shape ``(..., N, r, d)``.

    It has the same law as :func:`lora_perturbation` and costs :math:`N` times more; it is kept as
    the reference the fast form is tested against.
    """
    with _Fp32(noises):
        dtype = _math_dtype(scale_tril, weights, noises)
        components = scale_tril.to(dtype).unsqueeze(-3) @ noises.to(dtype)
        return sample_scaler * (weights.to(dtype)[..., None, None] * components).sum(-3)
