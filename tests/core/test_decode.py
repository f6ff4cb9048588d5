"""Parallel decoding: same bytes as the sequential path, same errors, no stray processes.

Series are phantoms written by the test in each lossless syntax the node meets (JPEG
Lossless SV1 through dcmtk's ``dcmcjpeg``, the others through pydicom's encoders), and
compared with the HU the phantom was rendered from, so a decoder that is fast but wrong
fails here rather than only disagreeing with another decoder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from models.decode import PLUGIN_PREFERENCE, decoding_plugin
from models.decode_pool import (
    MIN_PARALLEL_PIXELS,
    DecodePool,
    decode_series,
    default_workers,
)
from models.dicom_io import InstanceHeader, read_series, scan_headers
from models.errors import SeriesError
from train.data.phantoms import PhantomSpec, WrittenStudy, write_study

DCMCJPEG = "/usr/bin/dcmcjpeg"
SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "jpeg_lossless": JPEGLosslessSV1,
    "jpeg2000": JPEG2000Lossless,
    "jpeg_ls": JPEGLSLossless,
    "rle": RLELossless,
}


def write_series(out: Path, syntax: UID, *, n: int, size: int, signed: bool = True) -> WrittenStudy:
    """A head phantom in ``syntax``; JPEG Lossless is made by dcmtk from the native files."""
    spec = PhantomSpec(seed=11, n_slices=n, size=size, slice_thickness_mm=2.5)
    if syntax != JPEGLosslessSV1:
        return write_study(out, spec, transfer_syntax=syntax, layout="flat", signed=signed)
    native = write_study(out / "native", spec, layout="flat", signed=signed)
    for path in native.main.files:
        tmp = path.with_suffix(".jpll")
        subprocess.run([DCMCJPEG, "+e1", "+un", str(path), str(tmp)], check=True)
        tmp.replace(path)
    assert pydicom.dcmread(native.main.files[0]).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    return native


def headers_of(study: WrittenStudy) -> list[InstanceHeader]:
    return scan_headers(study.main.files).headers


def child_pids() -> set[int]:
    """This process's live children, from /proc (threads included)."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        pids.update(int(p) for p in (task / "children").read_text().split())
    return pids


@pytest.fixture(scope="module")
def pool() -> DecodePool:
    with DecodePool(1) as p:
        p.start(wait=True)
        yield p  # type: ignore[misc]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, WrittenStudy]:
    root = tmp_path_factory.mktemp("syntaxes")
    return {name: write_series(root / name, ts, n=12, size=96) for name, ts in SYNTAXES.items()}


@pytest.mark.parametrize("name", list(SYNTAXES))
def test_parallel_equals_sequential_and_the_phantom(
    name: str, studies: dict[str, WrittenStudy], pool: DecodePool
) -> None:
    study = studies[name]
    sequential = read_series(headers_of(study), workers=1)
    parallel = read_series(headers_of(study), pool=pool)
    assert parallel.hu.tobytes() == sequential.hu.tobytes()
    assert parallel.sop_uids == sequential.sop_uids
    np.testing.assert_array_equal(sequential.hu, study.volume.hu.astype(np.float32))


@pytest.mark.parametrize("name", list(SYNTAXES))
def test_helpers_decode_costly_syntaxes_only(
    name: str, studies: dict[str, WrittenStudy], pool: DecodePool
) -> None:
    files = studies[name].main.files  # inferior to superior: already the output order
    decoded = decode_series(files, 96, 96, pool=pool)
    np.testing.assert_array_equal(decoded.hu, studies[name].volume.hu.astype(np.float32))
    if SYNTAXES[name] in (ExplicitVRLittleEndian, RLELossless):
        assert decoded.decoded_by_helpers == 0  # cheaper decoded here than handed over
        assert decoded.helpers == 0
    else:  # with a ready helper the caller decodes only the first slice
        assert decoded.decoded_by_helpers == len(files) - 1
        assert decoded.helpers == 1


def test_caller_and_helper_share_a_series(studies: dict[str, WrittenStudy]) -> None:
    """A plain call's pool: this thread decodes beside the helper, same bytes out."""
    study = studies["jpeg2000"]
    files = study.main.files
    with DecodePool(1, caller_decodes=True) as shared:
        shared.start(wait=True)
        decoded = decode_series(files, 96, 96, pool=shared)
    assert 2 <= decoded.decoded_by_helpers <= len(files) - 2  # 2 sent ahead, 1 here
    np.testing.assert_array_equal(decoded.hu, study.volume.hu.astype(np.float32))


