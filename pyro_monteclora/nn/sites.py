"""The names and tags of MonteCLoRA's Pyro sites: the contract between the model and any guide.

Every adapted layer at module path ``<path>`` emits, per random factor, the latent sites
``<path>.covariance`` and ``<path>.mixture_weights`` (tagged ``infer={LATENT_SITE: True}``,
which :func:`~pyro_monteclora.nn.handlers.kl_scale` scales), the shared noise site
``<path>.lora_A.noise`` and the deterministic factor ``<path>.lora_A``
(:func:`factor_site_names`). With the Gaussian prior (``MonteCLoRAConfig.prior="gaussian"``) the
factor ``<path>.lora_A`` is itself the one latent site (tagged the same way) and the other three
do not exist. A guide, the paper's, BLoB's mean-field one or an autoguide, draws the latent sites
by these names.
"""

from __future__ import annotations

__all__ = ["LATENT_SITE", "factor_site_names"]


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
