"""Data: records read from files or the hub and validated, tasks, samplers, and the loaders
that turn them into the batches a model takes.

* :mod:`~pyro_monteclora.data.records` -- Labelled text from your own files (csv, tsv, json, jsonl,
  parquet) or from the Hugging Face hub.
* :mod:`~pyro_monteclora.data.samplers` -- Samplers: the order in which a loader visits a data set,
  in one process or in a process group.
* :mod:`~pyro_monteclora.data.classification` -- Offline data and models: the Rotten Tomatoes
  sentences, the packaged MiniLM, loaders.
* :mod:`~pyro_monteclora.data.instructions` -- (prompt, response) data for decoders: the Alpaca,
  LLM-Adapters and GSM8k schemas, and prompts.
* :mod:`~pyro_monteclora.data.causal_lm` -- Token sequences for decoders: prompt masking, left
  truncation and batches.
* :mod:`~pyro_monteclora.data.multiple_choice` -- Multiple-choice questions for decoders (PIQA,
  SIQA, WinoGrande, ARC, OBQA, BoolQ style): records and batches.
* :mod:`~pyro_monteclora.data.tasks` -- The paper's tasks: where their data comes from, how it is
  read, and the metric each reports.
* :mod:`~pyro_monteclora.data.trivia` -- Real question-answer pairs that install offline: the trivia
  lists of the ``red-trivia`` package.

It imports only :mod:`pyro_monteclora.storage` and the leaves: data knows no model.

Every public name of these modules is importable from ``pyro_monteclora.data``.
"""

from pyro_monteclora.data.causal_lm import (
    EncodedPairs,
    causal_lm_loader,
    encode_pairs,
    encode_prompt,
    end_token_id,
    pad_batch,
)
from pyro_monteclora.data.classification import (
    ROTTEN_TOMATOES_LABELS,
    TextClassificationData,
    classification_loader,
    default_encoder_path,
    load_rotten_tomatoes,
    packaged_model_path,
)
from pyro_monteclora.data.instructions import (
    ALPACA_INPUT_TEMPLATE,
    ALPACA_TEMPLATE,
    SCHEMAS,
    InstructionData,
    format_prompt,
    load_instruction_file,
    records_to_instructions,
)
from pyro_monteclora.data.multiple_choice import (
    MultipleChoiceData,
    load_multiple_choice_file,
    multiple_choice_loader,
    parse_answer,
    records_to_multiple_choice,
)
from pyro_monteclora.data.records import (
    SUPPORTED_SUFFIXES,
    DataError,
    has_visible_text,
    hub_split_names,
    infer_label_names,
    label_key,
    load_classification_file,
    load_hub_records,
    read_located_records,
    read_records,
    records_to_classification,
    split_lines,
)
from pyro_monteclora.data.samplers import (
    EpochShuffleSampler,
    EvaluationShardSampler,
    evaluation_sampler,
    training_sampler,
)
from pyro_monteclora.data.tasks import (
    TASKS,
    TaskSpec,
    commonsense_options,
    commonsense_to_multiple_choice,
    get_task,
    task_names,
    task_score,
)
from pyro_monteclora.data.trivia import SHORT_ANSWER_LISTS, load_trivia, trivia_lists

__all__ = [
    "DataError",
    "split_lines",
    "read_records",
    "read_located_records",
    "load_classification_file",
    "infer_label_names",
    "label_key",
    "records_to_classification",
    "has_visible_text",
    "load_hub_records",
    "hub_split_names",
    "SUPPORTED_SUFFIXES",
    "EpochShuffleSampler",
    "EvaluationShardSampler",
    "training_sampler",
    "evaluation_sampler",
    "TextClassificationData",
    "load_rotten_tomatoes",
    "packaged_model_path",
    "default_encoder_path",
    "classification_loader",
    "ROTTEN_TOMATOES_LABELS",
    "InstructionData",
    "records_to_instructions",
    "load_instruction_file",
    "format_prompt",
    "SCHEMAS",
    "ALPACA_TEMPLATE",
    "ALPACA_INPUT_TEMPLATE",
    "EncodedPairs",
    "encode_prompt",
    "encode_pairs",
    "causal_lm_loader",
    "pad_batch",
    "end_token_id",
    "MultipleChoiceData",
    "load_multiple_choice_file",
    "records_to_multiple_choice",
    "parse_answer",
    "multiple_choice_loader",
    "TaskSpec",
    "TASKS",
    "get_task",
    "task_names",
    "commonsense_options",
    "commonsense_to_multiple_choice",
    "task_score",
    "trivia_lists",
    "load_trivia",
    "SHORT_ANSWER_LISTS",
]
