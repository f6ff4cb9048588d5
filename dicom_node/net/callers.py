"""Who may associate: the calling-AE allow-list (with optional hosts per AE) and the
called-AE check, shared by both receive engines.

An AE title is a label any sender can type; tying it to the addresses it comes from
(``{ae_title: CT1, hosts: [10.1.2.3, 10.2.0.0/16, ct1.hospital.org]}``) is what Orthanc
does with ``DicomCheckModalityHost`` and dcmtk's storescp cannot. A host name is looked
up at each association (in that association's thread), so a modality whose address
changes in DNS keeps working; a failed look-up matches nothing.

Rejections use PS3.8 9.3.4's diagnostics, as pynetdicom's ACSE does: calling AE not
recognised (1/1/3, also for a known AE from an address not its own) and called AE not
recognised (1/1/7, which wins when both apply).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass

from pynetdicom.events import Event

from dicom_node.config import AllowedCaller, NodeSection
from dicom_node.metrics import NodeMetrics

log = logging.getLogger(__name__)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: (result, source, diagnostic) of an A-ASSOCIATE-RJ for each refusal reason.
REJECTIONS: dict[str, tuple[int, int, int]] = {
    "calling-ae-not-recognised": (1, 1, 3),
    "calling-ae-wrong-host": (1, 1, 3),
    "called-ae-not-recognised": (1, 1, 7),
}


def _network(pattern: str) -> IpNetwork | None:
    try:
        return ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        return None


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:10.1.2.3 from a dual-stack listener
    return addr


def _resolve(name: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return set()
    found = set()
    for info in infos:
        addr = _address(str(info[4][0]))
        if addr is not None:
            found.add(addr)
    return found


def _host_matches(entry: AllowedCaller, peer_ip: str) -> bool:
    if not entry.hosts:
        return True
    addr = _address(peer_ip)
    if addr is None:
        return False
    for pattern in entry.hosts:
        net = _network(pattern)
        if net is not None:
            if addr.version == net.version and addr in net:
                return True
        elif addr in _resolve(pattern):
            return True
    return False


@dataclass(frozen=True, slots=True)
class CallerPolicy:
    """The node's association checks; :meth:`refusal` says whether and why to refuse."""

    ae_title: str
    allowed: tuple[AllowedCaller, ...]
    require_called: bool

    @classmethod
    def of(cls, node: NodeSection) -> CallerPolicy:
        return cls(node.ae_title, tuple(node.allowed_calling_aets), node.require_called_aet)

    def refusal(self, calling: str, called: str, peer_ip: str) -> str | None:
        """The refusal reason (a key of :data:`REJECTIONS`), or None to go on."""
        calling, called = calling.strip(), called.strip()
        if self.require_called and called != self.ae_title:
            return "called-ae-not-recognised"
        if not self.allowed:
            return None
        entries = [e for e in self.allowed if e.ae_title == calling]
        if not entries:
            return "calling-ae-not-recognised"
        if not any(_host_matches(e, peer_ip) for e in entries):
            return "calling-ae-wrong-host"
        return None


def peer_host(peer: str) -> str:
    """The address part of ``host:port`` (IPv6 addresses contain colons themselves)."""
    return peer.rsplit(":", 1)[0] if ":" in peer else peer


@dataclass(frozen=True, slots=True)
class RequestedCheck:
    """``EVT_REQUESTED`` of the pynetdicom engine: apply :class:`CallerPolicy` to the
    A-ASSOCIATE-RQ before pynetdicom's own negotiation, which knows AE titles only.

    A refusal is answered as pynetdicom's ACSE answers its own (A-ASSOCIATE-RJ, then
    the association is killed) and logged here, once, like the native engine's.
    """

    policy: CallerPolicy
    metrics: NodeMetrics | None = None

    def __call__(self, event: Event) -> None:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        if primitive is None:
            return
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        address = str(assoc.requestor.address or "")
        reason = self.policy.refusal(calling, called, address)
        if reason is None:
            return
        assoc.acse.send_reject(*REJECTIONS[reason])
        if self.metrics is not None:
            self.metrics.association_refused(reason)
        log.warning(
            "assoc.rejected",
            extra={"reason": reason, "calling_aet": calling, "called_aet": called,
                   "peer": f"{address}:{assoc.requestor.port}"},
        )  # fmt: skip
        assoc.kill()
