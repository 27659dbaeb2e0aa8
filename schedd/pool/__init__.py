"""Where virtual nodes come from: ``local`` (agents as subprocesses here) or
``static`` (agents started by hand, which dial in); ``kubernetes`` later."""

from schedd.pool.local import LocalPool

__all__ = ["LocalPool"]
