"""Decode throughput: one thin head-CT series per transfer syntax, before and after.

Writes a 512x512 head phantom of ``--slices`` slices (0.625 mm, like a thin head
reconstruction) in each syntax: JPEG Lossless SV1 through dcmtk ``dcmcjpeg +e1`` (what
scanners and PACS send; pydicom has no encoder for it), JPEG 2000 lossless, JPEG-LS
lossless and RLE through pydicom's encoders, and explicit VR little endian. Then, in one
run, repeat after repeat, it times reading each series to HU with:

* **before**: ``read_series`` as of commit ``BEFORE`` (sequential, pydicom's default
  decoder order), loaded from git, in a process that cannot import python-gdcm, as the
  project's dependencies stood before this change;
* **sequential**: today's ``read_series(workers=1)`` (the decoder choice alone);
* **parallel**: today's ``read_series()`` as a plain call: helpers started and stopped
  inside the call, as ``dicom-node classify`` and scripts do;
* **pool**: with a :class:`models.decode_pool.DecodePool` started beforehand, as the node;
* **2 threads**: today's per-slice decode in two threads (if the codecs released the
  GIL, this would beat sequential);
* each installed pydicom plugin for the syntax, decode only, first ``--decoder-slices``.

Each variant runs in a fresh child process, variants interleaved, so that no variant
inherits another's allocator state (on this VM glibc's heap state alone moved a
sequential RLE read by 2x). Medians of ``--repeat`` runs with min-max; ratios against
"before". ``--write`` replaces the "## Decode" section of BENCHMARKS.md with the tables,
the command, the machine and its load average. Usage::

    .venv/bin/python bench/decode.py [--slices 240] [--repeat 3] [--workers N] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: The last commit before parallel decoding: "before" is its read_series.
BEFORE = "a36f681"
SYNTAXES = {  # name -> transfer syntax UID
    "JPEG Lossless SV1": "1.2.840.10008.1.2.4.70",
    "JPEG 2000 lossless": "1.2.840.10008.1.2.4.90",
    "JPEG-LS lossless": "1.2.840.10008.1.2.4.80",
    "RLE lossless": "1.2.840.10008.1.2.5",
    "uncompressed": "1.2.840.10008.1.2.1",
}
VARIANTS = ("before", "sequential", "parallel", "pool", "threads")
DCMCJPEG = "/usr/bin/dcmcjpeg"


def write_series(root: Path, n: int, size: int) -> dict[str, list[Path]]:
    """The phantom in every syntax; files sorted inferior to superior."""
    from pydicom.uid import UID, ExplicitVRLittleEndian

    from train.data.phantoms import PhantomSpec, write_study

    spec = PhantomSpec(seed=2024, n_slices=n, size=size, slice_thickness_mm=0.625)
    out: dict[str, list[Path]] = {}
    native = write_study(root / "native", spec, layout="flat").main.files
    for name, uid in SYNTAXES.items():
        t0 = time.perf_counter()
        if uid == ExplicitVRLittleEndian:
            out[name] = native
        elif uid == "1.2.840.10008.1.2.4.70":
            folder = root / "jpll"
            folder.mkdir()
            for p in native:
                subprocess.run([DCMCJPEG, "+e1", "+un", str(p), str(folder / p.name)], check=True)
            out[name] = sorted(folder.iterdir())
        else:
            out[name] = write_study(root / uid, spec, transfer_syntax=UID(uid)).main.files
        mb = sum(p.stat().st_size for p in out[name]) / 1e6
        print(f"  wrote {name}: {n} files, {mb:.0f} MB ({time.perf_counter() - t0:.1f} s)")
    return out


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- child processes: one variant over every series -------------------------------------


def old_dicom_io() -> Any:
    """``models/dicom_io.py`` of commit ``BEFORE``, without python-gdcm installed."""
    sys.modules["gdcm"] = None  # type: ignore[assignment]  # as before: not a dependency
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{BEFORE}:models/dicom_io.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    spec = importlib.util.spec_from_loader("dicom_io_before", loader=None)
    assert spec is not None
    old = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = old  # dataclasses look their module up
    exec(compile(source, f"{BEFORE}:models/dicom_io.py", "exec"), old.__dict__)
    return old


def decoder_times(files: list[Path]) -> dict[str, float]:
    """Seconds per installed plugin to decode ``files`` (read beforehand)."""
    import pydicom
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.pixels.utils import pixel_array

    datasets = [pydicom.dcmread(p) for p in files]
    ts = datasets[0].file_meta.TransferSyntaxUID
    if not ts.is_compressed:
        return {}
    return {
        plugin: timed(lambda p=plugin: [pixel_array(ds, decoding_plugin=p) for ds in datasets])
        for plugin in get_decoder(ts).available_plugins
    }


def gil_probe(files: list[Path], seconds: float = 0.5) -> dict[str, float]:
    """Share of a pure-Python loop's speed kept while another thread decodes, per plugin.

    A codec that releases the GIL leaves the loop (nearly) its full speed on a second
    core; one that holds it lets the loop run only between decodes. ``time.sleep`` is
    the reference for "releases" (about 90 % here, the rest is the machine's load).
    """
    import threading

    import pydicom
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.pixels.utils import pixel_array

    def count() -> int:
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            n += 1
        return n

    def repeat_until(fn: Callable[[], object], stop: threading.Event) -> None:
        while not stop.is_set():
            fn()

    def kept(fn: Callable[[], object]) -> float:
        """Median of three rounds, alone and shared interleaved (the load varies)."""
        ratios = []
        for _ in range(3):
            stop = threading.Event()
            alone = count()
            t = threading.Thread(target=repeat_until, args=(fn, stop))
            t.start()
            shared = count()
            stop.set()
            t.join()
            ratios.append(shared / alone)
        return statistics.median(ratios)

    ds = pydicom.dcmread(files[len(files) // 2])
    ts = ds.file_meta.TransferSyntaxUID
    out = {"time.sleep (reference)": kept(lambda: time.sleep(0.02))}
    if ts.is_compressed:
        for plugin in get_decoder(ts).available_plugins:
            out[plugin] = kept(lambda p=plugin: pixel_array(ds, decoding_plugin=p))
    return out


def two_threads(files: list[Path], size: int) -> None:
    """Today's per-slice decode, one slice per task, in two threads."""
    from models.decode import decode_slice

    with ThreadPoolExecutor(2) as ex:
        list(ex.map(lambda p: decode_slice(p, size, size), files))


def child(variant: str, spec_path: Path) -> None:
    """Child mode: time ``variant`` once on each series; print JSON seconds."""
    job = json.loads(spec_path.read_text())
    series = {name: [Path(f) for f in files] for name, files in job["series"].items()}
    workers, size = job["workers"], job["size"]
    times: dict[str, Any] = {}
    if variant == "before":
        old = old_dicom_io()
        for name, files in series.items():
            headers = old.scan_headers(files).headers
            times[name] = timed(lambda h=headers: old.read_series(h))
    elif variant == "decoders":
        for name, files in series.items():
            times[name] = decoder_times(files[: job["decoder_slices"]])
    elif variant == "gil":
        for name, files in series.items():
            times[name] = gil_probe(files)
    else:
        from models.decode_pool import DecodePool
        from models.dicom_io import read_series, scan_headers

        with DecodePool(workers) as pool:
            if variant == "pool":
                pool.start(wait=True)
            for name, files in series.items():
                h = scan_headers(files).headers
                if variant == "sequential":
                    times[name] = timed(lambda h=h: read_series(h, workers=1))
                elif variant == "parallel":
                    times[name] = timed(lambda h=h: read_series(h, workers=workers))
                elif variant == "pool":
                    times[name] = timed(lambda h=h: read_series(h, pool=pool))
                elif variant == "threads":
                    times[name] = timed(lambda f=files: two_threads(f, size))
    print(json.dumps(times))


def run_child(variant: str, spec_path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", variant, str(spec_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


# -- the report --------------------------------------------------------------------------


def machine() -> str:
    model = ""
    with Path("/proc/cpuinfo").open() as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0))
    return f"{cores} cores usable ({os.cpu_count()} online), {model}, {platform.system()}"


