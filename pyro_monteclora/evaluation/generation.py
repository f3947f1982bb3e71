"""Generation with posterior sampling, answer extraction and agreement as confidence.

For a prompt :math:`x`, :math:`S` adapters :math:`A^{(1)}, \\dots, A^{(S)} \\sim q` are drawn and each
decodes greedily, giving answers :math:`a_1, \\dots, a_S` (after :func:`extract_answer`). The
posterior-predictive answer is the most frequent one and its confidence the **agreement rate**

.. math::

    \\hat a = \\arg\\max_a \\#\\{s : a_s = a\\}, \\qquad
    \\operatorname{conf}(x) = \\#\\{s : a_s = \\hat a\\} / S,

a Monte Carlo estimate of :math:`\\bar p(\\hat a \\mid x)` under the posterior predictive of greedy
answers. :math:`S = 0` decodes once with the mean adapter :math:`A = M` (plain LoRA cost), and its
confidence is 1.

The prompts are tokenised once; the :math:`S` draws run as one batch of :math:`S \\times b` rows
(``samples_per_pass`` at a time) through
:meth:`~pyro_monteclora.MonteCLoRAModel.stacked_adapters`, so the decoding loop's per-token cost is
paid once for all samples.

>>> extract_answer("She had 3 + 4 = 7 apples.\\n#### 1,204", "number")
'1204'
>>> extract_answer("The capital is Paris.", "short"), normalize_answer("The Eiffel  Tower!")
('capital is paris', 'eiffel tower')
>>> majority_vote(["7", "7", "8", None])
('7', 0.5)
"""

from __future__ import annotations

import inspect
import re
import string
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from pyro_monteclora.data.causal_lm import encode_prompt, pad_batch
from pyro_monteclora.hf_defaults import end_token_id, pad_token_id
from pyro_monteclora.infer.predictive import evaluation_mode, progress_bar, uses_mean_adapter

__all__ = [
    "GenerationResult",
    "generate_answers",
    "extract_answer",
    "normalize_answer",
    "final_number",
    "majority_vote",
    "is_correct",
    "ANSWER_TYPES",
]

ANSWER_TYPES = ("short", "number", "text")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalize_answer(text: str) -> str:
    """Lower case, without punctuation, articles (a, an, the) or extra spaces (SQuAD's rule),
    except that an answer made only of an article (a letter answer ``"A"``) is kept."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    without_articles = " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())
    return without_articles or " ".join(text.split())  # "A" alone (a letter answer) stays "a"


def final_number(text: str) -> Optional[str]:
    """The first number after GSM8k's ``####`` if there is one, else the last number in ``text``;
    commas dropped and ``7.0`` written ``7``. ``None`` if there is no number."""
    marked = _NUMBER.findall(text.split("####", 1)[1]) if "####" in text else []
    found = marked[:1] or _NUMBER.findall(text)[-1:]
    if not found:
        return None
    value = found[0].replace(",", "").rstrip(".")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value or None


def extract_answer(text: str, answer_type: str = "short") -> Optional[str]:
    """The answer in a generation: ``"number"`` -> :func:`final_number`; ``"short"`` -> the first
    non-empty line, normalised (:func:`normalize_answer`); ``"text"`` -> the stripped text."""
    if answer_type == "number":
        return final_number(text)
    if answer_type == "short":
        lines = [line for line in text.strip().splitlines() if line.strip()]
        answer = normalize_answer(lines[0]) if lines else ""
        return answer or None
    if answer_type == "text":
        return text.strip() or None
    raise ValueError(f"answer_type must be one of {list(ANSWER_TYPES)}, got {answer_type!r}")


def majority_vote(answers: Sequence[Optional[str]]) -> Tuple[Optional[str], float]:
    """The most frequent non-empty answer (ties: the one seen first) and the fraction of all
    samples that gave it; ``(None, 0.0)`` when no sample gave an answer."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0.0
    best = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == best)
    return winner, best / len(answers)


def is_correct(answer: Optional[str], references: Iterable[str], answer_type: str) -> bool:
    """Exact match of an extracted answer against any reference (extracted the same way)."""
    if answer is None:
        return False
    return any(answer == extract_answer(reference, answer_type) for reference in references)


