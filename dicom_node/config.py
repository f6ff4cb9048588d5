"""Typed node configuration: ``config.yaml`` plus ``ICH_`` environment overrides.

Loaded once in the entry point and passed down; modules never read the environment.
Unknown keys are rejected (``extra="forbid"``) so a typo in an admin's file stops
start-up instead of silently using a default. Relative paths resolve against the
folder of the config file, so a node can be started from any working directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dicom_node.errors import ConfigError
from models.series_choice import SeriesRule, SeriesRuleError, check_keyword

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM PS3.5 AE VR: no backslash


def _check_ae(value: str) -> str:
    if not _AE_RE.match(value) or not value.strip():
        raise ValueError("must be 1-16 printable ASCII characters without backslash (DICOM AE)")
    return value.strip()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_host_pattern(value: str) -> str:
    """An IP address, a CIDR network (``10.1.0.0/16``) or a host name."""
    value = value.strip()
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$", value):
            raise ValueError(
                f"{value!r} is not an IP address, a CIDR network or a host name"
            ) from None
    return value


class AllowedCaller(_Section):
    """One entry of ``node.allowed_calling_aets``: an AE title, and optionally where it
    must come from (IP addresses, CIDR networks or host names; empty = anywhere).

    A plain string in the list (``- CT1``) is the same as ``{ae_title: CT1}``."""

    ae_title: str
    hosts: list[str] = Field(default_factory=list)

    _ae = field_validator("ae_title")(_check_ae)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return [_check_host_pattern(v) for v in value]


def _as_caller(value: Any) -> Any:
    return {"ae_title": value} if isinstance(value, str) else value


class TlsSection(_Section):
    """DICOM TLS on the receive path (PS3.15 Annex B, TLS 1.2 or later): a second port
    beside the plain one (or instead of it, ``disable_plain``).

    ``ca_file`` holds the CA certificate(s) client certificates are verified against:
    with ``require_client_cert`` a peer without a certificate from that CA is refused;
    without it, a certificate is verified when the peer presents one. Files are PEM; the
    key is not encrypted (keep it 0600, readable by the node's user only)."""

    enabled: bool = False
    port: int = Field(2762, ge=0, le=65535)
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False
    #: Oldest protocol accepted; PS3.15 B.9 (BCP 195) asks for 1.2 or later.
    min_version: Literal["1.2", "1.3"] = "1.2"
    #: true: only the TLS port listens (``node.port`` is not opened).
    disable_plain: bool = False

    @model_validator(mode="after")
    def _complete(self) -> TlsSection:
        if self.enabled and (self.cert_file is None or self.key_file is None):
            raise ValueError("cert_file and key_file are required when enabled is true")
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file (the CA of the clients)")
        if self.disable_plain and not self.enabled:
            raise ValueError("disable_plain needs enabled: true (no port would listen)")
        return self


class DestinationTls(_Section):
    """TLS towards one PACS (PS3.15 Annex B): the CA that signed the PACS's certificate
    (none = the system's trust store) and, if the PACS asks for one, our certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    #: Check that the certificate names ``host`` (its SAN). Off only for a PACS whose
    #: certificate lacks the address it is reached by; the CA is still verified.
    verify_hostname: bool = True
    min_version: Literal["1.2", "1.3"] = "1.2"

    @model_validator(mode="after")
    def _pair(self) -> DestinationTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class NodeSection(_Section):
    """The AE we present to PACS and how associations are accepted."""

    ae_title: str = "ICHNODE"
    host: str = "0.0.0.0"  # noqa: S104 - a DICOM node listens for the hospital's PACS
    port: int = Field(11112, ge=0, le=65535)
    #: Empty = any calling AE. Entries: ``CT1`` or ``{ae_title: CT1, hosts: [10.1.2.3]}``.
    allowed_calling_aets: list[Annotated[AllowedCaller, BeforeValidator(_as_caller)]] = Field(
        default_factory=list
    )
    require_called_aet: bool = True
    max_associations: int = Field(16, ge=1, le=1024)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(60.0, gt=0)
    network_timeout_s: float = Field(60.0, gt=0)
    #: Both engines: one whole PDU (from its first byte) must arrive within this, so a
    #: peer trickling bytes cannot hold an association; 256 KiB at 64 kbit/s is ~33 s.
    pdu_timeout_s: float = Field(60.0, gt=0)
    max_pdu_size: int = Field(262144, ge=0)
    #: Who speaks DICOM on the wire: ``native`` (:mod:`dicom_node.net.acceptor`, the fast
    #: path) or ``pynetdicom`` (its threaded server; a fallback should a peer ever need it).
    engine: Literal["native", "pynetdicom"] = "native"
    #: Largest instance the native engine takes (it holds one in memory while it
    #: arrives); a larger one is read, dropped and answered 0xA700, so a broken or
    #: hostile sender cannot exhaust memory. Enhanced CT of a whole head is ~0.3-1 GB.
    max_instance_mb: int = Field(2048, ge=1)
    tls: TlsSection = Field(default_factory=TlsSection)
    #: What this process does (docs/scale-out.md): ``all`` (one node: receive, complete,
    #: infer, deliver), ``receiver`` (SCP, spool, completion; queues complete studies for
    #: workers) or ``worker`` (claims queued studies: inference, SR/SC, delivery). Several
    #: receivers and workers share one PostgreSQL index and one spool volume.
    role: Literal["all", "receiver", "worker"] = "all"
    #: This process's name in the index (``workers`` table, ``claimed_by``); empty = the
    #: host name, the role and a digest of the config path, stable across restarts so
    #: that a restarted worker takes its own unfinished studies back at once.
    worker_id: str = ""

    _ae = field_validator("ae_title")(_check_ae)

    @property
    def calling_titles(self) -> tuple[str, ...]:
        """The allowed calling AE titles, without their hosts (empty = any)."""
        return tuple(dict.fromkeys(c.ae_title for c in self.allowed_calling_aets))

    @property
    def plain_enabled(self) -> bool:
        """Whether the plain (non-TLS) port listens."""
        return not self.tls.disable_plain


#: ``scheme://`` of a SQLAlchemy URL (``postgresql+psycopg://``, ``sqlite:///``).
_URL_SCHEME_RE: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: The databases the study index runs on (``postgresql`` gets the psycopg driver).
_INDEX_SCHEMES: Final = ("sqlite", "postgresql", "postgresql+psycopg")


def _check_index_db(value: object) -> object:
    """A path (kept as text, resolved later like every path) or a supported URL."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        value = value.strip()
        match = _URL_SCHEME_RE.match(value)
        if match and match.group(1).lower() not in _INDEX_SCHEMES:
            raise ValueError(
                f"{match.group(1)}:// is not supported: a file path, sqlite:///<file> or "
                "postgresql+psycopg://user:password@host:port/database"
            )
        if match and match.group(1).lower() == "sqlite" and not value[len("sqlite:///") :]:
            raise ValueError("sqlite:/// needs a file (sqlite:///var/index.sqlite)")
        if not value:
            raise ValueError("must not be empty")
    return value


class StorageSection(_Section):
    """Where received instances live and how much disk they may take."""

    spool_dir: Path = Path("var/spool")
    #: The study index: a SQLite file (a path, or ``sqlite:///<path>``), or a PostgreSQL
    #: database (``postgresql+psycopg://user:password@host:port/database``) that several
    #: receivers and workers share. Read it through :meth:`Settings.index_target`.
    index_db: Annotated[str, BeforeValidator(_check_index_db)] = "var/index.sqlite"
    jobs_db: Path = Path("var/jobs.sqlite")
    results_dir: Path = Path("var/results")
    min_free_disk_mb: int = Field(1024, ge=0)
    max_spool_gb: float = Field(100, gt=0)
    retention_days: float = Field(7, gt=0)
    #: Write-ahead journal segment size (e.g. 64); 0 = no journal: each file and its folder
    #: are fsynced before Success. The journal pays off where a flush is slow (shared or
    #: cloud volumes); on a quiet local disk it costs up to 18 % (BENCHMARKS.md, Ingest).
    journal_segment_mb: int = Field(0, ge=0)
    #: Idle seconds before the journal's files are flushed and its segment recycled.
    journal_checkpoint_s: float = Field(2.0, gt=0)


class StudySection(_Section):
    """When a study counts as complete: no new instance for ``quiet_seconds``."""

    quiet_seconds: float = Field(30, ge=0)


class InferenceSection(_Section):
    """Which checkpoint runs, and where."""

    enabled: bool = True  # false: a receive-only node (studies stay ``complete``)
    checkpoint: Path = Path("var/models/demo.pt")
    device: Literal["auto", "cpu", "cuda"] | str = "auto"
    slice_chunk: int = Field(32, ge=1, description="slices per backbone forward pass")
    amp: bool = True
    #: Average a series much thinner than the checkpoint's training slices (spacing below
    #: 2/3 of it, e.g. 0.625-2.5 mm against 5 mm) into slabs of that thickness before the
    #: model (models.slabs); the SR and SC say so. ``classify`` follows the same setting.
    slab_thin_series: bool = True
    #: A worker holds a claimed study for this long and renews the lease every third of
    #: it; a worker that dies loses its studies to the others once the lease runs out.
    lease_s: float = Field(30.0, gt=0)
    #: Workers loading different model UIDs refuse to share one queue unless this is true
    #: (a study's findings would otherwise depend on which worker happened to claim it).
    allow_mixed_models: bool = False
    stop_timeout_s: float = Field(
        60.0,
        ge=0,
        description="shutdown waits this long for the study in inference; past it the study "
        "stays 'processing' and is requeued at the next start",
    )


class _Retried(_Section):
    """How a delivery of any kind (PACS, webhook, HL7) is retried after a transient error."""

    max_attempts: int = Field(8, ge=1)
    retry_base_s: float = Field(30.0, gt=0, description="first retry delay; doubles each time")
    retry_cap_s: float = Field(3600.0, gt=0)


#: Prefixes of the delivery rows of notifications (``webhook:ris``): a PACS destination's
#: row is its bare name, so a PACS name must not start with one of them.
NOTIFY_PREFIXES: Final = ("webhook:", "hl7:")


def _check_destination_name(value: str) -> str:
    if value.startswith(NOTIFY_PREFIXES):
        raise ValueError(f"must not start with {' or '.join(NOTIFY_PREFIXES)}")
    return value


class Destination(_Retried):
    """A PACS (or any Storage SCP) that receives our results over C-STORE."""

    kind: Literal["dimse"] = "dimse"
    name: str
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    send: tuple[Literal["sr", "sc"], ...] = ("sr", "sc")
    #: Absent = plain TCP; present (even ``tls: {}``) = DICOM TLS to this PACS.
    tls: DestinationTls | None = None

    _ae = field_validator("ae_title")(_check_ae)
    _name = field_validator("name")(_check_destination_name)


class DicomwebAuth(_Section):
    """How we authenticate to a STOW-RS endpoint: a bearer token, or HTTP Basic.

    Secrets belong in the environment rather than the file:
    ``ICH_DESTINATIONS='[{"kind": "dicomweb", "name": ..., "auth": {"bearer": ...}}]'``.
    """

    #: Secrets as ``SecretStr``: a repr or a dump of the settings shows ``**********``.
    bearer: SecretStr | None = Field(None, min_length=1)
    username: str | None = Field(None, min_length=1)
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _one_scheme(self) -> DicomwebAuth:
        basic = self.username is not None or self.password is not None
        if self.bearer is not None and basic:
            raise ValueError("give either bearer or username/password, not both")
        if basic and (self.username is None or self.password is None):
            raise ValueError("username and password go together")
        if self.bearer is None and not basic:
            raise ValueError("give bearer or username and password")
        return self


class DicomwebDestination(_Retried):
    """An archive that takes results over DICOMweb STOW-RS (a cloud PACS, a VNA) where
    no DIMSE port is open: one multipart POST of the SR and/or SC to ``<url>/studies``."""

    kind: Literal["dicomweb"]
    name: str
    #: The DICOMweb base (``https://pacs.example.org/dicom-web``), without ``/studies``.
    url: str
    auth: DicomwebAuth | None = None
    timeout_s: float = Field(30.0, gt=0)
    send: tuple[Literal["sr", "sc"], ...] = ("sr", "sc")

    _name = field_validator("name")(_check_destination_name)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


def _destination_kind(value: Any) -> str:
    """``kind`` of a destination; absent = ``dimse``, so older configs stay valid."""
    if isinstance(value, dict):
        return str(value.get("kind", "dimse"))
    return str(getattr(value, "kind", "dimse"))


#: A destination of results: C-STORE (``kind: dimse``, the default) or STOW-RS.
AnyDestination = Annotated[
    Annotated[Destination, Tag("dimse")] | Annotated[DicomwebDestination, Tag("dicomweb")],
    Discriminator(
        _destination_kind,
        custom_error_type="destination_kind",
        custom_error_message="kind must be 'dimse' (the default) or 'dicomweb'",
    ),
]


def _default_destinations() -> list[Destination | DicomwebDestination]:
    return [Destination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=4242)]


