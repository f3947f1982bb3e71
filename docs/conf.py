"""Sphinx configuration of the pyro_monteclora documentation.

Build with ``make docs`` (HTML, then the doctest builder). Nothing here needs the network at build
time: no intersphinx, no remote images. MathJax is loaded by the reader's browser when a page with
math is viewed, as Sphinx does by default.
"""

from __future__ import annotations

import importlib
import os
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the working tree, installed or not

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

# -- project -------------------------------------------------------------------------------------
project = "pyro_monteclora"
author = "pyro_monteclora developers"
copyright = "pyro_monteclora developers, Apache-2.0"
release = _project["version"]
version = ".".join(release.split(".")[:2])

# -- general -------------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
    "sphinxarg.ext",
]
exclude_patterns = ["_build"]
nitpicky = False  # torch/pyro/transformers types cannot be linked without intersphinx
default_role = "code"
smartquotes_action = "qe"  # keep "--option" intact in the CLI reference (no en dashes)

# -- autodoc (reST field lists, as the docstrings are written) -------------------------------------
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_preserve_defaults = True
autoclass_content = "class"
autodoc_inherit_docstrings = False  # only this package's own docstrings (not torch's generic ones)

# -- doctest -------------------------------------------------------------------------------------
# The examples inside the package's docstrings are run by pytest (``--doctest-modules``, with each
# module's globals); the doctest builder runs the ``testcode``/``doctest`` blocks of these pages.
doctest_test_doctest_blocks = ""
doctest_global_setup = """
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import pyro
import torch
import transformers
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
torch.set_num_threads(min(2, torch.get_num_threads()))
"""

# -- HTML ----------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"pyro_monteclora {release}"
html_show_sourcelink = False


# -- cross-references to re-exported names --------------------------------------------------------
# Docstrings refer to public names through the package (``pyro_monteclora.MonteCLoRAModel``,
# ``pyro_monteclora.fit``); the API pages document each name where it is defined
# (``pyro_monteclora.nn.models.MonteCLoRAModel``). This resolves the former to the latter.
def _defining_name(target: str):
    parts = target.split(".")
    if parts[0] != "pyro_monteclora":
        return None
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attribute in parts[split:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            return None
        break
    else:
        return None
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or not module.startswith("pyro_monteclora"):
        return None
    name = f"{module}.{qualname}"
    return name if name != target else None


def _resolve_reexport(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    candidates = [target]
    if node.get("py:module") and not target.startswith("pyro_monteclora"):
        candidates.append(f"{node['py:module']}.{target}")
    domain = env.get_domain("py")
    for candidate in candidates:
        name = _defining_name(candidate)
        if name is None:
            continue
        resolved = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], name, node, contnode)
        if resolved is not None:
            return resolved
    return None


def setup(app):
    app.connect("missing-reference", _resolve_reexport)
