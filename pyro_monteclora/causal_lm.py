"""Token sequences for decoders: prompt masking, left truncation, batches and response likelihoods.

A (prompt, response) pair becomes ``prompt_ids + response_ids + [eos]`` with labels ``-100`` on the
prompt, so that :class:`~pyro_monteclora.likelihoods.CausalLM` observes the response tokens only:

.. math::

    \\log p(y \\mid x, A) = \\sum_{t \\in \\text{response}} \\log p(y_t \\mid y_{<t}, x, A).

When a pair is longer than ``max_length`` the prompt is cut **from the left** (its end, next to the
response, is what matters), and a response longer than ``max_length - 1`` is cut from the right;
:func:`encode_pairs` warns once with how many were cut.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from .distributed import all_reduce_sums, evaluation_sampler, training_sampler
from .hf_defaults import end_token_id, pad_token_id
from .instructions import InstructionData, format_prompt
from .likelihoods import IGNORE_INDEX
from .predictive import adapter_draws, move_batch, uses_mean_adapter

__all__ = ["EncodedPairs", "encode_prompt", "encode_pairs", "causal_lm_loader", "pad_batch",
           "sequence_log_likelihood", "language_model_metrics", "end_token_id"]


def encode_prompt(tokenizer, prompt: str, input_text: str = "") -> List[int]:
    """Token ids of :func:`~pyro_monteclora.instructions.format_prompt`, with the tokenizer's
    ``bos`` first when it has one and the chat template did not add it."""
    text = format_prompt(tokenizer, prompt, input_text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and not getattr(tokenizer, "chat_template", None) and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


class EncodedPairs(Dataset):
    """Token ids and labels of every pair, encoded once (a ``Dataset`` of dicts)."""

    def __init__(self, input_ids: List[List[int]], labels: List[List[int]]):
        self.input_ids, self.labels = input_ids, labels

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "input_ids": self.input_ids[index], "labels": self.labels[index]}


def _fit(prompt: List[int], response: List[int], max_length: int) -> Tuple[List[int], List[int], bool, bool]:
    response_cut = len(response) > max_length - 1
    response = response[: max_length - 1]
    room = max_length - len(response)
    prompt_cut = len(prompt) > room
    return prompt[len(prompt) - room:] if prompt_cut else prompt, response, prompt_cut, response_cut


def encode_pairs(data: InstructionData, tokenizer, max_length: int) -> EncodedPairs:
    """Encode every (prompt, response) pair of ``data`` (responses must be present).

    :raises ValueError: an example without a response.
    """
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    eos = end_token_id(tokenizer)
    all_ids, all_labels = [], []
    cut_prompts = cut_responses = 0
    for index in range(len(data)):
        if data.responses[index] is None:
            raise ValueError(f"{data.source}: example {index} has no response to train on")
        prompt = encode_prompt(tokenizer, data.prompts[index], data.inputs[index])
        response = tokenizer(data.responses[index], add_special_tokens=False)["input_ids"] + [eos]
        prompt, response, prompt_cut, response_cut = _fit(prompt, response, max_length)
        cut_prompts += prompt_cut
        cut_responses += response_cut
        all_ids.append(prompt + response)
        all_labels.append([IGNORE_INDEX] * len(prompt) + response)
    if cut_prompts:
        warnings.warn(f"{data.source}: {cut_prompts} of {len(data)} prompts were longer than "
                      f"max_length={max_length} allows with their response and were cut from the left",
                      stacklevel=2)
    if cut_responses:
        warnings.warn(f"{data.source}: {cut_responses} of {len(data)} responses were longer than "
                      f"max_length - 1 = {max_length - 1} tokens and were cut from the right", stacklevel=2)
    return EncodedPairs(all_ids, all_labels)


def pad_batch(sequences: Sequence[List[int]], pad_id: int, side: str = "right",
              labels: Optional[Sequence[List[int]]] = None) -> Dict[str, torch.Tensor]:
    """Pad token lists to one length: ``input_ids``, ``attention_mask`` (and ``labels``, padded
    with ``-100``). ``side="left"`` is for generation."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    target = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long) if labels is not None else None
    for row, sequence in enumerate(sequences):
        span = slice(width - len(sequence), width) if side == "left" else slice(0, len(sequence))
        ids[row, span] = torch.tensor(sequence, dtype=torch.long)
        mask[row, span] = 1
        if target is not None:
            target[row, span] = torch.tensor(labels[row], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask}
    if target is not None:
        batch["labels"] = target
    return batch