#: Union tags pydantic puts in an error's location (``destinations.0.dicomweb.url``);
#: dropped from messages, where the key is what the admin wrote.
_UNION_TAGS: Final = frozenset({"dimse", "dicomweb"})


_NOTIFY_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class _Notification(_Retried):
    """What every notification target has: a name (in ``studies --json`` and the log),
    whether it hears only of positive studies, and how long one attempt may take."""

    name: str
    only_positive: bool = False
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NOTIFY_NAME_RE.match(value):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-'")
        return value


class Webhook(_Notification):
    """A JSON POST per finished study (chat, RIS, a worklist), signed with ``secret``."""

    url: str
    #: HMAC-SHA256 key of ``X-ICH-Signature``; from the environment rather than the file:
    #: ``ICH_NOTIFY__WEBHOOKS='[{"name": ..., "secret": ...}]'`` (or a file readable by
    #: the node only).
    secret: str = Field(min_length=16)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


class Hl7Target(_Notification):
    """An HL7 v2.5 receiver of ORU^R01 results over MLLP (a RIS or an interface engine)."""

    host: str
    port: int = Field(ge=1, le=65535)
    sending_application: str = "ICHNODE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""


class NotifySection(_Section):
    """Notifications of finished studies besides the DICOM results: webhooks and HL7."""

    webhooks: list[Webhook] = Field(default_factory=list)
    hl7: list[Hl7Target] = Field(default_factory=list)

    @field_validator("webhooks", "hl7")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        names = [t.name for t in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"names must be unique (repeated: {', '.join(repeated)})")
        return value


