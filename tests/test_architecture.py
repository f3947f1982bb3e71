"""The package's import graph: no cycles, one-way layers, and nothing imports the command line.

Every module of ``pyro_monteclora`` is parsed (not imported) and every import in it is read, at any
depth: at the top, inside functions, under ``if TYPE_CHECKING`` or ``try``, and
``importlib.import_module("pyro_monteclora...")`` calls. An edge ``a -> b`` means module ``a``
imports module ``b`` of the package. The layers are the leaf modules and the subpackages;
:data:`LAYERS` says which layers each may import, and an edge between two modules of the same
layer is always allowed (the cycle test still holds inside a layer).
"""

import ast
import importlib
from pathlib import Path

import pytest

import pyro_monteclora

PACKAGE = "pyro_monteclora"
ROOT = Path(pyro_monteclora.__file__).resolve().parent

#: leaf modules: they import nothing of the package but each other as listed here
LEAVES = {
    "util": set(),  # IGNORE_INDEX and other small shared things
    "_version": set(),
    "config": {"util", "validation"},
    "distributions": {"util"},
    "transforms": set(),  # the lower_cholesky bijection for autoguides
    "distributed": {"util"},
    "hf_defaults": set(),  # what the package knows about Hugging Face bases (targets, heads, pad ids)
    "quantization": {"validation"},  # quantised frozen bases (bitsandbytes), as checkpoints record them
    "validation": set(),  # one checker for values typed and values read back from disk
}
_LEAF_NAMES = set(LEAVES)

#: layer -> the layers it may import (besides itself); "" is the package's ``__init__`` (its facade)
LAYERS = {
    **LEAVES,
    "storage": {"util", "_version", "config", "validation", "quantization"},
    "nn": _LEAF_NAMES | {"storage"},
    "data": _LEAF_NAMES | {"storage"},
    "infer": _LEAF_NAMES | {"storage", "nn"},
    "evaluation": _LEAF_NAMES | {"storage", "nn", "data", "infer"},
    "training": _LEAF_NAMES | {"storage", "nn", "data", "infer", "evaluation"},
    "": _LEAF_NAMES | {"storage", "nn", "data", "infer", "evaluation", "training"},
    "cli": _LEAF_NAMES | {"storage", "nn", "data", "infer", "evaluation", "training", ""},
    "__main__": {"cli"},
}

#: old module paths kept for one release as thin re-exports of their new home: not part of the
#: graph, and nothing inside the package may import them
SHIMS = frozenset()

#: what ``from pyro_monteclora import *`` gave before the package was split into subpackages
PUBLIC_NAMES = {
    "MonteCLoRAConfig",
    "MonteCLoRAModel",
    "MonteCLoRAGuide",
    "FullFineTuneModel",
    "MonteCLoRAELBO",
    "FactorPosterior",
    "MonteCLoRALinear",
    "WishartCholesky",
    "StandardNormalMatrix",
    "wishart_kl",
    "kl_scale",
    "Likelihood",
    "SequenceClassification",
    "CausalLM",
    "fit",
    "FitResult",
    "predict",
    "PredictiveOutput",
    "predict_multiple_choice",
    "generate_answers",
    "GenerationResult",
    # added with the architecture: the prior object, the empty guide, persistence, the bijection
    "MonteCLoRAPrior",
    "EmptyGuide",
    "save_pretrained",
    "load_pretrained",
    "register_guide",
    "LowerCholeskyBijection",
    "TrainConfig",
    "ClassificationEvaluator",
    "LanguageModelEvaluator",
}


def _module_name(path: Path) -> str:
    parts = (PACKAGE,) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def layer(module: str) -> str:
    """``pyro_monteclora.nn.layers`` -> ``"nn"``; ``pyro_monteclora`` -> ``""``."""
    return module.split(".")[1] if "." in module else ""


