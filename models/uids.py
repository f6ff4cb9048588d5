"""Deterministic DICOM UIDs from names.

PS3.5 B.2 allows UIDs under the ``2.25`` root made from an ISO/IEC 9834-8 UUID; a
name-based (version 5) UUID of the parts gives the same UID for the same inputs, which
is what lets PACS deduplicate a re-sent result and ties a model UID to its weights.
(``pydicom.uid.generate_uid(prefix=None)`` ignores ``entropy_srcs`` and is random.)
"""

from __future__ import annotations

import uuid

_ROOT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "ich-triage-node")


def derived_uid(namespace: str, *parts: str) -> str:
    """``2.25.<uuid5 as integer>`` of ``parts`` within ``namespace``; at most 44 characters."""
    ns = uuid.uuid5(_ROOT_NAMESPACE, namespace)
    return f"2.25.{uuid.uuid5(ns, chr(0x1F).join(parts)).int}"
