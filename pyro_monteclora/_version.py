"""The package's version, recorded in every checkpoint (``library_version``).

It lives apart from the package's ``__init__`` so that the storage layer can read it without
importing the whole package.
"""

__all__ = ["__version__"]


__version__ = "0.1.0"
