"""pyro_monteclora: MonteCLoRA (Bayesian LoRA) for Hugging Face models, learned with Pyro SVI.

The pieces, each swappable (as TyXe's bnn / priors / guides / likelihoods):

* :class:`MonteCLoRAConfig` -- which layers get adapters and the prior's hyper-parameters;
* :class:`MonteCLoRAModel` -- a ``PyroModule`` whose ``forward`` is the Pyro model;
* :class:`MonteCLoRAPrior` -- the prior of every adapter's random factor, one object per model
  (:class:`GaussianPrior`, BLoB's, with ``MonteCLoRAConfig(prior="gaussian")``);
* :class:`MonteCLoRAGuide` -- the paper's structured variational family (any Pyro guide, such as
  ``AutoNormal``, works too); :class:`MeanFieldGuide` (BLoB's mean-field Gaussian, for the
  Gaussian prior; :func:`build_mean_field` builds the pair); :class:`EmptyGuide` for models
  without latent sites (LoRA, full);
* :class:`SequenceClassification`, :class:`CausalLM` -- likelihoods;
* :class:`FullFineTuneModel` -- the full fine-tuning baseline through the same code;
* :func:`fit` and :func:`predict` -- SVI and the streaming posterior predictive, conveniences over
  ``pyro.infer`` objects that work on the model and guide as they are (:class:`TrainConfig` holds
  the optimisation settings; :class:`ClassificationEvaluator` and :class:`LanguageModelEvaluator`
  are what ``fit(evaluate=...)`` measures after each epoch);
* decoders: :func:`predict_multiple_choice` (options scored through the posterior predictive) and
  :func:`generate_answers` (generation with posterior sampling, majority answer and agreement);
* :func:`save_pretrained` / :func:`load_pretrained` (model and guide; safetensors + JSON),
  ``export_peft``, and the ``pyro-monteclora`` command (:mod:`pyro_monteclora.cli`).
"""

from pyro_monteclora._version import __version__  # noqa: F401  (the package version, not in __all__)
from pyro_monteclora.config import MonteCLoRAConfig
from pyro_monteclora.distributions import StandardNormalMatrix, WishartCholesky, wishart_kl
from pyro_monteclora.evaluation.evaluators import ClassificationEvaluator, LanguageModelEvaluator
from pyro_monteclora.evaluation.generation import GenerationResult, generate_answers
from pyro_monteclora.evaluation.language_model import predict_multiple_choice
from pyro_monteclora.infer.elbo import MonteCLoRAELBO
from pyro_monteclora.infer.guides import EmptyGuide, FactorPosterior, MonteCLoRAGuide
from pyro_monteclora.infer.mean_field import MeanFieldGuide, build_mean_field
from pyro_monteclora.infer.predictive import PredictiveOutput, predict
from pyro_monteclora.nn.baselines import FullFineTuneModel
from pyro_monteclora.nn.handlers import kl_scale
from pyro_monteclora.nn.layers import MonteCLoRALinear
from pyro_monteclora.nn.likelihoods import CausalLM, Likelihood, SequenceClassification
from pyro_monteclora.nn.models import MonteCLoRAModel
from pyro_monteclora.nn.priors import GaussianPrior, MonteCLoRAPrior
from pyro_monteclora.storage.checkpoint import load_pretrained, register_guide, save_pretrained
from pyro_monteclora.training.svi import FitResult, TrainConfig, fit
from pyro_monteclora.transforms import LowerCholeskyBijection  # registers biject_to(lower_cholesky) for autoguides

__all__ = [
    "MonteCLoRAConfig",
    "MonteCLoRAModel",
    "MonteCLoRAGuide",
    "EmptyGuide",
    "MonteCLoRAPrior",
    "GaussianPrior",
    "MeanFieldGuide",
    "build_mean_field",
    "save_pretrained",
    "load_pretrained",
    "register_guide",
    "FullFineTuneModel",
    "MonteCLoRAELBO",
    "FactorPosterior",
    "MonteCLoRALinear",
    "WishartCholesky",
    "StandardNormalMatrix",
    "LowerCholeskyBijection",
    "wishart_kl",
    "kl_scale",
    "Likelihood",
    "SequenceClassification",
    "CausalLM",
    "fit",
    "FitResult",
    "TrainConfig",
    "ClassificationEvaluator",
    "LanguageModelEvaluator",
    "predict",
    "PredictiveOutput",
    "predict_multiple_choice",
    "generate_answers",
    "GenerationResult",
]
