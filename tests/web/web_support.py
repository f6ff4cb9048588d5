"""Helpers for the web tests: GET over real HTTP, read samples from a /metrics scrape."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from nodes import Node
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def get(node: Node, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{node.service.web_port}{path}", timeout=30)


@dataclass
class Scrape:
    """One ``/metrics`` response, parsed by prometheus-client's own parser."""

    text: str
    samples: list[Sample]

    def value(self, name: str, **labels: str) -> float:
        """The one sample called ``name`` whose labels include ``labels``."""
        found = [
            s for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]  # fmt: skip
        assert len(found) == 1, f"{len(found)} samples {name} {labels}: {found}"
        return float(found[0].value)


def scrape(node: Node) -> Scrape:
    resp = get(node, "/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    samples = [s for fam in text_string_to_metric_families(resp.text) for s in fam.samples]
    return Scrape(resp.text, samples)
