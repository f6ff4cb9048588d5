"""The ``dicom-node`` command line.

Each command loads the configuration once (file plus ``ICH_*`` environment overrides)
and passes it down; a bad configuration stops with the key's name and exit code 2.
"""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dicom_node.config import Settings, load_settings
from dicom_node.errors import NodeError
from models.errors import ModelsError
from models.labels import LABELS

if TYPE_CHECKING:
    from dicom_node.store.index import Index
    from dicom_node.store.series_outcome import SeriesOutcome

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ICH triage DICOM node.")
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="config.yaml (defaults are embedded)")
]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except NodeError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


T = TypeVar("T")


def _read_index(config: Path | None, read: Callable[[Index], list[T]]) -> list[T]:
    """Open the configured index, ``read`` it and close it (also when the read fails);
    an index error is printed and exits 1: what ``studies`` and ``workers`` share."""
    from dicom_node.store.index import Index  # imported late: the CLI starts without it

    settings = _settings(config)
    try:
        index = Index(settings.index_target())
        try:
            return read(index)
        finally:
            index.close()
    except NodeError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _series_table(title: str, outcomes: Sequence[SeriesOutcome]) -> Table:
    """Every series of a study: description, images, and used / why not (``--json``
    adds the Series Instance UIDs).

    Descriptions are the scanner's text: escaped, so a ``[`` in one is not rich markup.
    """
    table = Table(title=title, title_justify="left")
    for col in ("series", "images", "outcome"):
        table.add_column(col)
    for o in outcomes:
        outcome = "[green]used[/]" if o.chosen else escape(o.reason or "not chosen")
        table.add_row(escape(o.label), str(o.instances), outcome)
    return table


@app.command()
def classify(
    path: Annotated[Path, typer.Argument(help="a DICOM file or a folder of studies")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="checkpoint file; default: inference.checkpoint")
    ] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    slabs: Annotated[
        bool | None,
        typer.Option(
            "--slabs/--no-slabs",
            help="average a thin series into slabs of the model's slice thickness; "
            "default: inference.slab_thin_series",
        ),
    ] = None,
) -> None:
    """Classify the studies under PATH offline (no network) and print the findings."""
    from dicom_node.classify import Unreadable, classify_path
    from models.predict import Predictor

    settings = _settings(config)
    ckpt = checkpoint or settings.resolve(settings.inference.checkpoint)
    if not path.exists():
        err.print(f"[red]error:[/red] {path} does not exist")
        raise typer.Exit(2)
    try:
        predictor = Predictor.from_path(
            ckpt,
            device=settings.inference.device,
            chunk=settings.inference.slice_chunk,
            amp=settings.inference.amp,
            slab_thin_series=settings.inference.slab_thin_series if slabs is None else slabs,
        )
    except ModelsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    unreadable: list[Unreadable] = []
    results = list(
        classify_path(path, predictor, settings.series_choice.series_rules(), unreadable)
    )
    if as_json:
        report = {
            "studies": [r.to_json() for r in results],
            "unreadable": [u.to_json() for u in unreadable],
        }
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    out = Console()
    if predictor.meta.demo:
        out.print("[yellow]demo checkpoint trained on synthetic phantoms: not for clinical use[/]")
    for r in results:
        if r.prediction is None:
            out.print(f"study {r.study_uid}: [yellow]skipped[/] ({escape(r.skipped or '')})")
        else:
            table = Table(
                title=f"study {r.study_uid} - series {r.series_uid} ({r.n_slices} slices)"
            )
            table.add_column("finding")
            table.add_column("probability", justify="right")
            table.add_column("decision")
            for label in LABELS:
                f = r.prediction.findings()[label]
                mark = "[bold red]PRESENT[/]" if f["present"] else "absent"
                table.add_row(label, f"{float(f['probability']):.3f}", mark)
            out.print(table)
            if r.prediction.slabs is not None:
                out.print(f"[cyan]{r.prediction.slabs.describe()}[/]")
        if r.series_choice:
            out.print(_series_table(f"series of study {r.study_uid}", r.series_choice))
    for u in unreadable:
        out.print(f"{escape(str(u.path))}: [yellow]not read[/] ({escape(u.reason)})")
    if not results:
        out.print(f"no DICOM studies found under {path}")


Role = Literal["all", "receiver", "worker"]


