"""Structured logs: one event per line on stderr."""

from __future__ import annotations

import logging
import sys

import structlog

from corral.engine.env import redact_event


def configure(level: str = "info", json_lines: bool = False) -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s")
    for chatty in ("httpx", "httpcore"):  # one INFO line per request: every heartbeat of a runner
        logging.getLogger(chatty).setLevel(max(numeric, logging.WARNING))
    renderer = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        # redact_event first: values given to functions (ctx.env) never reach a log line.
        processors=[redact_event, structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
