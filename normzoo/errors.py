"""Errors of the training system whose messages name the problem and the fix (stdlib only)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration, found before training starts."""


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message says what to install."""


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither on disk nor downloadable; the message says where to put it."""
