"""Training: :func:`~pyro_monteclora.training.svi.fit`, stochastic variational inference with
AdamW, schedules, clipping, annealing, multi-process runs and per-epoch evaluation, and the
state a resumed run needs.

* :mod:`~pyro_monteclora.training.svi` -- ``fit``: stochastic variational inference for a MonteCLoRA
  model and guide.
* :mod:`~pyro_monteclora.training.state` -- What a resumed run needs besides the model: optimiser,
  schedule, random state, progress.

It sits above :mod:`pyro_monteclora.evaluation` (it evaluates after each epoch) and below
the command line.

Every public name of these modules is importable from ``pyro_monteclora.training``.
"""

from pyro_monteclora.training.state import (
    STATE_JSON,
    STATE_TENSORS,
    TrainingState,
    capture_rng_state,
    check_state_fits,
    load_training_state,
    restore_rng_state,
    save_training_state,
)
from pyro_monteclora.training.svi import (
    Callback,
    FitResult,
    SVIStep,
    TrainConfig,
    evaluate_loader,
    fit,
    linear_schedule,
    rank_seed,
    train_epoch,
)

__all__ = [
    "fit",
    "FitResult",
    "TrainConfig",
    "SVIStep",
    "train_epoch",
    "rank_seed",
    "Callback",
    "linear_schedule",
    "evaluate_loader",
    "TrainingState",
    "save_training_state",
    "load_training_state",
    "capture_rng_state",
    "restore_rng_state",
    "check_state_fits",
    "STATE_TENSORS",
    "STATE_JSON",
]
