"""Full fine-tuning: the paper's third baseline, in the same Pyro code path.

:class:`FullFineTuneModel` wraps a Hugging Face model without adapters and trains **every** weight
as a point estimate. With :class:`~pyro_monteclora.EmptyGuide` (a guide with no latent sites:
the model has none) the negative ELBO per example that :func:`~pyro_monteclora.fit` minimises is
exactly the mean cross-entropy, so LoRA, MonteCLoRA and full fine-tuning differ only in the model
and guide, never in the training loop.

>>> import transformers
>>> net = transformers.BertForSequenceClassification(transformers.BertConfig(
...     vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
...     intermediate_size=16, num_labels=2))
>>> model = FullFineTuneModel(net)
>>> model.num_trainable_parameters() == sum(p.numel() for p in net.parameters())
True
"""

from __future__ import annotations

from typing import Optional, Union

from torch import nn

from pyro_monteclora.nn._params import unique_prefix
from pyro_monteclora.nn.likelihoods import Likelihood
from pyro_monteclora.nn.models import HFPyroModel
from pyro_monteclora.quantization import quantized_layer_names
from pyro_monteclora.storage.checkpoint import register_model

__all__ = ["FullFineTuneModel"]


@register_model
class FullFineTuneModel(HFPyroModel):
    """A Pyro model that updates all weights of the wrapped HF model (no adapters, no latents).

    :param nn.Module model: a ``transformers`` model; all its parameters become trainable.
    :param likelihood: as for :class:`~pyro_monteclora.MonteCLoRAModel`.
    :param str name: prefix in Pyro's parameter store (default ``"full_finetune"``, made unique).
    """

    def __init__(self, model: nn.Module, likelihood: Union[str, Likelihood] = "auto", name: Optional[str] = None):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        quantized = quantized_layer_names(model)
        if quantized:
            raise ValueError(
                f"full fine-tuning updates every weight, and {len(quantized)} layers of this base are quantised "
                f"(e.g. {quantized[0]}): train adapters on a quantised base (MonteCLoRAModel), or load it unquantised"
            )
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        super().__init__(model, likelihood, name or unique_prefix("full_finetune"))
        #: no adapter configuration
        self.config = None

    def set_adapter_mode(self, mode: str) -> None:
        """Only ``"mean"``: a fully fine-tuned model has no random adapter."""
        if mode != "mean":
            raise ValueError(f"FullFineTuneModel has no random adapters; adapter_mode must be 'mean', got {mode!r}")
        self.adapter_mode = mode
