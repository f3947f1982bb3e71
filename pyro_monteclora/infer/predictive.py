"""Streaming posterior predictive for classifiers.

For each example, with :math:`S` adapters :math:`A^{(s)} \\sim q` drawn from the guide,

.. math::

    \\bar p(y \\mid x) = \\frac1S \\sum_s p(y \\mid x, A^{(s)}), \\qquad
    \\underbrace{H[\\bar p]}_{\\text{predictive entropy}}
    = \\underbrace{\\frac1S \\sum_s H[p(\\cdot \\mid x, A^{(s)})]}_{\\text{expected entropy (aleatoric)}}
    + \\underbrace{I(y; A \\mid x)}_{\\text{mutual information (epistemic)}}.

The sums are accumulated batch by batch and sample by sample, so memory does not grow with
:math:`S`, and in float64: the mutual information is a small difference of two entropies
(often :math:`10^{-4}` nats or less), which float32 arithmetic would round away; the results are
returned as float32. :math:`S = 0` uses the mean adapter :math:`A = M` (plain LoRA cost); then the mutual
information is 0. Each draw is a full forward pass of the network under
``poutine.replay(model, guide_trace)``, the same mechanism as ``pyro.infer.Predictive``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Tuple

import torch
from pyro import poutine

from pyro_monteclora.nn.models import HFPyroModel

__all__ = [
    "predict",
    "posterior_predictive",
    "batch_predictive",
    "classifier_log_probs",
    "PredictiveOutput",
    "entropy",
    "move_batch",
    "adapter_draws",
    "stacked_adapter_draws",
    "uses_mean_adapter",
    "evaluation_mode",
    "progress_bar",
]


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dimension, with :math:`0 \\log 0 = 0`."""
    return -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()).sum(-1)


@contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run the block with ``model.eval()`` (dropout off) and give the model back in the training
    mode it had, even when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def progress_bar(iterable: Iterable, desc: str, show: bool) -> Iterable:
    """``iterable`` behind a transient tqdm bar labelled ``desc`` if ``show``, else unchanged."""
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


def move_batch(batch: dict, device) -> dict:
    """Move every tensor of a batch to ``device`` (other values pass through)."""
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@dataclass
class PredictiveOutput:
    """What :func:`predict` returns, one row per example, in loader order.

    :ivar probs: mean predictive probabilities, ``(n, classes)``.
    :ivar predictive_entropy: :math:`H[\\bar p]`, ``(n,)``.
    :ivar expected_entropy: :math:`\\frac1S\\sum_s H[p_s]`, ``(n,)``.
    :ivar mutual_information: their difference (clamped at 0 against round-off), ``(n,)``.
    :ivar labels: the loader's labels if it had any, else ``None``.
    """

    probs: torch.Tensor
    predictive_entropy: torch.Tensor
    expected_entropy: torch.Tensor
    mutual_information: torch.Tensor
    labels: Optional[torch.Tensor] = None

    @property
    def predictions(self) -> torch.Tensor:
        """The arg-max class of the mean predictive."""
        return self.probs.argmax(-1)


ClassLogProbs = Callable[[Callable[..., torch.Tensor], dict], torch.Tensor]


def uses_mean_adapter(model: HFPyroModel, guide, num_samples: int) -> bool:
    """Whether :math:`S` = ``num_samples`` draws reduce to the mean adapter :math:`A = M`: for
    :math:`S = 0`, no guide, or a model with mean adapters (LoRA, full fine-tuning: no latent site)."""
    return num_samples == 0 or guide is None or model.adapter_mode == "mean"


def adapter_draws(model: HFPyroModel, guide, num_samples: int, inputs: dict) -> Iterator[Callable[..., torch.Tensor]]:
    """Yield one function per adapter draw that runs ``model`` under that draw: :math:`S` replays of
    fresh guide traces (as ``pyro.infer.Predictive`` does), or the model once with its mean adapter
    (see :func:`uses_mean_adapter`). Consume each before asking for the next."""
    if uses_mean_adapter(model, guide, num_samples):
        with model.mean_adapters():
            yield model.logits
        return
    for _ in range(num_samples):
        yield poutine.replay(model.logits, trace=poutine.trace(guide).get_trace(**inputs))


