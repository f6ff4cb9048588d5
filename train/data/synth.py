"""Phantom data sets laid out exactly like the RSNA 2019 and CQ500 downloads.

Neither data set may be downloaded here, so every reader is tested, and every command
can be tried end to end, on trees built from ``train.data.phantoms`` in the published
layouts, including the defects the real data sets carry:

RSNA (``synth_rsna``): ``stage_2_train.csv`` (``ID,Label``; six rows per image in
Kaggle's order, images shuffled, some images' rows repeated), one flat
``stage_2_train/`` folder of ``ID_<9 hex>.dcm`` files (names hashed from the SOP
Instance UID, so file order says nothing about slice order), a few truncated files
(one cut inside the header, one inside the pixel data), one study shorter than the
training window, Kaggle's ``ID_<hex>`` strings in place of Study/Series/SOP Instance
UIDs, studies with the RSNA pixel quirk (unsigned 12-bit, intercept 0,
negative HU stored as 12-bit two's complement), some patients with two studies,
``stage_2_test/`` with ``stage_2_sample_submission.csv``, and optionally a
``stage_1_train.csv`` list for the reference split.

CQ500 (``synth_cq500``): ``reads.csv`` with the published columns (``name, Category``
and 14 columns per reader R1..R3), folders
``[CQ500-CT-<n>/]CQ500CT<n> CQ500CT<n>/Unknown Study/<description>/CT*.dcm`` with the
outer folder missing for odd ``n``, and per scan a soft-tissue 5 mm series ("CT 5mm"),
a soft-tissue thin series ("CT PLAIN THIN"), a bone-kernel thin series ("CT BONE") and
for every third scan a localizer ("SCOUT"); reader marks disagree now and then, so the
2-of-3 rule matters.

Each writer returns, and saves as ``synth-truth.json``, what it did: the ground truth a
test compares the readers against.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.uid import UID
from tqdm import tqdm

from models.labels import LABELS
from models.uids import derived_uid
from train.data import cq500, rsna
from train.data.phantoms import PhantomSpec, WrittenStudy, random_spec, write_study
from train.data.scan import lenient_dicom

TRUTH_JSON = "synth-truth.json"
#: Phantom seeds of data set ``seed`` start at ``seed * SEED_STRIDE``: seeds never overlap.
SEED_STRIDE = 100_003
#: ``stored_to_hu`` wraps 12-bit values >= 4096 - 1000; quirk files therefore hold
#: HU >= -1000 only (as the RSNA files do: air at about -1000).
QUIRK_MIN_HU = -1000


def _uid(*parts: object) -> str:
    """A deterministic ``2.25`` UID (PS3.5 B.2) from ``parts``.

    (``generate_uid(prefix=None, entropy_srcs=...)`` ignores its sources and is random.)
    """
    return derived_uid("synth", *map(str, parts))


def _hex_id(rng: np.random.Generator, n: int = 10) -> str:
    return "ID_" + "".join(rng.choice(list("0123456789abcdef"), size=n))


def write_quirk_file(path: Path, hu: NDArray[np.integer]) -> None:
    """Rewrite ``path`` with the RSNA pixel quirk, keeping every other attribute.

    Stored values are HU modulo 4096 in 12 bits (two's complement for negative HU) while
    the header says unsigned 12-bit with intercept 0: read naively, air comes out near
    +3096 HU. ``models.dicom_io.stored_to_hu`` detects and wraps them back.
    """
    ds = pydicom.dcmread(path)
    _set_quirk_pixels(ds, hu)
    ds.save_as(path, enforce_file_format=True)


def _set_quirk_pixels(ds: pydicom.Dataset, hu: NDArray[np.integer]) -> None:
    stored = np.mod(np.clip(hu.astype(np.int32), QUIRK_MIN_HU, 3071), 4096).astype("<u2")
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.PixelData = stored.tobytes()


def kaggle_identifiers(
    path: Path, study_id: str, series_id: str, quirk_hu: NDArray[np.integer] | None = None
) -> None:
    """Give ``path`` the identifiers of the Kaggle release, optionally with the quirk.

    The published RSNA files replace UIDs with ``ID_<hex>`` strings (not valid UIDs, PS3.5
    9.1): SOP Instance UID = the file's image id, Study and Series Instance UID = one
    ``ID_<10 hex>`` each. Readers must cope with that, so the phantoms do it too.
    """
    with lenient_dicom():
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = path.stem
        ds.file_meta.MediaStorageSOPInstanceUID = UID(path.stem)
        ds.StudyInstanceUID = study_id
        ds.SeriesInstanceUID = series_id
        if quirk_hu is not None:
            _set_quirk_pixels(ds, quirk_hu)
        ds.save_as(path, enforce_file_format=True)


def truncate(path: Path, where: str) -> None:
    """Make ``path`` unreadable: cut inside the header (``"header"``) or the pixels."""
    data = path.read_bytes()
    if where == "header":
        keep = 100  # inside the 128-byte preamble: not DICOM at all
    else:
        keep = len(data) - max(16, (len(data) // 3) & ~1)  # a third of the pixels missing
    path.write_bytes(data[:keep])


def _spec(seed: int, size: int, slices: tuple[int, int], p_bleed: float) -> PhantomSpec:
    return random_spec(seed, p_bleed, size=size, n_slices=slices)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


# ------------------------------------------------------------------------------------------
# RSNA
# ------------------------------------------------------------------------------------------


def synth_rsna(
    out: Path,
    studies: int,
    seed: int = 0,
    size: int = 512,
    *,
    slices: tuple[int, int] = (20, 40),
    test_studies: int = 2,
    short_slices: int = 6,
    quirk_studies: int = 1,
    unreadable: int = 2,
    duplicate_images: int = 3,
    p_bleed: float = 0.5,
    with_stage1: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a phantom RSNA download to ``out``; returns (and saves) its ground truth.

    ``studies`` train studies (the last one has ``short_slices`` slices when there are at
    least two), ``test_studies`` in ``stage_2_test``. ``unreadable`` train files are
    truncated (alternately in the header and in the pixel data); ``quirk_studies``
    studies carry the pixel quirk; ``duplicate_images`` images get their six CSV rows
    twice. ``with_stage1`` also writes ``stage_1_train.csv`` listing about 80% of the
    train studies (the rest plays stage-1 test).
    """
    if studies < 1:
        raise ValueError("studies must be >= 1")
    rng = np.random.default_rng([seed, 0x45A])
    train_dir, test_dir = out / "stage_2_train", out / "stage_2_test"
    train_dir.mkdir(parents=True, exist_ok=True)
    if test_studies:
        test_dir.mkdir(parents=True, exist_ok=True)
    short_index = studies - 1 if studies >= 2 and short_slices else -1
    quirk = [i for i in range(studies) if i != short_index][: max(0, quirk_studies)]
    truth: dict[str, Any] = {"layout": "rsna", "seed": seed, "size": size, "train": [], "test": []}
    patients: list[str] = []
    written: list[tuple[str, WrittenStudy]] = []
    total = studies + test_studies
    for i in tqdm(range(total), desc="synth rsna", disable=not progress):
        is_test = i >= studies
        spec = _spec(seed * SEED_STRIDE + i, size, slices, p_bleed)
        if i == short_index:
            spec = dataclasses.replace(spec, n_slices=short_slices)
        # Some patients come back: study 2 always reuses study 1's patient, others by chance.
        reuse = not is_test and i >= 2 and (i == 2 or rng.random() < 0.2)
        patient = patients[-1] if reuse else _hex_id(rng)
        patients.append(patient)
        spec = dataclasses.replace(spec, patient_id=patient, patient_name="ANONYMOUS")
        study_uid = _uid("rsna", seed, i)
        study = write_study(
            test_dir if is_test else train_dir,
            spec,
            layout="flat",
            shuffle_names=True,
            study_uid=study_uid,
            signed=bool(i % 2 == 0),
        )
        main = study.main
        assert main.slice_labels is not None
        study_id, series_id = _hex_id(rng), _hex_id(rng)
        for path, hu in zip(main.files, study.volume.hu, strict=True):
            kaggle_identifiers(path, study_id, series_id, hu if i in quirk else None)
        entry = {
            "study_uid": study_id,
            "patient_id": patient,
            "n_slices": len(main.files),
            "image_ids": [p.stem for p in main.files],  # inferior -> superior
            "slice_labels": main.slice_labels.tolist(),
            "study_labels": study.volume.study_labels.tolist(),
            "quirk": i in quirk,
            "short": i == short_index,
        }
        truth["test" if is_test else "train"].append(entry)
        written.append(("test" if is_test else "train", study))

    # Unreadable files: never in a quirk or short study, never the first slice of a study.
    candidates = [
        p
        for k, (part, study) in enumerate(written)
        if part == "train" and k not in quirk and k != short_index
        for p in study.main.files[1:]
    ]
    picks = rng.choice(len(candidates), size=min(unreadable, len(candidates)), replace=False)
    truth["unreadable"] = []
    for j, pick in enumerate(sorted(int(p) for p in picks)):
        where = "header" if j % 2 == 0 else "pixels"
        truncate(candidates[pick], where)
        truth["unreadable"].append({"image_id": candidates[pick].stem, "where": where})

    # Labels: images shuffled, six rows each in Kaggle's order, some images repeated.
    images = [
        (image_id, row)
        for e in truth["train"]
        for image_id, row in zip(e["image_ids"], e["slice_labels"], strict=True)
    ]
    order = rng.permutation(len(images))
    rows = [_rsna_rows(*images[k]) for k in order]
    n_dup = min(duplicate_images, len(images))
    for k in rng.choice(len(images), size=n_dup, replace=False):
        rows.insert(int(rng.integers(0, len(rows) + 1)), _rsna_rows(*images[int(k)]))
    truth["duplicate_rows"] = 6 * n_dup
    _write_csv(out / rsna.TRAIN_CSV, [r for block in rows for r in block])

    test_rows = [
        f"{image_id}_{name},0.5"
        for e in truth["test"]
        for image_id in e["image_ids"]
        for name in rsna.KAGGLE_ORDER
    ]
    if test_studies:
        _write_csv(out / rsna.SAMPLE_SUBMISSION_CSV, test_rows)

    if with_stage1 and studies >= 2:
        n_stage1 = min(studies - 1, max(1, round(0.8 * studies)))
        stage1 = sorted(int(k) for k in rng.choice(studies, size=n_stage1, replace=False))
        truth["stage1_train_studies"] = [truth["train"][k]["study_uid"] for k in stage1]
        _write_csv(
            out / rsna.STAGE1_CSV,
            [
                r
                for k in stage1
                for image_id, row in zip(
                    truth["train"][k]["image_ids"], truth["train"][k]["slice_labels"], strict=True
                )
                for r in _rsna_rows(image_id, row)
            ],
        )
    _write_json(out / TRUTH_JSON, truth)
    return truth


def _rsna_rows(image_id: str, labels: Sequence[int]) -> list[str]:
    return [f"{image_id}_{name},{int(labels[LABELS.index(name)])}" for name in rsna.KAGGLE_ORDER]


def _write_csv(path: Path, rows: Sequence[str]) -> None:
    path.write_text("ID,Label\n" + "".join(f"{r}\n" for r in rows))


# ------------------------------------------------------------------------------------------
# CQ500
# ------------------------------------------------------------------------------------------

THICK_DESCRIPTION = "CT 5mm"
THIN_DESCRIPTION = "CT PLAIN THIN"
BONE_DESCRIPTION = "CT BONE"
SCOUT_DESCRIPTION = "SCOUT"


def _reader_marks(
    truth: NDArray[np.uint8], rng: np.random.Generator, p_disagree: float
) -> NDArray[np.uint8]:
    """(3, 6) marks whose 2-of-3 majority is ``truth``: one reader may disagree once.

    Each reader's ICH (``any``) mark is the maximum of their own subtype marks, as a
    reader would fill the form; one dissenting reader can never move the majority.
    """
    marks = np.repeat(truth[None, :], 3, axis=0).astype(np.uint8)
    if rng.random() < p_disagree:
        reader = int(rng.integers(3))
        subtype = 1 + int(rng.integers(len(LABELS) - 1))
        marks[reader, subtype] ^= 1
    marks[:, 0] = marks[:, 1:].max(axis=1)
    return marks


def _reads_row(name: str, category: str, marks: NDArray[np.uint8], rng: np.random.Generator) -> str:
    cells = [name, category]
    finding_col = {f: LABELS.index(label) for f, label in cq500.FINDING_TO_LABEL.items()}
    for r in range(len(cq500.READERS)):
        bleed = int(marks[r, 0])
        for col in cq500.READ_COLUMNS:
            if col in finding_col:
                value = int(marks[r, finding_col[col]])
            elif col.startswith("BleedLocation"):
                value = bleed * int(rng.random() < 0.6)
            elif col in ("MassEffect", "MidlineShift"):
                value = bleed * int(rng.random() < 0.3)
            else:  # ChronicBleed and the fractures: not modelled by the phantoms
                value = 0
            cells.append(str(value))
    return ",".join(cells)


def _move_series(
    files: Sequence[Path],
    dest: Path,
    description: str,
    rng: np.random.Generator,
    series_number: int | None = None,
) -> None:
    """Move one written series into ``dest`` as CT<6 digits>.dcm in shuffled numbering,
    with the CQ500 series description (the folder name is the description, as unpacked)."""
    dest.mkdir(parents=True, exist_ok=True)
    numbers = rng.permutation(len(files))
    for path, number in zip(files, numbers, strict=True):
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = description
        if series_number is not None:
            ds.SeriesNumber = series_number
        ds.save_as(dest / f"CT{int(number):06d}.dcm", enforce_file_format=True)
        path.unlink()


def synth_cq500(
    out: Path,
    studies: int,
    seed: int = 0,
    size: int = 512,
    *,
    slices: tuple[int, int] = (24, 36),
    thin_mm: float = 1.25,
    p_bleed: float = 0.5,
    p_disagree: float = 0.3,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a phantom CQ500 download to ``out``; returns (and saves) its ground truth.

    Scan ``n`` is ``CQ500-CT-<n>``; even ``n`` keep the outer ``CQ500-CT-<n>`` folder,
    odd ``n`` do not. The thin series cover the same range as the 5 mm one with
    ``thin_mm`` spacing (at most 400 slices).
    """
    if studies < 1:
        raise ValueError("studies must be >= 1")
    if slices[0] < 10:
        raise ValueError("CQ500 thick series need >= 10 slices (series choice's minimum)")
    rng = np.random.default_rng([seed, 0xC0500])
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".synth-tmp"
    truth: dict[str, Any] = {"layout": "cq500", "seed": seed, "size": size, "scans": []}
    rows = []
    n_b1 = math.ceil(studies * 214 / 491)  # the published B1:B2 proportion
    for n in tqdm(range(studies), desc="synth cq500", disable=not progress):
        name = cq500.scan_name(n)
        spec = _spec(seed * SEED_STRIDE + n, size, slices, p_bleed)
        spec = dataclasses.replace(spec, patient_id=name, patient_name="ANONYMOUS")
        study_uid = _uid("cq500", seed, n)
        extra = ("bone_thin", "localizer") if n % 3 == 2 else ("bone_thin",)
        thick = write_study(
            tmp / "thick",
            spec,
            extra_series=extra,
            layout="tree",
            study_uid=study_uid,
            thin_slice_mm=thin_mm,
        )
        span = spec.slice_thickness_mm * (spec.n_slices - 1)
        n_thin = round(span / thin_mm) + 1
        if n_thin > 400:
            raise ValueError(f"thin_mm {thin_mm} gives {n_thin} slices (> 400); raise it")
        thin_spec = dataclasses.replace(spec, slice_thickness_mm=thin_mm, n_slices=n_thin)
        thin = write_study(tmp / "thin", thin_spec, layout="tree", study_uid=study_uid)
        outer = n % 2 == 0
        base = (out / name) if outer else out
        study_dir = base / f"CQ500CT{n} CQ500CT{n}" / "Unknown Study"
        series_files: dict[str, int] = {}
        for s in thick.series:
            desc = {
                "axial": THICK_DESCRIPTION,
                "bone_thin": BONE_DESCRIPTION,
                "localizer": SCOUT_DESCRIPTION,
            }[s.kind]
            _move_series(s.files, study_dir / desc, desc, rng)
            series_files[desc] = len(s.files)
        _move_series(thin.main.files, study_dir / THIN_DESCRIPTION, THIN_DESCRIPTION, rng, 4)
        series_files[THIN_DESCRIPTION] = len(thin.main.files)
        labels = thick.volume.study_labels
        marks = _reader_marks(labels, rng, p_disagree)
        rows.append(_reads_row(name, "B1" if n < n_b1 else "B2", marks, rng))
        truth["scans"].append(
            {
                "name": name,
                "study_uid": study_uid,
                "outer_folder": outer,
                "series": series_files,
                "chosen": THICK_DESCRIPTION,
                "thick_series_uid": thick.main.series_uid,
                "n_slices": len(thick.main.files),
                "labels": labels.tolist(),
                "readers": marks.tolist(),
            }
        )
    shutil.rmtree(tmp, ignore_errors=True)
    header = ["name", "Category"] + [f"{r}:{c}" for r in cq500.READERS for c in cq500.READ_COLUMNS]
    (out / cq500.READS_CSV).write_text(",".join(header) + "\n" + "".join(f"{r}\n" for r in rows))
    _write_json(out / TRUTH_JSON, truth)
    return truth
