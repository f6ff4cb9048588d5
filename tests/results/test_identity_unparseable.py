"""Identity values highdicom cannot parse (birth date 00000000, sex "Male", a name with a
backslash) are written empty in the result instead of costing the study its SR and SC:
found by the bad-input corpus (tests/reliability), where such a study ended ``failed``."""

from __future__ import annotations

import numpy as np
import pytest
from ctfactory import ct_dataset
from pydicom import config
from pydicom.uid import generate_uid

from dicom_node.results.common import identity_header


def test_unparseable_identity_values_are_blank_valid_ones_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the test writes invalid values as a modality would: pydicom must not refuse them
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.IGNORE)
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.IGNORE)
    ds = ct_dataset(np.zeros((4, 4)), study_uid=generate_uid(), series_uid=generate_uid())
    ds.PatientName = "DOE^JOHN\\SECOND"
    ds.PatientBirthDate = "00000000"
    ds.PatientSex = "Male"
    ds.StudyDate = "2024-01-02"
    ds.StudyTime = "253000"
    header = identity_header(ds)
    assert str(header.PatientName) == "DOE^JOHN"
    assert (header.PatientBirthDate, header.PatientSex) == ("", "")
    assert (header.StudyDate, header.StudyTime) == ("", "")

    ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "DOE^JANE", "19700101", "F"
    ds.StudyDate, ds.StudyTime = "20240102", "101500"
    header = identity_header(ds)
    assert (str(header.PatientName), header.PatientBirthDate, header.PatientSex) == (
        "DOE^JANE", "19700101", "F",
    )  # fmt: skip
    assert (header.StudyDate, header.StudyTime) == ("20240102", "101500")
