"""DICOM TLS (PS3.15 Annex B) end to end, and who may associate (AE titles with hosts).

Peers are dcmtk's own TLS tools (``storescu +tls``, ``echoscu +tls``, ``storescp +tls``,
Debian's dcmtk built with OpenSSL) and the certificates are made by the test
(:mod:`reliability.tls_support`): a good client certificate is accepted, none at all is
refused where one is required, one from another CA is refused, on both engines; a TLS
client that never finishes its handshake blocks no one; results are exported to a
TLS-only storescp that requires our client certificate.
"""

from __future__ import annotations

import io
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nodes import NODE_AET, PEER_ENV, Node, running_nodes, storescu, wait_for
from peers import free_port
from pipeline.support import destination, make_checkpoint, pipeline_config
from pipeline.support import phantom as pipeline_phantom
from pydicom import dcmread
from pydicom.uid import Comprehensive3DSRStorage
from reliability.tls_support import (
    ECHOSCU,
    STORESCP,
    Pki,
    echoscu_tls,
    make_pki,
    storescu_tls,
    tls_args,
)

from dicom_node.config import load_settings
from dicom_node.errors import ConfigError
from dicom_node.net.scu import TransientDeliveryError, send
from train.data.phantoms import WrittenStudy

ENGINES = pytest.mark.parametrize("engine", ["native", "pynetdicom"])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls(pki: Pki, **extra: Any) -> dict[str, Any]:
    """``node.tls`` with the test PKI, on any free port."""
    return {
        "enabled": True,
        "port": 0,
        "cert_file": str(pki.server.cert),
        "key_file": str(pki.server.key),
        "ca_file": str(pki.ca),
        **extra,
    }


def _echo(
    port: int, *, aet: str = "MODALITY", aec: str = NODE_AET
) -> subprocess.CompletedProcess[str]:
    """Plain dcmtk echoscu (no TLS)."""
    return subprocess.run(
        [ECHOSCU, "-v", "-aet", aet, "-aec", aec, "127.0.0.1", str(port)],
        env=PEER_ENV, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _logged(node: Node, text: str) -> None:
    wait_for(lambda: text in node.log.getvalue(), 20, f"{text!r} in the log")


# -- receive path --------------------------------------------------------------------------


@ENGINES
def test_tls_port_accepts_a_good_client_cert_and_refuses_none_or_a_wrong_ca(
    engine: str, pki: Pki, phantom: WrittenStudy, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"engine": engine, "tls": _tls(pki, require_client_cert=True)})
    port = node.service.tls_port
    assert port != node.port  # beside the plain port, not instead of it

    good = echoscu_tls(port, pki.ca, pki.client)
    assert good.returncode == 0, good.stdout + good.stderr
    sent = storescu_tls(port, phantom.main.files, pki.ca, pki.client)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert len(node.spool_files()) == len(phantom.main.files)

    anonymous = echoscu_tls(port, pki.ca, None)  # TLS, but no client certificate
    assert anonymous.returncode != 0
    stranger = storescu_tls(port, phantom.main.files, pki.ca, pki.wrong_client)
    assert stranger.returncode != 0
    _logged(node, "tls.handshake_failed")
    # Neither refused peer stored anything; the node still serves both ports.
    assert len(node.spool_files()) == len(phantom.main.files)
    assert echoscu_tls(port, pki.ca, pki.client).returncode == 0
    assert _echo(node.port).returncode == 0


def test_client_cert_is_optional_but_verified_when_presented(
    pki: Pki, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"tls": _tls(pki)})  # ca_file, require_client_cert false
    port = node.service.tls_port
    assert echoscu_tls(port, pki.ca, None).returncode == 0
    assert echoscu_tls(port, pki.ca, pki.client).returncode == 0
    assert echoscu_tls(port, pki.ca, pki.wrong_client).returncode != 0


def test_client_refuses_a_node_whose_certificate_it_cannot_verify(
    pki: Pki, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"tls": _tls(pki)})
    # The modality trusts only the other CA: dcmtk refuses our server certificate.
    assert echoscu_tls(node.service.tls_port, pki.wrong_ca, pki.client).returncode != 0


def test_min_version_refuses_an_older_protocol(pki: Pki, start_node: Callable[..., Node]) -> None:
    node = start_node(node={"tls": _tls(pki, min_version="1.3")})
    port = node.service.tls_port
    # dcmtk's extended BCP 195 profile (+pz) speaks TLS 1.2 only; its default, 1.2 and 1.3.
    old = echoscu_tls(port, pki.ca, pki.client, extra=("+pz",))
    assert old.returncode != 0
    assert echoscu_tls(port, pki.ca, pki.client).returncode == 0
    _logged(node, "tls.handshake_failed")


