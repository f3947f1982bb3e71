"""Every method's predictive behind one call: what ``evaluate``, ``predict`` and the benchmarks run.

A checkpoint records its method (``metadata["method"]``, written by ``pyro-monteclora train``);
:func:`method_predictive` turns a loaded model, its guide and that method into one
:class:`MethodPredictive`, so MonteCLoRA and every baseline are scored by the same code:

* ``monteclora``, ``blob``: :math:`S` adapters drawn from the guide (default :math:`S` = 10);
* ``lora``, ``full``: the point estimate (0);
* ``mc-dropout``: :math:`S` adapter-dropout masks (:mod:`~pyro_monteclora.infer.mc_dropout`; 10);
* ``checkpoint-ensemble``: the members, the last :math:`K` epochs, averaged
  (:mod:`~pyro_monteclora.infer.ensembles`; 0);
* ``deep-ensemble``: the members, independently seeded runs, averaged (0);
* ``laplace``: the Laplace-LoRA GLM predictive (:mod:`~pyro_monteclora.infer.laplace`), :math:`S` logit
  draws (0: 1,000).

Any method may carry a temperature (``calibration.json``, fitted on validation by
:func:`~pyro_monteclora.infer.temperature.fit_temperature`); the predictive applies it unless
asked not to, so "X + temperature" exists for every X.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Union

from pyro_monteclora.infer.ensembles import ensemble_predict
from pyro_monteclora.infer.mc_dropout import mc_dropout_predict
from pyro_monteclora.infer.predictive import PredictiveOutput, predict
from pyro_monteclora.infer.temperature import temper_output

__all__ = [
    "MethodPredictive",
    "method_predictive",
    "METHOD_NAMES",
    "SAMPLED_METHODS",
    "ENSEMBLE_METHODS",
    "default_num_samples",
]

#: every method ``train --method`` knows
METHOD_NAMES = (
    "monteclora",
    "lora",
    "full",
    "mc-dropout",
    "checkpoint-ensemble",
    "deep-ensemble",
    "laplace",
    "blob",
)
#: methods whose predictive averages :math:`S` random passes (10 by default)
SAMPLED_METHODS = ("monteclora", "blob", "mc-dropout")
#: methods whose checkpoint holds ensemble members
ENSEMBLE_METHODS = ("checkpoint-ensemble", "deep-ensemble")


def default_num_samples(method: str) -> int:
    """10 for a method that samples (:data:`SAMPLED_METHODS`), else 0."""
    return 10 if method in SAMPLED_METHODS else 0


@dataclass
class MethodPredictive:
    """One method's predictive over a loaded model and guide.

    :ivar str method: one of :data:`METHOD_NAMES`.
    :ivar temperature: the fitted temperature, or ``None``.
    :ivar members: the ensemble members' trained tensors (ensembles only).
    :ivar laplace: the fitted :class:`~pyro_monteclora.infer.laplace.LaplaceLoRA` (``laplace`` only).
    """

    model: object
    guide: object
    method: str
    temperature: Optional[float] = None
    members: List[dict] = field(default_factory=list)
    laplace: object = None

    def __call__(
        self,
        loader: Iterable[dict],
        num_samples: Optional[int] = None,
        device=None,
        progress: bool = False,
        calibrated: bool = True,
    ) -> PredictiveOutput:
        """The predictive over every batch of ``loader``; ``num_samples`` ``None`` is the method's
        default; ``calibrated=False`` leaves the temperature out."""
        num_samples = default_num_samples(self.method) if num_samples is None else num_samples
        output = self._raw(loader, num_samples, device, progress)
        if calibrated and self.temperature is not None:
            output = temper_output(output, self.temperature)
        return output

    def _raw(self, loader, num_samples: int, device, progress: bool) -> PredictiveOutput:
        if self.method == "mc-dropout":
            return mc_dropout_predict(self.model, loader, num_samples, device=device, progress=progress)
        if self.method in ENSEMBLE_METHODS:
            return ensemble_predict(
                self.model, self.guide, self.members, loader, num_samples, device=device, progress=progress
            )
        if self.method == "laplace":
            # S counts logit draws of the GLM predictive here (cheap beside its Jacobians): 0 takes 1,000
            return self.laplace.predict(loader, num_samples=num_samples or 1000, progress=progress)
        return predict(self.model, self.guide, loader, num_samples, device=device, progress=progress)


def method_predictive(
    model, guide, method: str, directory: Union[str, os.PathLike, None] = None, calibration: bool = True
) -> MethodPredictive:
    """The predictive of ``method`` for ``model`` and ``guide``, with what ``directory`` (the
    checkpoint folder) holds beside the model: ensemble members, the Laplace fit, the temperature.

    :raises ValueError: an unknown method, or a checkpoint that lacks what its method needs.
    """
    from pyro_monteclora.storage.calibration import read_calibration
    from pyro_monteclora.storage.ensembles import read_ensemble_members

    if method not in METHOD_NAMES:
        raise ValueError(f"method must be one of {list(METHOD_NAMES)}, got {method!r}")
    predictive = MethodPredictive(model, guide, method)
    if directory is None:
        if method in ENSEMBLE_METHODS or method == "laplace":
            raise ValueError(f"the {method} predictive needs its checkpoint folder (members or Laplace fit)")
        return predictive
    directory = Path(directory)
    if method in ENSEMBLE_METHODS:
        saved = read_ensemble_members(directory)
        if saved is None:
            raise ValueError(f"{directory} holds no ensemble members (ensemble.json), which {method} needs")
        predictive.members = saved[2]
    if method == "laplace":
        from pyro_monteclora.infer.laplace import LaplaceLoRA

        predictive.laplace = LaplaceLoRA.load(directory, model)
    if calibration:
        record = read_calibration(directory)
        predictive.temperature = None if record is None else float(record["temperature"])
    return predictive