@dataclass
class GenerationResult:
    """One prompt's generations and the posterior-predictive answer."""

    prompt: str
    generations: List[str]
    answers: List[Optional[str]]
    answer: Optional[str]
    agreement: float
    num_samples: int
    references: Optional[List[str]] = None
    correct: Optional[bool] = None

    def to_dict(self) -> dict:
        """The result as a JSON-able dict (one line of ``pyro-monteclora generate``)."""
        return asdict(self)


def _decode(tokenizer, rows: torch.Tensor) -> List[str]:
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


def _encode_prompts(tokenizer, prompts: Sequence[str], inputs: Sequence[str], room: int) -> List[List[int]]:
    """The prompts' token ids, each cut from the left to its last ``room`` tokens (with one warning,
    shown at the caller of :func:`generate_answers`, past its ``torch.no_grad`` wrapper, saying how
    many were cut)."""
    encoded, cut = [], 0
    for prompt, extra in zip(prompts, inputs):
        ids = encode_prompt(tokenizer, prompt, extra)
        cut += len(ids) > room
        encoded.append(ids[-room:])
    if cut:
        import warnings

        warnings.warn(
            f"{cut} of {len(prompts)} prompts were longer than max_length - max_new_tokens = "
            f"{room} tokens and were cut from the left",
            stacklevel=5,
        )
    return encoded


def _generate_texts(
    model, guide, tokenizer, batch: dict, *, num_samples: int, per_pass: int, settings: dict
) -> List[List[str]]:
    """Each row's generations: one with the mean adapter (``num_samples`` 0), or ``num_samples``
    posterior draws decoded ``per_pass`` at a time with stacked adapters."""
    device = next(model.parameters()).device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    width, rows = ids.shape[1], ids.shape[0]
    texts: List[List[str]] = [[] for _ in range(rows)]
    if num_samples == 0:
        with model.mean_adapters():
            out = model.network.generate(input_ids=ids, attention_mask=mask, **settings)
        for row, text in enumerate(_decode(tokenizer, out[:, width:])):
            texts[row].append(text)
        return texts
    done = 0
    while done < num_samples:
        k = min(per_pass, num_samples - done)
        with model.stacked_adapters(guide, k) as network:
            out = network.generate(input_ids=ids.repeat(k, 1), attention_mask=mask.repeat(k, 1), **settings)
        for position, text in enumerate(_decode(tokenizer, out[:, width:])):  # sample-major: row = s * b + i
            texts[position % rows].append(text)
        done += k
    return texts


def _result(prompt: str, generations: List[str], references, answer_type: str, num_samples: int) -> GenerationResult:
    """One prompt's answers, their majority and, with references, whether it is correct."""
    answers = [extract_answer(text, answer_type) for text in generations]
    answer, agreement = majority_vote(answers)
    refs = None if references is None else list(references)
    return GenerationResult(
        prompt=prompt,
        generations=generations,
        answers=answers,
        answer=answer,
        agreement=agreement,
        num_samples=num_samples,
        references=refs,
        correct=None if refs is None else is_correct(answer, refs, answer_type),
    )


