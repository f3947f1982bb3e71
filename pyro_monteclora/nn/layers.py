"""The MonteCLoRA adapter layer: a frozen linear layer plus a low-rank update whose factor is random.

For a frozen base weight :math:`W_0 \\in \\mathbb{R}^{d_{out} \\times d_{in}}` the layer computes

.. math::

    y = W_0 x + b + \\gamma\\, B A\\, \\operatorname{dropout}(x), \\qquad \\gamma = \\alpha / r,

with :math:`B \\in \\mathbb{R}^{d_{out} \\times r}` a point estimate (zeros at init, as PEFT) and
:math:`A = M + s \\lVert\\pi\\rVert L Z` drawn by :meth:`MonteCLoRALinear.sample_factors` from the
model's Pyro sites

.. code-block:: text

    <path>.covariance       L    ~ WishartCholesky(nu, I_r)          (Sigma = L L^T)
    <path>.mixture_weights  pi   ~ Dirichlet(alpha_0 1_N)
    <path>.lora_A.noise     Z    ~ Normal(0, 1), shape (r, d_in)
    <path>.lora_A           A    =  M + s ||pi|| L Z                  (deterministic)

(With ``MonteCLoRAConfig.site_layout="stacked"`` the layers of one factor width share these sites,
``stacked.lora_A.<d_in>.covariance`` and so on, a row per layer: :mod:`pyro_monteclora.nn.sites`.)
The noise site is shared by model and guide, so its log-density ratio is exactly zero and nothing is
paid twice for it (see :func:`~pyro_monteclora.distributions.lora_perturbation`). With
``random_B=True`` the same four sites exist under ``<path>.lora_B`` for :math:`B`'s rows.

With the Gaussian prior (``MonteCLoRAConfig.prior="gaussian"``, BLoB's) each random factor is one
latent site instead, and the layer uses its draw:

.. code-block:: text

    <path>.lora_A           A    ~ Normal(0, sigma_p), shape (r, d_in), one event

The low-rank branch always runs in fp32 with autocast off, so that :math:`A` keeps a perturbation of
relative size :math:`s \\ll 2^{-8}` when the base runs in bf16/fp16; how much of it reaches a
bf16/fp16 *output* is said in :meth:`MonteCLoRALinear.forward`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_monteclora.config import MonteCLoRAConfig
from pyro_monteclora.distributions import StandardNormalMatrix, lora_perturbation
from pyro_monteclora.nn.priors import GaussianPrior, MonteCLoRAPrior, prior_from_config
from pyro_monteclora.nn.sites import LATENT_SITE, factor_site_names, stacked_groups, stacked_site_names
from pyro_monteclora.quantization import linear_shape, prepare_quantized_layer

__all__ = ["MonteCLoRALinear", "sample_adapter_factors", "latent_scale", "record_value"]


class MonteCLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` (or HF ``Conv1D``, or a bitsandbytes ``Linear4bit`` /
    ``Linear8bitLt`` of a quantised base, see :mod:`pyro_monteclora.quantization`) with a
    MonteCLoRA adapter.

    :param nn.Module base_layer: the layer to adapt; its parameters are frozen.
    :param MonteCLoRAConfig config: rank, scaling and prior hyper-parameters.
    :param str path: the module path inside the wrapped model; it names the Pyro sites.
    :param prior: the prior its sites draw from, a :class:`~pyro_monteclora.nn.priors.MonteCLoRAPrior`
        or :class:`~pyro_monteclora.nn.priors.GaussianPrior` (default: the one ``config.prior`` names;
        :class:`~pyro_monteclora.MonteCLoRAModel` gives all its layers its one ``model.prior``).

    Outside a Pyro model (no factors sampled) the layer uses the posterior-mean adapter
    :math:`A = M`, so it behaves exactly like a LoRA layer.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        config: MonteCLoRAConfig,
        path: str,
        prior: Optional[Union[MonteCLoRAPrior, GaussianPrior]] = None,
    ):
        super().__init__()
        self.transposed = type(base_layer).__name__ == "Conv1D"  # GPT-2 style (d_in, d_out) weight
        # a quantised base layer (bitsandbytes) stores a packed weight: its shape is read from the layer
        self.out_features, self.in_features = linear_shape(base_layer)
        prepare_quantized_layer(base_layer)  # a bitsandbytes layer: one layout in training and evaluation
        self.base_layer = base_layer
        self.config = config
        self.path = path
        self.rank = config.rank
        self.scaling = config.scaling
        self.random_B = config.random_B
        device = base_layer.weight.device
        # Adapter weights stay fp32 whatever the base dtype (DESIGN: small s is rounded away in bf16).
        self.lora_A_mean = nn.Parameter(torch.empty(self.rank, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.rank, device=device))
        nn.init.kaiming_uniform_(self.lora_A_mean, a=math.sqrt(5))  # PEFT's init for A
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self._factors: Optional[tuple] = None
        self.prior = prior if prior is not None else prior_from_config(config)
        self._site_names = {factor: factor_site_names(path, factor) for factor in ("lora_A", "lora_B")}
        self._noise: dict = {}

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"scaling={self.scaling:g}, random_B={self.random_B}, path={self.path!r}"
        )

    # -- the model's side of the sites -------------------------------------------------------------
    @property
    def random_factors(self) -> tuple:
        """``("lora_A",)``, or ``("lora_A", "lora_B")`` with ``random_B``."""
        return ("lora_A", "lora_B") if self.random_B else ("lora_A",)

    def sample_factors(self) -> None:
        """Emit this layer's prior sites and keep the sampled factors for the next forward passes.

        :class:`~pyro_monteclora.MonteCLoRAModel` does this for all its layers at once, once per
        model execution and before the wrapped network runs (:func:`sample_adapter_factors`), so
        that a layer called several times (generation) reuses one draw.
        """
        if self.config.site_layout == "stacked":
            raise ValueError(
                f"{self.path}: with site_layout='stacked' the sites of all layers are emitted together: "
                f"call sample_adapter_factors(all the model's adapters), as MonteCLoRAModel does"
            )
        sample_adapter_factors([self])

    def sample_latents(self, factor: str) -> tuple:
        """Emit the latent sites of ``factor`` (``"lora_A"`` or ``"lora_B"``) and return their draws
        :math:`(L, \\pi, Z)`: the covariance's Cholesky factor, the mixture weights and the noise
        (the wishart-mixture prior; :meth:`sample_gaussian_factor` for the Gaussian one).

        The deterministic site holding the factor itself is left to :func:`sample_adapter_factors`.
        """
        cfg = self.config
        names = self._site_names[factor]
        device = self.lora_A_mean.device
        covariance_prior, mixture_prior = self.priors(device)
        with latent_scale(cfg.kl_weight):
            scale_tril = pyro.sample(names["covariance"], covariance_prior, infer={LATENT_SITE: True})
            weights = pyro.sample(names["mixture_weights"], mixture_prior, infer={LATENT_SITE: True})
        noise_key = (factor, device)
        if noise_key not in self._noise:  # the noise distribution is fixed: build it once per device
            width = self.in_features if factor == "lora_A" else self.out_features
            self._noise[noise_key] = StandardNormalMatrix(self.rank, width, device)
        noise = pyro.sample(names["noise"], self._noise[noise_key])
        if cfg.cooperative_weight > 0:
            pyro.factor(f"{names['mixture_weights']}.cooperative", -cfg.cooperative_weight * weights.pow(2).sum(-1))
        return scale_tril, weights, noise

    def sample_gaussian_factor(self, factor: str) -> torch.Tensor:
        """Emit ``factor``'s one latent site under the Gaussian prior, ``<path>.lora_A`` (or
        ``<path>.lora_B``) :math:`\\sim \\mathcal N(0, \\sigma_p^2)` over the factor's entries, and
        return its draw: the factor itself (shaped as :meth:`factor_mean`)."""
        mean = self.factor_mean(factor)
        with latent_scale(self.config.kl_weight):
            return pyro.sample(
                self._site_names[factor]["value"],
                self.prior.factor(mean.shape, mean.device),
                infer={LATENT_SITE: True},
            )

    def factor_mean(self, factor: str) -> torch.Tensor:
        """The point estimate a factor is drawn around: :math:`M` (``lora_A_mean``) or ``lora_B``."""
        return self.lora_A_mean if factor == "lora_A" else self.lora_B

    def priors(self, device=None) -> tuple:
        """The prior distributions :math:`\\mathcal{W}(\\nu, I_r)` (Cholesky form) and
        :math:`\\operatorname{Dir}(\\alpha_0 \\mathbf 1_N)`, from :attr:`prior`."""
        device = self.lora_A_mean.device if device is None else torch.device(device)
        return self.prior.covariance(device), self.prior.mixture_weights(device)

    def clear_factors(self) -> None:
        """Forget the sampled factors: the layer falls back to the mean adapter."""
        self._factors = None

    def factors(self) -> tuple:
        """The ``(A, B)`` used by the next forward: the sampled ones, or the means."""
        if self._factors is not None:
            return self._factors
        return self.lora_A_mean, self.lora_B

    # -- computation -------------------------------------------------------------------------------
    def hold_factors(self, A: torch.Tensor, B: torch.Tensor) -> None:
        """Use ``(A, B)`` for the next forward passes (until :meth:`clear_factors`).

        ``A`` may be a stack ``(S, r, d_in)`` of :math:`S` draws (and ``B`` ``(S, d_out, r)`` or
        shared): the input's leading (batch) dimension is then read as :math:`S` equal groups of
        rows, sample-major, and group :math:`k` uses draw :math:`k`. This is how
        :meth:`~pyro_monteclora.MonteCLoRAModel.stacked_adapters` runs :math:`S` adapters in one
        batched pass (generation).
        """
        self._factors = (A, B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`W_0 x + b + \\gamma B A \\operatorname{dropout}(x)`, in the base layer's output dtype.

        The low-rank update is computed in fp32 with autocast off and added to the base output in
        fp32; the sum is rounded once to the base's dtype (what the next layer expects). In fp32 the
        whole layer is one fused ``addmm``.

        **Where a bf16 output loses the perturbation.** The perturbation of an output,
        :math:`\\Delta y = \\gamma B (s \\lVert\\pi\\rVert L Z) x`, can only show as whole steps of the
        output dtype. bf16 keeps 8 significant bits, so neighbouring values at :math:`|y|` are
        :math:`\\delta(y) = 2^{\\lfloor \\log_2 |y| \\rfloor - 7}` apart, between :math:`2^{-8}|y|` and
        :math:`2^{-7}|y|`. Rounded once, an output moves (by at least one step) exactly when
        :math:`y + \\Delta y` and :math:`y` round differently, that is with probability
        :math:`\\min(1, |\\Delta y| / \\delta(y))` over the position of :math:`y` between two steps:
        always when :math:`|\\Delta y| > 2^{-7} \\max(|y|, |y + \\Delta y|)`, and for a relative size
        :math:`|\\Delta y| / |y| = \\rho < 2^{-8}` in about :math:`128\\rho` to :math:`256\\rho` of the
        outputs; the others carry none of this draw's perturbation. fp16 (11 bits) has
        :math:`\\delta(y) = 2^{\\lfloor \\log_2 |y| \\rfloor - 10}`, eight times finer.
        ``tests/test_precision.py`` checks this law on a bf16 layer whose :math:`|\\Delta y| / |y|` is
        :math:`13 s` (median): at :math:`s = 10^{-6}` 1.1% of the outputs move (0.4% if the update
        were cast to bf16 before the add, which rounds twice), at :math:`s = 10^{-4}` 37%, at
        :math:`s = 10^{-2}` 99%.
        """
        result = self.base_layer(x)
        A, B = self.factors()
        if (
            A.dim() == 2
            and B.dim() == 2
            and result.dtype == x.dtype == A.dtype == B.dtype == torch.float32
            and not torch.is_autocast_enabled(x.device.type)
        ):
            # fp32: W0 x + b + (x A^T)(gamma B)^T as one fused multiply-add (addmm), with gamma
            # applied to the small B instead of the (tokens, d_out) update: two passes over the
            # activation fewer, forward and backward, than "base + lora(x) * gamma".
            low = F.linear(self.dropout(x), A)
            update = (B * self.scaling).mT
            fused = torch.addmm(result.reshape(-1, result.shape[-1]), low.reshape(-1, low.shape[-1]), update)
            return fused.view(result.shape)
        with torch.autocast(device_type=x.device.type, enabled=False):
            hidden = self.dropout(x).float()
            if A.dim() == 3:  # S stacked draws: rows of x in S sample-major groups
                if hidden.shape[0] % A.shape[0]:
                    raise ValueError(
                        f"{self.path}: a batch of {hidden.shape[0]} rows cannot be split "
                        f"among {A.shape[0]} stacked adapter samples"
                    )
                grouped = hidden.reshape(A.shape[0], -1, hidden.shape[-1])
                update = grouped @ A.float().mT @ (B.float() * self.scaling).mT
                update = update.reshape(*hidden.shape[:-1], -1)
            else:
                update = F.linear(F.linear(hidden, A.float()), B.float() * self.scaling)
            # The residual add in fp32 and one rounding to the base's dtype: casting the update
            # first would round twice and keep about a third of the small perturbations a single
            # rounding keeps (the docstring says where the limit is). In place when the sum is fp32.
            if torch.promote_types(update.dtype, result.dtype) == update.dtype:
                return update.add_(result).to(result.dtype)
            return (update + result).to(result.dtype)