def cell(n: int, secs: list[float], before: float | None) -> str:
    """Median slices/s (min-max), and the ratio to ``before`` (a median time)."""
    med = statistics.median(secs)
    text = f"{n / med:.0f} ({n / max(secs):.0f}-{n / min(secs):.0f})"
    return text if before is None else f"{text} **{before / med:.2f}x**"


def report(
    args: argparse.Namespace,
    workers: int,
    t: dict[str, dict[str, list[float]]],
    dec: dict[str, dict[str, list[float]]],
    gil: dict[str, dict[str, float]],
    loads: tuple[float, float],
) -> str:
    from pydicom.uid import UID

    from models.decode import decoding_plugin

    n = args.slices
    lines = [
        "| series | before | sequential | parallel (plain call) | pool (node) | 2 threads |",
        "|---|---|---|---|---|---|",
    ]
    for name in SYNTAXES:
        before = statistics.median(t[name]["before"])
        cells = [cell(n, t[name]["before"], None)]
        cells += [cell(n, t[name][v], before) for v in VARIANTS[1:]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    dec_lines = ["| series | plugin: slices/s (median), fastest first |", "|---|---|"]
    k = args.decoder_slices
    for name, by_plugin in dec.items():
        if not by_plugin:
            continue
        chosen = decoding_plugin(UID(SYNTAXES[name]))
        rates = {p: k / statistics.median(v) for p, v in by_plugin.items()}
        cells = [
            (f"**{p}**" if p == chosen else p) + f" {r:.0f}"
            for p, r in sorted(rates.items(), key=lambda kv: -kv[1])
        ]
        dec_lines.append(f"| {name} | " + ", ".join(cells) + " |")
    gil_lines = ["| series | share of its speed a Python loop kept, per plugin |", "|---|---|"]
    for name, shares in gil.items():
        if len(shares) > 1:
            text = ", ".join(f"{p} {v:.0%}" for p, v in shares.items())
            gil_lines.append(f"| {name} | {text} |")
    cmd = " ".join(["bench/decode.py", *(a for a in sys.argv[1:] if a != "--write")])
    section = [
        "## Decode",
        "",
        f"Command: `.venv/bin/python {cmd}` ({n} slices {args.size}x{args.size} per "
        f"series, a 0.625 mm head phantom; median of {args.repeat} runs, min-max in "
        f"brackets; workers = {workers}; each variant in a fresh process, interleaved).",
        f"Machine: {machine()}; load average {loads[0]:.2f} at the start, "
        f"{loads[1]:.2f} at the end ({dt.datetime.now(dt.UTC).date().isoformat()}).",
        "",
        "How: JPEG decoders hold the GIL (last table), so compressed slices are decoded "
        "in helper processes (`models/decode_pool.py`), and the decoder is chosen per "
        "syntax (`models.decode.PLUGIN_PREFERENCE`) instead of pydicom's order of "
        "registration; uncompressed and RLE slices, about a millisecond each, stay in "
        "the calling thread.",
        "",
        "Slices/s reading a whole series to HU (`read_series`), ratio against before:",
        "",
        *lines,
        "",
        f"Decoders, decode only, first {k} slices "
        "(bold: the one `models.decode.PLUGIN_PREFERENCE` picks):",
        "",
        *dec_lines,
        "",
        "Does the codec release the GIL? A pure-Python counting loop in one thread, "
        "another thread decoding the same slice over and over (median of 3; 100% = the "
        "loop keeps its speed, as beside `time.sleep`, which releases it):",
        "",
        *gil_lines,
        "",
        f'"before" is `read_series` of commit `{BEFORE}` without python-gdcm (pydicom\'s '
        'default plugin order, one thread); "parallel" starts and stops its helpers '
        'within the call; "pool" uses helpers started beforehand, as the node does; '
        '"2 threads" decodes with today\'s plugin in two threads of one process: what it '
        "gains comes from file reads and numpy, which release the GIL, not from the "
        "codecs, which hold it (table above). Uncompressed and RLE series are decoded in "
        "the calling thread by design (`models.decode.CHEAP_SYNTAXES`), so their "
        '"parallel" and "pool" columns measure the same code as "sequential".',
        "",
    ]
    return "\n".join(section)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=240)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="default: usable cores")
    ap.add_argument("--decoder-slices", type=int, default=60)
    ap.add_argument("--write", action="store_true", help="replace '## Decode' in BENCHMARKS.md")
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child[0], Path(args.child[1]))
        return

    from models.decode_pool import DecodePool, default_workers
    from models.dicom_io import read_series, scan_headers

    workers = args.workers or default_workers()
    load_start = os.getloadavg()[0]
    t: dict[str, dict[str, list[float]]] = {n: {v: [] for v in VARIANTS} for n in SYNTAXES}
    dec: dict[str, dict[str, list[float]]] = {n: {} for n in SYNTAXES}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"writing a {args.slices}-slice {args.size}x{args.size} phantom series per syntax")
        series = write_series(Path(tmp), args.slices, args.size)
        with DecodePool(workers) as pool:  # identical output, checked once up front
            for name, files in series.items():
                h = scan_headers(files).headers
                ref = read_series(h, workers=1).hu.tobytes()
                assert read_series(h, workers=workers).hu.tobytes() == ref, name
                assert read_series(h, pool=pool).hu.tobytes() == ref, name
        spec_path = Path(tmp) / "job.json"
        spec_path.write_text(
            json.dumps(
                {
                    "series": {k: [str(p) for p in v] for k, v in series.items()},
                    "workers": workers,
                    "size": args.size,
                    "decoder_slices": args.decoder_slices,
                }
            )
        )
        for r in range(args.repeat):
            for variant in (*VARIANTS, "decoders"):
                for name, value in run_child(variant, spec_path).items():
                    if variant == "decoders":
                        for plugin, secs in value.items():
                            dec[name].setdefault(plugin, []).append(secs)
                    else:
                        t[name][variant].append(value)
            print(f"  repeat {r + 1}/{args.repeat} done, load average {os.getloadavg()[0]:.2f}")
        gil = run_child("gil", spec_path)
    text = report(args, workers, t, dec, gil, (load_start, os.getloadavg()[0]))
    print()
    print(text)
    if args.write:
        path = REPO / "BENCHMARKS.md"
        doc = path.read_text()
        start = doc.find("\n## Decode\n")
        if start < 0:
            doc = doc.rstrip("\n") + "\n\n" + text
        else:
            end = doc.find("\n## ", start + 1)
            doc = doc[: start + 1] + text + (doc[end:] if end >= 0 else "")
        path.write_text(doc)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
