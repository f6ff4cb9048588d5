"""Errors raised on purpose by the training data readers and the prepared cache.

Messages name files, folders and counts only, never patient data, because callers log them.
"""

from __future__ import annotations


class DataError(Exception):
    """Base class of every error raised on purpose by :mod:`train.data`.

    A data set that does not have the expected layout, a label file that cannot be parsed,
    a cache that is missing or incomplete.
    """


class LayoutError(DataError):
    """A folder does not hold the RSNA or CQ500 layout the reader expects."""


class CacheError(DataError):
    """A prepared cache is missing, incomplete or was written by incompatible code."""