def sample_adapter_factors(adapters: Sequence[MonteCLoRALinear]) -> None:
    """Emit the sites of every adapter in ``adapters`` and hold each one's sampled factors.

    Every layer keeps its own named latent sites (covariance, mixture weights, noise), emitted
    layer by layer in the order of ``adapters``, and its own deterministic factor site; but the
    factors :math:`M_\\ell + s \\lVert\\pi_\\ell\\rVert L_\\ell Z_\\ell` of all layers whose draws
    have one shape are formed in one batched operation
    (:func:`~pyro_monteclora.distributions.lora_perturbation` over the draws stacked along a new
    layer axis) and then split: a few autograd nodes per step instead of several per layer. So the
    deterministic ``<path>.lora_A`` sites come after all the latent ones in a trace.

    Under the Gaussian prior a layer's factor is its latent site
    (:meth:`MonteCLoRALinear.sample_gaussian_factor`), used as drawn.

    Draws with batch dimensions of their own (a ``pyro.plate`` around the model, vectorised
    ``Predictive``) are stacked along the layer axis just left of the factor's two dimensions, so
    each layer's mean broadcasts against its own draws only.

    With ``site_layout="stacked"`` (:mod:`~pyro_monteclora.nn.sites`) the layers of one factor
    width share one site per kind instead, the layer axis an event dimension.
    """
    if adapters and adapters[0].config.site_layout == "stacked":
        _sample_stacked_factors(adapters)
        return
    groups: dict = {}  # (factor, shapes of M, L, pi, Z, device, s) -> [(adapter, L, pi, Z)]
    values: dict = {}
    for adapter in adapters:
        for factor in adapter.random_factors:
            if isinstance(adapter.prior, GaussianPrior):  # the factor is the latent site itself
                values[adapter, factor] = adapter.sample_gaussian_factor(factor)
                continue
            scale_tril, weights, noise = adapter.sample_latents(factor)
            mean = adapter.factor_mean(factor)
            key = (
                factor,
                mean.shape,
                scale_tril.shape,
                weights.shape,
                noise.shape,
                mean.device,
                adapter.config.sample_scaler,
            )
            groups.setdefault(key, []).append((adapter, scale_tril, weights, noise))
    for key, members in groups.items():
        factor, sample_scaler = key[0], key[-1]
        layers, scale_trils, weights, noises = zip(*members)
        delta = lora_perturbation(
            torch.stack(scale_trils, dim=-3), torch.stack(weights, dim=-2), torch.stack(noises, dim=-3), sample_scaler
        )  # (..., layers, r, d)
        means = torch.stack([layer.factor_mean(factor) for layer in layers])  # (layers, ...)
        stacked = means + (delta.mT if factor == "lora_B" else delta)
        for layer, value in zip(layers, stacked.unbind(-3)):
            values[layer, factor] = record_value(layer._site_names[factor]["value"], value)
    for adapter in adapters:
        B = values[adapter, "lora_B"] if adapter.random_B else adapter.lora_B
        adapter.hold_factors(values[adapter, "lora_A"], B)


