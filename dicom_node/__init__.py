"""The ICH triage DICOM node: receive CT studies, classify them, send findings back to PACS."""

__version__ = "0.1.0"
