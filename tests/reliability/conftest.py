"""The reliability and security campaign (crash, outage, bad input, protocol abuse, load,
TLS): end-to-end tests on real processes, seeded and bounded in count and time.

Each topic keeps its helpers in ``<topic>_support.py`` beside its tests; the receive-path
fixtures, the random-init checkpoint and the recording PACS are the shared ones from
``node_fixtures``."""

from node_fixtures import (
    checkpoint,
    orthanc_factory,
    pacs,
    pacs_factory,
    phantom,
    start_node,
    ts_variants,
)

__all__ = [
    "checkpoint",
    "orthanc_factory",
    "pacs",
    "pacs_factory",
    "phantom",
    "start_node",
    "ts_variants",
]
