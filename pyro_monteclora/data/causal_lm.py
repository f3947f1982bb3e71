"""Token sequences for decoders: prompt masking, left truncation and batches.

A (prompt, response) pair becomes ``prompt_ids + response_ids + [eos]`` with labels ``-100`` on the
prompt, so that :class:`~pyro_monteclora.nn.likelihoods.CausalLM` observes the response tokens only:

.. math::

    \\log p(y \\mid x, A) = \\sum_{t \\in \\text{response}} \\log p(y_t \\mid y_{<t}, x, A).

When a pair is longer than ``max_length`` the prompt is cut **from the left** (its end, next to the
response, is what matters), and a response longer than ``max_length - 1`` is cut from the right;
:func:`encode_pairs` warns once with how many were cut.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from pyro_monteclora.data.instructions import InstructionData, format_prompt
from pyro_monteclora.data.samplers import evaluation_sampler, training_sampler
from pyro_monteclora.hf_defaults import end_token_id, pad_token_id
from pyro_monteclora.util import IGNORE_INDEX

__all__ = ["EncodedPairs", "encode_prompt", "encode_pairs", "causal_lm_loader", "pad_batch", "end_token_id"]


def encode_prompt(tokenizer, prompt: str, input_text: str = "") -> List[int]:
    """Token ids of :func:`~pyro_monteclora.data.instructions.format_prompt`, with the tokenizer's
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
    return prompt[len(prompt) - room :] if prompt_cut else prompt, response, prompt_cut, response_cut


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
        warnings.warn(
            f"{data.source}: {cut_prompts} of {len(data)} prompts were longer than "
            f"max_length={max_length} allows with their response and were cut from the left",
            stacklevel=2,
        )
    if cut_responses:
        warnings.warn(
            f"{data.source}: {cut_responses} of {len(data)} responses were longer than "
            f"max_length - 1 = {max_length - 1} tokens and were cut from the right",
            stacklevel=2,
        )
    return EncodedPairs(all_ids, all_labels)


def pad_batch(
    sequences: Sequence[List[int]], pad_id: int, side: str = "right", labels: Optional[Sequence[List[int]]] = None
) -> Dict[str, torch.Tensor]:
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
        batch = pad_batch([item["input_ids"] for item in items], self.pad_id, labels=[item["labels"] for item in items])
        batch["example_index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
        return batch


def causal_lm_loader(
    data: InstructionData, tokenizer, batch_size: int = 8, max_length: int = 256, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """A ``DataLoader`` of right-padded ``input_ids``/``attention_mask``/``labels`` batches (prompt
    and padding labelled ``-100``), encoded once up front; shuffled by an
    :class:`~pyro_monteclora.data.samplers.EpochShuffleSampler` (in a process group: this rank's shard)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    encoded = encode_pairs(data, tokenizer, max_length)
    pad_id = pad_token_id(tokenizer)
    sampler = training_sampler(len(encoded), seed) if shuffle else evaluation_sampler(len(encoded))
    return DataLoader(
        encoded,
        batch_size=batch_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=_PairCollator(pad_id),
    )
