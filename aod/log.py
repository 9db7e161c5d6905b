"""Logging: journald-native structured records, stderr fallback (used by every layer).

Call `setup()` once, then `emit(kind, level, message, **fields)`. Each kind has a
stable MESSAGE_ID so operators can filter with `journalctl MESSAGE_ID=...`.
Field names are upper-case journal fields (AOD_ANOMALY, AOD_COUNT, ...).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

ALERT = logging.CRITICAL + 10  # journald maps anything above CRITICAL to LOG_ALERT (1)
logging.addLevelName(ALERT, "ALERT")
NOTICE = logging.INFO + 5  # syslog notice (5): journal records of anomalies refused a capture
logging.addLevelName(NOTICE, "NOTICE")

LOGGER_NAME = "aodv2"
SYSLOG_IDENTIFIER = "aodv2"

# Stable per message kind; documented in aodv2(8). Never change a published one.
MESSAGE_IDS: dict[str, str] = {
    "started": "a0d20001c0de4b1a9f0e7d6c5b4a3921",
    "ready": "a0d20002c0de4b1a9f0e7d6c5b4a3921",
    "stopping": "a0d20003c0de4b1a9f0e7d6c5b4a3921",
    "anomaly": "a0d20004c0de4b1a9f0e7d6c5b4a3921",
    "suppressed": "a0d20005c0de4b1a9f0e7d6c5b4a3921",
    "bundle": "a0d20006c0de4b1a9f0e7d6c5b4a3921",
    "capture_failed": "a0d20007c0de4b1a9f0e7d6c5b4a3921",
    "action_failed": "a0d20008c0de4b1a9f0e7d6c5b4a3921",
    "component_restart": "a0d20009c0de4b1a9f0e7d6c5b4a3921",
    "reloaded": "a0d2000ac0de4b1a9f0e7d6c5b4a3921",
    "reload_failed": "a0d2000bc0de4b1a9f0e7d6c5b4a3921",
    "pruned": "a0d2000cc0de4b1a9f0e7d6c5b4a3921",
    "drops": "a0d2000dc0de4b1a9f0e7d6c5b4a3921",
    "bad_records": "a0d2000ec0de4b1a9f0e7d6c5b4a3921",
    "watchdog_withheld": "a0d2000fc0de4b1a9f0e7d6c5b4a3921",
    "fatal": "a0d20010c0de4b1a9f0e7d6c5b4a3921",
    "tracer": "a0d20011c0de4b1a9f0e7d6c5b4a3921",
    "upload": "a0d20012c0de4b1a9f0e7d6c5b4a3921",
    "upload_failed": "a0d20013c0de4b1a9f0e7d6c5b4a3921",
    "control": "a0d20014c0de4b1a9f0e7d6c5b4a3921",
    "metrics_failed": "a0d20015c0de4b1a9f0e7d6c5b4a3921",
    "overflow": "a0d20016c0de4b1a9f0e7d6c5b4a3921",
    "recorder": "a0d20017c0de4b1a9f0e7d6c5b4a3921",
}

_PRIORITY = {ALERT: 1, logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, NOTICE: 5, logging.INFO: 6,
             logging.DEBUG: 7}


def priority(levelno: int) -> int:
    """syslog priority of a logging level (the nearest one at or above it)."""
    return next((p for lv, p in sorted(_PRIORITY.items()) if levelno <= lv), 1)

logger = logging.getLogger(LOGGER_NAME)


class _StderrFormatter(logging.Formatter):
    """Plain text with structured fields; `<N>` prefix when stderr goes to journald."""

    def __init__(self, journal_stream: bool) -> None:
        super().__init__()
        self.journal_stream = journal_stream

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{k}={v}" for k, v in sorted(record.__dict__.items()) if k.startswith("AOD_")
        )
        text = record.getMessage() + (f" [{fields}]" if fields else "")
        if self.journal_stream:
            return f"<{priority(record.levelno)}>{text}"
        return f"aodv2 {record.levelname.lower()}: {text}"


def setup(level: int = logging.INFO, force_stderr: bool = False) -> str:
    """Attach the journal handler (under systemd) or stderr. Returns which was used."""
    for h in list(logger.handlers):
        logger.removeHandler(h)
    logger.setLevel(level)
    logger.propagate = False
    handler: logging.Handler
    kind = "stderr"
    if not force_stderr and (os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID")):
        try:
            from systemd.journal import JournalHandler  # type: ignore[import-not-found]

            class _Handler(JournalHandler):  # type: ignore[misc]
                # systemd-python maps levels onto 7 priorities without notice; ours has it
                map_priority = staticmethod(priority)

            handler = _Handler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
            kind = "journal"
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_StderrFormatter(journal_stream=True))
            kind = "stderr-journal"
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_StderrFormatter(journal_stream=False))
    logger.addHandler(handler)
    return kind


def emit(kind: str, level: int, message: str, **fields: Any) -> None:
    """Log one structured record. `fields` keys must be upper-case journal field names."""
    extra = {k: (v if isinstance(v, (str, bytes)) else str(v)) for k, v in fields.items()}
    extra["MESSAGE_ID"] = MESSAGE_IDS[kind]
    logger.log(level, message, extra=extra)
