"""Modules the agent puts on jobs' PYTHONPATH (this directory, not the package):
``schedd_report``. Stdlib only: they run in any job environment."""
