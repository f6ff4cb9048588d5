"""The bad-input corpus: seeded, generated in the test, each kind with its defined outcome.

Why a corpus and not one test per defect: the node's promise is that *every* input ends
in a defined outcome (a DICOM failure status, or stored and the study ``skipped`` or
``failed`` with a reason), and that is only credible over many kinds sent to one running
node, which must still answer C-ECHO afterwards and hold everything it acknowledged.

Each :class:`Kind` is what a sender would produce (files on disk, for ``classify``, and
the C-STOREs they become on the wire) and the outcome the node must give. Malformed
datasets are sent by :func:`send_raw` (pynetdicom's SCU in chunked mode: the bytes go on
the wire as they are, never decoded or fixed); well-formed files by dcmtk ``storescu``.
Every file pydicom ships (``get_testdata_files``: the installed ones only, nothing is
downloaded) is a kind of its own.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from ctfactory import ct_dataset, write_series
from nodes import DCMCJPEG, NODE_AET, run_tool, storescu
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGExtended12Bit,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config

SUCCESS = 0x0000
MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
#: ``send_raw``'s answer when the node accepted no presentation context for the item.
NO_CONTEXT = -1
#: ``send_raw``'s answer when the association itself was refused or dropped.
NO_ASSOCIATION = -2
#: storescu's outcome for a file it could not read or send (nothing reached the node).
NOT_SENT = -3
#: ``send_raw``'s answer when the receiver aborted or dropped the association instead of
#: answering the C-STORE.
ABORTED = -4
TERMINAL = ("done", "skipped", "failed")


def status_text(status: int | None) -> str:
    if status is None:
        return "-"
    if status == NO_CONTEXT:
        return "no context accepted"
    if status == NO_ASSOCIATION:
        return "association refused"
    if status == NOT_SENT:
        return "not sent (storescu cannot read it)"
    if status == ABORTED:
        return "aborted, no response"
    return {SUCCESS: "0x0000 Success"}.get(status, f"0x{status:04X}")


@dataclass(frozen=True)
class Wire:
    """One C-STORE as it travels: the command's Affected SOP Class/Instance UID, the
    transfer syntax of its presentation context, and the dataset bytes (no File Meta)."""

    sop_class: str
    sop_uid: str
    transfer_syntax: str
    body: bytes


@dataclass
class Kind:
    """One kind of input and its defined outcome.

    ``status``: the C-STORE status every item must get (``None``: not checked here, e.g.
    pydicom's files, whose statuses are checked against :data:`DEFINED_STATUSES`).
    ``state``/``reason``: the study's final state and a regex its reason must match.
    ``classify``: a regex the ``classify`` outcome text must match.
    """

    name: str
    what: str
    files: list[Path]
    wire: list[Wire] = field(default_factory=list)
    use_storescu: bool = False
    #: extra storescu options (what a modality holding such files would propose)
    storescu_args: tuple[str, ...] = ()
    study_uid: str | None = None
    status: int | None = None
    state: str | None = None
    reason: str | None = None
    #: regex the node's logged reason for each failure status must match
    refusal: str | None = None
    classify: str | None = None
    from_pydicom: bool = False


DEFINED_STATUSES = frozenset({SUCCESS, MISMATCH, CANNOT_UNDERSTAND, NO_CONTEXT, NOT_SENT})


# -- building blocks ------------------------------------------------------------------------


def head_volume(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """A skull-and-brain disc in HU with a little noise (enough for a plausible CT)."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    img = np.where(r < 0.8, 35.0, -1000.0)
    img = np.where((r >= 0.8) & (r < 0.9), 1200.0, img)
    vol = np.repeat(img[None], n, axis=0) + rng.normal(0, 3, (n, size, size))
    return np.clip(vol, -1024, 3000)


def meta_of(path: Path) -> tuple[FileMetaDataset, int]:
    """File Meta of a Part 10 file and the offset of its dataset."""
    data = path.read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=[])
    meta_len = int(ds.file_meta.FileMetaInformationGroupLength)
    return ds.file_meta, 128 + 4 + 12 + meta_len