def _resolve(importer: str, level: int, name: str) -> str:
    if level == 0:
        return name
    package = importer if importer in PACKAGES else importer.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _known(dotted: str) -> str:
    """The longest prefix of ``dotted`` that is a module of the package (``""`` if none)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return ""


def imports_of(module: str):
    """``(line, imported module)`` for every import of the package in ``module``, at any depth."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"), str(MODULES[module]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _known(alias.name):
                    yield node.lineno, _known(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.level, node.module or "")
            if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in MODULES else _known(base)
                if target:
                    yield node.lineno, target
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")
        ):
            if _known(node.args[0].value):
                yield node.lineno, _known(node.args[0].value)


def _edges():
    edges = {}
    for module in MODULES:
        if module in SHIMS:
            continue
        for line, target in imports_of(module):
            if target != module:
                edges.setdefault((module, target), line)
    return edges


EDGES = _edges()


def _where(edge) -> str:
    path = MODULES[edge[0]].relative_to(ROOT.parent)
    return f"{path}:{EDGES[edge]}: {edge[0]} -> {edge[1]}"


def _cycles(edges):
    """One cycle (as a list of modules, first repeated last) per strongly connected component."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(node):  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles = []
    for component in components:
        start = min(component)
        path, seen = [start], {start}
        while True:  # walk inside the component until a module repeats
            nxt = min(n for n in graph[path[-1]] if n in component)
            if nxt in seen:
                cycles.append(path[path.index(nxt) :] + [nxt])
                break
            path.append(nxt)
            seen.add(nxt)
    return cycles


def test_the_modules_are_where_the_layer_table_knows_them():
    unknown = sorted({layer(m) for m in MODULES} - set(LAYERS))
    assert not unknown, f"modules outside every layer of LAYERS: {unknown}; add them to the table"


def test_no_import_cycles_between_modules_of_the_package():
    cycles = _cycles(EDGES)
    message = "\n".join(
        " -> ".join(cycle) + "\n    " + "\n    ".join(_where((a, b)) for a, b in zip(cycle, cycle[1:]))
        for cycle in cycles
    )
    assert not cycles, f"import cycles (lazy imports included):\n{message}"


def test_every_import_follows_the_layers():
    wrong = [
        f"{_where(edge)}  ({layer(edge[0]) or PACKAGE} may not import {layer(edge[1]) or PACKAGE})"
        for edge in sorted(EDGES)
        if layer(edge[0]) in LAYERS
        and layer(edge[0]) != layer(edge[1])
        and layer(edge[1]) not in LAYERS[layer(edge[0])]
    ]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_nothing_imports_the_command_line_but_itself():
    wrong = [
        _where(edge) for edge in sorted(EDGES) if layer(edge[1]) == "cli" and layer(edge[0]) not in ("cli", "__main__")
    ]
    assert not wrong, "only pyro_monteclora.cli and __main__ may import the command line:\n" + "\n".join(wrong)


def test_nothing_imports_an_old_path_kept_for_users():
    wrong = [_where(edge) for edge in sorted(EDGES) if edge[1] in SHIMS]
    assert not wrong, "import the new module, not the shim:\n" + "\n".join(wrong)


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_subpackage_says_what_it_exports(package):
    module = importlib.import_module(package)
    assert isinstance(getattr(module, "__all__", None), list), f"{package} has no __all__ list"
    assert len(module.__all__) == len(set(module.__all__)), f"{package}.__all__ names a name twice"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names what it does not define: {missing}"
    assert module.__doc__ and module.__doc__.strip(), f"{package} has no docstring"


def test_star_import_gives_the_public_names():
    namespace = {}
    exec(f"from {PACKAGE} import *", namespace)
    assert set(pyro_monteclora.__all__) <= set(namespace)
    assert PUBLIC_NAMES <= set(pyro_monteclora.__all__), sorted(PUBLIC_NAMES - set(pyro_monteclora.__all__))


def test_the_graph_reader_sees_lazy_and_relative_imports():
    """The reader itself: a relative import inside a function is an edge like any other."""
    cli_edges = {b for a, b in EDGES if a == f"{PACKAGE}.__main__"}
    assert f"{PACKAGE}.cli" in cli_edges  # `from .cli import console_main`
    assert any(layer(a) == "cli" and layer(b) not in ("cli", "") for a, b in EDGES)  # imports inside functions
