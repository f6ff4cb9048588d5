"""The DICOM objects the node writes: the Comprehensive 3D SR (``sr``), the RGB Secondary
Capture (``sc``), what both share (``common``: identity, UIDs, evidence), coded concepts
(``codes``), and ``report``, which builds both for one prediction.

May import: ``store``, the top-level ``config``/``errors``/``logs``, and ``models``.
Never ``net`` (building a report must not depend on how it is sent), ``pipeline``,
``service`` or ``cli``.
"""
