"""The failure table: each failure the trainer reports, with its reason (status) and exit code
(the pod's podFailurePolicy reads it), as docs/design.md lists them.

A stage raises one of these with a message written for the person reading `kubectl describe`:
what is wrong and where (file, row, field, URI), not a stack trace. Anything else that escapes
is a `TrainerError` (exit 1, retryable).
"""

from __future__ import annotations

from typing import Any, ClassVar


class TrainerFailure(Exception):
    """Base class: `reason` and `exit_code` go to the termination message and the process exit.
    A subclass states its exit code and whether it is retryable in its class line; its reason is
    its class name."""

    reason: ClassVar[str] = "TrainerError"
    exit_code: ClassVar[int] = 1
    retryable: ClassVar[bool] = True

    def __init_subclass__(cls, *, exit_code: int, retryable: bool, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.reason, cls.exit_code, cls.retryable = cls.__name__, exit_code, retryable

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(TrainerFailure, exit_code=10, retryable=False):
    """The config cannot work (invalid, or a combination the model/tokenizer cannot support)."""


class DatasetError(TrainerFailure, exit_code=11, retryable=False):
    """Missing, unreadable or malformed training/validation data."""


class ModelError(TrainerFailure, exit_code=12, retryable=False):
    """The base model cannot be found or loaded (no config, no weights, unknown architecture)."""


class NonFiniteLoss(TrainerFailure, exit_code=13, retryable=False):
    """The training loss became NaN or infinite."""


class ArtifactsMissing(TrainerFailure, exit_code=14, retryable=False):
    """Training finished but the artifacts could not be produced or verified."""


class StorageAccessDenied(TrainerFailure, exit_code=15, retryable=False):
    """S3 refused the credentials or the request (AccessDenied, InvalidAccessKeyId,
    SignatureDoesNotMatch). Not retryable: the next pod has the same credentials."""


class StorageConflict(TrainerFailure, exit_code=16, retryable=False):
    """The run's S3 prefix holds objects that another FineTuneJob (another metadata.uid) wrote.
    Not retryable, and nothing there is read, resumed from, overwritten or deleted."""


class StorageUnavailable(TrainerFailure, exit_code=20, retryable=True):
    """S3 could not be reached for longer than the retry window (s3RetrySeconds). Retryable:
    the next pod resumes from the last complete checkpoint; a finished training is uploaded
    from its final checkpoint without training again. Exit code 20: outside the 10-19 range
    that the Job's podFailurePolicy treats as final."""


class GpuOutOfMemory(TrainerFailure, exit_code=17, retryable=False):
    """CUDA ran out of memory. Not retryable: the next pod would run out of memory at the same
    step with the same settings, so the message names the settings to change instead."""


class TrainerError(TrainerFailure, exit_code=1, retryable=True):
    """Anything unexpected; retryable (the next pod resumes from the last checkpoint)."""
