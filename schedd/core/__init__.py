"""The scheduling core: pure Python, no I/O, no clock, no task.

``model`` (the vocabulary), ``cluster`` (free resources now), ``profile``
(free resources over time), ``pending`` (the pending-job index), ``context``
(a cycle's Snapshot, overlay and Plan), ``scheduler`` (one cycle), ``actions``
(its verbs), ``usage`` (the usage ledger) and ``sim`` (the same cycle on a
virtual clock). Time is an argument; the same code runs in the daemon, the
simulator and the tests. ``tests/unit/test_layering.py`` keeps it so: it reads
every import here and refuses the daemon, asyncio, sockets, files and clocks.
"""
