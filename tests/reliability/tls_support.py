"""Helpers of the DICOM TLS tests: a throwaway PKI made with ``cryptography``, and dcmtk
``storescu`` / ``echoscu`` / ``storescp`` with their TLS options.

The PKI: a CA, a server certificate for ``127.0.0.1`` and ``localhost`` (used by the
node and by the dcmtk storescp that stands in for a TLS PACS), a client certificate
from that CA, and a second CA with a client certificate of its own (the "wrong CA").
RSA 2048 keys: every BCP 195 suite dcmtk 3.6.7 offers takes them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nodes import NODE_AET, run_tool

ECHOSCU = "/usr/bin/echoscu"
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"


@dataclass(frozen=True)
class Pair:
    """A certificate and its unencrypted key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # CA certificate that signed server and client
    server: Pair  # CN=ich-node, SAN 127.0.0.1 and localhost
    client: Pair  # signed by ``ca``
    wrong_ca: Path  # another CA
    wrong_client: Pair  # signed by ``wrong_ca``


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(out: Path, stem: str, cert: x509.Certificate, key: rsa.RSAPrivateKey | None) -> Pair:
    cert_path = out / f"{stem}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = out / f"{stem}.key"
    if key is not None:
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
    return Pair(cert_path, key_path)


def _builder(subject: str, issuer: x509.Name, public: rsa.RSAPublicKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
    )


def _ca(out: Path, stem: str, cn: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    cert = (
        _builder(cn, _name(cn), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write(out, stem, cert, None)
    return cert, key


def _leaf(
    out: Path, stem: str, cn: str, ca: tuple[x509.Certificate, rsa.RSAPrivateKey], server: bool
) -> Pair:
    ca_cert, ca_key = ca
    key = _key()
    builder = (
        _builder(cn, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return _write(out, stem, builder.sign(ca_key, hashes.SHA256()), key)


def make_pki(out: Path) -> Pki:
    """Write the test PKI into ``out`` (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    ca = _ca(out, "ca", "ICH test CA")
    wrong = _ca(out, "wrong-ca", "Some other CA")
    return Pki(
        ca=out / "ca.crt",
        server=_leaf(out, "server", "ich-node", ca, server=True),
        client=_leaf(out, "client", "modality", ca, server=False),
        wrong_ca=out / "wrong-ca.crt",
        wrong_client=_leaf(out, "wrong-client", "stranger", wrong, server=False),
    )


def tls_args(ca: Path, pair: Pair | None) -> list[str]:
    """dcmtk options: TLS with ``pair`` as our certificate (None: anonymous TLS, no
    certificate), verifying the peer against ``ca``."""
    mine = ["+tls", str(pair.key), str(pair.cert)] if pair else ["+tla"]
    return [*mine, "+cf", str(ca)]


def echoscu_tls(
    port: int, ca: Path, pair: Pair | None, *, aet: str = "MODALITY", aec: str = NODE_AET,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """dcmtk echoscu over TLS to the node (TCP_NODELAY=1); ``extra``: more options."""
    return run_tool(
        [ECHOSCU, "-v", "-aet", aet, "-aec", aec, *tls_args(ca, pair), *extra, "127.0.0.1",
         str(port)],
        timeout=60,
    )  # fmt: skip


def storescu_tls(
    port: int, files: list[Path], ca: Path, pair: Pair | None, *, aet: str = "MODALITY",
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """dcmtk storescu over TLS to the node (TCP_NODELAY=1)."""
    return run_tool(
        [STORESCU, "-v", "-aet", aet, "-aec", NODE_AET, *tls_args(ca, pair), *extra,
         "127.0.0.1", str(port), *[str(f) for f in files]],
    )  # fmt: skip
