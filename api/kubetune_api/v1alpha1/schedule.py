"""The FineTuneSchedule resource: stamps FineTuneJobs from a template, as a CronJob stamps Jobs,
on a cron schedule and/or when the training data in S3 changes.

The template's `spec` is a whole `FineTuneJobSpec`, so every FineTuneJob field (and every one
added later) works in a schedule, with the same CEL rules at apply time.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from ._base import S3Uri, Spec, WireBool, WireInt, cel, check_name_length, validations
from .spec import FineTuneJobSpec
from .status import Condition

SCHEDULE_KIND = "FineTuneSchedule"
SCHEDULE_PLURAL = "finetuneschedules"
# A stamped job is named <schedule>-<suffix> (suffix: at most 12 characters, see the operator's
# schedule.py), and a FineTuneJob name is at most MAX_NAME_LENGTH (52) characters.
MAX_SCHEDULE_NAME_LENGTH = 40
# The history kept in status.history (newest last).
STATUS_HISTORY_LENGTH = 20

# Five cron fields (minute hour day-of-month month day-of-week) or a macro. The API server checks
# the shape; the operator checks the values (cronsim) and names spec.schedule in the
# ScheduleValid condition when one is out of range (CEL has no cron parser).
_CRON_FIELD = r"[0-9A-Za-z*/,\-?#]+"
CRON_PATTERN = (
    r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|"
    rf"{_CRON_FIELD}( {_CRON_FIELD}){{4}})$"
)
TIME_ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$"


class ConcurrencyPolicy(StrEnum):
    """What to do when a run is due while an earlier stamped run is still active."""

    FORBID = "Forbid"  # hold the new run until the active one finishes
    REPLACE = "Replace"  # delete the active run, start the new one
    ALLOW = "Allow"  # start the new run beside it


class ScheduleTrigger(StrEnum):
    """What started a stamped run (status.lastRun.trigger, the stamped job's annotation)."""

    SCHEDULE = "Schedule"
    DATASET_CHANGE = "DatasetChange"


class ScheduleReason(StrEnum):
    """Why the last check did or did not start a run: the reason of the `RunStarted`
    condition and of the schedule's Events. `ScheduleValid` uses the last five."""

    # a run was started
    SCHEDULED = "Scheduled"  # the cron schedule came due
    DATASET_CHANGED = "DatasetChanged"  # the dataset's fingerprint changed
    REPLACED = "Replaced"  # ... and the active run was deleted first (Replace)
    # no run was started
    NOT_DUE = "NotDue"  # nothing came due (cron only)
    DATASET_UNCHANGED = "DatasetUnchanged"  # the fingerprint is the one seen before
    DATASET_BASELINE = "DatasetBaseline"  # first fingerprint seen: recorded, no run
    SUSPENDED = "Suspended"  # spec.suspend
    FORBID_CONCURRENT = "ForbidConcurrent"  # due, but a run is active (Forbid): held
    MISSED_DEADLINE = "MissedDeadline"  # due longer ago than startingDeadlineSeconds: skipped
    RUN_NAME_TAKEN = "RunNameTaken"  # the run's name is a FineTuneJob not stamped by us
    # the schedule itself (ScheduleValid condition)
    VALID = "Valid"
    INVALID_SCHEDULE = "InvalidSchedule"  # spec.schedule / spec.timeZone cannot be evaluated
    DATASET_UNREADABLE = "DatasetUnreadable"  # the fingerprint could not be taken
    DATASET_NOT_ALLOWED = "DatasetNotAllowed"  # a watched URI is outside schedules.watchPrefixes
    INVALID_TEMPLATE = "InvalidTemplate"  # spec.template does not make a valid FineTuneJob


class ScheduleConditionType(StrEnum):
    RUN_STARTED = "RunStarted"  # the last check: True with the trigger, False with why not
    SCHEDULE_VALID = "ScheduleValid"  # spec evaluable and the dataset readable


class DatasetChangeTrigger(Spec):
    """Start a run when the training data in S3 changes: the operator takes a fingerprint (the
    ETag of one object, or a sha256 of the keys and ETags of every object under a prefix) every
    `intervalSeconds`, and a new fingerprint starts one run. The first fingerprint is recorded
    as the baseline and starts nothing."""

    interval_seconds: WireInt = Field(
        default=300,
        ge=2,
        le=86400,
        description="Seconds between two fingerprints of the data (a HEAD, or a listing of "
        "the prefix, with the operator's credentials).",
    )
    s3_uri: S3Uri | None = Field(
        default=None,
        description="What to watch: s3://bucket/key of one object, or s3://bucket/prefix/ "
        "(ending in /) of many. Default: the template's spec.dataset.s3Uri and, if set, "
        "spec.dataset.validation.s3Uri.",
    )


class Triggers(Spec):
    """Triggers besides the cron schedule."""

    dataset_change: DatasetChangeTrigger | None = Field(
        default=None, description="Start a run when the data in S3 changes."
    )


class TemplateMetadata(Spec):
    """Labels and annotations copied onto every stamped FineTuneJob (the operator adds its own:
    kubetune.io/schedule and the lineage annotations)."""

    labels: dict[str, str] = Field(default_factory=dict, description="Labels of each run.")
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations of each run."
    )


class FineTuneJobTemplate(Spec):
    """The FineTuneJob each run is made from."""

    metadata: TemplateMetadata = Field(
        default_factory=TemplateMetadata, description="Labels and annotations of each run."
    )
    spec: FineTuneJobSpec = Field(description="The FineTuneJob spec of each run.")


