"""The layout of a run folder, in one place: what ``train`` writes and what ``train --resume``,
``evaluate``, ``predict``, ``generate`` and ``sweep`` look for.

.. code-block:: text

    <output>/run.json              the run's arguments, data, model path, processes, versions
    <output>/checkpoint/           the last finished epoch (model + guide + training state)
    <output>/checkpoint.old/       the epoch before it, while the next one is being swapped in
    <output>/train_summary.json    written when training ends
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = [
    "RUN_FILE",
    "CHECKPOINT_DIR",
    "CHECKPOINT_DIRS",
    "STATE_FILE",
    "SUMMARY_FILE",
    "latest_checkpoint",
    "checkpoint_candidates",
    "is_inside_checkpoint",
]

RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoint"
#: the checkpoint, then its predecessor kept during an atomic swap
CHECKPOINT_DIRS = (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old")
STATE_FILE = "training_state.json"
SUMMARY_FILE = "train_summary.json"


def checkpoint_candidates(run: Path):
    """The folders of ``run`` that may hold its latest checkpoint, newest first."""
    return [run / name for name in CHECKPOINT_DIRS]


def latest_checkpoint(run: Path) -> Optional[Path]:
    """The newest checkpoint of ``run`` with a training state (a finished epoch), or ``None``."""
    return next((folder for folder in checkpoint_candidates(run) if (folder / STATE_FILE).is_file()), None)


def is_inside_checkpoint(path: Path) -> Optional[Path]:
    """The run's checkpoint folder that ``path`` is, or lies inside, else ``None``."""
    for folder in (path, *path.parents):
        if folder.name in CHECKPOINT_DIRS and (folder.parent / RUN_FILE).is_file():
            return folder
    return None
