"""The six outputs per slice, in the one order used everywhere in the project.

Order from the RSNA 2019 challenge (METHOD.md "Labels"): ``any`` first, then the five
subtypes alphabetically. CSV columns, tensors, checkpoints and DICOM results all use it.
"""

from __future__ import annotations

from typing import Final

LABELS: Final[tuple[str, ...]] = (
    "any",
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
SUBTYPES: Final[tuple[str, ...]] = LABELS[1:]
NUM_CLASSES: Final[int] = len(LABELS)

#: Kaggle weighted log loss / training loss weights: 2 for ``any``, 1 for each subtype.
CLASS_WEIGHTS: Final[tuple[float, ...]] = (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)
