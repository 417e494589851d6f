"""Logging: human text on a terminal, one JSON object per line otherwise.

Batch systems (Airflow task logs, CloudWatch, Loki) get machine-readable
lines; people at a terminal get a progress bar and short messages.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

FORMAT_ENV = "HELICAL_RUNNER_LOG_FORMAT"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def json_mode() -> bool:
    wanted = os.environ.get(FORMAT_ENV, "").lower()
    if wanted in ("json", "text"):
        return wanted == "json"
    return not sys.stderr.isatty()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(
            {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        )
        if record.exc_info and record.levelno >= logging.ERROR:
            trace = self.formatException(record.exc_info)
            payload["exc"] = trace.splitlines()[-1]
            payload["traceback"] = trace
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = {
            k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")
        }
        tail = " ".join(f"{k}={v}" for k, v in extras.items())
        text = f"[{record.levelname.lower()}] {record.getMessage()}" + (f"  {tail}" if tail else "")
        if record.exc_info and self.with_traceback:
            text += "\n" + self.formatException(record.exc_info)
        return text

    def __init__(self, *, with_traceback: bool = False):
        super().__init__()
        self.with_traceback = with_traceback


_HANDLER: logging.Handler | None = None


def configure(verbose: bool = False) -> None:
    """Route every logger (helical's included) through one stderr handler."""
    global _HANDLER
    _HANDLER = logging.StreamHandler(sys.stderr)
    _HANDLER.setFormatter(JsonFormatter() if json_mode() else TextFormatter(with_traceback=verbose))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    reclaim_root()
    # helical and its stack log every step of every chunk; keep their warnings only.
    for noisy in (
        "helical",
        "datasets",
        "transformers",
        "accelerate",
        "matplotlib",
        "numba",
        "botocore",
        "urllib3",
    ):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)


def reclaim_root() -> None:
    """Make the runner's handler the root logger's only one again.

    Importing the helical package adds its own root handler (every line would
    appear twice); helical is imported only by the commands that run a model,
    long after :func:`configure`, so they call this once it is imported.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        if old is not _HANDLER:
            root.removeHandler(old)
    if _HANDLER is not None and _HANDLER not in root.handlers:
        root.addHandler(_HANDLER)
