"""The failure table: each failure the trainer reports, with its reason (status) and exit code
(the pod's podFailurePolicy reads it), as docs/design.md lists them.

A stage raises one of these with a message written for the person reading `kubectl describe`:
what is wrong and where (file, row, field, URI), not a stack trace. Anything else that escapes
is a `TrainerError` (exit 1, retryable).
"""

from __future__ import annotations


class TrainerFailure(Exception):
    """Base class: `reason` and `exit_code` go to the termination message and the process exit."""

    reason = "TrainerError"
    exit_code = 1
    retryable = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(TrainerFailure):
    """The config cannot work (invalid, or a combination the model/tokenizer cannot support)."""

    reason = "ConfigError"
    exit_code = 10
    retryable = False


class DatasetError(TrainerFailure):
    """Missing, unreadable or malformed training/validation data."""

    reason = "DatasetError"
    exit_code = 11
    retryable = False


class ModelError(TrainerFailure):
    """The base model cannot be found or loaded (no config, no weights, unknown architecture)."""

    reason = "ModelError"
    exit_code = 12
    retryable = False


class NonFiniteLoss(TrainerFailure):
    """The training loss became NaN or infinite."""

    reason = "NonFiniteLoss"
    exit_code = 13
    retryable = False


class ArtifactsMissing(TrainerFailure):
    """Training finished but the artifacts could not be produced or verified."""

    reason = "ArtifactsMissing"
    exit_code = 14
    retryable = False


class StorageAccessDenied(TrainerFailure):
    """S3 refused the credentials or the request (AccessDenied, InvalidAccessKeyId,
    SignatureDoesNotMatch). Not retryable: the next pod has the same credentials."""

    reason = "StorageAccessDenied"
    exit_code = 15
    retryable = False


class StorageConflict(TrainerFailure):
    """The run's S3 prefix holds objects that another FineTuneJob (another metadata.uid) wrote.
    Not retryable, and nothing there is read, resumed from, overwritten or deleted."""

    reason = "StorageConflict"
    exit_code = 16
    retryable = False


class StorageUnavailable(TrainerFailure):
    """S3 could not be reached for longer than the retry window (s3RetrySeconds). Retryable:
    the next pod resumes from the last complete checkpoint; a finished training is uploaded
    from its final checkpoint without training again. Exit code 20: outside the 10-19 range
    that the Job's podFailurePolicy treats as final."""

    reason = "StorageUnavailable"
    exit_code = 20
    retryable = True


class GpuOutOfMemory(TrainerFailure):
    """CUDA ran out of memory. Not retryable: the next pod would run out of memory at the same
    step with the same settings, so the message names the settings to change instead."""

    reason = "GpuOutOfMemory"
    exit_code = 17
    retryable = False


class TrainerError(TrainerFailure):
    """Anything unexpected; retryable (the next pod resumes from the last checkpoint)."""
