"""Container env resolution: value, valueFrom (ConfigMap/Secret keys, fieldRef,
resourceFieldRef), envFrom (a mixin of pods.PodWorker)."""

from __future__ import annotations

import base64
import math
import re

from .kube import JSON, ApiError
from .podexec import _limit
from .podtypes import ContainerRun, _Waiting
from .util import expand, parse_quantity


class PodEnv:
    """The env part of pods.PodWorker (uses its attributes: ctx, pod, sandbox, ...)."""

    def _resolve_env(self, r: ContainerRun) -> dict[str, str]:
        env = dict(self.ctx.base_env)
        env["HOSTNAME"] = self.pod_name
        env["HOME"] = str(self._home())
        env.update(
            {
                "KUBERNETES_SERVICE_HOST": self.ctx.api_host,
                "KUBERNETES_SERVICE_PORT": str(self.ctx.api_port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.ctx.api_port),
                "KUBERNETES_PORT": f"tcp://{self.ctx.api_host}:{self.ctx.api_port}",
            }
        )
        if self.sa_dir is not None:
            env["KUBECONFIG"] = str(self.sandbox / "kubeconfig")
        gpus = _limit(r.spec, "nvidia.com/gpu")
        if gpus:
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(int(gpus)))
        cache: dict[tuple[str, str], JSON | None] = {}
        for src in r.spec.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                ref = src["configMapRef"]
                obj = self._get_ref("configmaps", ref["name"], bool(ref.get("optional")), cache)
                data = (obj or {}).get("data") or {}
            else:
                ref = src["secretRef"]
                obj = self._get_ref("secrets", ref["name"], bool(ref.get("optional")), cache)
                data = {
                    k: base64.b64decode(v).decode()
                    for k, v in ((obj or {}).get("data") or {}).items()
                }
            for k, v in data.items():
                env[prefix + k] = v
        for e in r.spec.get("env") or []:
            name = e["name"]
            if "valueFrom" not in e:
                env[name] = expand(str(e.get("value", "")), env)
                continue
            vf = e["valueFrom"]
            value: str | None
            if "fieldRef" in vf:
                value = self._field(vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                value = self._resource_field(r, vf["resourceFieldRef"])
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                value = self._key_ref("configmaps", ref, cache)
            elif "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                value = self._key_ref("secrets", ref, cache)
            else:
                raise _Waiting("CreateContainerConfigError", f"unsupported valueFrom in env {name}")
            if value is not None:
                env[name] = value
        return env

    def _get_ref(
        self, kind: str, name: str, optional: bool, cache: dict[tuple[str, str], JSON | None]
    ) -> JSON | None:
        if (kind, name) not in cache:
            try:
                cache[(kind, name)] = self.ctx.kube.get(
                    f"/api/v1/namespaces/{self.ns}/{kind}/{name}"
                )
            except ApiError as e:
                if e.status != 404:
                    raise
                cache[(kind, name)] = None
        obj = cache[(kind, name)]
        if obj is None and not optional:
            raise _Waiting("CreateContainerConfigError", f'{kind[:-1]} "{name}" not found')
        return obj

    def _key_ref(
        self, kind: str, ref: JSON, cache: dict[tuple[str, str], JSON | None]
    ) -> str | None:
        optional = bool(ref.get("optional"))
        obj = self._get_ref(kind, ref["name"], optional, cache)
        if obj is None:
            return None
        key = ref["key"]
        if kind == "secrets":
            raw = (obj.get("data") or {}).get(key)
            value = None if raw is None else base64.b64decode(raw).decode()
        else:
            value = (obj.get("data") or {}).get(key)
        if value is None and not optional:
            raise _Waiting(
                "CreateContainerConfigError",
                f"couldn't find key {key} in {kind[:-1]} {self.ns}/{ref['name']}",
            )
        return value

    def _field(self, path: str) -> str:
        pod = self.pod
        meta, spec = pod["metadata"], pod["spec"]
        simple = {
            "metadata.name": meta.get("name", ""),
            "metadata.namespace": meta.get("namespace", ""),
            "metadata.uid": meta.get("uid", ""),
            "spec.nodeName": spec.get("nodeName", self.ctx.node),
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }
        if path in simple:
            return str(simple[path])
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            items = meta.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
        raise _Waiting("CreateContainerConfigError", f"unsupported fieldRef {path}")

    def _resource_field(self, r: ContainerRun, ref: JSON) -> str:
        container = r.spec
        if ref.get("containerName"):
            found = self.find_run(ref["containerName"])
            container = found.spec if found else container
        kind, _, res = str(ref["resource"]).partition(".")
        resources = container.get("resources") or {}
        raw = (resources.get(kind) or {}).get(res)
        if raw is None and kind == "requests":
            raw = (resources.get("limits") or {}).get(res)
        if raw is None:
            raw = self.ctx.node_allocatable.get(res, "0")
        divisor = parse_quantity(str(ref.get("divisor", "1")))
        return str(math.ceil(parse_quantity(str(raw)) / divisor))
