"""A MonteCLoRA checkpoint as an `lm-evaluation-harness <https://github.com/EleutherAI/lm-evaluation-harness>`_ model.

:class:`MonteCLoRALM` is registered with lm-eval as ``monteclora`` (importing this module registers
it) and answers the harness's three kinds of request through the posterior predictive of
:math:`S` adapter draws :math:`A^{(1)}, \\dots, A^{(S)} \\sim q` (:math:`S = 0`: the mean adapter
:math:`A = M`, plain LoRA):

* ``loglikelihood(context, continuation)``: the log of the predictive probability of the whole
  continuation :math:`y` given the context :math:`x`,

  .. math::

      \\log \\bar p(y \\mid x) = \\log \\frac1S \\sum_{s=1}^S p(y \\mid x, A^{(s)})
      = \\operatorname{logsumexp}_s \\log p(y \\mid x, A^{(s)}) - \\log S,

  computed from each draw's summed token log-probabilities (never an average of
  log-probabilities, which would be the expected log-likelihood, a lower bound). ``is_greedy`` says
  whether every continuation token is the argmax of the predictive next-token distribution
  :math:`\\frac1S \\sum_s p(\\cdot \\mid \\dots, A^{(s)})` given the true prefix.
* ``loglikelihood_rolling(text)``: the same for a whole text cut into lm-eval's rolling windows;
  every window of one text is scored under the same :math:`S` draws and the windows' log-likelihoods
  are summed per draw before the log-sum-exp, so the result is the predictive log-probability of the
  whole text.
* ``generate_until(context, gen_kwargs)``: each of the :math:`S` draws decodes (greedily unless the
  task asks to sample) until one of the task's stop strings; the answer returned is the majority
  answer (:func:`~pyro_monteclora.evaluation.generation.majority_vote` over the answers that
  ``answer_type`` extracts), and :attr:`MonteCLoRALM.generations` keeps every draw's text and the
  agreement rate, the answer's confidence.

All draws of one batch of requests run as one batched pass of :math:`S \\times b` rows
(:meth:`~pyro_monteclora.MonteCLoRAModel.stacked_adapters`), ``samples_per_pass`` draws at a time;
the requests of a batch share their draws, as :func:`~pyro_monteclora.infer.predictive.predict` does.

Tokenisation follows lm-eval's ``hf`` model (the same ``TemplateLM`` encoding of context and
continuation, the same truncation to the last ``max_length`` tokens, the same rolling windows), so
with :math:`S = 0` the log-likelihoods equal those of ``hf`` on the PEFT export of the mean adapter
(:func:`~pyro_monteclora.storage.checkpoint.export_peft`).

Requires the ``harness`` extra (``pip install -e ".[harness]"``: ``lm-eval``).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
    resolve_max_length,
)
from lm_eval.models.utils_hf import stop_sequences_criteria
from tqdm import tqdm

from pyro_monteclora.data.causal_lm import pad_batch
from pyro_monteclora.evaluation.generation import ANSWER_TYPES, extract_answer, majority_vote
from pyro_monteclora.hf_defaults import ensure_pad_token, pad_token_id
from pyro_monteclora.infer.predictive import evaluation_mode, uses_mean_adapter

__all__ = ["MonteCLoRALM", "open_decoder_checkpoint", "DEFAULT_MAX_LENGTH"]

#: the context length when neither the model's config nor its tokenizer gives one (lm-eval's default)
DEFAULT_MAX_LENGTH = 2048


def open_decoder_checkpoint(checkpoint: Union[str, os.PathLike], *, device="cpu", trust_remote_code: bool = False):
    """``(model, guide, tokenizer)`` of a causal-LM checkpoint written by ``save_pretrained`` or ``train``.

    :raises ValueError: when the checkpoint is not a decoder (a sequence classifier, say).
    """
    from pathlib import Path

    from transformers import AutoTokenizer

    from pyro_monteclora.storage.checkpoint import load_pretrained, read_saved_config

    directory = Path(checkpoint)
    if not (directory / "monteclora_config.json").is_file() and (directory / "checkpoint").is_dir():
        directory = directory / "checkpoint"  # a train run folder
    record = read_saved_config(directory)
    if record["likelihood"] != "causal-lm":
        raise ValueError(f"checkpoint {checkpoint}: a {record['likelihood']} model; lm-eval needs a causal-lm one")
    metadata = record.get("metadata") or {}
    base = metadata.get("model_path") or record["base_model"]["name_or_path"]
    source = directory if (directory / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    model, guide = load_pretrained(directory, base_model=base, trust_remote_code=trust_remote_code, device=device)
    ensure_pad_token(tokenizer, model.network)
    return model, guide, tokenizer


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@register_model("monteclora")
class MonteCLoRALM(TemplateLM):
    """lm-eval's ``LM`` interface over a MonteCLoRA decoder and its guide (see the module).

    Give either ``checkpoint`` (a folder written by ``save_pretrained`` or ``pyro-monteclora
    train``) or ``model``, ``guide`` and ``tokenizer`` in memory. From lm-eval's command line or
    ``simple_evaluate(model="monteclora", model_args="checkpoint=DIR,num_samples=10")`` the
    arguments arrive as strings and are parsed by lm-eval.

    :param int num_samples: :math:`S \\ge 0` posterior draws per request (0: the mean adapter).
    :param int batch_size: requests per batch (the pass holds ``samples_per_pass`` × this rows).
    :param int samples_per_pass: draws run together (default: all :math:`S`; lower it when memory is short).
    :param int max_length: the context length (default: the model's, as lm-eval's ``hf`` reads it).
    :param int max_gen_toks: new tokens per generation unless a task says otherwise.
    :param str answer_type: how ``generate_until`` compares the draws' texts before the vote:
        ``"text"`` (the text, whitespace-normalised), ``"number"`` (the final number, GSM8k) or
        ``"short"`` (the first line, normalised).
    :param add_bos_token: as lm-eval's ``hf``: ``None`` leaves it to the tokenizer.
    :param max_batch_size: accepted for lm-eval's calling convention and not used.
    """

    def __init__(
        self,
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        *,
        model=None,
        guide=None,
        tokenizer=None,
        num_samples: int = 10,
        batch_size: Union[int, str] = 8,
        samples_per_pass: Optional[int] = None,
        max_length: Optional[int] = None,
        max_gen_toks: int = 256,
        answer_type: str = "text",
        add_bos_token: Optional[bool] = None,
        device: Optional[str] = None,
        trust_remote_code: bool = False,
        max_batch_size: Optional[int] = None,
    ):
        super().__init__()
        _positive_int("num_samples", num_samples, minimum=0)
        batch_size = int(batch_size) if isinstance(batch_size, str) and batch_size.isdigit() else batch_size
        _positive_int("batch_size", batch_size)
        if samples_per_pass is not None:
            _positive_int("samples_per_pass", samples_per_pass)
        _positive_int("max_gen_toks", max_gen_toks)
        if max_length is not None:
            _positive_int("max_length", max_length, minimum=2)
        if answer_type not in ANSWER_TYPES:
            raise ValueError(f"answer_type must be one of {', '.join(ANSWER_TYPES)}, got {answer_type!r}")
        if checkpoint is not None:
            if model is not None:
                raise ValueError("give checkpoint or model, not both")
            model, guide, tokenizer = open_decoder_checkpoint(
                checkpoint, device=device or "cpu", trust_remote_code=trust_remote_code
            )
        elif model is None or tokenizer is None:
            raise ValueError("give checkpoint, or model and tokenizer (and the guide to sample from)")
        if model.likelihood.name != "causal-lm":
            raise ValueError(f"lm-eval needs a causal-lm model, got {model.likelihood.name!r}")
        self.model, self.guide, self.tokenizer = model, guide, tokenizer
        self.num_samples = num_samples
        self._draws = 0 if uses_mean_adapter(model, guide, num_samples) else num_samples
        self._per_pass = min(samples_per_pass or self._draws, self._draws) if self._draws else 1
        self._batch_size, self._max_gen_toks = batch_size, max_gen_toks
        self.answer_type, self.add_bos_token = answer_type, add_bos_token
        self._device = next(model.parameters()).device
        self._max_length = max_length or resolve_max_length(model.network.config, tokenizer, default=DEFAULT_MAX_LENGTH)
        self._pad_id = pad_token_id(tokenizer)
        #: one record per ``generate_until`` request: ``context``, ``generations`` (one text per
        #: draw), ``answers``, ``answer`` (the majority) and ``agreement`` (its share of the draws)
        self.generations: List[dict] = []

    # -- lm-eval's TemplateLM interface ------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def apply_chat_template(self, chat_history: List[Dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, left_truncate_len=None, **kwargs):
        """Token ids as lm-eval's ``hf`` model makes them (a string that starts with the prefix token
        gets no second one)."""
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
            prefix = self.tokenizer.decode(self.prefix_token_id)
            if prefix and string.startswith(prefix):
                add_special_tokens = False
        options = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        ids = self.tokenizer.encode(string, **options)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> List[Tuple[float, bool]]:
        rows = [self._scored_row(context, continuation) for _, context, continuation in requests]
        results: List[Tuple[float, bool]] = []
        starts = range(0, len(rows), self._batch_size)
        for start in tqdm(starts, desc=f"loglikelihood S={self.num_samples}", disable=disable_tqdm):
            batch = rows[start : start + self._batch_size]
            per_draw, greedy = self._draw_log_likelihoods(batch)
            predictive = per_draw.logsumexp(0) - math.log(per_draw.shape[0])
            for index, (value, is_greedy) in enumerate(zip(predictive.tolist(), greedy.tolist())):
                request = requests[start + index][0]
                results.append((value, bool(is_greedy)))
                if request is not None:
                    self.cache_hook.add_partial("loglikelihood", request, results[-1])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        results = []
        for request in tqdm(requests, desc=f"loglikelihood_rolling S={self.num_samples}", disable=disable_tqdm):
            (text,) = request.args
            windows = lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            rows = [self._scored_row(*lm_utils.make_disjoint_window(window)) for window in windows]
            if not rows:  # an empty text (no prefix token to predict from): log 1
                value = 0.0
            else:
                per_draw, _ = self._draw_log_likelihoods(rows, greedy=False)  # every window under the same draws
                value = (per_draw.sum(1).logsumexp(0) - math.log(per_draw.shape[0])).item()
            results.append(value)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), value)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        results: List[Optional[str]] = [None] * len(requests)
        groups: Dict[str, List[int]] = {}
        for index, request in enumerate(requests):  # one generate() call per set of settings
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(index)
        bar = tqdm(total=len(requests), desc=f"generate_until S={self.num_samples}", disable=disable_tqdm)
        for indices in groups.values():
            settings = dict(requests[indices[0]].args[1])
            for start in range(0, len(indices), self._batch_size):
                chunk = indices[start : start + self._batch_size]
                contexts = [requests[i].args[0] for i in chunk]
                for index, answer in zip(chunk, self._generate(contexts, settings)):
                    results[index] = answer
                    self.cache_hook.add_partial("generate_until", requests[index].args, answer)
                bar.update(len(chunk))
        bar.close()
        return results

    # -- scoring ---------------------------------------------------------------------------------

    def _scored_row(self, context: Sequence[int], continuation: Sequence[int]) -> Tuple[List[int], int]:
        """``(input tokens, scored)``: the last ``max_length + 1`` tokens of context + continuation
        as lm-eval's ``hf`` cuts them; the model reads all but the last and scores the last ``scored``.

        :raises ValueError: a continuation longer than ``max_length`` tokens, or one with nothing
            before it to predict it from (``hf`` refuses both with an assertion).
        """
        if len(continuation) > self.max_length:
            raise ValueError(f"a continuation of {len(continuation)} tokens exceeds max_length {self.max_length}")
        if not context and continuation:
            raise ValueError("a continuation without a context token to predict its first token from")
        whole = (list(context) + list(continuation))[-(self.max_length + 1) :]
        return whole, min(len(continuation), len(whole) - 1)

    def _passes(self) -> List[int]:
        """Draws per pass: ``samples_per_pass`` at a time up to :math:`S`; one pass for the mean adapter."""
        counts, remaining = [], self._draws
        while remaining:
            counts.append(min(self._per_pass, remaining))
            remaining -= counts[-1]
        return counts or [1]

    @contextmanager
    def _drawn(self, count: int) -> Iterator[Tuple[torch.nn.Module, int]]:
        """The network under ``count`` stacked posterior draws (or the mean adapter) and the draw count."""
        if self._draws == 0:
            with self.model.mean_adapters():
                yield self.model.network, 1
        else:
            with self.model.stacked_adapters(self.guide, count) as network:
                yield network, count

    @torch.no_grad()
    def _draw_log_likelihoods(
        self, rows: List[Tuple[List[int], int]], greedy: bool = True
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Every draw's log-likelihood of each row's scored tokens, ``(S, rows)`` float64, and (with
        ``greedy``) whether each row's scored tokens are the predictive's greedy choice, ``(rows,)``
        bool. The draws are held across all chunks of ``rows``."""
        per_draw, prob_sums = [], [None] * len(rows)
        with evaluation_mode(self.model):
            for count in self._passes():
                with self._drawn(count) as (network, draws):
                    drawn = []
                    for start in range(0, len(rows), self._batch_size):
                        chunk = rows[start : start + self._batch_size]
                        scores, probs = self._forward(network, draws, chunk, greedy)
                        drawn.append(scores)
                        for offset, row_probs in enumerate(probs if greedy else ()):
                            total = prob_sums[start + offset]
                            prob_sums[start + offset] = row_probs if total is None else total + row_probs
                    per_draw.append(torch.cat(drawn, 1))
        if not greedy:
            return torch.cat(per_draw, 0), None
        flags = torch.tensor(
            [
                scored == 0 or bool((total.argmax(-1) == torch.tensor(row[-scored:])).all())
                for total, (row, scored) in zip(prob_sums, rows)
            ]
        )
        return torch.cat(per_draw, 0), flags

    def _forward(self, network, draws: int, chunk: List[Tuple[List[int], int]], greedy: bool = True):
        """One pass of ``draws × len(chunk)`` rows: each draw's log-likelihood of the scored tokens,
        ``(draws, len(chunk))``, and (with ``greedy``) per row the next-token probabilities at its
        scored positions summed over the draws, ``(scored, vocabulary)``."""
        batch = pad_batch([row[:-1] for row, _ in chunk], self._pad_id, side="right")
        ids, mask = batch["input_ids"].to(self._device), batch["attention_mask"].to(self._device)
        logits = network(input_ids=ids.repeat(draws, 1), attention_mask=mask.repeat(draws, 1)).logits
        logits = logits.float().view(draws, len(chunk), ids.shape[1], -1)
        scores = torch.zeros(draws, len(chunk), dtype=torch.float64)
        probs = []
        for index, (row, scored) in enumerate(chunk):
            end = len(row) - 1  # logits at t predict row[t + 1]
            row_logits = logits[:, index, end - scored : end]
            targets = torch.tensor(row[-scored:], device=row_logits.device) if scored else None
            if scored:
                log_probs = row_logits.log_softmax(-1)
                scores[:, index] = (
                    log_probs.gather(-1, targets.expand(draws, -1)[..., None]).squeeze(-1).sum(-1).double().cpu()
                )
                if greedy:
                    probs.append(log_probs.exp().sum(0).cpu())
            elif greedy:
                probs.append(torch.zeros(0, logits.shape[-1]))
        return scores, probs

    # -- generation --------------------------------------------------------------------------------

    def _generate(self, contexts: List[str], gen_kwargs: dict) -> List[str]:
        """Every draw's continuation of each context (lm-eval's settings, stop strings and cut), then
        the vote."""
        settings = normalize_gen_kwargs(gen_kwargs, self._max_gen_toks)
        until = handle_stop_sequences(settings.pop("until", None), eos=self.tokenizer.decode(self.eot_token_id))
        max_new = settings.pop("max_gen_toks")
        do_sample, temperature = settings.pop("do_sample", False), settings.pop("temperature", 0.0)
        options = dict(max_new_tokens=max_new, pad_token_id=self._pad_id, eos_token_id=self.eot_token_id)
        if do_sample:
            options.update(do_sample=True, temperature=temperature)
            options.update({key: settings[key] for key in ("top_p", "top_k") if key in settings})
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if max_new >= self.max_length:
            raise ValueError(f"max_gen_toks {max_new} must be below the context length {self.max_length}")
        encoded = [self.tok_encode(context, left_truncate_len=self.max_length - max_new) for context in contexts]
        batch = pad_batch(encoded, self._pad_id, side="left")
        ids, mask = batch["input_ids"].to(self._device), batch["attention_mask"].to(self._device)
        texts: List[List[str]] = [[] for _ in contexts]
        with evaluation_mode(self.model):
            for count in self._passes():
                with self._drawn(count) as (network, draws):
                    stops = stop_sequences_criteria(self.tokenizer, until, ids.shape[1], draws * ids.shape[0])
                    rows = dict(input_ids=ids.repeat(draws, 1), attention_mask=mask.repeat(draws, 1))
                    out = network.generate(**rows, stopping_criteria=stops, **options)
                for position, tokens in enumerate(out[:, ids.shape[1] :].tolist()):  # row = draw * b + context
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                    texts[position % len(contexts)].append(postprocess_generated_text(text, until, None))
        return [self._vote(context, generations) for context, generations in zip(contexts, texts)]

    def _vote(self, context: str, generations: List[str]) -> str:
        if self.answer_type == "text":
            answers = [" ".join(text.split()) or None for text in generations]
        else:
            answers = [extract_answer(text, self.answer_type) for text in generations]
        answer, agreement = majority_vote(answers)
        chosen = generations[answers.index(answer)] if answer is not None else generations[0]
        self.generations.append(
            {
                "context": context,
                "generations": generations,
                "answers": answers,
                "answer": answer,
                "agreement": agreement,
            }
        )
        return chosen