def stacked_adapter_draws(samples_per_pass: int) -> Callable[..., Iterator[Callable[..., torch.Tensor]]]:
    """A ``draws`` for :func:`posterior_predictive` that runs up to ``samples_per_pass`` adapter
    draws in **one** batched forward of :math:`S' \\times b` rows
    (:meth:`~pyro_monteclora.MonteCLoRAModel.stacked_adapters`): the same draws as
    :func:`adapter_draws` in the same order, so the same predictive; fewer, larger kernels (what a
    GPU wants) for :math:`S'` times the activation memory."""
    if not isinstance(samples_per_pass, int) or isinstance(samples_per_pass, bool) or samples_per_pass < 1:
        raise ValueError(f"samples_per_pass must be an integer >= 1, got {samples_per_pass!r}")

    def draws(model: HFPyroModel, guide, num_samples: int, inputs: dict) -> Iterator[Callable[..., torch.Tensor]]:
        if uses_mean_adapter(model, guide, num_samples) or samples_per_pass == 1:
            yield from adapter_draws(model, guide, num_samples, inputs)
            return
        rows = next(iter(inputs.values())).shape[0]
        done = 0
        while done < num_samples:
            count = min(samples_per_pass, num_samples - done)
            repeated = {k: v.repeat(count, *([1] * (v.dim() - 1))) for k, v in inputs.items()}
            with model.stacked_adapters(guide, count) as network:
                logits = network(**repeated, return_dict=True).logits
            for k in range(count):
                yield _stacked_slice(logits, k, rows, inputs)
            done += count

    return draws


def _stacked_slice(logits: torch.Tensor, k: int, rows: int, inputs: dict) -> Callable[..., torch.Tensor]:
    """Draw ``k``'s logits of a stacked pass, for a ``run_model(**inputs)`` call with the very
    inputs the pass ran on (anything else is refused: the pass cannot be re-run for other inputs)."""

    def run_model(*args, **kwargs) -> torch.Tensor:
        if args or kwargs.keys() != inputs.keys() or any(kwargs[key] is not inputs[key] for key in inputs):
            raise ValueError(
                "stacked_adapter_draws ran the model once on the batch's inputs; its run_model takes exactly "
                "those inputs (use adapter_draws, samples_per_pass=1, for a class_log_probs that changes them)"
            )
        return logits[k * rows : (k + 1) * rows]

    return run_model


def classifier_log_probs(run_model: Callable[..., torch.Tensor], batch: dict) -> torch.Tensor:
    """A sequence classifier's class log-probabilities under the current draw (a ``class_log_probs``)."""
    return run_model(**batch).double().log_softmax(-1)


