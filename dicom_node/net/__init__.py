"""The DICOM network edge: what speaks DICOM Upper Layer and DIMSE on a socket.

Holds the node's own acceptor (``acceptor``, ``dimse``), pynetdicom's server as the
fallback engine and the shared presentation contexts (``scp``, bounded by ``scp_guard``),
the C-STORE handlers that hand received bytes to the store (``handlers``), and the
Storage SCU that sends results (``scu``).

May import: ``dicom_node.store``, the top-level ``config``/``errors``/``logs``/``metrics``
(the receive path counts instances and associations there), and
``models``. Never ``pipeline``, ``results``, ``service`` or ``cli``: the network edge
knows nothing of what happens to a study after its bytes are durable.
"""
