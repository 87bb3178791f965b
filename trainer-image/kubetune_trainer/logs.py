"""Logging for `kubectl logs`: one readable line per event on stdout, secrets redacted.

Credentials only ever arrive as environment variables (docs/design.md); a filter on the root
handler replaces their values wherever they would appear in a message, including exceptions
raised by libraries that echo request details.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Time to first step (issue 19): the trainer's start (pipeline.run sets "t0"), the model's
# resolve (download) and load seconds, and the seconds from the start to the end of the first
# optimizer step (callbacks.ConsoleLogCallback). The manifest's speed.startup carries them.
STARTUP: dict[str, float] = {}

# AWS_ACCESS_KEY_ID is an identifier, not a secret (and often a plain word on MinIO): it stays.
SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "WANDB_API_KEY",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
)
MASK = "***"


def secret_values() -> list[str]:
    """Values of the secret variables set now (at least 6 characters, longest first)."""
    vals = {os.environ.get(k, "") for k in SECRET_ENV}
    return sorted((v for v in vals if len(v) >= 6), key=len, reverse=True)


def redact(text: str, secrets: list[str] | None = None) -> str:
    for s in secret_values() if secrets is None else secrets:
        text = text.replace(s, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Renders the record's message once, redacts it and freezes it (args cleared)."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        if not secrets:
            return True
        try:
            msg = record.getMessage()
        except Exception:  # a broken format string should still log something
            msg = str(record.msg)
        record.msg = redact(msg, secrets)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), secrets)
            record.exc_info = None
        return True


def setup(level: int = logging.INFO) -> None:
    """Root logger to stdout, quiet third-party progress bars and chatty libraries."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "filelock", "fsspec", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Not actionable in a pod: bitsandbytes' optional CPU kernel package (the trainer says
    # itself when qlora runs on CPU) and checkpoint rotation's filesystem mtime probe.
    for quiet in ("bitsandbytes.backends.cpu.ops", "transformers.trainer_utils"):
        logging.getLogger(quiet).setLevel(logging.ERROR)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    # Library deprecation chatter is for library users, not for `kubectl logs` readers.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.captureWarnings(True)


def quiet_libraries() -> None:
    """After importing transformers/datasets: route their loggers through ours, at warning."""
    try:
        import datasets
        import transformers

        transformers.logging.set_verbosity_warning()
        transformers.logging.disable_default_handler()
        transformers.logging.enable_propagation()
        transformers.logging.disable_progress_bar()
        datasets.logging.set_verbosity_warning()
        datasets.disable_progress_bars()
    except Exception:  # pragma: no cover - logging setup must never fail the run
        pass
