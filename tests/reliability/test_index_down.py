"""The index database down while a sender stores: never Success without the index row.

A node whose index is on PostgreSQL keeps its DICOM listener up when the server stops.
Each C-STORE then fails at the index commit and is answered 0xA700 (Out of Resources:
the sender keeps its copy and retries); once the server is back the same node, without a
restart, indexes the retried instances, and nothing acknowledged is missing.
"""

from __future__ import annotations

from collections.abc import Callable

from nodes import Node, raw_store
from pg import running_postgres

from dicom_node.store.spool import OUT_OF_RESOURCES, SUCCESS
from train.data.phantoms import WrittenStudy


def test_postgresql_stopped_during_ingest_answers_a700_and_recovers(
    phantom: WrittenStudy, start_node: Callable[..., Node]
) -> None:
    files = phantom.main.files
    assert len(files) >= 3
    with running_postgres() as server:
        node = start_node(storage={"index_db": server.database()})
        assert raw_store(node.port, files[0]) == SUCCESS
        server.stop("immediate")
        assert raw_store(node.port, files[1]) == OUT_OF_RESOURCES
        assert raw_store(node.port, files[2]) == OUT_OF_RESOURCES
        server.start()
        for path in files[1:]:  # the sender retries, and sends the rest
            assert raw_store(node.port, path) == SUCCESS
        study = node.study(phantom.study_uid)
        assert study is not None
        assert study.instances == len(files)
        assert len(node.spool_files()) == len(files)
        node.service.stop()
