"""kubetune SDK: submit and follow FineTuneJobs from Python (see docs/sdk.md)."""

from kubetune.client import CANCELLED_ANNOTATION, Client, JobFailed

__all__ = ["CANCELLED_ANNOTATION", "Client", "JobFailed"]