@ENGINES
def test_tls_only_node_opens_no_plain_port_and_plain_dicom_on_the_tls_port_fails(
    engine: str, pki: Pki, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"engine": engine, "tls": _tls(pki, disable_plain=True)})
    assert node.service.acceptor is None
    assert node.service.server is None
    port = node.service.tls_port
    assert node.port == port  # what `serve` prints: the only port
    assert _echo(port).returncode != 0  # plain DICOM is not TLS
    assert echoscu_tls(port, pki.ca, pki.client).returncode == 0


@ENGINES
def test_a_client_that_never_finishes_its_handshake_blocks_nobody(
    engine: str, pki: Pki, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"engine": engine, "tls": _tls(pki), "acse_timeout_s": 3})
    port = node.service.tls_port
    silent = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3)]
    try:
        # Half a ClientHello record header, then nothing: the handshake waits for more.
        for s in silent:
            s.sendall(b"\x16\x03\x01")
        ok = echoscu_tls(port, pki.ca, pki.client)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        # The deadline frees them: each is closed by the node (recv returns b"").
        for s in silent:
            assert s.recv(1024) == b""
    finally:
        for s in silent:
            s.close()
    _logged(node, "reason=timeout")


# -- configuration -------------------------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_tls_config_errors_name_the_key(tmp_path: Path, pki: Pki) -> None:
    cases = {
        "node: {tls: {enabled: true}}": "node.tls: cert_file and key_file are required",
        "node: {tls: {require_client_cert: true}}": "require_client_cert needs ca_file",
        "node: {tls: {disable_plain: true}}": "disable_plain needs enabled: true",
        "node: {tls: {enabled: true, cert_file: missing.crt, key_file: x.key}}":
            "node.tls.cert_file: ",
        "destinations: [{name: p, ae_title: P, host: h, port: 1, tls: {ca_file: nope.pem}}]":
            "destinations[0].tls.ca_file: ",
        "destinations: [{name: p, ae_title: P, host: h, port: 1, tls: {cert_file: a}}]":
            "destinations[0].tls: cert_file and key_file go together",
        "node: {allowed_calling_aets: [{ae_title: CT1, hosts: ['10.0.0.0/33']}]}":
            "node.allowed_calling_aets[0].hosts",
    }  # fmt: skip
    for text, expected in cases.items():
        with pytest.raises(ConfigError) as err:
            load_settings(_config(tmp_path, text))
        assert expected in str(err.value), (text, str(err.value))