def test_unsigned_jpeg_lossless_matches(tmp_path: Path, pool: DecodePool) -> None:
    """dcmtk writes unsigned 12-bit JPEG Lossless as many scanners do; same HU out."""
    study = write_series(tmp_path, JPEGLosslessSV1, n=6, size=64, signed=False)
    series = read_series(headers_of(study), pool=pool)
    np.testing.assert_array_equal(series.hu, study.volume.hu.astype(np.float32))


def test_one_shot_pool_leaves_no_process(tmp_path: Path) -> None:
    """Without a pool, read_series starts helpers for the series and stops them."""
    n = MIN_PARALLEL_PIXELS // (256 * 256) + 2
    study = write_series(tmp_path, JPEGLSLossless, n=n, size=256)
    before = child_pids()
    decoded = decode_series(study.main.files, 256, 256, workers=2)
    assert decoded.helpers == 1  # and this thread
    assert child_pids() == before
    parallel = read_series(headers_of(study), workers=2)
    assert child_pids() == before
    sequential = read_series(headers_of(study), workers=1)
    assert parallel.hu.tobytes() == sequential.hu.tobytes() == decoded.hu.tobytes()


def corrupt(path: Path) -> None:
    """Zero a compressed frame after its first bytes: a damaged transfer, as a file."""
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:40] + b"\0" * (len(frame) - 40)])
    ds.save_as(path)


@pytest.mark.parametrize("name", ["jpeg_lossless", "jpeg2000", "jpeg_ls", "rle"])
@pytest.mark.parametrize("bad", [[0], [1], [7, 2]], ids=["first", "second", "two"])
def test_corrupt_slice_raises_the_sequential_error(
    name: str, bad: list[int], tmp_path: Path, pool: DecodePool
) -> None:
    """The error names the first bad slice, as the sequential path's does.

    The first slice is decoded by the caller, the others by the pool's ready helper.
    """
    study = write_series(tmp_path, SYNTAXES[name], n=10, size=64)
    for i in bad:
        corrupt(study.main.files[i])
    with pytest.raises(SeriesError) as seq:
        read_series(headers_of(study), workers=1)
    with pytest.raises(SeriesError) as par:
        read_series(headers_of(study), pool=pool)
    first = min(bad)
    expected = f"slice {first + 1} of 10: pixel data cannot"
    assert str(seq.value).startswith(expected)
    assert str(par.value) == str(seq.value)
    assert study.main.files[first].stem not in str(par.value)  # spool names are SOP UIDs
    # The pool is still usable and in step after a failed series.
    good = write_series(tmp_path / "good", SYNTAXES[name], n=5, size=64)
    again = read_series(headers_of(good), pool=pool)
    np.testing.assert_array_equal(again.hu, good.volume.hu.astype(np.float32))


def test_unreadable_file_named(tmp_path: Path, pool: DecodePool) -> None:
    study = write_series(tmp_path, JPEG2000Lossless, n=8, size=64)
    headers = headers_of(study)
    study.main.files[2].write_bytes(b"not DICOM any more")
    with pytest.raises(SeriesError, match=r"^slice 3 of 8: file cannot be read"):
        read_series(headers, pool=pool)


@pytest.mark.parametrize("mode", [pydicom_config.IGNORE, pydicom_config.RAISE])
def test_helpers_read_as_leniently_as_the_caller(
    mode: int, tmp_path: Path, pool: DecodePool
) -> None:
    """A helper validates values as the caller's pydicom is set to (the training cache
    switches validation off for RSNA files); slice 4 has an 18-character DS."""
    study = write_series(tmp_path, JPEG2000Lossless, n=6, size=64)
    settings = pydicom_config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    try:
        settings.reading_validation_mode = pydicom_config.IGNORE  # to set the value
        settings.writing_validation_mode = pydicom_config.IGNORE
        ds = pydicom.dcmread(study.main.files[3])
        ds.RescaleSlope = "1.0000000000000000"
        ds.save_as(study.main.files[3])
        settings.reading_validation_mode = mode
        if mode == pydicom_config.IGNORE:
            series = read_series(headers_of(study), pool=pool)
            np.testing.assert_array_equal(series.hu, study.volume.hu.astype(np.float32))
        else:
            with pytest.raises(SeriesError) as seq:
                read_series(headers_of(study), workers=1)
            with pytest.raises(SeriesError) as par:
                read_series(headers_of(study), pool=pool)
            assert str(seq.value) == "slice 4 of 6: unexpected OverflowError while decoding"
            assert str(par.value) == str(seq.value)
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def test_dead_helper_is_replaced(studies: dict[str, WrittenStudy]) -> None:
    study = studies["jpeg2000"]
    with DecodePool(1) as own:
        own.start(wait=True)
        [pid] = own.pids
        os.kill(pid, signal.SIGKILL)
        series = read_series(headers_of(study), pool=own)
        np.testing.assert_array_equal(series.hu, study.volume.hu.astype(np.float32))
        own.start(wait=True)
        assert len(own.pids) == 1
        assert own.pids != [pid]
    assert pid not in child_pids()


