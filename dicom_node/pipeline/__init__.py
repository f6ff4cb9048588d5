"""From complete study to delivered result: completion by quiet period (``assembly``),
durable timers (``scheduler``, APScheduler with a persistent job store), the inference
``worker``, and ``delivery`` of SR/SC to the destinations with retries.

May import: ``net`` (the SCU), ``results``, ``store``, the top-level
``config``/``errors``/``logs``/``metrics``, and ``models``. Never ``web`` (its sibling),
``service`` or ``cli``.
"""
