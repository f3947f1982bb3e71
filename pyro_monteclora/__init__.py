"""pyro_monteclora: MonteCLoRA (Bayesian LoRA) for Hugging Face models, learned with Pyro SVI."""

from .config import MonteCLoRAConfig
from .distributions import WishartCholesky, wishart_kl
from .guides import MonteCLoRAGuide
from .handlers import kl_scale
from .layers import MonteCLoRALinear
from .likelihoods import CausalLM, Likelihood, SequenceClassification
from .model import MonteCLoRAModel

__version__ = "0.1.0"

__all__ = [
    "MonteCLoRAConfig",
    "MonteCLoRAModel",
    "MonteCLoRAGuide",
    "MonteCLoRALinear",
    "WishartCholesky",
    "wishart_kl",
    "kl_scale",
    "Likelihood",
    "SequenceClassification",
    "CausalLM",
]