def _keyword(value: str) -> str:
    try:
        return check_keyword(value)
    except SeriesRuleError as exc:
        raise ValueError(exc.message) from exc


def _pattern(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression ({exc})") from exc
    return value


#: Errors of a mapping's key or value carry the key in their location, so a typo reads
#: ``series_choice.rules[1].match.SeriesDescrption: not a DICOM keyword``.
DicomKeyword = Annotated[str, AfterValidator(_keyword)]
RulePattern = Annotated[str, AfterValidator(_pattern)]


class SeriesRuleConfig(_Section):
    """One site rule for series choice (:class:`models.series_choice.SeriesRule`).

    ``match`` maps DICOM keywords to regular expressions, searched case-insensitively in
    the attribute's text (multi-values joined with a backslash; absent = empty text).
    """

    name: str = Field(min_length=1)
    action: Literal["include", "exclude"]
    match: dict[DicomKeyword, RulePattern] = Field(min_length=1)
    priority: int = 0
    reason: str = ""

    def to_rule(self) -> SeriesRule:
        return SeriesRule(self.name, self.action, dict(self.match), self.priority, self.reason)


class SeriesChoiceSection(_Section):
    """Site rules that include or exclude series beyond the built-in series choice."""

    rules: list[SeriesRuleConfig] = Field(default_factory=list)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, value: list[SeriesRuleConfig]) -> list[SeriesRuleConfig]:
        names = [r.name for r in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"rule names must be unique (repeated: {', '.join(repeated)})")
        return value

    def series_rules(self) -> tuple[SeriesRule, ...]:
        """The rules as :class:`models.series_choice.SeriesRule`, for ``choose_series``."""
        return tuple(r.to_rule() for r in self.rules)


