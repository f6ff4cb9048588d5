"""Notifications of finished studies to systems that do not speak DICOM: a signed JSON
``webhook`` (chat, RIS, worklists) and an HL7 v2.5 ORU^R01 over MLLP (``hl7``, ``mllp``),
both built from one ``report`` of the study (findings, model, accession, patient).

Each send is one attempt that raises :class:`~dicom_node.errors.TransientError` or
:class:`~dicom_node.errors.PermanentError`; retries, backoff and states are the
pipeline's delivery machinery (a notification is a delivery of another kind).

May import: ``store``, the top-level ``config``/``errors``/``logs``, and ``models``.
Never ``net``, ``results``, ``pipeline``, ``service`` or ``cli``.
"""
