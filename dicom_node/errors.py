"""One base error for the node, so callers can catch ours without catching everything.

Third-party exceptions (pydicom, pynetdicom, highdicom, sqlite) are translated at the
boundary with ``raise NodeError(...) from exc``; messages never carry patient data.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base class of every error the node raises on purpose."""


class ConfigError(NodeError):
    """The configuration file or an environment override is invalid."""


class PermanentError(NodeError):
    """Retrying cannot help (study rejected, inference failed): goes to a dead-letter state."""


class TransientError(NodeError):
    """May succeed later (peer down, timeout): retried with backoff."""
