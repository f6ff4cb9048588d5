"""The findings as an RGB Secondary Capture, for viewers that cannot render SR.

One 1024 x 1024 image (matplotlib, Agg backend, no display needed): a red banner "NOT
FOR DIAGNOSTIC USE", a "DEMO MODEL - PHANTOM-TRAINED" line for the demo checkpoint, the
key slices in the brain window (level 40, width 80 HU: METHOD.md "three windows"), two
lines on the input ("series used: <description> (<n> images)", slab averaging when a thin
series was averaged, "skipped: <n> (<reason>, ...)" for the study's other series, cut to
fit), the findings table (probability, threshold, decision) and the per-slice (per-slab)
probability curve, inferior to superior. No patient name or ID is drawn: the viewer shows
those from the header, and pixels cannot be de-identified later.

Marked DERIVED\\SECONDARY with BurnedInAnnotation YES (PS3.3 C.7.6.1.1.2, C.8.6.2),
BodyPartExamined copied from the source (without it dciodvfy asks for Laterality).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
from highdicom.sc import SCImage
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from dicom_node.results.codes import FINDINGS
from dicom_node.results.common import (
    MANUFACTURER,
    SC_SERIES_NUMBER,
    AlgorithmInfo,
    ReportError,
    ResultUIDs,
    check_sources,
    identity_header,
    mark_processing_algorithm,
    predecessors,
)
from dicom_node.store.series_outcome import (
    SeriesOutcome,
    chosen_of,
    images,
    shorten,
    skipped_summary,
)
from models.dicom_io import CTSeries
from models.labels import LABELS
from models.predict import SeriesPrediction

#: Output size in pixels (square); large enough to read the table on a PACS monitor.
SIZE: Final = 1024
_DPI: Final = 100
#: Brain window (level, width) in HU, METHOD.md "Three windows".
BRAIN_WINDOW: Final = (40.0, 80.0)
MAX_KEY_SLICES: Final = 4
BANNER: Final = "NOT FOR DIAGNOSTIC USE"
DEMO_LINE: Final = "DEMO MODEL - PHANTOM-TRAINED"
_COLORS: Final = ("black", "tab:purple", "tab:red", "tab:blue", "tab:green", "tab:orange")
#: Longest input line kept before it is measured: enough for any line that can fit.
INPUT_LINE_CHARS: Final = 200


def brain_window(hu: NDArray[np.float32]) -> NDArray[np.float32]:
    """HU clipped to the brain window and scaled to [0, 1]."""
    level, width = BRAIN_WINDOW
    lo = level - width / 2
    out: NDArray[np.float32] = np.clip((hu.astype(np.float32) - lo) / width, 0.0, 1.0)
    return out


def key_slice_indices(prediction: SeriesPrediction, k: int = MAX_KEY_SLICES) -> list[int]:
    """Slices to show: the best slice of each present finding (``any`` first), then more
    of ``any``'s best; with nothing present, the slices with the highest p(any)."""
    chosen: list[int] = []
    present = prediction.present
    for i, label in enumerate(LABELS):
        if present[i]:
            best = prediction.key_slices(label, 1)[0]
            if best not in chosen:
                chosen.append(best)
    order = np.argsort(-prediction.slice_probs[:, 0], kind="stable")
    for idx in (int(j) for j in order):
        if len(chosen) >= k:
            break
        if idx not in chosen:
            chosen.append(idx)
    return chosen[:k]


def input_lines(
    prediction: SeriesPrediction, series_choice: Sequence[SeriesOutcome], n_sources: int
) -> tuple[str, str]:
    """The two lines on the input: the series used (and slabs), the series skipped."""
    chosen = chosen_of(series_choice)
    if chosen is not None and chosen.series_uid == prediction.series_uid:
        used = f"series used: {shorten(chosen.label, 64)} ({images(chosen.instances)})"
    else:
        used = f"series used: {images(n_sources)}"
    if prediction.slabs is not None:
        used += f"; {prediction.slabs.describe()}"
    skipped = skipped_summary(series_choice) or "no other series in the study"
    return shorten(used, INPUT_LINE_CHARS), shorten(skipped, INPUT_LINE_CHARS)