def wire_of(path: Path, body: bytes | None = None) -> Wire:
    """The C-STORE a Part 10 file becomes (its dataset bytes, or ``body`` instead)."""
    meta, offset = meta_of(path)
    return Wire(
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
        path.read_bytes()[offset:] if body is None else body,
    )


def _part10_prefix(sop_class: str, sop_uid: str, ts: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(ts)
    ds = Dataset()
    ds.file_meta = meta
    buf = io.BytesIO()
    with _lenient():
        ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    # up to the end of group 0002 only: an empty dataset in a deflated syntax is 2 bytes
    return data[: 128 + 4 + 12 + int.from_bytes(data[140:144], "little")]


@contextmanager
def _lenient() -> Iterator[None]:
    """pydicom writes and reads values as given (hostile UIDs must reach the wire), and
    its other warnings (implicit VR under an explicit syntax...) do not become errors
    under pytest's filterwarnings and change what is sent."""
    settings = pydicom.config.settings
    old = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = old


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lenient():
        ds.save_as(path, enforce_file_format=True)
    return path


# -- the sender -----------------------------------------------------------------------------


def send_raw(port: int, item: Wire, scratch: Path, calling: str = "BADINPUT") -> int:
    """Send one dataset's bytes exactly as given; returns the status (or NO_CONTEXT,
    NO_ASSOCIATION). pynetdicom's chunked mode streams the bytes after a File Meta it
    reads for the command's UIDs: the body is never parsed on this side."""
    return send_raw_answer(port, item, scratch, calling)[0]


def send_raw_answer(
    port: int, item: Wire, scratch: Path, calling: str = "BADINPUT"
) -> tuple[int, str]:
    """:func:`send_raw`, with the response's Error Comment (0000,0902; "" if none)."""
    path = scratch / "wire.dcm"
    path.write_bytes(_part10_prefix(item.sop_class, item.sop_uid, item.transfer_syntax) + item.body)
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(item.sop_class, item.transfer_syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        # pynetdicom aborts an association in which no context was accepted, and on that
        # path may leave its socket open: closed here (a ResourceWarning otherwise)
        sock = getattr(assoc.dul.socket, "socket", None)
        if sock is not None:
            sock.close()
        return (NO_CONTEXT if assoc.is_aborted and not assoc.is_rejected else NO_ASSOCIATION), ""
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
    except ValueError:  # "No presentation context for ..."
        assoc.release()
        return NO_CONTEXT, ""
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    assoc.release()
    if "Status" not in status:
        return ABORTED, ""  # no response: aborted, dropped or timed out
    return int(status.Status), str(status.get("ErrorComment", "") or "")


_STORESCU_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def send_storescu(port: int, files: Sequence[Path], args: Sequence[str] = ()) -> list[str]:
    """Send ``files`` with dcmtk storescu over one association; the response per file
    as storescu prints it ("Success", or the failure it names), or "not sent" for a
    file storescu itself could not read or send."""
    proc = storescu(port, list(files), extra=("--no-halt", *args))
    out = proc.stdout + proc.stderr
    responses = []
    for chunk in re.split(r"Sending file: ", out)[1:]:
        found = _STORESCU_RESPONSE.search(chunk)
        responses.append(found.group(1) if found else "not sent")
    return responses


def _whole_file(path: Path, command: Wire) -> Wire:
    """A file's every byte (preamble and magic included, or their absence) as the
    dataset of a C-STORE under ``command``'s UIDs: a sender that forwards files
    verbatim."""
    return Wire(command.sop_class, command.sop_uid, command.transfer_syntax, path.read_bytes())


# -- the corpus -----------------------------------------------------------------------------


def build_corpus(root: Path, seed: int = 13) -> list[Kind]:
    """Write every kind's files under ``root`` and return the kinds (seeded)."""
    with _lenient():
        return _build(root, seed) + pydicom_kinds()


def _build(root: Path, seed: int) -> list[Kind]:
    rng = np.random.default_rng(seed)
    kinds: list[Kind] = []
    n, size = 12, 32

    def series(name: str, **kwargs: Any) -> tuple[str, list[Path]]:
        study = generate_uid()
        vol = kwargs.pop("volume", None)
        if vol is None:
            vol = head_volume(rng, kwargs.pop("n", n), kwargs.pop("size", size))
        paths, _ = write_series(root / name, vol, study_uid=study, **kwargs)
        return study, paths

    def add(**kw: Any) -> Kind:
        kind = Kind(**kw)
        kinds.append(kind)
        return kind

    def one_bad_slice(name: str, change: Callable[[Dataset], None], **kw: Any) -> None:
        study, paths = series(name)
        bad = pydicom.dcmread(paths[5])
        change(bad)
        save(bad, paths[5])
        add(name=name, files=paths, use_storescu=True, study_uid=study, status=SUCCESS, **kw)

    # ---- well-formed CT, the reference: read and classified
    study, paths = series("valid_series")
    add(name="valid_series", what=f"valid axial head CT, {n} slices {size}x{size} (reference)",
        files=paths, use_storescu=True, study_uid=study, status=SUCCESS, state="done",
        classify="findings")  # fmt: skip

    # ---- file-level damage
    study, paths = series("truncated_header")
    _, off = meta_of(paths[0])
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: off + 40])
    add(name="truncated_header", what="file cut 40 bytes into the dataset (before the UIDs)",
        files=[paths[0]], wire=[wire_of(paths[0])], status=CANNOT_UNDERSTAND,
        refusal="is missing|undecodable", classify="unreadable")  # fmt: skip
    for p in paths[1:]:
        p.unlink()

    study, paths = series("truncated_pixels")
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) - 700])
    add(name="truncated_pixels", what="one slice of 12 cut inside its Pixel Data",
        files=paths, wire=[wire_of(p) for p in paths], study_uid=study, status=SUCCESS,
        state="failed", reason=r"slice \d+ of 12", classify="failed")  # fmt: skip

    study, paths = series("no_preamble")
    command = wire_of(paths[0])
    for p in paths:
        p.write_bytes(p.read_bytes()[128:])  # starts at "DICM"
    add(name="no_preamble", what="Part 10 files without the 128-byte preamble (start at "
        "DICM); storescu, then the whole file sent raw as the dataset", files=paths,
        use_storescu=True, wire=[_whole_file(paths[0], command)], study_uid=study, status=None,
        classify="unreadable")  # fmt: skip

    study, paths = series("wrong_magic")
    command = wire_of(paths[0])
    for p in paths:
        data = p.read_bytes()
        p.write_bytes(data[:128] + b"DICN" + data[132:])
    add(name="wrong_magic", what="preamble present but 'DICN' instead of 'DICM'; "
        "storescu, then the whole file sent raw as the dataset", files=paths,
        use_storescu=True, wire=[_whole_file(paths[0], command)], study_uid=study, status=None,
        classify="unreadable")  # fmt: skip

    study, paths = series("bare_dataset")
    for p in paths:
        _, off = meta_of(p)
        p.write_bytes(p.read_bytes()[off:])  # no preamble, no File Meta
    add(name="bare_dataset", what="datasets without preamble or File Meta (old archives)",
        files=paths, use_storescu=True, study_uid=study, status=SUCCESS, state="done",
        classify="findings")  # fmt: skip

    # ---- not DICOM at all, sent as a dataset
    folder = root / "non_dicom"
    folder.mkdir()
    blobs = {
        "random.bin": rng.bytes(4096),
        "page.html": b"<html><body>not an image</body></html>\n" * 20,
        "zeros.bin": bytes(1024),
        "empty.bin": b"",
        "png.png": b"\x89PNG\r\n\x1a\n" + rng.bytes(512),
    }
    wires = []
    files = []
    for fname, blob in blobs.items():
        (folder / fname).write_bytes(blob)
        files.append(folder / fname)
        wires.append(Wire(str(CTImageStorage), generate_uid(), str(ExplicitVRLittleEndian), blob))
    add(name="non_dicom_bytes", what="random, HTML, zero, empty and PNG bytes as CT datasets",
        files=files, wire=wires, status=CANNOT_UNDERSTAND, refusal="not a DICOM dataset",
        classify="unreadable")  # fmt: skip

    wires = [Wire(str(CTImageStorage), generate_uid(), str(DeflatedExplicitVRLittleEndian),
                  rng.bytes(800))]  # fmt: skip
    add(name="bad_deflate", what="Deflated transfer syntax, body not a deflate stream",
        files=[], wire=wires, status=CANNOT_UNDERSTAND,
        refusal="corrupt deflate stream")  # fmt: skip

    # ---- UIDs
    for name, bad_uid in (
        ("uid_slash", "1.2.3/../../etc"),
        ("uid_dotdot", "1.2..3"),
        ("uid_space", "1.2.3 4.5"),
        ("uid_too_long", "1.2." + "1234567890." * 6 + "1"),
        ("uid_letters", "1.2.abc.4"),
    ):
        study, paths = series(name)
        ds = pydicom.dcmread(paths[0])
        ds.StudyInstanceUID = bad_uid
        save(ds, paths[0])
        for p in paths[1:]:
            p.unlink()
        add(name=name, what=f"Study Instance UID {bad_uid!r}", files=[paths[0]],
            wire=[wire_of(paths[0])], status=CANNOT_UNDERSTAND,
            refusal="Study Instance UID is not a UID", classify="skipped")  # fmt: skip
    study, paths = series("sop_uid_mismatch")
    w = wire_of(paths[0])
    add(name="sop_uid_mismatch", what="dataset's SOP Instance UID differs from the command's",
        files=[], wire=[Wire(w.sop_class, generate_uid(), w.transfer_syntax, w.body)],
        status=CANNOT_UNDERSTAND, refusal="SOP Instance UID differs")  # fmt: skip
    add(name="sop_class_mismatch", what="command says MR Image Storage, dataset is CT",
        files=[], wire=[Wire(str(MRImageStorage), w.sop_uid, w.transfer_syntax, w.body)],
        status=MISMATCH, refusal="SOP Class UID differs")  # fmt: skip
    ds = pydicom.dcmread(paths[1])
    del ds.StudyInstanceUID
    save(ds, paths[1])
    add(name="missing_study_uid", what="CT dataset without Study Instance UID",
        files=[paths[1]], wire=[wire_of(paths[1])], status=CANNOT_UNDERSTAND,
        refusal="Study Instance UID is missing", classify="unreadable")  # fmt: skip
    for p in paths[2:] + paths[:1]:
        p.unlink()

    # ---- pixel module damage
    study, paths = series("no_pixel_data")
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.PixelData
        save(ds, p)
    add(name="no_pixel_data", what="CT series whose datasets carry no Pixel Data",
        files=paths, use_storescu=True, study_uid=study, status=SUCCESS, state="failed",
        reason="pixel", classify="failed")  # fmt: skip

    def bits_allocated(ds: Dataset) -> None:
        ds.BitsAllocated = 8

    one_bad_slice("bits_allocated_8", bits_allocated,
                  what="one slice says BitsAllocated 8 over 16-bit pixel data",
                  state="failed", reason=r"slice \d+ of 12", classify="failed")  # fmt: skip

    def bits_stored(ds: Dataset) -> None:
        ds.BitsStored, ds.HighBit = 20, 19

    one_bad_slice("bits_stored_20", bits_stored,
                  what="one slice says BitsStored 20 > BitsAllocated 16",
                  state="failed", reason=r"slice \d+ of 12", classify="failed")  # fmt: skip

    def short_pixels(ds: Dataset) -> None:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]

    one_bad_slice("pixel_data_short", short_pixels,
                  what="one slice's Pixel Data half as long as Rows x Columns x 2",
                  state="failed", reason=r"slice \d+ of 12", classify="failed")  # fmt: skip

    def more_rows(ds: Dataset) -> None:
        ds.Rows = 64

    one_bad_slice("rows_lie", more_rows,
                  what="one slice says Rows 64 over 32 rows of pixels",
                  state="skipped", reason=r"size", classify="skipped.*size")  # fmt: skip

    study = generate_uid()
    series_uid = generate_uid()
    a, _ = write_series(root / "mixed_sizes", head_volume(rng, 6, 32), study_uid=study,
                        series_uid=series_uid)  # fmt: skip
    b, _ = write_series(root / "mixed_sizes" / "b", head_volume(rng, 6, 48), study_uid=study,
                        series_uid=series_uid, order=None)  # fmt: skip
    for k, p in enumerate(b):  # continue the stack above the first half
        ds = pydicom.dcmread(p)
        ds.ImagePositionPatient = [0.0, 0.0, 30.0 + 5.0 * k]
        save(ds, p)
    add(name="mixed_sizes", what="one series: 6 slices 32x32 then 6 slices 48x48",
        files=a + b, use_storescu=True, study_uid=study, status=SUCCESS, state="skipped",
        reason="size", classify="skipped")  # fmt: skip

    # ---- study shapes
    study, paths = series("single_slice", n=1)
    add(name="single_slice", what="a study of one CT slice", files=paths, use_storescu=True,
        study_uid=study, status=SUCCESS, state="skipped", reason=r"only 1 slices",
        classify="skipped")  # fmt: skip
    study, paths = series("slices_1000", n=1000, spacing=0.5, thickness=0.5)
    add(name="slices_1000", what="one series of 1,000 slices 32x32, 0.5 mm apart",
        files=paths, use_storescu=True, study_uid=study, status=SUCCESS, state="done",
        classify="findings")  # fmt: skip
    study, paths = series("same_position")
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]
        save(ds, p)
    add(name="same_position", what=f"{n} slices all at one position",
        files=paths, use_storescu=True, study_uid=study, status=SUCCESS, state="skipped",
        reason="slices", classify="skipped")  # fmt: skip

    # ---- not what the model reads
    study, paths = series("modality_mr", modality="MR")
    add(name="ct_class_modality_mr", what="CT Image Storage objects saying Modality MR",
        files=paths, use_storescu=True, study_uid=study, status=SUCCESS, state="skipped",
        reason="MR", classify="skipped")  # fmt: skip
    study, mr_series = generate_uid(), generate_uid()
    mr_paths = []
    for k in range(n):
        ds = ct_dataset(head_volume(rng, 1, size)[0], study_uid=study, series_uid=mr_series,
                        position=(0, 0, 5.0 * k), instance=k + 1, modality="MR")  # fmt: skip
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        mr_paths.append(save(ds, root / "mr" / f"MR{k:03d}.dcm"))
    add(name="mr_image_storage", what="an MR Image Storage series", files=mr_paths,
        use_storescu=True, study_uid=study, status=SUCCESS, state="skipped", reason="MR",
        classify="skipped")  # fmt: skip
    study = generate_uid()
    sc = ct_dataset(head_volume(rng, 1, size)[0], study_uid=study, series_uid=generate_uid(),
                    modality="OT")  # fmt: skip
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    sc.ConversionType = "WSD"
    sc_path = save(sc, root / "sc" / "SC.dcm")
    add(name="secondary_capture", what="a Secondary Capture image alone", files=[sc_path],
        use_storescu=True, study_uid=study, status=SUCCESS, state="skipped",
        reason="Secondary Capture|not CT", classify="skipped")  # fmt: skip
    study, paths = series("localizer", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    add(name="localizer", what="ImageType ORIGINAL\\PRIMARY\\LOCALIZER series", files=paths,
        use_storescu=True, study_uid=study, status=SUCCESS, state="skipped",
        reason="LOCALIZER|localizer", classify="skipped")  # fmt: skip
    study, paths = series("sagittal_reformat", orientation=(0, 1, 0, 0, 0, -1),
                          image_type=("DERIVED", "SECONDARY", "MPR"))  # fmt: skip
    add(name="sagittal_reformat", what="DERIVED\\SECONDARY\\MPR sagittal series", files=paths,
        use_storescu=True, study_uid=study, status=SUCCESS, state="skipped",
        reason="reformat|MPR", classify="skipped")  # fmt: skip
    study, paths = series("coronal_original", orientation=(1, 0, 0, 0, 0, -1))
    add(name="coronal_original", what="ORIGINAL\\PRIMARY\\AXIAL typed, coronal geometry",
        files=paths, use_storescu=True, study_uid=study, status=SUCCESS, state="skipped",
        reason="axial|coronal", classify="skipped")  # fmt: skip
    tilt = np.deg2rad(20.0)
    tilted = (1, 0, 0, 0, float(np.cos(tilt)), float(-np.sin(tilt)))
    study, paths = series("gantry_tilt_20", orientation=tilted)
    add(name="gantry_tilt_20", what="axial series acquired with 20 degrees gantry tilt",
        files=paths, use_storescu=True, study_uid=study, status=SUCCESS, state="done",
        classify="findings")  # fmt: skip
    tilt = np.deg2rad(60.0)
    tilted = (1, 0, 0, 0, float(np.cos(tilt)), float(-np.sin(tilt)))
    study, paths = series("gantry_tilt_60", orientation=tilted)
    add(name="tilt_60_degrees", what="orientation 60 degrees off axial", files=paths,
        use_storescu=True, study_uid=study, status=SUCCESS, state="skipped",
        reason="axial", classify="skipped")  # fmt: skip
    study, paths = series("nan_position")
    ds = pydicom.dcmread(paths[4])
    ds["ImagePositionPatient"].value = ["nan", "0", "0"]
    save(ds, paths[4])
    add(name="nan_position", what="one slice's ImagePositionPatient holds NaN", files=paths,
        use_storescu=True, study_uid=study, status=SUCCESS, state="skipped",
        reason="(?i)position", classify="(?i)skipped.*position")  # fmt: skip

    # ---- patient data pydicom would quote if it validated it (must never reach a log)
    study, paths = series("invalid_patient_module")
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PatientName = f"{ds.PatientName}{'X' * 80}^\\bad"  # over-long, backslash
        ds.PatientID = f"{ds.PatientID}{'9' * 80}"  # LO over 64 characters
        ds.PatientBirthDate = "00000000"  # written by real modalities for "unknown"
        ds.PatientSex = "Male"
        ds.StudyDate = "2024-01-02"
        ds.AccessionNumber = "ACC" * 10
        save(ds, p)
    add(name="invalid_patient_module", what="valid CT series whose PatientName (over-long, "
        "two values), PatientID, birth date 00000000, sex 'Male', study date and accession "
        "break their VRs",
        files=paths, use_storescu=True, study_uid=study, status=SUCCESS, state="done",
        classify="findings")  # fmt: skip

    # ---- private tags
    study, paths = series("long_private_tag")
    for p in paths:
        ds = pydicom.dcmread(p)
        block = ds.private_block(0x0019, "BADINPUT TEST", create=True)
        block.add_new(0x10, "OB", rng.bytes(4 << 20))
        block.add_new(0x11, "LT", "x" * 60000)
        save(ds, p)
    add(name="long_private_tag", what="each slice has a 4 MiB private OB and a 60 kB LT "
        "before the UIDs (group 0019)", files=paths, use_storescu=True, study_uid=study,
        status=SUCCESS, state="done", classify="findings")  # fmt: skip
    study, paths = series("private_length_lie")
    w = wire_of(paths[0])
    # (0019,1010) OB declared 2 GiB long, sitting before (0020,000D): the UIDs are unreachable
    at = w.body.find(b"\x20\x00\x0d\x00")
    lie = b"\x19\x00\x10\x00OB\x00\x00" + (0x7FFFFFF0).to_bytes(4, "little") + bytes(16)
    body = w.body[:at] + b"\x19\x00\x10\x00LO\x0e\x00BADINPUT TEST " + lie
    add(name="private_length_lie", what="private OB element declaring 2 GiB, data ends after "
        "16 bytes", files=[], wire=[Wire(w.sop_class, w.sop_uid, w.transfer_syntax, body)],
        status=CANNOT_UNDERSTAND, refusal="undecodable|is missing")  # fmt: skip
    for p in paths:
        p.unlink()

    # ---- compression
    study, paths = series("jpeg_extended_12bit")
    for p in paths:
        out = p.with_suffix(".jpx.dcm")
        run_tool([DCMCJPEG, "+ee", "+un", str(p), str(out)])
        p.unlink()
        out.rename(p)
    ts = str(pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert ts == JPEGExtended12Bit, ts
    add(name="jpeg_extended_12bit_ct", what="CT series in JPEG Extended (Process 2 & 4) "
        "12-bit, made by dcmcjpeg +ee (storescu -xx)", files=paths, use_storescu=True,
        storescu_args=("-xx",), study_uid=study,
        status=SUCCESS, state="done", classify="findings")  # fmt: skip
    study, paths = series("deflate_garbage_inside")
    w = wire_of(paths[0])
    good = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = good.compress(w.body[:200]) + good.flush()
    add(name="deflate_truncated", what="Deflated dataset whose stream ends inside the header",
        files=[], wire=[Wire(w.sop_class, w.sop_uid, str(DeflatedExplicitVRLittleEndian),
                             stream)], status=CANNOT_UNDERSTAND,
        refusal="undecodable|is missing")  # fmt: skip
    for p in paths:
        p.unlink()

    return kinds


def pydicom_kinds() -> list[Kind]:
    """One kind per file pydicom ships (installed ones; nothing downloaded).

    ``get_testdata_files`` also lists the folders (``dicomdirtests``...): their files are
    listed too and each is a kind; a folder is not something a sender could send.
    """
    base = Path(pydicom.__file__).parent / "data" / "test_files"
    out = []
    for name in sorted(get_testdata_files()):
        path = Path(name)
        if path.is_dir():
            continue
        rel = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
        out.append(Kind(name=f"pydicom:{rel}", what="file shipped with pydicom",
                        files=[path], wire=[pydicom_wire(path)], from_pydicom=True))  # fmt: skip
    return out


def pydicom_wire(path: Path) -> Wire:
    """The C-STORE a shipped file becomes: a Part 10 file's dataset under its File Meta's
    UIDs and transfer syntax; anything else (bare datasets, text, archives) is sent
    whole as a CT Image Storage dataset in Explicit VR Little Endian, as a broken
    sender would."""
    data = path.read_bytes()
    try:
        meta, offset = meta_of(path)
        parts = (meta.get("MediaStorageSOPClassUID"), meta.get("MediaStorageSOPInstanceUID"),
                 meta.get("TransferSyntaxUID"))  # fmt: skip
    except Exception:  # noqa: BLE001 - anything that is not a readable Part 10 header
        meta, offset, parts = None, 0, (None, None, None)
    if all(parts):
        return Wire(str(parts[0]), str(parts[1]), str(parts[2]), data[offset:])
    # a File Meta without the command's UIDs: take them from the dataset, as a sender would
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        sop_class, sop_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except Exception:  # noqa: BLE001
        sop_class, sop_uid = str(CTImageStorage), generate_uid()
    return Wire(sop_class or str(CTImageStorage), sop_uid or generate_uid(),
                str(parts[2] or ExplicitVRLittleEndian), data[offset:])  # fmt: skip


# -- the node's process -----------------------------------------------------------------------


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, from /proc (Linux)."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def echo(port: int) -> bool:
    proc = subprocess.run(
        ["/usr/bin/echoscu", "-aec", NODE_AET, "127.0.0.1", str(port)],
        capture_output=True, timeout=60, check=False, env={**os.environ},
    )  # fmt: skip
    return proc.returncode == 0
