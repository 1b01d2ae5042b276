"""Errors the runner reports to users as one line and a non-zero exit code.

Everything raised before weights load is a `ConfigError` or a `CapabilityError`; both exit with
code 2 (the conventional "usage error" code, as argparse uses), so scripts can tell a bad request
from a crash (code 1) or a failed verification (code 3).
"""

from __future__ import annotations


class RunnerError(Exception):
    """Base class: an error with a one-line message meant for the user."""

    exit_code = 1

    def one_line(self) -> str:
        return " ".join(str(self).split())


class ConfigError(RunnerError):
    """A configuration value is invalid or inconsistent (detected before any weights load)."""

    exit_code = 2


class CapabilityError(RunnerError):
    """The installed engine build or the hardware cannot run what the config asks for."""

    exit_code = 2


class VerificationError(RunnerError):
    """An optimized path produced results outside the tolerance of the eager reference."""

    exit_code = 3


class PassError(RunnerError):
    """An optimization pass failed while being applied (names the passes applied before it)."""

    exit_code = 1