def _fitted_text(canvas: FigureCanvasAgg, y: float, text: str, color: str) -> None:
    """One line at the left margin, cut (with "...") until it fits the panel's width.

    Measured with the renderer rather than counted in characters, so a description of
    wide letters is cut where it really leaves the image.
    """
    fig = canvas.figure
    artist = fig.text(0.02, y, text, fontsize=11, color=color, va="center")
    renderer = canvas.get_renderer()  # type: ignore[no-untyped-call]
    limit = 0.98 * SIZE
    while artist.get_window_extent(renderer).x1 > limit and len(text) > 8:
        cut = max(8, int(len(text) * limit / artist.get_window_extent(renderer).x1) - 1)
        text = shorten(text, min(cut, len(text) - 1))
        artist.set_text(text)


def render_panel(
    prediction: SeriesPrediction,
    series: CTSeries,
    algorithm: AlgorithmInfo,
    generation: int = 0,
    series_choice: Sequence[SeriesOutcome] = (),
    n_sources: int | None = None,
) -> NDArray[np.uint8]:
    """The SC's pixels: ``(SIZE, SIZE, 3)`` uint8 RGB.

    ``series`` is the series the model saw (slabs when averaged); ``n_sources`` the
    number of source images (defaults to the series' slices).
    """
    if series.sop_uids != prediction.sop_uids:
        raise ReportError("CT series and prediction list different slices")
    fig = Figure(figsize=(SIZE / _DPI, SIZE / _DPI), dpi=_DPI, facecolor="black")
    canvas = FigureCanvasAgg(fig)

    fig.add_artist(Rectangle((0.0, 0.935), 1.0, 0.065, transform=fig.transFigure, color="#c00000"))
    fig.text(
        0.5, 0.967, BANNER, ha="center", va="center", fontsize=30, weight="bold", color="white"
    )
    top = 0.93
    if algorithm.demo:
        fig.text(
            0.5,
            0.912,
            DEMO_LINE,
            ha="center",
            va="center",
            fontsize=18,
            color="#ffd000",
            weight="bold",
        )
        top = 0.895
    fig.text(
        0.5,
        top - 0.012,
        "AI triage for intracranial hemorrhage - unverified machine output",
        ha="center",
        va="center",
        fontsize=12,
        color="white",
    )

    # Key slices (slabs), brain window.
    unit = "slab" if prediction.slabs is not None else "slice"
    keys = key_slice_indices(prediction)
    n = max(1, len(keys))
    width = 0.96 / n
    for j, idx in enumerate(keys):
        ax = fig.add_axes((0.02 + j * width, 0.555, width - 0.01, top - 0.595))
        ax.imshow(brain_window(series.hu[idx]), cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_axis_off()
        ax.set_title(
            f"{unit} {idx + 1}/{series.n_slices}  p(any)={prediction.slice_probs[idx, 0]:.2f}",
            fontsize=10,
            color="white",
        )

    # What was read, and what was not.
    used, skipped = input_lines(
        prediction, series_choice, series.n_slices if n_sources is None else n_sources
    )
    _fitted_text(canvas, 0.522, used, color="white")
    _fitted_text(canvas, 0.497, skipped, color="#c0c0c0")

    # Findings table.
    ax_t = fig.add_axes((0.02, 0.07, 0.42, 0.40))
    ax_t.set_axis_off()
    ax_t.set_xlim(0, 1)
    ax_t.set_ylim(0, len(LABELS) + 1.5)
    header_y = len(LABELS) + 0.8
    for x, head in ((0.0, "Finding"), (0.52, "p"), (0.68, "thr"), (0.84, "Result")):
        ax_t.text(x, header_y, head, fontsize=13, weight="bold", color="white")
    present = prediction.present
    for i, label in enumerate(LABELS):
        y = len(LABELS) - i - 0.2
        color = "#ff5050" if present[i] else "#a0a0a0"
        ax_t.text(0.0, y, FINDINGS[label].display, fontsize=13, color=color)
        ax_t.text(0.52, y, f"{prediction.study_probs[i]:.2f}", fontsize=13, color=color)
        ax_t.text(0.68, y, f"{prediction.thresholds[i]:.2f}", fontsize=13, color=color)
        ax_t.text(0.84, y, "PRESENT" if present[i] else "absent", fontsize=13, color=color)

    # Per-slice probability curve.
    ax_c = fig.add_axes((0.53, 0.1, 0.44, 0.34), facecolor="#101010")
    z = np.arange(1, series.n_slices + 1)
    for i, label in enumerate(LABELS):
        color = "white" if i == 0 else _COLORS[i]
        ax_c.plot(z, prediction.slice_probs[:, i], color=color, lw=2 if i == 0 else 1, label=label)
    ax_c.set_ylim(-0.02, 1.02)
    ax_c.set_xlim(1, max(2, series.n_slices))
    ax_c.set_xlabel(f"{unit} (inferior -> superior)", color="white")
    ax_c.set_ylabel("probability", color="white")
    ax_c.tick_params(colors="white")
    for spine in ax_c.spines.values():
        spine.set_color("white")
    ax_c.legend(fontsize=8, loc="upper left", framealpha=0.3, labelcolor="white", ncol=2)

    fig.text(
        0.02,
        0.02,
        f"model {algorithm.name} {algorithm.version}  uid {algorithm.model_uid}  rev {generation}",
        fontsize=9,
        color="#c0c0c0",
    )

    canvas.draw()  # type: ignore[no-untyped-call]
    rgba = np.asarray(canvas.buffer_rgba())  # type: ignore[no-untyped-call]
    rgb = np.ascontiguousarray(rgba[..., :3], dtype=np.uint8)
    if rgb.shape != (SIZE, SIZE, 3):  # pragma: no cover - a matplotlib DPI rounding change
        raise ReportError(f"rendered panel has shape {rgb.shape}, expected {(SIZE, SIZE, 3)}")
    return rgb


def build_sc(
    prediction: SeriesPrediction,
    sources: Sequence[Dataset],
    series: CTSeries,
    algorithm: AlgorithmInfo,
    uids: ResultUIDs,
    supersedes: ResultUIDs | None = None,
    series_choice: Sequence[SeriesOutcome] = (),
    earlier: Sequence[ResultUIDs] = (),
) -> SCImage:
    """The Secondary Capture of ``prediction``, in the source's Patient and Study.

    References the shown key slices in Source Image Sequence; a new generation names the
    SC it supersedes in Image Comments, and every earlier SC (``earlier``) in Referenced
    Image Sequence (the SC IOD has no
    predecessor attribute; the SR's Predecessor Documents Sequence is the formal link).
    """
    by_uid = check_sources(prediction, sources)
    header = identity_header(by_uid[prediction.sop_uids[0]])
    pixels = render_panel(
        prediction, series, algorithm, uids.generation, series_choice, n_sources=len(by_uid)
    )
    try:
        sc = SCImage.from_ref_dataset(
            ref_dataset=header,
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=uids.sc_series,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=uids.sc_instance,
            instance_number=uids.generation + 1,
            manufacturer=MANUFACTURER,
            patient_orientation=("L", "P"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            contributing_equipment=[algorithm.contributing_equipment()],
            series_description=algorithm.series_description,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ReportError(f"SC could not be built: {type(exc).__name__}") from exc
    # AIR's (Newcode1, 99IHE) purpose of reference: highdicom refuses it at build time.
    mark_processing_algorithm(sc, algorithm.model_uid)
    # A panel of several slices and charts has no single orientation: type 2, empty.
    sc.add_new((0x0020, 0x0020), "CS", None)  # Patient Orientation, empty
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.LossyImageCompression = "00"
    sc.ConversionType = "WSD"  # workstation (PS3.3 C.8.6.1): rendered, not digitised
    # Copied from the source; a source without it still is a head CT (the node reports
    # only on series it accepted as such), and dciodvfy wants Laterality when it is absent.
    sc.BodyPartExamined = str(header.get("BodyPartExamined", "") or "HEAD")
    sc.DerivationDescription = (
        "Key slices (brain window 40/80 HU), findings table and per-slice probabilities "
        "of an AI triage model; not for diagnostic use"
    )
    source_items = []
    for idx in key_slice_indices(prediction):
        uid = prediction.sop_uids[idx]
        item = Dataset()
        item.ReferencedSOPClassUID = by_uid[uid].SOPClassUID
        item.ReferencedSOPInstanceUID = uid
        frame = prediction.frame_of(idx)
        if frame is not None:  # a frame of an Enhanced CT instance
            item.ReferencedFrameNumber = frame
        source_items.append(item)
    sc.SourceImageSequence = source_items
    refs = []
    for earlier_uids in predecessors(supersedes, earlier):
        ref = Dataset()
        ref.ReferencedSOPClassUID = SecondaryCaptureImageStorage
        ref.ReferencedSOPInstanceUID = earlier_uids.sc_instance
        refs.append(ref)
    if refs:
        sc.ReferencedImageSequence = refs
    if supersedes is not None:
        sc.ImageComments = (
            f"Supersedes AI triage result rev {supersedes.generation} "
            f"(SOP Instance UID {supersedes.sc_instance})"
        )
    return sc
