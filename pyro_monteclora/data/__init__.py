"""Data: records read from files or the hub and validated, tasks, samplers, and the loaders
that turn them into the batches a model takes.

* :mod:`~pyro_monteclora.data.errors` -- The one error the data layer raises for bad data.
* :mod:`~pyro_monteclora.data.files` -- Your own data files (csv, tsv, json, jsonl, parquet) as
  Arrow tables, read by ``datasets``.
* :mod:`~pyro_monteclora.data.records` -- Labelled text, validated in Arrow batches.
* :mod:`~pyro_monteclora.data.hf_datasets` -- Hugging Face data sets as labelled text: your own
  ``datasets.Dataset`` or ``DatasetDict``, a ``save_to_disk`` folder, or the hub.
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

from pyro_monteclora.data import (
    causal_lm,
    classification,
    errors,
    files,
    hf_datasets,
    instructions,
    multiple_choice,
    records,
    samplers,
    tasks,
    trivia,
)
from pyro_monteclora.data.causal_lm import *  # noqa: F403
from pyro_monteclora.data.classification import *  # noqa: F403
from pyro_monteclora.data.errors import *  # noqa: F403
from pyro_monteclora.data.files import *  # noqa: F403
from pyro_monteclora.data.hf_datasets import *  # noqa: F403
from pyro_monteclora.data.instructions import *  # noqa: F403
from pyro_monteclora.data.multiple_choice import *  # noqa: F403
from pyro_monteclora.data.records import *  # noqa: F403
from pyro_monteclora.data.samplers import *  # noqa: F403
from pyro_monteclora.data.tasks import *  # noqa: F403
from pyro_monteclora.data.trivia import *  # noqa: F403

#: every public name of the modules, in the order the docstring lists them
__all__ = [
    *errors.__all__,
    *files.__all__,
    *records.__all__,
    *hf_datasets.__all__,
    *samplers.__all__,
    *classification.__all__,
    *instructions.__all__,
    *causal_lm.__all__,
    *multiple_choice.__all__,
    *tasks.__all__,
    *trivia.__all__,
]
