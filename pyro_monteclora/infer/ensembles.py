"""Ensembles as one predictive: deep ensembles and the paper's checkpoint ensembles.

An ensemble of :math:`M` members (independently seeded LoRA runs, or the adapters of the last
:math:`K` epochs of one run) predicts with the average of its members' predictives, and its
uncertainty splits as a posterior predictive's does, with the members in place of the draws:

.. math::

    \\bar p(y \\mid x) = \\frac1M \\sum_{m} \\bar p_m(y \\mid x), \\qquad
    H[\\bar p] = \\underbrace{\\frac1M \\sum_m E_m}_{\\text{expected entropy}}
    + \\underbrace{I}_{\\text{mutual information}},

where :math:`\\bar p_m` is member :math:`m`'s own predictive (:math:`S` posterior draws of a
MonteCLoRA member, the point predictive of a LoRA member) and :math:`E_m` its expected entropy.

All members share one model object: each member's trained tensors
(:func:`~pyro_monteclora.storage.checkpoint.trained_tensors`: a few MiB for LoRA) are copied into
it in turn, so an ensemble costs one base model in memory and :math:`M` passes in time. The model
gets its own tensors back afterwards, even if a pass raises.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

from pyro_monteclora.infer.predictive import PredictiveOutput, entropy, predict
from pyro_monteclora.storage.checkpoint import load_trained_tensors, trained_tensors

__all__ = ["ensemble_predict", "combine_predictives"]

Tensors = Dict[str, torch.Tensor]


def combine_predictives(outputs: Sequence[PredictiveOutput]) -> PredictiveOutput:
    """The ensemble of the members' predictives ``outputs`` (rows in the same order)."""
    if not outputs:
        raise ValueError("an ensemble needs at least 1 member, got 0")
    shapes = {tuple(o.probs.shape) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"the members' predictives differ in shape: {sorted(shapes)}")
    labels = outputs[0].labels
    if labels is not None and any(o.labels is None or not torch.equal(o.labels, labels) for o in outputs):
        raise ValueError("the members' predictives were made on different examples (their labels differ)")
    probs = torch.stack([o.probs.double() for o in outputs]).mean(0)
    expected = torch.stack([o.expected_entropy.double() for o in outputs]).mean(0)
    predictive_entropy = entropy(probs)
    return PredictiveOutput(
        probs=probs.float(),
        predictive_entropy=predictive_entropy.float(),
        expected_entropy=expected.float(),
        mutual_information=(predictive_entropy - expected).clamp_min(0.0).float(),
        labels=labels,
    )


def ensemble_predict(
    model,
    guide,
    members: Sequence[Tensors],
    loader: Iterable[dict],
    num_samples: int = 0,
    device=None,
    progress: bool = False,
    member_predict: Optional[Callable[..., PredictiveOutput]] = None,
) -> PredictiveOutput:
    """The ensemble predictive of ``members`` over every batch of ``loader`` (not shuffled).

    :param model: the model all members share (its trained tensors are swapped per member).
    :param guide: its guide (``EmptyGuide`` for LoRA members).
    :param members: each member's :func:`~pyro_monteclora.storage.checkpoint.trained_tensors`.
    :param int num_samples: :math:`S` draws per member (0: each member's mean adapter).
    :param member_predict: ``member_predict(model, guide, loader, num_samples, device, progress)``
        makes one member's predictive (default :func:`~pyro_monteclora.infer.predictive.predict`).
    """
    if len(members) < 1:
        raise ValueError("an ensemble needs at least 1 member, got 0")
    member_predict = predict if member_predict is None else member_predict
    own = trained_tensors(model, guide)
    outputs: List[PredictiveOutput] = []
    try:
        for index, member in enumerate(members):
            load_trained_tensors(model, guide, member, f"ensemble member {index}")
            outputs.append(member_predict(model, guide, loader, num_samples, device=device, progress=progress))
    finally:
        load_trained_tensors(model, guide, own, "the model's own tensors")
    return combine_predictives(outputs)
