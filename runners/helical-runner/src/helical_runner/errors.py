"""Failure classes and the exit codes the DAG relies on.

The split matters to the orchestrator: bad input never gets better by
retrying, a transient failure (I/O, network, out of memory) often does.
"""

EXIT_OK = 0
EXIT_BUG = 1
EXIT_BAD_INPUT = 2
EXIT_TRANSIENT = 75  # sysexits EX_TEMPFAIL


class RunnerError(Exception):
    """Base class: a message a user can act on, plus the exit code."""

    exit_code = EXIT_BUG
    reason = "internal"

    def __init__(self, message: str, *, where: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        if reason:
            self.reason = reason

    def one_line(self) -> str:
        text = self.message if not self.where else f"{self.message} ({self.where})"
        return " ".join(text.split())


class BadInput(RunnerError):
    """The dataset, model name or configuration is wrong: never worth a retry."""

    exit_code = EXIT_BAD_INPUT
    reason = "bad_input"


class Transient(RunnerError):
    """I/O, network or memory trouble: worth a retry with backoff."""

    exit_code = EXIT_TRANSIENT
    reason = "transient"
