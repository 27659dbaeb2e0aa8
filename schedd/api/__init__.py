"""The HTTP face of schedd: REST for users, a WebSocket for agents, /metrics."""

from schedd.api.app import make_app

__all__ = ["make_app"]
