"""Errors raised by the runtime. Root: RuntimeSystemError."""


class RuntimeSystemError(Exception):
    """Root of every error the runtime raises."""

    exit_code = 1
