"""`spec.pod` and the platform's pod-wide settings, applied to a rendered Job: labels and
annotations (Job and pods), image pull secrets, extra environment, an extra CA bundle, and the
Hub token of a private dataset. Pure: it only adds to what render.job built, and never
overrides a label, annotation or variable the operator set (the API refuses reserved keys and
names; this module skips them again, so an object from before that rule cannot either)."""

from __future__ import annotations

from typing import Any

from kubetune_api.v1alpha1 import FineTuneJobSpec

from .settings import OperatorSettings

# Beside, not inside, the config volume (/etc/kubetune): a mount point cannot be created inside
# a read-only volume.
CA_DIR = "/etc/kubetune-ca"
CA_VOLUME = "extra-ca"
DATASET_TOKEN_ENV = "KUBETUNE_DATASET_HF_TOKEN"


def _add_missing(target: dict[str, str], extra: dict[str, str] | None) -> None:
    for key, value in (extra or {}).items():
        target.setdefault(key, value)


def _metadata(job: dict[str, Any], spec: FineTuneJobSpec) -> None:
    opts = spec.pod
    if opts is None:
        return
    template_meta = job["spec"]["template"]["metadata"]
    for meta in (job["metadata"], template_meta):
        _add_missing(meta.setdefault("labels", {}), opts.labels)
        _add_missing(meta.setdefault("annotations", {}), opts.annotations)


def _pull_secrets(pod: dict[str, Any], spec: FineTuneJobSpec, settings: OperatorSettings) -> None:
    names = list(settings.trainer_image_pull_secrets)
    if spec.pod is not None:
        names += [n for n in spec.pod.image_pull_secrets or [] if n not in names]
    if names:
        pod["imagePullSecrets"] = [{"name": n} for n in names]


def _environment(container: dict[str, Any], spec: FineTuneJobSpec) -> None:
    env: list[dict[str, Any]] = container.setdefault("env", [])
    taken = {e["name"] for e in env}
    ref = spec.dataset.token_secret_ref
    if ref is not None:
        env.append(
            {
                "name": DATASET_TOKEN_ENV,
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
            }
        )
    opts = spec.pod
    if opts is None:
        return
    env += [{"name": v.name, "value": v.value} for v in opts.env or [] if v.name not in taken]
    sources = []
    for src in opts.env_from or []:
        entry: dict[str, Any] = (
            {"configMapRef": {"name": src.config_map_ref.name}}
            if src.config_map_ref is not None
            else {"secretRef": {"name": src.secret_ref.name}}  # type: ignore[union-attr]
        )
        if src.prefix:
            entry["prefix"] = src.prefix
        sources.append(entry)
    if sources:
        container["envFrom"] = sources


def _ca_bundle(pod: dict[str, Any], container: dict[str, Any], spec: FineTuneJobSpec,
               settings: OperatorSettings) -> None:  # fmt: skip
    """The run's own bundle wins over the platform's (chart value trainer.extraCABundle)."""
    ref = spec.pod.extra_ca_bundle if spec.pod is not None else None
    name, key = (ref.name, ref.key) if ref is not None else (
        settings.extra_ca_bundle_config_map, settings.extra_ca_bundle_key
    )  # fmt: skip
    if not name:
        return
    pod["volumes"].append(
        {"name": CA_VOLUME, "configMap": {"name": name, "items": [{"key": key, "path": key}]}}
    )
    container["volumeMounts"].append({"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": True})
    container["env"].append({"name": "KUBETUNE_EXTRA_CA_BUNDLE", "value": f"{CA_DIR}/{key}"})


def apply(job: dict[str, Any], spec: FineTuneJobSpec, settings: OperatorSettings) -> None:
    """Add the pod options to a Job rendered by render.job (in place)."""
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    _metadata(job, spec)
    _pull_secrets(pod, spec, settings)
    _environment(container, spec)
    _ca_bundle(pod, container, spec, settings)


def secret_refs(spec: FineTuneJobSpec) -> list[tuple[str, str]]:
    """(spec field, Secret name) of the Secrets the pod options make the pod read."""
    refs: list[tuple[str, str]] = []
    if spec.dataset.token_secret_ref is not None:
        refs.append(("dataset.tokenSecretRef", spec.dataset.token_secret_ref.name))
    for i, src in enumerate(spec.pod.env_from or [] if spec.pod else []):
        if src.secret_ref is not None:
            refs.append((f"pod.envFrom[{i}].secretRef", src.secret_ref.name))
    return refs