@app.command()
def serve(
    config: ConfigOpt = None,
    role: Annotated[
        Role | None,
        typer.Option(
            "--role",
            help="all (one node), receiver (SCP + completion) or worker (inference + "
            "delivery); default: node.role from the config",
        ),
    ] = None,
) -> None:
    """Receive studies (C-STORE SCP) until SIGTERM or SIGINT, then stop cleanly."""
    from dicom_node.logs import setup_logging
    from dicom_node.service import Service
    from dicom_node.store.private import restrict_umask, warn_if_root

    restrict_umask()  # before anything is written: every file 0600, every folder 0700
    settings = _settings(config)
    if role is not None:
        settings = settings.model_copy(
            update={"node": settings.node.model_copy(update={"role": role})}
        )
    setup_logging(settings.logging.level, fmt=settings.logging.format)
    warn_if_root()
    service = Service(settings, config)
    try:
        service.start()
    except (NodeError, OSError) as exc:
        err.print(f"[red]error:[/red] cannot start: {exc}")
        service.stop(grace_s=0)
        raise typer.Exit(1) from exc
    web = f"; http on {settings.web.host}:{service.web_port}" if service.web else ""
    if settings.node.role == "worker":
        listening = f"working as {service.worker_id}{web}\n"
    else:
        if settings.node.tls.enabled and settings.node.plain_enabled:
            web = f"; dicom-tls on {settings.node.host}:{service.tls_port}{web}"
        elif settings.node.tls.enabled:
            web = f" (dicom-tls only){web}"
        listening = (
            f"listening on {settings.node.host}:{service.port} as {settings.node.ae_title}{web}\n"
        )

    def ready() -> None:
        sys.stdout.write(listening)
        sys.stdout.flush()

    # Everything loaded at start-up (torch, pydicom's dictionaries, FastAPI's models:
    # ~130,000 objects) lives as long as the process; frozen, a full collection no longer
    # walks them (64 ms measured on 2 cores, while every receive thread waits). Here, not
    # in Service.start: freezing is the process's decision, not an embedded node's.
    gc.collect()
    gc.freeze()
    # "listening on" only once SIGTERM is handled: a supervisor (or a test) that stops
    # the node right after that line gets a clean shutdown, not the default death.
    service.serve_until_signal(ready)


@app.command()
def studies(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON array")] = False,
    state: Annotated[list[str] | None, typer.Option(help="only these states")] = None,
) -> None:
    """List the studies in the index with state, counts, times and reasons."""
    from dicom_node.store.index import iso

    rows = _read_index(config, lambda index: index.studies(tuple(state or ())))
    if as_json:
        sys.stdout.write(json.dumps([r.to_json() for r in rows], indent=2) + "\n")
        return
    table = Table(title=f"{len(rows)} studies")
    for col in ("study", "state", "series", "instances", "first received", "last received",
                "reason"):  # fmt: skip
        table.add_column(col)
    choices = Table(title="series of each study: used, or why not", title_justify="left")
    for col in ("study", "series", "images", "outcome"):
        choices.add_column(col)
    for r in rows:
        table.add_row(r.study_uid, r.state, str(r.series), str(r.instances),
                      iso(r.first_received), iso(r.last_received),
                      escape(r.reason or ""))  # fmt: skip
        for o in r.series_choice:
            outcome = "[green]used[/]" if o.chosen else escape(o.reason or "not chosen")
            choices.add_row(r.study_uid, escape(o.label), str(o.instances), outcome)
    console = Console()
    console.print(table)
    if choices.row_count:
        console.print(choices)


@app.command()
def workers(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON array")] = False,
) -> None:
    """The receivers and workers registered in the index: role, host, device, model, load
    and last heartbeat (several processes share one PostgreSQL index: docs/scale-out.md)."""
    from dicom_node.store.index import iso

    rows = _read_index(config, lambda index: index.workers())
    if as_json:
        sys.stdout.write(json.dumps([w.to_json() for w in rows], indent=2) + "\n")
        return
    table = Table(title=f"{len(rows)} processes")
    for col in ("worker", "role", "host", "pid", "device", "model", "load", "heartbeat"):
        table.add_column(col)
    for w in rows:
        table.add_row(escape(w.worker_id), w.role, escape(w.host), str(w.pid),
                      w.device or "", w.model_uid or "", escape(json.dumps(w.load)),
                      iso(w.heartbeat))  # fmt: skip
    Console().print(table)


