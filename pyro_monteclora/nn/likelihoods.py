"""Likelihoods: how the wrapped network's logits explain the labels.

Each likelihood observes a minibatch under ``pyro.plate("data", size=dataset_size, subsample=...)``,
so the minibatch log-likelihood is scaled by ``dataset_size / batch_size`` to stand for the whole
data set, as the ELBO requires. Given no labels, a likelihood samples its ``obs`` site instead (as
any Pyro model does), so ``pyro.infer.Predictive`` returns label draws.

* :class:`SequenceClassification`: :math:`y_i \\sim \\operatorname{Categorical}(\\text{logits}_i)`.
* :class:`CausalLM`: :math:`y_{i,t+1} \\sim \\operatorname{Categorical}(\\text{logits}_{i,t})` for every
  token whose label is not ``-100`` (HF's convention for prompt and padding tokens); the tokens of
  one sequence form one event.
* :func:`sequence_log_likelihood`: the same masked next-token log-probability summed per sequence,
  as the evaluation of decoders scores responses and multiple-choice options.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_monteclora.util import IGNORE_INDEX

__all__ = [
    "Likelihood",
    "SequenceClassification",
    "CausalLM",
    "get_likelihood",
    "sequence_log_likelihood",
    "next_token_targets",
]

#: bidirectional encoders that transformers can load as ``*LMHeadModel`` without causal attention
ENCODER_MODEL_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "electra",
        "camembert",
        "ernie",
        "deberta",
        "deberta-v2",
        "distilbert",
        "mpnet",
        "albert",
        "bert-generation",
    }
)


class Likelihood:
    """Base class. Subclasses set :attr:`name` and implement :meth:`observe`.

    (A likelihood's *name* says what the network predicts; the word *task* is kept for the paper's
    data sets, :mod:`pyro_monteclora.data.tasks`.)"""

    #: short name used in configs and checkpoints
    name: str = ""

    def check_model(self, model: nn.Module) -> None:
        """Raise ``ValueError`` if ``model`` cannot produce the logits this likelihood needs."""

    def observe(
        self,
        logits: torch.Tensor,
        labels: Optional[torch.Tensor],
        dataset_size: Optional[int] = None,
        subsample: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The ``obs`` site: observed at ``labels``, or sampled when ``labels`` is ``None``.
        Returns its value."""
        raise TypeError(f"{type(self).__name__} does not define observe()")

    def logits_to_keep(self, labels: torch.Tensor) -> Optional[int]:
        """How many final sequence positions the likelihood needs logits for (``None``: all)."""
        return None

    @staticmethod
    def _plate(batch_size: int, dataset_size: Optional[int], subsample: Optional[torch.Tensor], device):
        size = batch_size if dataset_size is None else int(dataset_size)
        if size < batch_size:
            raise ValueError(f"dataset_size must be >= the batch size {batch_size}, got {dataset_size}")
        if subsample is None:
            subsample = torch.arange(batch_size, device=device)
        return pyro.plate("data", size=size, subsample=subsample)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SequenceClassification(Likelihood):
    """``Categorical(logits)`` over the classes of a ``*ForSequenceClassification`` model."""

    name = "sequence-classification"

    def check_model(self, model: nn.Module) -> None:
        name = type(model).__name__
        if "ForSequenceClassification" not in name:
            raise ValueError(
                f"likelihood 'sequence-classification' needs a *ForSequenceClassification model, "
                f"got {name}; use likelihood='causal-lm' for a causal language model"
            )

    def observe(self, logits, labels, dataset_size=None, subsample=None) -> torch.Tensor:
        if labels is not None and (labels.dim() != 1 or labels.shape[0] != logits.shape[0]):
            raise ValueError(f"labels must have shape (batch,) = ({logits.shape[0]},), got {tuple(labels.shape)}")
        with self._plate(logits.shape[0], dataset_size, subsample, logits.device):
            return pyro.sample("obs", dist.Categorical(logits=logits.float()), obs=labels)


