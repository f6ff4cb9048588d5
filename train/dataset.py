"""Datasets over prepared studies: random windows of contiguous slices, or whole studies.

Training never decodes DICOM: it reads windowed uint8 slices from the prepared cache
(``train.data.cache.PreparedCache``), whose arrays are memory-mapped, so a data-loader
worker only copies a window of ``10 x 3 x H x W`` bytes. Conversion to float,
augmentation and ImageNet normalisation run batched on the training device
(:func:`to_model_input`).

METHOD.md: training takes a window of 10 contiguous slices from a random position in
each study; studies shorter than the window are padded at the superior end and masked
(the reference indexed out of range there). Validation and test use whole studies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset

from models.labels import NUM_CLASSES
from models.preprocess import DEFAULT_WINDOWS, Window, normalize_imagenet, resize


class StudyInfo(Protocol):
    """What the loop needs to know about one prepared study."""

    @property
    def key(self) -> str: ...
    @property
    def n_slices(self) -> int: ...
    @property
    def study_labels(self) -> NDArray[np.uint8]: ...
    @property
    def has_slice_labels(self) -> bool: ...
    @property
    def patient(self) -> str: ...


class StudyStore(Protocol):
    """The read side of ``train.data.cache.PreparedCache`` (and of :class:`ArrayStore`)."""

    size: int
    windows: tuple[Window, ...]

    @property
    def studies(self) -> Sequence[StudyInfo]: ...
    def images(self, key: str) -> NDArray[np.uint8]: ...
    def slice_labels(self, key: str) -> NDArray[np.uint8]: ...
    def sop_uids(self, key: str) -> list[str]: ...


@dataclass(frozen=True)
class ArrayStudy:
    """:class:`StudyInfo` for a study held in memory."""

    key: str
    n_slices: int
    study_labels: NDArray[np.uint8]
    has_slice_labels: bool = True
    patient: str = ""


@dataclass
class ArrayStore:
    """An in-memory :class:`StudyStore`: the demo model and tests fill it from phantoms.

    Same layout as the prepared cache: uint8 ``(Z, 3, size, size)`` windowed slices,
    inferior -> superior, ``(Z, 6)`` slice labels.
    """

    size: int
    windows: tuple[Window, ...] = DEFAULT_WINDOWS
    _images: dict[str, NDArray[np.uint8]] = field(default_factory=dict)
    _labels: dict[str, NDArray[np.uint8]] = field(default_factory=dict)
    _sops: dict[str, list[str]] = field(default_factory=dict)
    _studies: list[ArrayStudy] = field(default_factory=list)

    @property
    def studies(self) -> list[ArrayStudy]:
        return self._studies

    def add(
        self,
        key: str,
        images: NDArray[np.uint8],
        slice_labels: NDArray[np.uint8],
        sop_uids: Sequence[str] | None = None,
        patient: str = "",
    ) -> None:
        if (
            images.dtype != np.uint8
            or images.ndim != 4
            or images.shape[1:]
            != (
                3,
                self.size,
                self.size,
            )
        ):
            raise ValueError(f"images must be uint8 (Z, 3, {self.size}, {self.size})")
        if slice_labels.shape != (images.shape[0], NUM_CLASSES):
            raise ValueError("slice_labels must be (Z, 6)")
        self._images[key] = images
        self._labels[key] = slice_labels.astype(np.uint8)
        self._sops[key] = list(sop_uids or [f"{key}.{i}" for i in range(images.shape[0])])
        self._studies.append(
            ArrayStudy(
                key, images.shape[0], slice_labels.max(axis=0).astype(np.uint8), True, patient
            )
        )

    def images(self, key: str) -> NDArray[np.uint8]:
        return self._images[key]

    def slice_labels(self, key: str) -> NDArray[np.uint8]:
        return self._labels[key]

    def sop_uids(self, key: str) -> list[str]:
        return self._sops[key]


class WindowDataset(Dataset[dict[str, Any]]):
    """Training items: ``window`` contiguous slices from a random start in each study.

    Items: ``images`` uint8 ``(window, 3, H, W)``, ``labels`` float ``(window, 6)``,
    ``mask`` bool ``(window,)`` (False on padding). The start is drawn from torch's RNG,
    which the data loader seeds per worker from the (rank-aware) process seed.
    """

    def __init__(self, store: StudyStore, keys: Sequence[str], window: int = 10) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.store = store
        self.keys = list(keys)
        self.window = window
        lengths = {s.key: s.n_slices for s in store.studies}
        self.lengths = [lengths[k] for k in self.keys]

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key, n = self.keys[index], self.lengths[index]
        w = self.window
        start = int(torch.randint(0, n - w + 1, (1,))) if n > w else 0
        stop = min(start + w, n)
        imgs = np.array(self.store.images(key)[start:stop])  # copy out of the memory map
        labs = np.asarray(self.store.slice_labels(key)[start:stop])
        images = torch.zeros((w, *imgs.shape[1:]), dtype=torch.uint8)
        labels = torch.zeros((w, NUM_CLASSES), dtype=torch.float32)
        mask = torch.zeros(w, dtype=torch.bool)
        images[: stop - start] = torch.from_numpy(imgs)
        labels[: stop - start] = torch.from_numpy(labs.astype(np.float32))
        mask[: stop - start] = True
        return {"images": images, "labels": labels, "mask": mask, "key": key}


class StudyDataset(Dataset[dict[str, Any]]):
    """Evaluation items: one whole study (all slices, z order), with its labels."""

    def __init__(self, store: StudyStore, keys: Sequence[str]) -> None:
        self.store = store
        self.keys = list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.keys[index]
        images = torch.from_numpy(np.array(self.store.images(key)))
        labels = torch.from_numpy(self.store.slice_labels(key).astype(np.float32))
        return {"images": images, "labels": labels, "key": key}


def to_model_input(
    images: torch.Tensor, size: int | None = None, augment: Any = None
) -> torch.Tensor:
    """uint8 ``(..., 3, H, W)`` -> float, optionally resized and augmented, ImageNet-normalised.

    ``augment`` maps ``(N, 3, H, W)`` in ``[0, 1]`` to the same (train only).
    """
    lead = images.shape[:-3]
    x = images.reshape(-1, *images.shape[-3:]).float().div_(255.0)
    if size is not None and x.shape[-1] != size:
        x = resize(x, size)
    if augment is not None:
        x = augment(x)
    x = normalize_imagenet(x)
    return x.reshape(*lead, *x.shape[-3:])