class _PairCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: List[dict]) -> dict:
        batch = pad_batch([item["input_ids"] for item in items], self.pad_id,
                          labels=[item["labels"] for item in items])
        batch["example_index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
        return batch


def causal_lm_loader(data: InstructionData, tokenizer, batch_size: int = 8, max_length: int = 256,
                     shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A ``DataLoader`` of right-padded ``input_ids``/``attention_mask``/``labels`` batches (prompt
    and padding labelled ``-100``), encoded once up front; shuffled by an
    :class:`~pyro_monteclora.data.EpochShuffleSampler` (in a process group: this rank's shard)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    encoded = encode_pairs(data, tokenizer, max_length)
    pad_id = pad_token_id(tokenizer)
    sampler = training_sampler(len(encoded), seed) if shuffle else evaluation_sampler(len(encoded))
    return DataLoader(encoded, batch_size=batch_size, sampler=sampler,
                      generator=torch.Generator().manual_seed(seed), collate_fn=_PairCollator(pad_id))


def sequence_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per sequence, the summed log-probability of its labelled tokens and their number.

    ``logits[:, t]`` predicts ``labels[:, t + 1]``; labels ``-100`` are skipped. Computed in
    float32 as ``logit[y] - logsumexp(logits)``, without materialising a log-softmax over the vocabulary.

    :returns: ``(log_likelihood (batch,), tokens (batch,))``.
    """
    next_logits, next_labels = logits[:, :-1].float(), labels[:, 1:]
    mask = next_labels != IGNORE_INDEX
    picked = next_logits.gather(-1, next_labels.clamp_min(0)[..., None]).squeeze(-1)
    token_log_probs = (picked - next_logits.logsumexp(-1)) * mask
    return token_log_probs.sum(-1), mask.sum(-1)


@torch.no_grad()
def language_model_metrics(model, guide, loader, num_samples: int = 0, device=None) -> Dict[str, float]:
    """Response-token NLL and perplexity of the posterior predictive.

    With :math:`S > 0` each response's predictive likelihood is the sample average
    :math:`\\bar p(y \\mid x) = \\frac1S \\sum_s p(y \\mid x, A^{(s)})` (a log-mean-exp); :math:`S = 0`
    uses the mean adapter. ``token_nll`` is :math:`-\\sum_i \\log \\bar p(y_i \\mid x_i) / \\sum_i |y_i|`
    (nats per token) and ``perplexity`` its exponential. In a process group the sums are taken over
    every rank's shard (all ranks must call it).
    """
    if device is None:
        device = next(model.parameters()).device
    draws = 1 if uses_mean_adapter(model, guide, num_samples) else num_samples
    was_training = model.training
    model.eval()
    total_log_likelihood, total_tokens = 0.0, 0
    try:
        for batch in loader:
            batch = move_batch(batch, device)
            labels = batch.pop("labels")
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
            per_draw = []
            for run_model in adapter_draws(model, guide, num_samples, inputs):
                log_likelihood, tokens = sequence_log_likelihood(run_model(**inputs), labels)
                per_draw.append(log_likelihood.double())
            log_likelihood = torch.stack(per_draw).logsumexp(0) - math.log(draws)
            total_log_likelihood += log_likelihood.double().sum().item()
            total_tokens += int(tokens.sum())
    finally:
        model.train(was_training)
    total_log_likelihood, total_tokens = all_reduce_sums([total_log_likelihood, total_tokens])
    total_tokens = int(total_tokens)
    if total_tokens == 0:
        raise ValueError("language_model_metrics(): the loader has no response tokens")
    token_nll = -total_log_likelihood / total_tokens
    return {"token_nll": token_nll, "perplexity": math.exp(min(token_nll, 700.0)), "tokens": total_tokens}
