"""Training: :func:`~pyro_monteclora.training.svi.fit`, stochastic variational inference with
AdamW, schedules, clipping, annealing, multi-process runs and per-epoch evaluation, and the
state a resumed run needs.

* :mod:`~pyro_monteclora.training.svi` -- ``fit``: stochastic variational inference for a MonteCLoRA
  model and guide.
* :mod:`~pyro_monteclora.training.state` -- What a resumed run needs besides the model: optimiser,
  schedule, random state, progress.
* :mod:`~pyro_monteclora.training.trainer` -- ``MonteCLoRATrainer``: the Hugging Face ``Trainer``
  training a MonteCLoRA model and guide.

It sits above :mod:`pyro_monteclora.evaluation` (it evaluates after each epoch) and below
the command line.

Every public name of these modules is importable from ``pyro_monteclora.training``.
"""

from pyro_monteclora.training import state, svi
from pyro_monteclora.training.state import *  # noqa: F403
from pyro_monteclora.training.svi import *  # noqa: F403

#: :mod:`~pyro_monteclora.training.trainer`'s names, imported on first use: ``transformers.Trainer``
#: and ``accelerate`` take about 3.5 s to import, which every command would otherwise pay
_TRAINER_NAMES = (
    "MonteCLoRATrainer",
    "ELBOObjective",
    "posterior_metrics",
    "language_model_posterior_metrics",
    "read_training_args",
)

#: every public name of the modules, in the order the docstring lists them
__all__ = [*svi.__all__, *state.__all__, *_TRAINER_NAMES]


def __getattr__(name: str):
    if name in _TRAINER_NAMES:
        from pyro_monteclora.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