def test_pool_shared_by_threads(studies: dict[str, WrittenStudy], pool: DecodePool) -> None:
    """The node's threads may read series at once: one pool, correct results for each."""
    names = ["jpeg2000", "jpeg_ls", "rle", "jpeg_lossless"]
    out: dict[str, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            out[name] = read_series(headers_of(studies[name]), pool=pool).hu
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name in names:
        np.testing.assert_array_equal(out[name], studies[name].volume.hu.astype(np.float32))


def test_closed_pool_ends_helpers_and_still_decodes(studies: dict[str, WrittenStudy]) -> None:
    own = DecodePool(2)
    own.start(wait=True)
    pids = own.pids
    own.close()
    assert not set(pids) & child_pids()
    study = studies["jpeg_ls"]
    series = read_series(headers_of(study), pool=own)  # decoded by the caller alone
    np.testing.assert_array_equal(series.hu, study.volume.hu.astype(np.float32))
    assert not own.pids


def test_default_workers_follow_affinity() -> None:
    assert default_workers() == len(os.sched_getaffinity(0))


def test_preferred_plugins_are_installed() -> None:
    """Every preference names pydicom plugins; the dependencies provide the first ones."""
    for ts, preferred in PLUGIN_PREFERENCE.items():
        assert decoding_plugin(ts) == preferred[0], ts.name


def test_pool_needs_a_helper() -> None:
    with pytest.raises(ValueError, match="at least one helper"):
        DecodePool(0)


def _holder_of(pool: DecodePool, path: Path) -> int | None:
    """The helper that has ``path`` open (reading it), from /proc."""
    for pid in pool.pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if fd.readlink() == path:
                        return pid
    return None


@pytest.mark.parametrize("deaths", [1, 2])
def test_helper_killed_in_the_middle_of_a_slice(
    tmp_path: Path, studies: dict[str, WrittenStudy], deaths: int
) -> None:
    """A helper dying on a slice (a codec crash, the OOM killer) costs that slice one more
    try in another helper; a slice that kills two helpers fails the series by its number,
    and no other slice is lost or decoded twice.

    The slice is a FIFO, so a helper blocks on it for as long as the test wants: the test
    opens its other end (without writing), kills whichever helper holds it open, then (one
    death) puts the real file in its place.
    """
    study = studies["jpeg2000"]
    paths = list(study.main.files)  # written in slice order
    bad = 5
    real = tmp_path / "real.dcm"
    real.write_bytes(paths[bad].read_bytes())
    fifo = tmp_path / "slice.dcm"
    os.mkfifo(fifo)
    paths[bad] = fifo
    kills: list[int] = []
    done = threading.Event()

    def killer() -> None:
        while not done.wait(0.01):
            try:  # succeeds once a helper waits in open(): it then blocks in read()
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                pid = None
                while pid is None and not done.wait(0.01):
                    pid = _holder_of(own, fifo)
                if pid is None:
                    return
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)
            finally:
                os.close(writer)
            if len(kills) == deaths == 1:
                fifo.unlink()
                real.rename(fifo)  # the retry reads the real slice
            if len(kills) == deaths:
                return

    with DecodePool(2) as own:
        own.start(wait=True)
        rows, cols = study.volume.hu.shape[1:]
        t = threading.Thread(target=killer, daemon=True)
        t.start()
        try:
            if deaths == 1:
                out = decode_series(paths, rows, cols, pool=own)
                np.testing.assert_array_equal(out.hu, study.volume.hu.astype(np.float32))
            else:
                with pytest.raises(
                    SeriesError, match=r"slice 6 of 12: its decoder process died twice"
                ):
                    decode_series(paths, rows, cols, pool=own)
        finally:
            done.set()
            t.join(5)
        assert len(kills) == deaths
        assert all(pid not in own.pids for pid in kills)
