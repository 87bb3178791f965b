"""`spec.resources.affinity`: core/v1 Affinity as the typed object it is.

Field for field the shape of `io.k8s.api.core.v1.Affinity`, with the same required fields and
operator enums, so a malformed affinity is refused at `kubectl apply` naming the field instead of
passing a free-form schema and failing later when the operator creates the Job. Values the core
validation checks further (label key syntax, In/NotIn needing values) are checked by CEL here too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from ._base import LabelValue, Spec, WireInt, cel, validations

# A qualified name with an optional DNS-subdomain prefix: what label keys and topology keys are.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


def _key(description: str) -> object:
    return Field(max_length=316, pattern=LABEL_KEY_PATTERN, description=description)


_VALUES_RULE = cel(
    "self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : "
    "(self.operator in ['Exists', 'DoesNotExist'] ? size(self.values) == 0 : "
    "size(self.values) == 1)",
    "values: In/NotIn need at least one value, Exists/DoesNotExist none, Gt/Lt exactly one",
    ".values",
)


class NodeSelectorRequirement(Spec):
    """A node label (or field) requirement: key, operator and values."""

    model_config = ConfigDict(json_schema_extra=validations(_VALUES_RULE))

    key: str = _key("The node label key.")  # type: ignore[assignment]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        description="In, NotIn, Exists, DoesNotExist, Gt or Lt."
    )
    values: list[str] = Field(
        default_factory=list, max_length=64, description="Values; see operator."
    )


class NodeSelectorTerm(Spec):
    """Requirements ANDed together."""

    match_expressions: list[NodeSelectorRequirement] | None = Field(
        default=None, max_length=32, description="Requirements on node labels."
    )
    match_fields: list[NodeSelectorRequirement] | None = Field(
        default=None, max_length=32, description="Requirements on node fields."
    )


class NodeSelector(Spec):
    """Terms ORed together."""

    node_selector_terms: list[NodeSelectorTerm] = Field(
        min_length=1, max_length=32, description="At least one term; any may match."
    )


class PreferredSchedulingTerm(Spec):
    """A weighted node preference."""

    weight: WireInt = Field(ge=1, le=100, description="1-100.")
    preference: NodeSelectorTerm = Field(description="The preferred node term.")


class NodeAffinity(Spec):
    """Node affinity (required and/or preferred terms)."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Nodes the pod must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = (
        Field(default=None, max_length=32, description="Nodes the pod prefers.")
    )


class LabelSelectorRequirement(Spec):
    """A label requirement of a label selector."""

    model_config = ConfigDict(json_schema_extra=validations(_VALUES_RULE))

    key: str = _key("The label key.")  # type: ignore[assignment]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[str] = Field(
        default_factory=list, max_length=64, description="Values; see operator."
    )


class LabelSelector(Spec):
    """A label selector (matchLabels and matchExpressions, ANDed)."""

    match_labels: dict[str, LabelValue] | None = Field(
        default=None, max_length=64, description="Labels that must match exactly."
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=32, description="Requirements on labels."
    )


class PodAffinityTerm(Spec):
    """Pods (by label selector, in namespaces) the pod should be co-located with or kept from."""

    label_selector: LabelSelector | None = Field(default=None, description="The pods.")
    namespaces: list[str] | None = Field(
        default=None, max_length=32, description="Their namespaces; default the pod's."
    )
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Their namespaces, by label."
    )
    topology_key: str = _key(  # type: ignore[assignment]
        "The node label whose value defines 'co-located', e.g. kubernetes.io/hostname."
    )
    match_label_keys: list[str] | None = Field(
        default=None, max_length=32, description="Pod label keys merged into labelSelector."
    )
    mismatch_label_keys: list[str] | None = Field(
        default=None, max_length=32, description="Pod label keys negated into labelSelector."
    )


class WeightedPodAffinityTerm(Spec):
    """A weighted pod (anti-)affinity preference."""

    weight: WireInt = Field(ge=1, le=100, description="1-100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The term.")


class PodAffinity(Spec):
    """Pod affinity or anti-affinity (required and/or preferred terms)."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(
        default=None, max_length=32, description="Terms that must hold."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = (
        Field(default=None, max_length=32, description="Terms preferred.")
    )


class Affinity(Spec):
    """core/v1 Affinity of the trainer pod."""

    node_affinity: NodeAffinity | None = Field(default=None, description="Node affinity.")
    pod_affinity: PodAffinity | None = Field(default=None, description="Pod affinity.")
    pod_anti_affinity: PodAffinity | None = Field(default=None, description="Pod anti-affinity.")
