"""Small things every layer of the package shares.

:data:`IGNORE_INDEX` is Hugging Face's label for tokens that carry no loss: the batches of
:mod:`pyro_monteclora.data` write it and :mod:`pyro_monteclora.nn.likelihoods` masks it out.
This module imports nothing of the package.
"""

from __future__ import annotations

__all__ = ["IGNORE_INDEX"]


#: HF's label value for tokens that carry no loss.
IGNORE_INDEX = -100