class WebUser(_Section):
    """One person who may log in to the worklist: a name and an argon2 hash of the
    password (``dicom-node user add NAME`` prints this entry; no password is stored)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    password_hash: str = Field(pattern=r"^\$argon2(id|i|d)\$")


class ApiToken(_Section):
    """One bearer token for the JSON API (a RIS, a script): its name (recorded in the
    audit trail as ``token:<name>``) and the SHA-256 of the token, hex.

    SHA-256 rather than argon2: a token is 32 random bytes (``dicom-node token add``), so
    it cannot be guessed from its hash, and it is checked on every API call, where an
    argon2 verification (tens of milliseconds by design) per request would be waste."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class WebSection(_Section):
    """The node's HTTP server (:mod:`dicom_node.web`): ``/healthz``, ``/readyz`` and
    ``/metrics`` (open, free of patient data), and the worklist with its JSON API
    (``/``, ``/studies/<key>``, ``/api/...``) for ``users`` (a session cookie) and
    ``api_tokens`` (a bearer token). ``port: 0`` binds any free port (tests)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: How others reach the page (behind a proxy: ``https://ich.hospital.org``); empty =
    #: ``http://<host>:<port>``. Notifications link ``<base_url>/studies/<study key>``.
    base_url: str = ""
    users: list[WebUser] = Field(default_factory=list)
    api_tokens: list[ApiToken] = Field(default_factory=list)
    #: Signs the session cookies; required (32+ characters) when ``users`` is not empty.
    session_secret: str = ""
    #: How long a login lasts (a reading-room shift and then some).
    session_hours: float = Field(12.0, gt=0, le=24 * 14)
    #: Send the cookie only over HTTPS (behind a TLS proxy: true).
    cookie_secure: bool = False
    #: Failed logins allowed per minute, per client address and per user name.
    login_failures_per_minute: int = Field(5, ge=1, le=1000)

    @model_validator(mode="after")
    def _secret_with_users(self) -> WebSection:
        if self.users and len(self.session_secret) < 32:
            raise ValueError(
                "web.session_secret must be at least 32 characters when web.users is set "
                "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        names = [u.name for u in self.users] + [t.name for t in self.api_tokens]
        if len(set(names)) != len(names):
            raise ValueError("web.users and web.api_tokens need distinct names")
        return self

    def study_link(self, key: str) -> str:
        base = self.base_url.rstrip("/") or f"http://{self.host}:{self.port}"
        return f"{base}/studies/{key}"


class LoggingSection(_Section):
    """Log level, line format and the key that pseudonymises study identifiers in logs."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``text``: key=value lines; ``json``: one JSON object per line (same fields).
    format: Literal["text", "json"] = "text"
    hash_key: str = "change-me-per-site"


