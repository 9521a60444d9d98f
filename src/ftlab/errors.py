"""User-facing errors.

Every error a user can cause with bad input, a bad config or a broken artifact is an
:class:`FtlabError` subclass whose message says what was wrong, where (file, line,
field) and what to do. The CLI prints these as one line each, never as a traceback.
"""

from __future__ import annotations


class FtlabError(Exception):
    """Base class of every error ftlab reports to a user."""


class ConfigError(FtlabError):
    """A run config is unreadable, has unknown keys, or has out-of-range values."""


class DataError(FtlabError):
    """A data file or record cannot be used as given."""


class ArtifactError(FtlabError):
    """A model, tokenizer or checkpoint on disk is missing, corrupt or inconsistent."""


class TrainingError(FtlabError):
    """Training cannot produce a usable model as configured (e.g. most steps diverge)."""


class Interrupted(FtlabError):
    """The user stopped a run (Ctrl-C, SIGTERM) at a step boundary; its checkpoint is
    written and the same command resumes it. The CLI exits 130 for it."""
