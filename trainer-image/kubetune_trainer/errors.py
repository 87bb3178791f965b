"""Failures the trainer reports, each with the reason and exit code of docs/design.md.

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


class TrainerError(TrainerFailure):
    """Anything unexpected; retryable (the next pod resumes from the last checkpoint)."""