class Settings(BaseSettings):
    """The whole node configuration. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix="ICH_",
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    node: NodeSection = Field(default_factory=NodeSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    study: StudySection = Field(default_factory=StudySection)
    inference: InferenceSection = Field(default_factory=InferenceSection)
    series_choice: SeriesChoiceSection = Field(default_factory=SeriesChoiceSection)
    destinations: list[AnyDestination] = Field(default_factory=_default_destinations)
    web: WebSection = Field(default_factory=WebSection)
    notify: NotifySection = Field(default_factory=NotifySection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    base_dir: Path = Field(default=Path(), exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over the file, which is passed as init kwargs.
        return (env_settings, init_settings)

    def resolve(self, path: Path) -> Path:
        """A configured path, made absolute against the config file's folder."""
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def index_target(self) -> str | Path:
        """``storage.index_db`` as :class:`dicom_node.store.index.Index` takes it: a SQLite
        file's resolved path (from a path or a ``sqlite:///`` URL), else the URL as given."""
        value = self.storage.index_db
        match = _URL_SCHEME_RE.match(value)
        if match is None:
            return self.resolve(Path(value))
        if match.group(1).lower() == "sqlite":
            return self.resolve(Path(value[len("sqlite:///") :]))
        return value

    def tls_files(self) -> list[tuple[str, Path]]:
        """Each configured TLS file as (its key, e.g. ``node.tls.cert_file``, resolved path)."""
        files: list[tuple[str, Path | None]] = []
        if self.node.tls.enabled:
            t = self.node.tls
            files += [("node.tls.cert_file", t.cert_file), ("node.tls.key_file", t.key_file),
                      ("node.tls.ca_file", t.ca_file)]  # fmt: skip
        for i, dest in enumerate(self.destinations):
            if isinstance(dest, Destination) and dest.tls is not None:
                d, key = dest.tls, f"destinations[{i}].tls"
                files += [(f"{key}.ca_file", d.ca_file), (f"{key}.cert_file", d.cert_file),
                          (f"{key}.key_file", d.key_file)]  # fmt: skip
        return [(key, self.resolve(p)) for key, p in files if p is not None]

    def check_files(self) -> None:
        """Raise :class:`ConfigError` naming the key of each TLS file that is missing or
        unreadable: a node must not start and fail at its first TLS association."""
        problems = []
        for key, path in self.tls_files():
            if not path.is_file():
                problems.append(f"{key}: {path} does not exist or is not a file")
            elif not os.access(path, os.R_OK):
                problems.append(f"{key}: {path} is not readable by this user")
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))


def _format_errors(exc: ValidationError) -> str:
    """``key: message`` per error; list items as ``[i]`` (``destinations[0].port``)."""
    lines = []
    for err in exc.errors():
        key = ""
        previous: object = None
        for part in err["loc"]:
            after_index, previous = isinstance(previous, int), part
            if after_index and part in _UNION_TAGS:
                continue
            if isinstance(part, int):
                key += f"[{part}]"
            elif part != "[key]":  # pydantic's marker for an invalid mapping key
                key += f".{part}" if key else str(part)
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{key or '<root>'}: {msg}")
    return "; ".join(lines)


def load_settings(path: Path | None = None) -> Settings:
    """Read ``path`` (or only the embedded defaults) and apply ``ICH_*`` overrides.

    Raises :class:`ConfigError` naming each bad key and what was expected.
    """
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
        base = Path(path).resolve().parent
    try:
        settings = Settings(**data, base_dir=base)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_format_errors(exc)}") from exc
    settings.check_files()
    return settings
