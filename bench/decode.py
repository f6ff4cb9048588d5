"""Decode throughput: one thin head-CT series per transfer syntax, before and after.

Writes a 512x512 head phantom of ``--slices`` slices (0.625 mm, like a thin head
reconstruction) in each syntax: JPEG Lossless SV1 through dcmtk ``dcmcjpeg +e1`` (what
scanners and PACS send; pydicom has no encoder for it), JPEG 2000 lossless, JPEG-LS
lossless and RLE through pydicom's encoders, and explicit VR little endian. Then, in one
run, repeat after repeat, it times on each series:

* **before**: ``read_series`` as of commit ``BEFORE`` (sequential, pydicom's default
  decoder order), loaded from git into a child process that cannot import python-gdcm,
  as the project's dependencies stood before this change;
* **sequential**: today's ``read_series(workers=1)`` (the decoder choice alone);
* **parallel**: today's ``read_series()`` as a plain call (helpers started and stopped
  inside the call: ``dicom-node classify``, scripts);
* **pool**: with a :class:`models.decode_pool.DecodePool` started beforehand (the node);
* **threads**: two threads of sequential decoding with today's decoder (whether the
  codec releases the GIL: if it did, this would beat sequential);
* each installed pydicom plugin for the syntax, decode only, on the first
  ``--decoder-slices`` slices.

Medians of ``--repeat`` runs; ratios against "before". ``--write`` replaces the
"## Decode" section of BENCHMARKS.md with the tables, the command, the machine and its
load average. Usage::

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


# -- "before": the old read_series in a child process without python-gdcm ----------------


def before_child(spec_path: Path) -> None:
    """Child mode: time the old ``read_series`` on each series once; print JSON times."""
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
    series = json.loads(spec_path.read_text())
    times: dict[str, float] = {}
    for name, files in series.items():
        headers = old.scan_headers([Path(f) for f in files]).headers
        times[name] = timed(lambda h=headers: old.read_series(h))
    print(json.dumps(times))


def before_times(series: dict[str, list[Path]], spec_path: Path) -> dict[str, float]:
    spec_path.write_text(json.dumps({k: [str(p) for p in v] for k, v in series.items()}))
    out = subprocess.run(
        [sys.executable, __file__, "--before-child", str(spec_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {k: float(v) for k, v in json.loads(out.splitlines()[-1]).items()}


# -- today's code -----------------------------------------------------------------------


def decoder_rates(files: list[Path]) -> dict[str, float]:
    """Slices/s of each installed plugin, decode only (files read beforehand)."""
    import pydicom
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.pixels.utils import pixel_array

    datasets = [pydicom.dcmread(p) for p in files]
    ts = datasets[0].file_meta.TransferSyntaxUID
    if not ts.is_compressed:
        return {}
    rates = {}
    for plugin in get_decoder(ts).available_plugins:
        t = timed(lambda p=plugin: [pixel_array(ds, decoding_plugin=p) for ds in datasets])
        rates[plugin] = len(datasets) / t
    return rates


def threads_time(files: list[Path], rows: int, cols: int) -> float:
    from models.decode import decode_slice

    with ThreadPoolExecutor(2) as ex:
        return timed(lambda: list(ex.map(lambda p: decode_slice(p, rows, cols), files)))


def machine() -> str:
    model = ""
    with Path("/proc/cpuinfo").open() as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0))
    return f"{cores} cores usable ({os.cpu_count()} online), {model}, {platform.system()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=240)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="default: usable cores")
    ap.add_argument("--decoder-slices", type=int, default=60)
    ap.add_argument("--write", action="store_true", help="replace '## Decode' in BENCHMARKS.md")
    ap.add_argument("--before-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.before_child is not None:
        before_child(args.before_child)
        return

    from pydicom.uid import UID

    from models.decode import decoding_plugin
    from models.decode_pool import DecodePool, default_workers
    from models.dicom_io import read_series, scan_headers

    workers = args.workers or default_workers()
    load_start = os.getloadavg()
    variants = ("before", "sequential", "parallel", "pool", "threads")
    t: dict[str, dict[str, list[float]]] = {n: {v: [] for v in variants} for n in SYNTAXES}
    plugins: dict[str, dict[str, list[float]]] = {n: {} for n in SYNTAXES}
    with tempfile.TemporaryDirectory() as tmp, DecodePool(workers) as pool:
        print(f"writing a {args.slices}-slice {args.size}x{args.size} phantom series per syntax")
        series = write_series(Path(tmp), args.slices, args.size)
        headers = {n: scan_headers(files).headers for n, files in series.items()}
        pool.start(wait=True)
        for name, h in headers.items():  # identical output, checked once up front
            ref = read_series(h, workers=1).hu
            assert read_series(h, workers=workers).hu.tobytes() == ref.tobytes(), name
            assert read_series(h, pool=pool).hu.tobytes() == ref.tobytes(), name
        for r in range(args.repeat):
            for name, secs in before_times(series, Path(tmp) / "series.json").items():
                t[name]["before"].append(secs)
            for name, h in headers.items():
                t[name]["sequential"].append(timed(lambda h=h: read_series(h, workers=1)))
                t[name]["parallel"].append(timed(lambda h=h: read_series(h, workers=workers)))
                if workers > 1:
                    t[name]["pool"].append(timed(lambda h=h: read_series(h, pool=pool)))
                t[name]["threads"].append(threads_time(series[name], args.size, args.size))
                for p, rate in decoder_rates(series[name][: args.decoder_slices]).items():
                    plugins[name].setdefault(p, []).append(rate)
            print(f"  repeat {r + 1}/{args.repeat} done, load average {os.getloadavg()[0]:.2f}")
    load_end = os.getloadavg()

    n = args.slices
    rows = []
    for name in SYNTAXES:
        med = {v: statistics.median(x) for v, x in t[name].items() if x}
        rate = {v: n / s for v, s in med.items()}
        ratio = {v: med["before"] / s for v, s in med.items()}
        rows.append((name, rate, ratio))
    head = "| series | before | sequential | parallel (plain call) | pool (node) | 2 threads |"
    lines = [head, "|---|---|---|---|---|---|"]
    for name, rate, ratio in rows:
        cells = [f"{rate['before']:.0f}"]
        for v in variants[1:]:
            cells.append(f"{rate[v]:.0f} ({ratio[v]:.2f}x)" if v in rate else "-")
        cells[2] = f"**{cells[2]}**"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    dec_lines = ["| series | plugin: slices/s, fastest first |", "|---|---|"]
    for name, by_plugin in plugins.items():
        if not by_plugin:
            continue
        chosen = decoding_plugin(UID(SYNTAXES[name]))
        cells = [
            (f"**{p}**" if p == chosen else p) + f" {statistics.median(v):.0f}"
            for p, v in sorted(by_plugin.items(), key=lambda kv: -statistics.median(kv[1]))
        ]
        dec_lines.append(f"| {name} | " + ", ".join(cells) + " |")
    cmd = "python bench/decode.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
    section = [
        "## Decode",
        "",
        f"Command: `.venv/bin/python {cmd.replace('python ', '', 1).strip()}` "
        f"({args.slices} slices {args.size}x{args.size} per series, 0.625 mm head phantom; "
        f"median of {args.repeat} runs; workers = {workers}).",
        f"Machine: {machine()}; load average {load_start[0]:.2f} at the start, "
        f"{load_end[0]:.2f} at the end ({dt.datetime.now(dt.UTC).date().isoformat()}).",
        "",
        "Slices/s reading a whole series to HU (`read_series`), ratio against before:",
        "",
        *lines,
        "",
        f"Decoders, decode only, first {args.decoder_slices} slices "
        "(bold: the one `models.decode.PLUGIN_PREFERENCE` picks):",
        "",
        *dec_lines,
        "",
        '"before" is `read_series` of commit '
        f"`{BEFORE}` without python-gdcm (pydicom's default plugin order, one thread); "
        '"parallel" starts and stops its helpers within the call; "pool" uses helpers '
        'started beforehand, as the node does; "2 threads" decodes with today\'s plugin in '
        "two threads: no faster than sequential, the codecs hold the GIL.",
        "",
    ]
    text = "\n".join(section)
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
