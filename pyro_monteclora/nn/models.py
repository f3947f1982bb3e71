"""``MonteCLoRAModel``: a ``PyroModule`` that turns any HF model into a MonteCLoRA Pyro model.

The generative model, for a minibatch of inputs :math:`x_{1:B}` drawn from a data set of size
:math:`D`, is

.. math::

    \\Sigma_\\ell \\sim \\mathcal{W}(\\nu, I_r),\\quad
    \\pi_\\ell \\sim \\operatorname{Dir}(\\alpha_0 \\mathbf 1_N),\\quad
    A_\\ell = M_\\ell + s \\lVert \\pi_\\ell \\rVert L_\\ell Z_\\ell \\quad (\\text{every adapted layer } \\ell),

    y_i \\mid x_i, A \\sim p(y_i \\mid f_{W_0, A, B}(x_i)), \\qquad
    \\text{log-likelihood scaled by } D / B \\text{ under } \\texttt{pyro.plate("data")}.

:class:`MonteCLoRAModel` injects :class:`~pyro_monteclora.nn.layers.MonteCLoRALinear` adapters into the
matching linear layers, freezes everything else except ``modules_to_save``, and its ``forward`` is
the Pyro model above; it returns the logits, so ``pyro.infer.Predictive``, ``poutine.trace`` and
``SVI`` work on it as they are.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from typing import Dict, Iterator, Optional, Union

import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from pyro_monteclora.config import MonteCLoRAConfig
from pyro_monteclora.nn._params import register_parameters, unique_prefix
from pyro_monteclora.nn.layers import MonteCLoRALinear, sample_adapter_factors
from pyro_monteclora.nn.likelihoods import Likelihood, get_likelihood
from pyro_monteclora.nn.priors import GaussianPrior, MonteCLoRAPrior, prior_from_config
from pyro_monteclora.quantization import prepare_quantized_layer, quantized_layer_names
from pyro_monteclora.storage.checkpoint import register_model

__all__ = ["HFPyroModel", "MonteCLoRAModel", "inject_adapters"]

ADAPTER_MODES = ("sample", "mean")


def _is_adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def inject_adapters(
    model: nn.Module, config: MonteCLoRAConfig, prior: Optional[Union[MonteCLoRAPrior, GaussianPrior]] = None
) -> Dict[str, MonteCLoRALinear]:
    """Replace every matching linear layer of ``model`` in place by a :class:`MonteCLoRALinear`
    whose sites draw from ``prior`` (default: the one ``config.prior`` names, shared by all layers).

    :returns: the adapters, keyed by module path.
    :raises ValueError: if no linear layer matches ``config.target_modules``.
    """
    targets = [
        (path, module)
        for path, module in model.named_modules()
        if path and _is_adaptable(module) and config.matches_target(path) and not config.matches_saved(path)
    ]
    if not targets:
        linear_names = sorted(
            {path.rsplit(".", 1)[-1] for path, module in model.named_modules() if path and _is_adaptable(module)}
        )
        raise ValueError(
            f"MonteCLoRAConfig.target_modules={config.target_modules!r} matches no linear layer of "
            f"{type(model).__name__}; its linear layers are named {linear_names}"
        )
    prior = prior if prior is not None else prior_from_config(config)
    adapters = {}
    for path, module in targets:
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        adapter = MonteCLoRALinear(module, config, path, prior)
        setattr(parent, child, adapter)
        adapters[path] = adapter
    return adapters


class HFPyroModel(PyroModule):
    """What every Pyro model over a Hugging Face network shares (the base of
    :class:`MonteCLoRAModel` and :class:`~pyro_monteclora.nn.baselines.FullFineTuneModel`).

    ``forward(labels=None, dataset_size=None, example_index=None, **inputs)``:

    1. announces the trainable parameters to Pyro's parameter store,
    2. runs the wrapped network on ``inputs`` inside :meth:`sampled_adapters` (which emits the
       latent sites of a Bayesian subclass),
    3. observes ``labels`` with the likelihood under ``pyro.plate("data", size=D)``, with
       ``D`` = the ``dataset_size`` argument, else :attr:`dataset_size`, else the batch size (with
       a warning, once: a minibatch loop must say how large its data set is);
       ``example_index`` (optional) gives the minibatch's indices within the data set. Without
       ``labels`` the likelihood *samples* its ``obs`` site, so
       ``Predictive(model, guide=guide, num_samples=S)(**inputs)["obs"]`` holds label draws,

    and returns the logits (:meth:`logits` runs steps 1--2 alone). With ``labels`` and a causal LM
    that accepts HF's ``logits_to_keep``, the logits (and the labels observed) start one position
    before the first labelled token of the batch: the vocabulary projection of prompt positions,
    which carry no loss, is skipped.
    """

    def __init__(self, model: nn.Module, likelihood: Union[str, Likelihood], name: str):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        likelihood = get_likelihood(likelihood, model)
        likelihood.check_model(model)
        super().__init__(name)
        self.network = model  # a submodule, read through the property below
        self.likelihood = likelihood
        self._candidate_parameters = list(model.named_parameters())
        #: ``"sample"``: emit the latent sites; ``"mean"``: point estimates only.
        self.adapter_mode = "mean"
        #: size :math:`D` of the training set; scales the likelihood (``None``: the batch size).
        self.dataset_size: Optional[int] = None
        self._warned_dataset_size = False
        self._accepts_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._retain_draws = False

    # -- introspection -----------------------------------------------------------------------------
    @property
    def network(self) -> nn.Module:
        """The wrapped HF model (read without triggering ``PyroModule``'s ``pyro.module``)."""
        return self._modules["network"]

    def adapters(self) -> Dict[str, MonteCLoRALinear]:
        """The adapter layers, keyed by module path inside the wrapped model."""
        return {}

    def trainable_parameters(self) -> Iterator[tuple]:
        """``(name, parameter)`` for every parameter that training updates."""
        return ((n, p) for n, p in self.network.named_parameters() if p.requires_grad)

    def _registered_parameters(self) -> Iterator[tuple]:
        # The hot path: the candidates were listed once at construction (walking every module of a
        # large network on each call costs milliseconds); requires_grad is read on each call.
        return ((n, p) for n, p in self._candidate_parameters if p.requires_grad)

    def num_trainable_parameters(self) -> int:
        """How many scalars training updates."""
        return sum(p.numel() for _, p in self.trainable_parameters())

    # -- modes -------------------------------------------------------------------------------------
    def set_adapter_mode(self, mode: str) -> None:
        """``"sample"`` (latent sites, MonteCLoRA) or ``"mean"`` (point estimates)."""
        if mode not in ADAPTER_MODES:
            raise ValueError(f"adapter_mode must be one of {list(ADAPTER_MODES)}, got {mode!r}")
        self.adapter_mode = mode

    @contextlib.contextmanager
    def mean_adapters(self):
        """Within this context the model uses its mean adapters and emits no latent site."""
        previous = self.adapter_mode
        self.adapter_mode = "mean"
        try:
            yield self
        finally:
            self.adapter_mode = previous

    @contextlib.contextmanager
    def sampled_adapters(self):
        """Draw and hold random adapters for the context (none here); yields the network."""
        yield self.network

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the wrapped network's activations during the backward pass instead of
        storing them (HF's non-reentrant checkpointing): less memory for large bases.

        The recomputation must see the adapter draws of the forward pass, so the backward has to
        run inside :meth:`retained_draws` (as :func:`~pyro_monteclora.training.svi.fit` does), with one
        ELBO particle per step.
        """
        if not getattr(self.network, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(self.network).__name__} does not support gradient checkpointing")
        kwargs = {"use_reentrant": False}
        if hasattr(self.network, "activation_checkpointing_enable"):  # transformers >= 5.x
            self.network.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.network.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether :meth:`enable_gradient_checkpointing` is in effect."""
        network = self.network
        if hasattr(type(network), "is_activation_checkpointing"):  # transformers >= 5.x
            return bool(network.is_activation_checkpointing)
        return bool(getattr(network, "is_gradient_checkpointing", False))

    @contextlib.contextmanager
    def retained_draws(self):
        """Keep each execution's adapter draws held until this context ends, instead of dropping
        them when the model returns: wrap a step's loss **and backward** in it when gradient
        checkpointing is on, so that the recomputed forward uses the same draws."""
        self._retain_draws = True
        try:
            yield self
        finally:
            self._retain_draws = False
            for adapter in self.adapters().values():
                adapter.clear_factors()

    # -- persistence -------------------------------------------------------------------------------
    def save_pretrained(self, directory, guide=None, metadata: Optional[dict] = None) -> None:
        """Save the trained tensors, and ``guide``'s if given (safetensors + JSON); see
        :func:`pyro_monteclora.storage.checkpoint.save_pretrained`."""
        from pyro_monteclora.storage.checkpoint import save_pretrained

        save_pretrained(self, directory, guide=guide, metadata=metadata)

    @classmethod
    def from_pretrained(cls, directory, base_model=None, **kwargs) -> "HFPyroModel":
        """Rebuild a saved model (its guide is left out: :func:`pyro_monteclora.load_pretrained`
        returns both)."""
        from pyro_monteclora.storage.checkpoint import load_pretrained

        model, _ = load_pretrained(directory, base_model=base_model, **kwargs)
        if not isinstance(model, cls):
            raise ValueError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    # -- the Pyro model ----------------------------------------------------------------------------
    def logits(self, **inputs) -> torch.Tensor:
        """The wrapped network's logits under this execution's adapters (the latent sites are
        emitted as in :meth:`forward`), with no likelihood site: what the predictive and the
        decoders' scoring read."""
        register_parameters(self._pyro_name, self._registered_parameters())
        with self.sampled_adapters() as network:
            return network(**inputs, return_dict=True).logits

    def forward(
        self,
        labels: Optional[torch.Tensor] = None,
        dataset_size: Optional[int] = None,
        example_index: Optional[torch.Tensor] = None,
        **inputs,
    ) -> torch.Tensor:
        if labels is not None and self._accepts_logits_to_keep and "logits_to_keep" not in inputs:
            keep = self.likelihood.logits_to_keep(labels)
            if keep is not None:  # positions before the first labelled token carry no loss
                inputs = dict(inputs, logits_to_keep=keep)
                labels = labels[:, -keep:]
        logits = self.logits(**inputs)
        size = dataset_size if dataset_size is not None else self.dataset_size
        if size is None and labels is not None and not self._warned_dataset_size:
            self._warned_dataset_size = True
            warnings.warn(
                f"{type(self).__name__}: dataset_size is not set, so the likelihood is scaled to "
                f"the batch ({logits.shape[0]} examples); in a minibatch loop this over-weights the "
                f"KL by D / batch size. Set model.dataset_size = len(training set) (fit() does) or "
                f"pass dataset_size= to the model",
                UserWarning,
                stacklevel=2,
            )
        self.likelihood.observe(logits, labels, size, example_index)
        return logits


def _warn_if_head_frozen(model: nn.Module, config: MonteCLoRAConfig, likelihood: Likelihood) -> None:
    """Warn when a classifier's head is left out of ``modules_to_save``: it stays frozen, and a head
    that ``from_pretrained`` has just initialised stays random (training moves only the adapters)."""
    from pyro_monteclora.hf_defaults import default_modules_to_save

    if likelihood.name != "sequence-classification":
        return
    heads = default_modules_to_save(model)
    trained = [path for path, _ in model.named_modules() if path and config.matches_saved(path)]
    if heads and not any(path.rsplit(".", 1)[-1] in heads for path in trained):
        warnings.warn(
            f"{type(model).__name__}: its classification head {heads} is not in modules_to_save, so it stays "
            f"frozen (random, if from_pretrained just initialised it); pass modules_to_save={heads!r} to train it",
            stacklevel=3,
        )


@register_model
class MonteCLoRAModel(HFPyroModel):
    """A Pyro model over a Hugging Face model with MonteCLoRA adapters.

    :param nn.Module model: a ``transformers`` model (``*ForSequenceClassification``,
        ``*ForCausalLM``, ...); it is modified in place (adapters injected, base frozen). Its
        linear layers may be quantised (loaded with transformers' ``BitsAndBytesConfig``, see
        :mod:`pyro_monteclora.quantization`); the adapters wrap them and stay fp32.
    :param MonteCLoRAConfig config: the adapters and their prior.
    :param likelihood: ``"auto"`` (from the model's class), ``"sequence-classification"``,
        ``"causal-lm"`` or a :class:`~pyro_monteclora.nn.likelihoods.Likelihood`.
    :param str name: prefix of this model's entries in Pyro's global parameter store
        (default: ``"monteclora"``, made unique per instance).
    :param str adapter_mode: ``"sample"`` (the Bayesian model: every adapter's latent sites, for
        :class:`~pyro_monteclora.MonteCLoRAGuide` or any Pyro guide) or ``"mean"`` (no latent
        site, :math:`A = M`: plain LoRA, trained with :class:`~pyro_monteclora.EmptyGuide`).

    :attr:`prior` is built once from the config (``config.prior``: a
    :class:`~pyro_monteclora.nn.priors.MonteCLoRAPrior`, or a
    :class:`~pyro_monteclora.nn.priors.GaussianPrior` guided by
    :class:`~pyro_monteclora.MeanFieldGuide`); every layer's sites draw from it and the guide's KLs
    are taken against it.

    Calling the model, ``model(input_ids=..., attention_mask=..., labels=...)``, emits each
    adapter's latent sites (unless :attr:`adapter_mode` is ``"mean"``), runs the network and observes
    the labels, as described in :class:`HFPyroModel`; it returns the logits.
    """

    def __init__(
        self,
        model: nn.Module,
        config: MonteCLoRAConfig,
        likelihood: Union[str, Likelihood] = "auto",
        name: Optional[str] = None,
        adapter_mode: str = "sample",
    ):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, MonteCLoRAConfig):
            raise ValueError(f"config must be a MonteCLoRAConfig, got {type(config).__name__}")
        if adapter_mode not in ADAPTER_MODES:
            raise ValueError(f"adapter_mode must be one of {list(ADAPTER_MODES)}, got {adapter_mode!r}")
        resolved = get_likelihood(likelihood, model)
        resolved.check_model(model)  # fail before touching the model
        _warn_if_head_frozen(model, config, resolved)
        if config.modules_to_save:
            saved = [path for path, _ in model.named_modules() if path and config.matches_saved(path)]
            if not saved:
                raise ValueError(
                    f"MonteCLoRAConfig.modules_to_save={list(config.modules_to_save)!r} matches no "
                    f"module of {type(model).__name__}"
                )
            frozen_int = [path for path in saved if quantized_layer_names(model.get_submodule(path))]
            if frozen_int:
                raise ValueError(
                    f"MonteCLoRAConfig.modules_to_save names {frozen_int[0]}, which the base holds quantised: "
                    f"a trained module must stay in full precision; load the base with "
                    f"BitsAndBytesConfig(llm_int8_skip_modules=[{frozen_int[0]!r}, ...]) (a path prefix), or "
                    f"Quantization(..., skip_modules=[{frozen_int[0].rsplit('.', 1)[-1]!r}]).to_transformers()"
                )
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for module in model.modules():  # one computation in training, evaluation and saving
            prepare_quantized_layer(module)
        prior = prior_from_config(config)
        adapters = inject_adapters(model, config, prior)
        devices = {str(adapter.lora_A_mean.device) for adapter in adapters.values()}
        if config.site_layout == "stacked" and len(devices) > 1:
            raise ValueError(
                f"MonteCLoRAConfig.site_layout='stacked' stacks every layer's factors on one device, and this "
                f"base's adapted layers are on {sorted(devices)} (device_map?): use site_layout='per-layer'"
            )
        for path, module in model.named_modules():
            if path and config.matches_saved(path):
                for parameter in module.parameters(recurse=False):
                    parameter.requires_grad_(True)
        for adapter in adapters.values():
            adapter.lora_A_mean.requires_grad_(True)
            adapter.lora_B.requires_grad_(True)
            bias = getattr(adapter.base_layer, "bias", None)
            if config.bias == "all" and bias is not None:
                bias.requires_grad_(True)
        super().__init__(model, likelihood, name or unique_prefix("monteclora"))
        self.config = config
        #: the one prior of every adapter's sites (and of the guide's KLs)
        self.prior = prior
        self._adapter_paths = list(adapters)
        #: ``"sample"``: emit the latent sites (MonteCLoRA); ``"mean"``: :math:`A = M` (LoRA).
        self.adapter_mode = adapter_mode

    def adapters(self) -> Dict[str, MonteCLoRALinear]:
        """The adapter layers, keyed by module path inside the wrapped model."""
        network = self.network
        return {path: network.get_submodule(path) for path in self._adapter_paths}

    def site_index(self) -> Dict[str, tuple]:
        """Where each layer's random factor is in the trace: ``{"<path>.lora_A": (site, row)}``.

        With the per-layer layout the site is ``<path>.lora_A`` itself and ``row`` is ``None``;
        with ``site_layout="stacked"`` it is the stacked site (``stacked.lora_A.<d_in>``) and the
        layer's values are row ``row`` of the layer axis, the third dimension from the right of it
        and of its ``.covariance`` and ``.noise`` sites (``value[..., row, :, :]``) and the second
        from the right of its ``.mixture_weights`` site (``value[..., row, :]``).
        """
        from pyro_monteclora.nn.sites import factor_site_names, stacked_groups, stacked_site_names

        adapters = list(self.adapters().values())
        if self.config.site_layout != "stacked":
            return {
                f"{a.path}.{factor}": (factor_site_names(a.path, factor)["value"], None)
                for a in adapters
                for factor in a.random_factors
            }
        index = {}
        for (factor, width), members in stacked_groups(adapters).items():
            for row, layer in enumerate(members):
                index[f"{layer.path}.{factor}"] = (stacked_site_names(factor, width)["value"], row)
        return index

    @contextlib.contextmanager
    def sampled_adapters(self):
        """Draw every adapter's factors (emitting the latent sites) and hold them for the context.

        Inside it the wrapped network may be called many times (for example by ``generate``) with
        one draw. In ``"mean"`` mode it holds nothing and the layers use :math:`A = M`.
        """
        adapters = list(self.adapters().values())
        try:
            if self.adapter_mode == "sample":
                sample_adapter_factors(adapters)
            yield self.network
        finally:
            if not self._retain_draws:
                for adapter in adapters:
                    adapter.clear_factors()

    @contextlib.contextmanager
    def posterior_scale(self, factor: float):
        """Within the context every adapter draws :math:`A = M + (\\tau s) \\lVert\\pi\\rVert L Z`:
        the perturbation is ``factor`` :math:`= \\tau` times the trained one (the guide is unchanged).

        An evaluation-time knob: :math:`\\tau > 1` widens a posterior predictive that stays
        overconfident, :math:`\\tau = 0` is the mean adapter; choose it on validation NLL (never
        on test). Only for the paper's Wishart-mixture prior (the Gaussian prior has no :math:`s`).
        """
        import dataclasses
        import math

        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 0):
            raise ValueError(f"posterior_scale factor must be a finite number >= 0, got {factor!r}")
        if self.config.prior != "wishart-mixture":
            raise ValueError(
                f"posterior_scale scales the sample scaler s of the wishart-mixture prior, not {self.config.prior!r}"
            )
        adapters = list(self.adapters().values())
        saved = [adapter.config for adapter in adapters]
        try:
            for adapter, config in zip(adapters, saved):
                adapter.config = dataclasses.replace(config, sample_scaler=config.sample_scaler * factor)
            yield self
        finally:
            for adapter, config in zip(adapters, saved):
                adapter.config = config

    @contextlib.contextmanager
    def stacked_adapters(self, guide, num_samples: int):
        """Draw ``num_samples`` adapters from ``guide`` and hold them stacked for the context.

        Inside it the wrapped network takes a batch of ``num_samples * b`` rows, sample-major
        (``input_ids.repeat(num_samples, 1)``), and rows ``[k b, (k + 1) b)`` run with draw ``k``:
        :math:`S` posterior samples in one batched pass, for example one ``generate`` call.
        Yields the network.
        """
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        if self.adapter_mode == "mean" or guide is None:
            raise ValueError(
                "a model with mean adapters (LoRA), or no guide, has no posterior to "
                "sample; use the mean adapter (num_samples=0 in generate/predict)"
            )
        adapters = list(self.adapters().values())
        draws = [[] for _ in adapters]
        try:
            for _ in range(num_samples):
                guide_trace = poutine.trace(guide).get_trace()
                with poutine.replay(trace=guide_trace):
                    sample_adapter_factors(adapters)
                for adapter, sink in zip(adapters, draws):
                    sink.append(adapter.factors())
                    adapter.clear_factors()
            for adapter, sink in zip(adapters, draws):
                A = torch.stack([a for a, _ in sink])
                B = torch.stack([b for _, b in sink]) if self.config.random_B else sink[0][1]
                adapter.hold_factors(A, B)
            yield self.network
        finally:
            for adapter in adapters:
                adapter.clear_factors()

    def export_peft(self, directory, base_model_name_or_path: Optional[str] = None) -> None:
        """Write the posterior-mean adapter in PEFT's LoRA format; see
        :func:`pyro_monteclora.storage.checkpoint.export_peft`."""
        from pyro_monteclora.storage.checkpoint import export_peft

        export_peft(self, directory, base_model_name_or_path=base_model_name_or_path)