@app.command()
def echo(
    host: Annotated[str, typer.Argument(help="peer host")],
    port: Annotated[int, typer.Argument(help="peer DICOM port")],
    aet: Annotated[str, typer.Argument(help="peer AE title (called AE)")],
    calling_aet: Annotated[str, typer.Option("--calling-aet", help="our AE title")] = "ICHNODE",
    timeout: Annotated[float, typer.Option(help="seconds")] = 30.0,
) -> None:
    """C-ECHO a DICOM peer (exit 0 on Success)."""
    from dicom_node.logs import quiet_pynetdicom
    from dicom_node.net.scp import echo as do_echo

    quiet_pynetdicom()
    status = do_echo(host, port, aet, calling_aet=calling_aet, timeout_s=timeout)
    if status is None:
        err.print(f"[red]echo failed:[/red] no association with {aet}@{host}:{port}")
        raise typer.Exit(1)
    if status != 0:
        err.print(f"[red]echo failed:[/red] status 0x{status:04X}")
        raise typer.Exit(1)
    sys.stdout.write(f"echo {aet}@{host}:{port}: success\n")


@app.command()
def reindex(config: ConfigOpt = None) -> None:
    """Rebuild the study index from the spool files, and each processed study's state from
    the marker beside its results (run with the node stopped). A damaged index file is
    set aside (renamed ``*.damaged-<time>``), not deleted."""
    from dicom_node.logs import setup_logging
    from dicom_node.store import study_marker
    from dicom_node.store.index import Index, set_aside_if_damaged
    from dicom_node.store.private import restrict_umask
    from dicom_node.store.spool import Spool
    from dicom_node.store.spool import reindex as do_reindex

    restrict_umask()
    settings = _settings(config)
    setup_logging(settings.logging.level, fmt=settings.logging.format)
    st = settings.storage
    try:
        target = settings.index_target()
        aside = set_aside_if_damaged(target)
        if aside is not None:
            sys.stdout.write(f"the damaged index was moved to {aside}\n")
        index = Index(target)
        spool = Spool(settings.resolve(st.spool_dir), index, min_free_mb=st.min_free_disk_mb,
                      max_spool_gb=st.max_spool_gb, journal_segment_mb=None)  # fmt: skip
        n = do_reindex(spool)
        restored = study_marker.restore(index, settings.resolve(st.results_dir))
        n_studies = len(index.studies())
        index.close()
    except (NodeError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    sys.stdout.write(
        f"reindexed {n} instances in {n_studies} studies; processing state restored for "
        f"{restored['done']} (done), {restored['skipped']} (skipped), {restored['failed']} "
        f"(failed) and {restored['reopened']} (changed since, processed again)\n"
    )


user_app = typer.Typer(no_args_is_help=True, help="Worklist users and API tokens.")
app.add_typer(user_app, name="user")


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="login name (letters, digits, . _ @ -)")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from stdin (scripts)")
    ] = False,
) -> None:
    """Hash a new user's password (argon2) and print the entry for ``web.users``.

    Nothing is written: the admin pastes the entry into config.yaml (or the whole list
    into ``ICH_WEB__USERS``) and restarts the node. The password is never echoed.
    """
    import getpass

    from dicom_node.config import WebUser
    from dicom_node.web.auth import hash_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            err.print("[red]error:[/red] the passwords differ")
            raise typer.Exit(2)
    if len(password) < 8:
        err.print("[red]error:[/red] a password needs at least 8 characters")
        raise typer.Exit(2)
    try:
        user = WebUser(name=name, password_hash=hash_password(password))
    except ValueError as exc:
        err.print(f"[red]error:[/red] invalid user name {name!r}")
        raise typer.Exit(2) from exc
    sys.stdout.write(
        "# add under web.users in config.yaml, then restart the node:\n"
        f"  - name: {user.name}\n    password_hash: '{user.password_hash}'\n"
    )


@user_app.command("token")
def user_token(
    name: Annotated[str, typer.Argument(help="the client's name (audit: token:NAME)")],
) -> None:
    """Make a bearer token for the API; print it once and the entry for ``web.api_tokens``."""
    import secrets

    from dicom_node.config import ApiToken
    from dicom_node.web.auth import token_digest

    token = secrets.token_urlsafe(32)
    entry = ApiToken(name=name, token_sha256=token_digest(token))
    sys.stdout.write(
        f"token (shown once, give it to the client): {token}\n"
        "# add under web.api_tokens in config.yaml, then restart the node:\n"
        f"  - name: {entry.name}\n    token_sha256: {entry.token_sha256}\n"
    )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
