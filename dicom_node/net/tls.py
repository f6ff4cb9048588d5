"""DICOM TLS (PS3.15 Annex B): the ``ssl.SSLContext`` of each side, and the handshake.

Why a module of its own: both receive engines and the export SCU need the same rules,
and one place to read them. TLS 1.2 or later (PS3.15 B.9, the BCP 195 profile); the
ciphers are CPython's defaults (forward-secret only, ECDHE/DHE with AES-GCM, ChaCha20 or
AES, no SHA-1, no compression), which dcmtk's default "BCP 195 non-downgrading"
profile negotiates with, so both ends agree without a cipher list to maintain.

A context is built once at start-up; every file error (missing, unreadable, not PEM,
key not matching its certificate) becomes a :class:`~dicom_node.errors.ConfigError`
naming the config key, so a misconfigured node refuses to start instead of refusing
every peer later.

The handshake of an accepted connection runs in the association's own thread (never in
the accept loop) under a deadline: CPython's ``do_handshake`` honours the socket
timeout as a deadline for the whole handshake, so a client that trickles bytes or
never speaks costs one thread for at most that long and blocks nobody else.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Final

from dicom_node.config import DestinationTls, TlsSection
from dicom_node.errors import ConfigError

log = logging.getLogger(__name__)

_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

Resolve = Callable[[Path], Path]


def _same(path: Path) -> Path:
    return path


def _load_chain(ctx: ssl.SSLContext, key: str, cert: Path, private: Path) -> None:
    try:
        ctx.load_cert_chain(certfile=cert, keyfile=private)
    except OSError as exc:  # ssl.SSLError too: bad PEM, or key and certificate differ
        detail = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise ConfigError(
            f"{key}.cert_file / {key}.key_file: cannot load {cert} with {private} ({detail})"
        ) from exc


def _load_ca(ctx: ssl.SSLContext, key: str, ca: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except OSError as exc:
        detail = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise ConfigError(f"{key}.ca_file: cannot load {ca} ({detail})") from exc


def server_context(tls: TlsSection, resolve: Resolve = _same) -> ssl.SSLContext:
    """The context of the TLS port: our certificate and key, client verification per
    ``require_client_cert`` (required) or ``ca_file`` alone (verified when presented)."""
    if tls.cert_file is None or tls.key_file is None:
        raise ConfigError("node.tls: cert_file and key_file are required when enabled is true")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    _load_chain(ctx, "node.tls", resolve(tls.cert_file), resolve(tls.key_file))
    if tls.ca_file is not None:
        _load_ca(ctx, "node.tls", resolve(tls.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(
    tls: DestinationTls, resolve: Resolve = _same, key: str = "destinations[].tls"
) -> ssl.SSLContext:
    """The context for associations to one PACS: its CA (or the system's trust store),
    our certificate if configured, host name checked unless ``verify_hostname`` is off."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname on
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.check_hostname = tls.verify_hostname
    if tls.ca_file is not None:
        _load_ca(ctx, key, resolve(tls.ca_file))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert_file is not None and tls.key_file is not None:
        _load_chain(ctx, key, resolve(tls.cert_file), resolve(tls.key_file))
    return ctx


def wrap_accepted(ctx: ssl.SSLContext, sock: socket.socket) -> ssl.SSLSocket:
    """Wrap an accepted socket without handshaking (that is :func:`handshake`'s job,
    in the association's thread)."""
    return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


def handshake(sock: ssl.SSLSocket, deadline_s: float, peer: str) -> str | None:
    """Run the server side of the handshake within ``deadline_s`` seconds in all.

    Returns None on success (the socket is left blocking, as before), else the reason
    it failed (logged here once, with the peer address and no other detail).
    """
    sock.settimeout(deadline_s)
    try:
        sock.do_handshake()
    except TimeoutError:
        reason = "timeout"
    except ssl.SSLError as exc:
        reason = str(exc.reason or type(exc).__name__)
    except OSError as exc:
        reason = type(exc).__name__
    else:
        sock.settimeout(None)
        log.debug("tls.established", extra={"peer": peer, "version": sock.version()})
        return None
    log.warning("tls.handshake_failed", extra={"reason": reason, "peer": peer})
    return reason