class CausalLM(Likelihood):
    """Per-token ``Categorical`` of the next token; labels equal to ``-100`` are masked out."""

    name = "causal-lm"

    def check_model(self, model: nn.Module) -> None:
        name = type(model).__name__
        if not ("ForCausalLM" in name or "LMHeadModel" in name):
            raise ValueError(
                f"likelihood 'causal-lm' needs a *ForCausalLM (or *LMHeadModel) model, got {name}; "
                f"use likelihood='sequence-classification' for a classifier"
            )
        config = getattr(model, "config", None)
        if getattr(config, "model_type", None) in ENCODER_MODEL_TYPES and not getattr(config, "is_decoder", False):
            raise ValueError(
                f"likelihood 'causal-lm' needs a decoder; {name} over a {config.model_type} config with "
                f"is_decoder=False attends to future tokens (load it with is_decoder=True if you mean it)"
            )

    def logits_to_keep(self, labels: torch.Tensor) -> Optional[int]:
        """How many final positions need logits: from the one before the first labelled token of
        any row to the end (``None``: all of them). The prompt's other positions carry no loss,
        so a model that accepts HF's ``logits_to_keep`` skips its vocabulary projection there."""
        labelled = (labels != IGNORE_INDEX).any(0).nonzero()
        if len(labelled) == 0:
            return 1
        keep = labels.shape[1] - max(int(labelled[0]) - 1, 0)
        return None if keep >= labels.shape[1] else keep

    def observe(self, logits, labels, dataset_size=None, subsample=None) -> torch.Tensor:
        if labels is None:  # sample every next token (positions 1..T-1) given the logits
            tokens = dist.Categorical(logits=logits[:, :-1].float()).to_event(1)
            with self._plate(logits.shape[0], dataset_size, subsample, logits.device):
                return pyro.sample("obs", tokens)
        if labels.shape != logits.shape[:2]:
            raise ValueError(
                f"labels must have shape (batch, tokens) = {tuple(logits.shape[:2])}, got {tuple(labels.shape)}"
            )
        next_logits, next_labels, mask = next_token_targets(logits, labels)
        tokens = dist.Categorical(logits=next_logits).mask(mask).to_event(1)
        with self._plate(logits.shape[0], dataset_size, subsample, logits.device):
            return pyro.sample("obs", tokens, obs=next_labels.clamp_min(0))


def next_token_targets(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The causal shift, in one place: ``logits[:, t]`` (float32) predicts ``labels[:, t + 1]``, and
    labels equal to ``-100`` (prompt, padding) are masked out.

    :returns: ``(next_logits (b, T-1, V), next_labels (b, T-1), mask (b, T-1))``.
    """
    next_labels = labels[:, 1:]
    return logits[:, :-1].float(), next_labels, next_labels != IGNORE_INDEX


def sequence_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per sequence, the summed log-probability of its labelled tokens and their number.

    ``logits[:, t]`` predicts ``labels[:, t + 1]``; labels ``-100`` are skipped. Computed in
    float32 as ``logit[y] - logsumexp(logits)``, without materialising a log-softmax over the vocabulary.

    :returns: ``(log_likelihood (batch,), tokens (batch,))``.
    """
    next_logits, next_labels, mask = next_token_targets(logits, labels)
    picked = next_logits.gather(-1, next_labels.clamp_min(0)[..., None]).squeeze(-1)
    token_log_probs = (picked - next_logits.logsumexp(-1)) * mask
    return token_log_probs.sum(-1), mask.sum(-1)


_LIKELIHOODS = {cls.name: cls for cls in (SequenceClassification, CausalLM)}


def get_likelihood(likelihood: Union[str, Likelihood], model: Optional[nn.Module] = None) -> Likelihood:
    """Resolve a likelihood given by name (or ``"auto"``, which reads the model's class name)."""
    if isinstance(likelihood, Likelihood):
        return likelihood
    if likelihood == "auto":
        name = type(model).__name__ if model is not None else ""
        if "ForSequenceClassification" in name:
            return SequenceClassification()
        if "ForCausalLM" in name or "LMHeadModel" in name:
            return CausalLM()
        raise ValueError(
            f"likelihood='auto' cannot tell the likelihood of a {name}; pass likelihood= one of {sorted(_LIKELIHOODS)}"
        )
    if likelihood not in _LIKELIHOODS:
        raise ValueError(
            f"likelihood must be one of {sorted(_LIKELIHOODS) + ['auto']} or a Likelihood, got {likelihood!r}"
        )
    return _LIKELIHOODS[likelihood]()