def _sample_stacked_factors(adapters: Sequence[MonteCLoRALinear]) -> None:
    """The stacked layout (``site_layout="stacked"``): per factor width, one covariance, one
    mixture-weight and one noise site for all its ``L`` layers (the layer axis an event dimension),
    one batched perturbation and one deterministic site of shape ``(..., L, r, d)``; then each
    layer holds its row. The joint density is the per-layer layout's."""
    values: dict = {}
    for (factor, width), members in stacked_groups(adapters).items():
        first = members[0]
        config, names, device, count = (
            first.config,
            stacked_site_names(factor, width),
            first.lora_A_mean.device,
            len(members),
        )
        covariance_prior, mixture_prior = (
            first.prior.covariance(device, (count,)),
            first.prior.mixture_weights(device, (count,)),
        )
        with latent_scale(config.kl_weight):
            scale_tril = pyro.sample(names["covariance"], covariance_prior.to_event(1), infer={LATENT_SITE: True})
            weights = pyro.sample(names["mixture_weights"], mixture_prior.to_event(1), infer={LATENT_SITE: True})
        noise = pyro.sample(
            names["noise"], StandardNormalMatrix(first.rank, width, device).expand((count,)).to_event(1)
        )
        if config.cooperative_weight > 0:
            pyro.factor(
                f"{names['mixture_weights']}.cooperative", -config.cooperative_weight * weights.pow(2).sum((-2, -1))
            )
        delta = lora_perturbation(scale_tril, weights, noise, config.sample_scaler)  # (..., L, r, d)
        means = torch.stack([layer.factor_mean(factor) for layer in members])
        stacked = record_value(names["value"], means + (delta.mT if factor == "lora_B" else delta))
        for layer, value in zip(members, stacked.unbind(-3)):
            values[layer, factor] = value
    for adapter in adapters:
        B = values[adapter, "lora_B"] if adapter.random_B else adapter.lora_B
        adapter.hold_factors(values[adapter, "lora_A"], B)


def record_value(name: str, value: torch.Tensor) -> torch.Tensor:
    """``pyro.deterministic(name, value)`` without re-validating the value it records.

    The site is the one Pyro's ``deterministic`` writes (a masked ``Delta`` observed at ``value``,
    tagged ``_deterministic``), so ``Predictive(return_sites=...)`` and traces see it as usual; the
    ``Delta`` is built with ``validate_args=False`` because its check (``value`` is real) costs a
    host synchronisation per layer on a GPU and can never fail here.
    """
    return pyro.sample(
        name,
        dist.Delta(value, event_dim=value.dim(), validate_args=False).mask(False),
        obs=value,
        infer={"_deterministic": True},
    )


def latent_scale(weight: float):
    """Scale the latent sites' log-densities by ``weight`` (``kl_weight``; 0 is allowed, unlike
    ``poutine.scale``); no handler at all for the usual weight 1."""
    from pyro_monteclora.nn.handlers import kl_scale

    return contextlib.nullcontext() if weight == 1.0 else kl_scale(weight)
