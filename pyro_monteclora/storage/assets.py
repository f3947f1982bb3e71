"""Files shipped inside installed wheels: the offline models and data (MiniLM, SmolLM2's GGUF file,
Rotten Tomatoes, the trivia lists), found without importing their packages.

>>> package_folder("json", "json").name
'json'
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List

__all__ = ["package_folders", "package_folder"]


def package_folders(package: str, pip_name: str) -> List[Path]:
    """The folders of the installed ``package`` (several for a namespace package), located with
    ``importlib.util.find_spec``: nothing of the package runs.

    :raises FileNotFoundError: the package is not installed; the message says what to install.
    """
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        return [Path(location) for location in spec.submodule_search_locations]
    if spec is not None and spec.origin is not None:
        return [Path(spec.origin).parent]
    raise FileNotFoundError(
        f"the package {package!r} is not installed; install it with `pip install --no-deps {pip_name}`"
    )


def package_folder(package: str, pip_name: str) -> Path:
    """The (first) folder of the installed ``package``; see :func:`package_folders`."""
    return package_folders(package, pip_name)[0]
