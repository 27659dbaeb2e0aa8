"""The daemon: the imperative shell around the core.

``state`` (the authoritative in-memory state and its indexes; admission, user
commands, plan application, accounting), ``loop`` (a cycle per burst of
events), ``reconcile`` (agents registering, heartbeating, vanishing),
``fleet`` (the nodes as schedd sees them), ``launch`` (what each rank is told),
``deps`` (the dependency rule), ``records`` (job records and submit bodies),
``server`` (start-up and tear-down of everything). The REST/WebSocket API is
``schedd.api``, persistence ``schedd.store``, node sources ``schedd.pool``.
"""
