"""The names and tags of MonteCLoRA's Pyro sites: the contract between the model and any guide.

Every adapted layer at module path ``<path>`` emits, per random factor, the latent sites
``<path>.covariance`` and ``<path>.mixture_weights`` (tagged ``infer={LATENT_SITE: True}``,
which :func:`~pyro_monteclora.nn.handlers.kl_scale` scales), the shared noise site
``<path>.lora_A.noise`` and the deterministic factor ``<path>.lora_A``
(:func:`factor_site_names`). With the Gaussian prior (``MonteCLoRAConfig.prior="gaussian"``) the
factor ``<path>.lora_A`` is itself the one latent site (tagged the same way) and the other three
do not exist. A guide, the paper's, BLoB's mean-field one or an autoguide, draws the latent sites
by these names.

**The stacked layout** (``MonteCLoRAConfig.site_layout="stacked"``) emits instead, for all layers
whose factor has one width :math:`d` (the ``L`` layers in the order of ``model.adapters()``), the
sites ``stacked.lora_A.<d>.covariance`` (``L`` Wisharts), ``stacked.lora_A.<d>.mixture_weights``,
``stacked.lora_A.<d>.noise`` and the deterministic ``stacked.lora_A.<d>`` of shape ``(L, r, d)``
(:func:`stacked_site_names`), the layer axis an event dimension (``.to_event(1)``): the same joint
density, a handful of sites instead of seven per layer. Layer ``path``'s values are row
``model.site_index()[path]`` of them.
"""

from __future__ import annotations

__all__ = ["LATENT_SITE", "factor_site_names", "stacked_site_names", "stacked_groups"]


#: ``infer`` tag carried by the latent (KL-bearing) sites, read by :func:`~pyro_monteclora.kl_scale`.
LATENT_SITE = "monteclora_latent"


def factor_site_names(path: str, factor: str) -> dict:
    """Site names of one random factor (``factor`` is ``"lora_A"`` or ``"lora_B"``).

    >>> factor_site_names("encoder.query", "lora_A")["covariance"]
    'encoder.query.covariance'
    >>> factor_site_names("encoder.query", "lora_B")["covariance"]
    'encoder.query.lora_B.covariance'
    """
    stem = path if factor == "lora_A" else f"{path}.{factor}"
    return {
        "covariance": f"{stem}.covariance",
        "mixture_weights": f"{stem}.mixture_weights",
        "noise": f"{path}.{factor}.noise",
        "value": f"{path}.{factor}",
    }


def stacked_site_names(factor: str, width: int) -> dict:
    """Site names of the stacked layout's group of ``factor`` with width ``width`` (the factor's
    ``d_in`` for ``lora_A``, ``d_out`` for ``lora_B``); keys as :func:`factor_site_names`.

    >>> stacked_site_names("lora_A", 576)["covariance"]
    'stacked.lora_A.576.covariance'
    >>> stacked_site_names("lora_A", 576)["value"]
    'stacked.lora_A.576'
    """
    stem = f"stacked.{factor}.{width}"
    return {
        "covariance": f"{stem}.covariance",
        "mixture_weights": f"{stem}.mixture_weights",
        "noise": f"{stem}.noise",
        "value": stem,
    }


def stacked_groups(adapters) -> dict:
    """The stacked layout's groups: ``{(factor, width): [adapter, ...]}``, layers in the order
    given, each adapter's random factors in turn (``lora_A``, then ``lora_B`` with ``random_B``)."""
    groups: dict = {}
    for adapter in adapters:
        for factor in adapter.random_factors:
            width = adapter.in_features if factor == "lora_A" else adapter.out_features
            groups.setdefault((factor, width), []).append(adapter)
    return groups
