"""Logging for the daemon and the agents: text for a terminal, JSON lines for a log pipeline.

``--log-format json`` makes every record one JSON object per line (``time``,
``level``, ``logger``, ``message``, and ``exc`` with the traceback when there
is one), which Loki, Elasticsearch or ``kubectl logs | jq`` take as they are;
the default stays the human-readable line. Configured with
:func:`logging.config.dictConfig` so a site can replace it wholesale.
"""

from __future__ import annotations

import json
import logging
import logging.config
import time
from typing import Any

__all__ = ["FORMATS", "JsonFormatter", "configure"]

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per record.

    >>> rec = logging.LogRecord("schedd", logging.INFO, "x.py", 1, "cycle: %d started", (3,), None)
    >>> rec.created, rec.msecs = 0.0, 0.0
    >>> JsonFormatter().format(rec)
    '{"time": "1970-01-01T00:00:00.000Z", "level": "INFO", "logger": "schedd", "message": "cycle: 3 started"}'
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(fmt: str = "text", level: int = logging.INFO, text_format: str = "%(asctime)s %(name)s %(levelname)s %(message)s") -> None:
    """Root logging to stderr in ``fmt`` (``text`` or ``json``)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    formatter: dict[str, Any] = ({"()": JsonFormatter} if fmt == "json" else {"format": text_format})
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
    })
