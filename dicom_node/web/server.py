"""uvicorn on a thread of its own, bound before :meth:`WebServer.start` returns.

Why a thread and not a process or the main thread: the node is one process whose main
thread waits for SIGTERM (:meth:`dicom_node.service.Service.serve_until_signal`); uvicorn
only installs signal handlers from the main thread, so on this one it leaves SIGTERM to
the node, which stops the web server with everything else. The event loop shares
nothing with the DICOM receive path but the metrics' counters: a slow or hostile HTTP
client costs the acceptor's threads nothing.

The socket is bound here, not by uvicorn, so that port 0 (any free port, for tests)
is known as soon as ``start`` returns and a port in use fails start-up at once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Final

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)

#: How long ``stop`` lets requests in flight finish before uvicorn cancels them.
GRACEFUL_S: Final = 5.0
START_TIMEOUT_S: Final = 30.0


class WebServer:
    """``start()`` binds and serves ``app`` on ``host:port``; ``stop()`` is idempotent."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.host = host
        self._requested_port = port
        # No access log (a later page's URLs may carry UIDs) and no logging config of
        # uvicorn's own: its lines go through the node's key=value handler.
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="off",
            timeout_graceful_shutdown=int(GRACEFUL_S), server_header=False,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._socket: socket.socket | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None

    @property
    def port(self) -> int:
        assert self._port is not None, "not started"
        return self._port

    def start(self) -> None:
        """Bind, then serve on a daemon thread; returns once uvicorn serves (or raises)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self._socket = sock
        self._port = int(sock.getsockname()[1])
        self._thread = threading.Thread(target=self._run, name="dicom-node-web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"web server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        log.info("web.listening", extra={"host": self.host, "port": self.port})

    def _run(self) -> None:
        assert self._socket is not None
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # noqa: BLE001 - uvicorn may sys.exit(); the node lives on
            self._failed = exc
            log.error("web.failed", extra={"error": type(exc).__name__})

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Close the listener, let requests in flight finish (up to ``GRACEFUL_S``)."""
        thread = self._thread
        if thread is None:
            return
        self._server.should_exit = True
        thread.join(GRACEFUL_S + 5.0)
        if thread.is_alive():
            self._server.force_exit = True
            thread.join(5.0)
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
        self._thread = None
        log.info("web.stopped")