def _check_generation_settings(
    answer_type: str, num_samples: int, max_new_tokens: int, batch_size: int, max_length: int
) -> None:
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type must be one of {list(ANSWER_TYPES)}, got {answer_type!r}")
    for name, value, low in (
        ("num_samples", num_samples, 0),
        ("max_new_tokens", max_new_tokens, 1),
        ("batch_size", batch_size, 1),
        ("max_length", max_length, max_new_tokens + 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _greedy_settings(tokenizer, max_new_tokens: int, pad_id: int, generate_kwargs: dict) -> dict:
    """``generate``'s keyword arguments: greedy decoding of ``max_new_tokens`` tokens (sampling
    knobs cleared), then ``generate_kwargs`` on top."""
    settings = dict(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=end_token_id(tokenizer),
        temperature=None,
        top_p=None,
        top_k=None,
    )
    settings.update(generate_kwargs)
    return settings


def _is_tokenizer(value) -> bool:
    return callable(getattr(value, "batch_decode", None)) and hasattr(value, "pad_token_id")


def _legacy_arguments(args: tuple, kwargs: dict) -> Optional[Tuple[tuple, dict]]:
    """A call in the earlier order, ``(model, tokenizer, prompts, num_samples=0, guide=None, ...)``
    (recognised by a tokenizer in second place), rebound to today's order; ``None`` for a current call."""
    if len(args) < 2 or not _is_tokenizer(args[1]):
        return None
    import warnings

    warnings.warn(
        "generate_answers(model, tokenizer, prompts, num_samples, guide) is deprecated: call "
        "generate_answers(model, guide, tokenizer, prompts, num_samples), the order of predict()",
        FutureWarning,
        stacklevel=3,
    )
    names = ("model", "tokenizer", "prompts", "num_samples", "guide")
    if len(args) > len(names):
        raise TypeError(f"generate_answers() takes at most {len(names)} positional arguments, got {len(args)}")
    bound = dict(zip(names, args))
    clash = sorted(set(bound) & set(kwargs))
    if clash:
        raise TypeError(f"generate_answers() got multiple values for argument {clash[0]!r}")
    bound.update(kwargs)
    missing = [name for name in names[:3] if name not in bound]
    if missing:
        raise TypeError(f"generate_answers() missing required argument: {missing[0]!r}")
    model, tokenizer, prompts = (bound.pop(name) for name in names[:3])
    guide, num_samples = bound.pop("guide", None), bound.pop("num_samples", 0)
    return (model, guide, tokenizer, prompts, num_samples), bound


def generate_answers(*args, **kwargs) -> List[GenerationResult]:
    legacy = _legacy_arguments(args, kwargs)
    if legacy is not None:
        args, kwargs = legacy
    return _generate_answers(*args, **kwargs)


@torch.no_grad()
def _generate_answers(
    model,
    guide,
    tokenizer,
    prompts: Sequence[str],
    num_samples: int = 0,
    *,
    inputs: Optional[Sequence[str]] = None,
    references=None,
    answer_type: str = "short",
    max_new_tokens: int = 32,
    max_length: int = 512,
    batch_size: int = 8,
    samples_per_pass: Optional[int] = None,
    progress: bool = False,
    **generate_kwargs,
) -> List[GenerationResult]:
    """Generate for every prompt with ``num_samples`` posterior draws (0: the mean adapter, greedy).

    The arguments come in the order of :func:`~pyro_monteclora.infer.predictive.predict`:
    model, guide, data, number of samples. The earlier order,
    ``generate_answers(model, tokenizer, prompts, num_samples, guide)``, still works with a
    :class:`FutureWarning` and will be removed.

    :param model: a :class:`~pyro_monteclora.MonteCLoRAModel` (or any ``HFPyroModel``) over a
        causal LM; with mean adapters (LoRA) or no guide, ``num_samples`` > 0 acts as 0.
    :param guide: its guide, or ``None`` (the mean adapter).
    :param tokenizer: the base model's tokenizer.
    :param prompts: the questions or instructions (formatted by
        :func:`~pyro_monteclora.data.instructions.format_prompt`).
    :param references: accepted answers per prompt (optional): fills ``correct``.
    :param str answer_type: how answers are extracted: ``"short"``, ``"number"`` or ``"text"``.
    :param int max_length: prompts longer than ``max_length - max_new_tokens`` tokens are cut from
        the left (with a warning saying how many).
    :param int samples_per_pass: draws decoded together (default: all ``num_samples``; lower it
        when memory is short).
    :param generate_kwargs: passed on to ``generate`` (for example ``repetition_penalty`` or
        ``min_new_tokens``); decoding stays greedy for every draw.
    """
    _check_generation_settings(answer_type, num_samples, max_new_tokens, batch_size, max_length)
    draws = num_samples if not uses_mean_adapter(model, guide, num_samples) else 0
    per_pass = min(samples_per_pass or num_samples, num_samples) if draws else 1
    inputs = list(inputs) if inputs is not None else [""] * len(prompts)
    encoded = _encode_prompts(tokenizer, prompts, inputs, max_length - max_new_tokens)
    pad_id = pad_token_id(tokenizer)
    settings = _greedy_settings(tokenizer, max_new_tokens, pad_id, generate_kwargs)
    results: List[GenerationResult] = []
    starts = progress_bar(range(0, len(encoded), batch_size), f"generate S={num_samples}", progress)
    with evaluation_mode(model):
        for start in starts:
            batch = pad_batch(encoded[start : start + batch_size], pad_id, side="left")
            texts = _generate_texts(
                model, guide, tokenizer, batch, num_samples=draws, per_pass=per_pass, settings=settings
            )
            for index, generations in enumerate(texts, start):
                refs = None if references is None else references[index]
                results.append(_result(prompts[index], generations, refs, answer_type, draws))
    return results


generate_answers.__doc__ = _generate_answers.__doc__
generate_answers.__signature__ = inspect.signature(_generate_answers)
