"""Errors raised by the shared model core.

Messages name files, UIDs and counts only, never patient data, because callers log them.
"""

from __future__ import annotations


class ModelsError(Exception):
    """Base class of every error raised on purpose by :mod:`models`."""


class SeriesError(ModelsError):
    """A series cannot be turned into a tensor (not CT, no pixels, mixed sizes...)."""


class NotEligibleError(ModelsError):
    """A study holds no series this model may classify (non-head, MR, no axial CT...)."""


class CheckpointError(ModelsError):
    """A checkpoint file is missing, corrupt, or does not fit this code."""