def test_tls_file_that_is_not_a_certificate_stops_start_up(
    tmp_path: Path, pki: Pki, start_node: Callable[..., Node]
) -> None:
    bogus = tmp_path / "bogus.crt"
    bogus.write_text("not a certificate\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"node\.tls\.cert_file"):
        start_node(node={"tls": _tls(pki, cert_file=str(bogus))})


def test_plain_and_host_bound_allow_list_entries_load(tmp_path: Path) -> None:
    text = (
        "node:\n  allowed_calling_aets:\n    - CT1\n"
        "    - {ae_title: CT2, hosts: [10.1.2.3, 10.2.0.0/16, ct2.example.org, '::1']}\n"
    )
    node = load_settings(_config(tmp_path, text)).node
    assert node.calling_titles == ("CT1", "CT2")
    assert node.allowed_calling_aets[0].hosts == []
    assert node.allowed_calling_aets[1].hosts[1] == "10.2.0.0/16"


# -- calling AE with hosts, called AE --------------------------------------------------------


@ENGINES
def test_calling_ae_must_come_from_its_hosts(
    engine: str, phantom: WrittenStudy, start_node: Callable[..., Node]
) -> None:
    allowed = [
        {"ae_title": "CT1", "hosts": ["10.9.9.9"]},  # right AE, wrong host
        {"ae_title": "CT2", "hosts": ["10.9.9.9", "127.0.0.0/8"]},  # a network
        {"ae_title": "CT3", "hosts": ["localhost"]},  # a host name
        "CT4",  # plain: from anywhere
    ]
    node = start_node(node={"engine": engine, "allowed_calling_aets": allowed})
    refused = storescu(node.port, phantom.main.files, aet="CT1")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    assert _echo(node.port, aet="CT1").returncode != 0
    _logged(node, "reason=calling-ae-wrong-host")
    assert node.spool_files() == []
    for aet in ("CT2", "CT3", "CT4"):
        assert _echo(node.port, aet=aet).returncode == 0, aet
    assert storescu(node.port, phantom.main.files, aet="CT2").returncode == 0
    assert len(node.spool_files()) == len(phantom.main.files)
    # Right AE and host, wrong called AE: refused (called AE check still applies).
    wrong_called = _echo(node.port, aet="CT2", aec="SOMEONEELSE")
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr


@ENGINES
def test_allow_list_applies_on_the_tls_port_too(
    engine: str, pki: Pki, start_node: Callable[..., Node]
) -> None:
    node = start_node(
        node={"engine": engine, "tls": _tls(pki), "allowed_calling_aets": [
            {"ae_title": "MODALITY", "hosts": ["127.0.0.1"]}]},
    )  # fmt: skip
    port = node.service.tls_port
    assert echoscu_tls(port, pki.ca, pki.client).returncode == 0
    # A good certificate does not make a stranger's AE title welcome.
    assert echoscu_tls(port, pki.ca, pki.client, aet="STRANGER").returncode != 0
    _logged(node, "reason=calling-ae-not-recognised")


# -- export to a TLS PACS ------------------------------------------------------------------


class TlsStorescp:
    """dcmtk storescp as a TLS-only PACS that requires a client certificate from ``ca``."""

    def __init__(self, out: Path, pki: Pki, *, aet: str = "TLSPACS") -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.aet, self.port = out, aet, free_port()
        self.proc = subprocess.Popen(
            [STORESCP, "-v", "-aet", aet, "-od", str(out), "+tls", str(pki.server.key),
             str(pki.server.cert), "+cf", str(pki.ca), "-rc", str(self.port)],
            env=PEER_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        echo = [ECHOSCU, "-aec", aet, *tls_args(pki.ca, pki.client), "127.0.0.1", str(self.port)]

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"storescp exited with {self.proc.returncode}")
            probe = subprocess.run(echo, env=PEER_ENV, capture_output=True, timeout=30)
            return probe.returncode == 0

        wait_for(answers, 30, "storescp +tls to answer")

    def files(self) -> list[Path]:
        return sorted(self.out.glob("*"))

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return out


@pytest.fixture
def tls_pacs(tmp_path: Path, pki: Pki) -> Iterator[TlsStorescp]:
    pacs = TlsStorescp(tmp_path / "pacs", pki)
    yield pacs
    pacs.stop()


@pytest.fixture
def start_pipeline_node(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, log_capture: io.StringIO
) -> Iterator[Callable[..., Node]]:
    """A node with inference on (random-init checkpoint) and the given destinations."""
    checkpoint = tmp_path_factory.mktemp("model") / "random-r18-64.pt"
    make_checkpoint(checkpoint, input_size=64)

    def make_config(base: Path, destinations: list[dict[str, Any]], **sections: Any) -> Path:
        return pipeline_config(base, checkpoint, destinations, **sections)

    with running_nodes(tmp_path, log_capture, make_config) as start:
        yield start


def test_results_are_exported_over_tls_to_a_pacs_that_requires_our_certificate(
    tmp_path: Path, pki: Pki, tls_pacs: TlsStorescp, start_pipeline_node: Callable[..., Node]
) -> None:
    dest = destination(tls_pacs.port, ae_title=tls_pacs.aet)
    # Relative paths: resolved against the config file's folder, as for every path.
    (tmp_path / "node-tls").mkdir()
    for name, src in (("ca.crt", pki.ca), ("client.crt", pki.client.cert),
                      ("client.key", pki.client.key)):  # fmt: skip
        (tmp_path / "node-tls" / name).write_bytes(src.read_bytes())
    dest["tls"] = {"ca_file": "../node-tls/ca.crt", "cert_file": "../node-tls/client.crt",
                   "key_file": "../node-tls/client.key"}  # fmt: skip
    node = start_pipeline_node([dest], node={"tls": _tls(pki, require_client_cert=True)})
    study = pipeline_phantom(tmp_path / "src", seed=13, n_slices=10)
    sent = storescu_tls(node.service.tls_port, study.main.files, pki.ca, pki.client)
    assert sent.returncode == 0, sent.stdout + sent.stderr

    def results() -> list[Path]:
        got = []
        for path in tls_pacs.files():
            ds = dcmread(path, stop_before_pixels=True)
            if ds.StudyInstanceUID == study.study_uid:
                got.append(path)
        return got if len(got) == 2 else []

    files = wait_for(results, 120, "the SR and the SC at the TLS PACS")
    classes = {dcmread(p, stop_before_pixels=True).SOPClassUID for p in files}
    assert Comprehensive3DSRStorage in classes
    node.wait_state(study.study_uid, "done", timeout=60)


def test_export_to_a_pacs_with_an_untrusted_certificate_is_a_transient_failure(
    pki: Pki, tls_pacs: TlsStorescp, tmp_path: Path
) -> None:
    from dicom_node.config import Destination

    study = pipeline_phantom(tmp_path / "src", seed=14, n_slices=1)
    dest = Destination.model_validate({
        **destination(tls_pacs.port, ae_title=tls_pacs.aet),
        "tls": {"ca_file": str(pki.wrong_ca), "cert_file": str(pki.client.cert),
                "key_file": str(pki.client.key)},
    })  # fmt: skip
    with pytest.raises(TransientDeliveryError):
        send(dest, study.main.files)
    assert tls_pacs.files() == []
    # The same destination trusting the right CA delivers.
    assert dest.tls is not None
    good = dest.model_copy(update={"tls": dest.tls.model_copy(update={"ca_file": pki.ca})})
    assert len(send(good, study.main.files).sent) == 1
    assert len(tls_pacs.files()) == 1
