"""What is on disk: the durable spool of received files, its write-ahead journal, the
SQLite index of studies/series/instances (with each study's ``series_outcome``: what
series choice decided for every series), UID rules, and ``private``: the folder and
file modes (0700/0600) and the umask every writer of state goes through.

``uid_scan`` (the fast header walk that finds an instance's four UIDs) lives here rather
than in ``net`` because ``Spool.put`` and ``reindex`` need it too, and the store sits
below the network edge.

May import: the top-level ``config``/``errors``/``logs``, and ``models``. Nothing above
it (``net``, ``pipeline``, ``results``, ``service``, ``cli``).
"""
