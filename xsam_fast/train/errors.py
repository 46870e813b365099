"""Errors of the training job that the command reports as a message, not a traceback."""

from __future__ import annotations


class DatasetUnavailable(RuntimeError):
    """The dataset cannot be used here; the message says how to get it."""


class SetupError(RuntimeError):
    """A job setting that cannot run here (device, backend, precision); the message says why."""
