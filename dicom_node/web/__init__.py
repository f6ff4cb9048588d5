"""The node's HTTP side: a FastAPI app (``app``) served by uvicorn on a thread of its own
(``server``), with the open probes ``/healthz`` and ``/readyz`` (``health``) and the
Prometheus endpoint ``/metrics`` (``exposition``). Features add an ``APIRouter`` and pass
it to :func:`dicom_node.web.app.create_app`; what they need of the running node comes
through :class:`dicom_node.web.app.WebContext`, never from the service itself.

May import: ``store``, ``results``, ``net``, the top-level ``config``/``errors``/``logs``/
``metrics``, and ``models``. Never ``pipeline`` (its sibling layer: what the worker and
scheduler know reaches the probes as callables), ``service`` or ``cli``.
"""
