"""Evaluation of a trained model: metrics, likelihood-based and generation-based evaluation of
decoders, the statistics of a sweep, and their figures.

* :mod:`~pyro_monteclora.evaluation.metrics` -- Classification metrics of a predictive distribution:
  accuracy, NLL, ECE, Brier, AUROC.
* :mod:`~pyro_monteclora.evaluation.language_model` -- Evaluating a causal language model by its
  likelihoods under the posterior predictive.
* :mod:`~pyro_monteclora.evaluation.generation` -- Generation with posterior sampling, answer
  extraction and agreement as confidence.
* :mod:`~pyro_monteclora.evaluation.sandbox` -- Running model-written Python programs in a guarded
  child process (HumanEval's execution).
* :mod:`~pyro_monteclora.evaluation.humaneval` -- HumanEval through the posterior predictive:
  completions, sandboxed execution, pass@k.
* :mod:`~pyro_monteclora.evaluation.harness` -- A MonteCLoRA checkpoint as an lm-evaluation-harness
  model (needs the ``harness`` extra; imported on its own, not re-exported here).
* :mod:`~pyro_monteclora.evaluation.evaluators` -- Evaluators for
  :func:`~pyro_monteclora.training.svi.fit`: what it measures after every epoch.
* :mod:`~pyro_monteclora.evaluation.sweep` -- Hyper-parameter sweeps and the spread of their results
  (the paper's robustness study).
* :mod:`~pyro_monteclora.evaluation.plots` -- Figures of a predictive distribution's calibration and
  of a sweep's spread.

It imports :mod:`pyro_monteclora.infer`, :mod:`pyro_monteclora.nn`, :mod:`pyro_monteclora.data`,
:mod:`pyro_monteclora.storage` and the leaves.

Every public name of these modules is importable from ``pyro_monteclora.evaluation``.
"""

from pyro_monteclora.evaluation import evaluators, generation, humaneval, language_model, metrics, plots, sandbox, sweep
from pyro_monteclora.evaluation.evaluators import *  # noqa: F403
from pyro_monteclora.evaluation.generation import *  # noqa: F403
from pyro_monteclora.evaluation.humaneval import *  # noqa: F403
from pyro_monteclora.evaluation.language_model import *  # noqa: F403
from pyro_monteclora.evaluation.metrics import *  # noqa: F403
from pyro_monteclora.evaluation.plots import *  # noqa: F403
from pyro_monteclora.evaluation.sandbox import *  # noqa: F403
from pyro_monteclora.evaluation.sweep import *  # noqa: F403

#: every public name of the modules, in the order the docstring lists them
__all__ = [
    *metrics.__all__,
    *language_model.__all__,
    *generation.__all__,
    *sandbox.__all__,
    *humaneval.__all__,
    *evaluators.__all__,
    *sweep.__all__,
    *plots.__all__,
]
