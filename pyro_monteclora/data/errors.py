"""The one error the data layer raises for bad data.

>>> raise DataError("train.csv row 3: no label in column 'label'")
Traceback (most recent call last):
...
pyro_monteclora.data.errors.DataError: train.csv row 3: no label in column 'label'
"""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad data: the message names the file (or data set), the row and the column at fault."""
