"""The receive-path fixtures (phantoms in every transfer syntax, a running node, a real
Orthanc) are shared by the net, store and node tests; they live in ``node_fixtures``."""

from node_fixtures import orthanc_factory, phantom, start_node, ts_variants

__all__ = ["orthanc_factory", "phantom", "start_node", "ts_variants"]
