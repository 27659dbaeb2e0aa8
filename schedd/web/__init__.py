"""The web page: jobs, a job's charts and log, compare, nodes — served by the
daemon under ``/ui/`` from plain files (no build step), its data read from the
REST API with a browser session (see :mod:`schedd.web.session`)."""

from schedd.web.handlers import add_routes

__all__ = ["add_routes"]