@torch.no_grad()
def batch_predictive(
    model: HFPyroModel,
    guide,
    batch: dict,
    class_log_probs: ClassLogProbs,
    num_samples: int,
    draws: Optional[Callable[..., Iterator[Callable[..., torch.Tensor]]]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The posterior predictive of one batch (inputs only, on the model's device): the mean
    probabilities :math:`\\bar p = \\frac1S \\sum_s p_s` of shape ``(n, K)`` and the expected
    entropy :math:`\\frac1S \\sum_s H(p_s)` of shape ``(n,)``, both float64. The caller puts the
    model in evaluation mode; :func:`posterior_predictive` is this over a loader."""
    draws = adapter_draws if draws is None else draws
    mean_probs = expected = 0.0
    count = 0
    for run_model in draws(model, guide, num_samples, batch):
        probs = class_log_probs(run_model, batch).double().exp()
        mean_probs, expected, count = mean_probs + probs, expected + entropy(probs), count + 1
    return mean_probs / count, expected / count


@torch.no_grad()
def posterior_predictive(
    model: HFPyroModel,
    guide,
    loader: Iterable[dict],
    class_log_probs: ClassLogProbs,
    num_samples: int = 10,
    device=None,
    progress: bool = False,
    desc: str = "predict",
    draws: Optional[Callable[..., Iterator[Callable[..., torch.Tensor]]]] = None,
) -> PredictiveOutput:
    """The streaming posterior predictive over any discrete outcome.

    :param class_log_probs: ``class_log_probs(run_model, batch)`` returns ``(n, K)`` log-probabilities
        of the batch's ``n`` outcomes; ``run_model(**inputs)`` runs the model under the current
        adapter draw and returns its logits. ``batch`` is the loader's batch without ``labels``.
        Classes a row does not have get ``-inf``. :func:`predict` (classifiers) and
        :func:`~pyro_monteclora.evaluation.language_model.predict_multiple_choice` are built on it.
    :param int num_samples: :math:`S \\ge 0` adapters per batch; 0 is the mean adapter.
    :param draws: ``draws(model, guide, num_samples, inputs)`` yields one ``run_model`` per draw
        (default :func:`adapter_draws`; :func:`~pyro_monteclora.infer.mc_dropout.dropout_draws`
        keeps the adapters' dropout on instead).
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
        raise ValueError(f"num_samples must be an integer >= 0, got {num_samples!r}")
    if device is None:
        device = next(model.parameters()).device
    rows = {"probs": [], "predictive_entropy": [], "expected_entropy": [], "labels": []}
    with evaluation_mode(model):
        for batch in progress_bar(loader, f"{desc} S={num_samples}", progress):
            batch = move_batch(batch, device)
            labels = batch.pop("labels", None)
            batch.pop("example_index", None)
            mean_probs, expected = batch_predictive(model, guide, batch, class_log_probs, num_samples, draws)
            rows["probs"].append(mean_probs.cpu())
            rows["predictive_entropy"].append(entropy(mean_probs).cpu())
            rows["expected_entropy"].append(expected.cpu())
            if labels is not None:
                rows["labels"].append(labels.cpu())
    if not rows["probs"]:
        raise ValueError("the posterior predictive got an empty loader")
    out = {k: torch.cat(v) for k, v in rows.items() if v}
    mutual_information = (out["predictive_entropy"] - out["expected_entropy"]).clamp_min(0.0)
    return PredictiveOutput(  # float32 out, as the model's logits; the differences were taken in float64
        probs=out["probs"].float(),
        predictive_entropy=out["predictive_entropy"].float(),
        expected_entropy=out["expected_entropy"].float(),
        mutual_information=mutual_information.float(),
        labels=out.get("labels"),
    )


def predict(
    model: HFPyroModel,
    guide,
    loader: Iterable[dict],
    num_samples: int = 10,
    device=None,
    progress: bool = False,
    samples_per_pass: int = 1,
) -> PredictiveOutput:
    """Posterior predictive of a sequence classifier over every batch of ``loader``.

    :param model: a :class:`~pyro_monteclora.MonteCLoRAModel` with a classification likelihood.
    :param guide: its :class:`~pyro_monteclora.MonteCLoRAGuide` (or any guide of the same sites).
    :param loader: batches as dictionaries of tensors (``labels`` optional).
    :param int num_samples: :math:`S \\ge 0` adapters per batch; 0 is the mean adapter.
    :param device: where to run (default: where the model's parameters are).
    :param bool progress: show a tqdm bar.
    :param int samples_per_pass: draws run together in one batched forward of
        ``samples_per_pass * b`` rows (:func:`stacked_adapter_draws`; 1: one draw at a time, the
        least memory). The predictive is the same either way.
    """
    if model.likelihood.name != "sequence-classification":
        raise ValueError(f"predict() needs a sequence-classification likelihood, got {model.likelihood.name!r}")
    draws = stacked_adapter_draws(samples_per_pass)  # checks samples_per_pass before any work
    return posterior_predictive(
        model,
        guide,
        loader,
        classifier_log_probs,
        num_samples=num_samples,
        device=device,
        progress=progress,
        draws=draws,
    )