_TRIGGER_RULE = cel(
    "has(self.schedule) || (has(self.trigger) && has(self.trigger.datasetChange))",
    "set spec.schedule (a cron expression), spec.trigger.datasetChange, or both",
)
_WATCH_RULE = cel(
    "!has(self.trigger) || !has(self.trigger.datasetChange) || "
    "has(self.trigger.datasetChange.s3Uri) || has(self.template.spec.dataset.s3Uri)",
    "trigger.datasetChange watches S3: the template's spec.dataset needs an s3Uri, or set "
    "trigger.datasetChange.s3Uri",
    ".trigger.datasetChange",
)
_TZ_RULE = cel(
    "!has(self.timeZone) || has(self.schedule)",
    "timeZone applies only with a cron schedule",
    ".timeZone",
)


class FineTuneScheduleSpec(Spec):
    """When to stamp a FineTuneJob from `template`, and what to do with the runs."""

    api_path = "spec"

    model_config = ConfigDict(json_schema_extra=validations(_TRIGGER_RULE, _WATCH_RULE, _TZ_RULE))

    schedule: str | None = Field(
        default=None,
        max_length=256,
        pattern=CRON_PATTERN,
        description="Cron expression (minute hour day-of-month month day-of-week, e.g. "
        "'0 3 * * 1' for 03:00 every Monday) or a macro (@daily, @hourly, ...).",
    )
    time_zone: str | None = Field(
        default=None,
        max_length=64,
        pattern=TIME_ZONE_PATTERN,
        description="IANA time zone of the schedule, e.g. Europe/Berlin. Default: UTC.",
    )
    trigger: Triggers | None = Field(
        default=None, description="Triggers besides the cron schedule (data changes)."
    )
    template: FineTuneJobTemplate = Field(description="The FineTuneJob each run is made from.")
    concurrency_policy: ConcurrencyPolicy = Field(
        default=ConcurrencyPolicy.FORBID,
        description="A run due while an earlier one is active: Forbid holds it until the "
        "active one finishes, Replace deletes the active one, Allow runs both.",
    )
    suspend: WireBool = Field(
        default=False,
        description="Start no run while true (runs already started go on). A change of the "
        "data or a cron time missed while suspended starts one run on resume.",
    )
    starting_deadline_seconds: WireInt | None = Field(
        default=None,
        ge=1,
        description="A cron run not started within this many seconds of its time (operator "
        "down, Forbid, suspended) is skipped (MissedDeadline). Default: no deadline.",
    )
    successful_jobs_history_limit: WireInt = Field(
        default=3, ge=0, le=100, description="Succeeded runs to keep (older ones are deleted)."
    )
    failed_jobs_history_limit: WireInt = Field(
        default=1, ge=0, le=100, description="Failed runs to keep (older ones are deleted)."
    )


class ScheduledRun(Spec):
    """One run the schedule stamped."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="The FineTuneJob's name.")
    trigger: str = Field(description="Schedule or DatasetChange.")
    reason: str = Field(description="Scheduled, DatasetChanged or Replaced.")
    time: str = Field(description="When it was stamped (RFC 3339).")
    scheduled_time: str | None = Field(
        default=None, description="The cron time it was stamped for (Schedule runs)."
    )
    dataset_fingerprint: str | None = Field(
        default=None, description="The data's fingerprint it was stamped for."
    )
    previous: str | None = Field(default=None, description="The run stamped before it (lineage).")


class FineTuneScheduleStatus(Spec):
    """What the schedule last did, and why."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(
        default=None, description="metadata.generation of the spec last acted on."
    )
    last_schedule_time: str | None = Field(
        default=None, description="The cron time of the last cron run started or skipped."
    )
    last_check_time: str | None = Field(default=None, description="When the operator last looked.")
    next_run_time: str | None = Field(
        default=None, description="The next cron time (cron schedules only)."
    )
    next_check_time: str | None = Field(
        default=None, description="When the operator looks next (cron time or data check)."
    )
    dataset_fingerprint: str | None = Field(
        default=None,
        description="sha256 of the watched objects' keys and ETags the last run (or the "
        "baseline) was started for.",
    )
    dataset_checked_time: str | None = Field(
        default=None, description="When the data was last fingerprinted."
    )
    last_run: ScheduledRun | None = Field(default=None, description="The last run stamped.")
    active: list[str] = Field(default_factory=list, description="Stamped runs still active.")
    history: list[ScheduledRun] = Field(
        default_factory=list,
        description=f"The last {STATUS_HISTORY_LENGTH} runs stamped, oldest first.",
    )
    reason: str | None = Field(
        default=None, description="Why the last check did or did not start a run."
    )
    message: str | None = Field(default=None, description="The same, in words.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="RunStarted (the last check's decision) and ScheduleValid.",
    )


class FineTuneSchedule(Spec):
    """Stamps FineTuneJobs from a template, as a CronJob stamps Jobs: on a cron schedule and/or
    when the training data in S3 changes, with a concurrency policy, history limits, suspend,
    and lineage between the runs it stamps."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["kubetune.io/v1alpha1"] = Field(
        default="kubetune.io/v1alpha1", description="kubetune.io/v1alpha1"
    )
    kind: Literal["FineTuneSchedule"] = Field(
        default="FineTuneSchedule", description="FineTuneSchedule"
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: FineTuneScheduleSpec = Field(description="Desired state.")
    status: FineTuneScheduleStatus | None = Field(default=None, description="Observed state.")

    @model_validator(mode="after")
    def _check(self) -> FineTuneSchedule:
        check_name_length(
            self.metadata,
            MAX_SCHEDULE_NAME_LENGTH,
            "each run is a FineTuneJob named <schedule>-<suffix>",
        )
        return self
