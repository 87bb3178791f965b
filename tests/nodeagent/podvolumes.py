"""Pod volumes: the per-pod sandbox, ConfigMap/Secret/projected/emptyDir volumes, the
service-account token files, and the mounts each container sees (a mixin of pods.PodWorker)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import shutil
import sys
from pathlib import Path

from .kube import JSON, ApiError
from .podtypes import HOSTS_INDEXES, SA_DIR, TOKEN_EXPIRATION, ContainerRun, _Waiting

log = logging.getLogger("nodeagent.pods")


def host_paths_in_use(state_dir: Path) -> list[Path]:
    """Host paths a container process needs to stay visible in its mount namespace."""
    checkout = Path(__file__).resolve().parents[2]
    paths = {state_dir.resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    paths.add(checkout)
    return sorted(paths)


def hidden_host_path(dst: str, needed: list[Path]) -> Path | None:
    """The first of `needed` that a mount at `dst` would cover (dst is it or an ancestor)."""
    target = Path(dst)
    for path in needed:
        if target == path or target in path.parents:
            return path
    return None


def _configmap_files(obj: JSON | None) -> dict[str, bytes]:
    if obj is None:
        return {}
    files = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return files


def _secret_files(obj: JSON | None) -> dict[str, bytes]:
    if obj is None:
        return {}
    return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}


class PodVolumes:
    """The volumes part of pods.PodWorker (uses its attributes: ctx, pod, sandbox, ...)."""

    def _mounts(self, r: ContainerRun, for_image: bool = False) -> list[tuple[Path, str, bool]]:
        mounts: list[tuple[Path, str, bool]] = []
        for m in r.spec.get("volumeMounts") or []:
            src = self.volume_dirs.get(m["name"])
            if src is None:
                continue
            sub = m.get("subPath") or m.get("subPathExpr")
            if sub:
                src = src / sub
                if not src.exists():
                    src.mkdir(parents=True, exist_ok=True)
            mounts.append((src, str(m["mountPath"]).rstrip("/") or "/", bool(m.get("readOnly"))))
        paths = {dst for _, dst, _ in mounts}
        if self.sa_dir is not None and SA_DIR not in paths:
            mounts.append((self.sa_dir, SA_DIR, True))
        term = r.spec.get("terminationMessagePath") or "/dev/termination-log"
        if r.term_path is not None and term not in paths:
            mounts.append((r.term_path, term, False))
        hosts = self._hosts_file()
        if hosts is not None and "/etc/hosts" not in paths:
            mounts.append((hosts, "/etc/hosts", True))
        mounts.sort(key=lambda m: (m[1].count("/"), m[1]))
        if for_image:  # its own root filesystem: no host path to protect
            return mounts
        return [m for m in mounts if not self._hides_host(m[1])]

    def _hosts_file(self) -> Path | None:
        """A stand-in for cluster DNS, for pods with a hostname and subdomain (the pods of an
        Indexed Job behind a headless Service): /etc/hosts resolving the names of the group's
        pods, `<prefix>-<i>.<subdomain>[.<ns>[.svc[.cluster.local]]]` for i < HOSTS_INDEXES,
        to 127.0.0.1, where every pod of every node agent runs. Other names resolve as on the
        host (its own /etc/hosts is kept on top)."""
        spec = self.pod["spec"]
        hostname, subdomain = spec.get("hostname"), spec.get("subdomain")
        if not hostname or not subdomain:
            return None
        m = re.fullmatch(r"(.+)-([0-9]+)", str(hostname))
        names = [f"{m.group(1)}-{i}" for i in range(HOSTS_INDEXES)] if m else [str(hostname)]
        lines = []
        with contextlib.suppress(OSError):
            lines.append(Path("/etc/hosts").read_text().rstrip("\n"))
        lines.append(f"# kubetune node agent: pods of {self.ns}/{subdomain}")
        for name in names:
            fqdn = [f"{name}.{subdomain}", f"{name}.{subdomain}.{self.ns}"]
            fqdn += [f"{fqdn[1]}.svc", f"{fqdn[1]}.svc.cluster.local"]
            lines.append("127.0.0.1 " + " ".join(fqdn))
        path = self.sandbox / "etc-hosts"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _hides_host(self, dst: str) -> bool:
        """A stand-in limit: containers share the host's filesystem, so a volume mounted at a
        path that holds what the process itself runs from (the agent's state dir with the
        sandbox, the Python environment, the checkout) would hide it, e.g. a pod mounting /tmp
        on a machine whose checkout lives under /tmp. Such a mount is skipped, with a log line;
        a kubelet has no such problem (each container has its own root filesystem)."""
        needed = hidden_host_path(dst, host_paths_in_use(self.ctx.state_dir))
        if needed is not None:
            log.warning(
                "%s/%s: not mounting a volume at %s: it would hide %s, which the container "
                "runs from on this host (stand-in limit)",
                self.ns, self.pod_name, dst, needed,
            )  # fmt: skip
        return needed is not None

    def _prepare_sandbox(self) -> None:
        announced: set[str] = set()
        while True:
            self._check()
            try:
                self._materialize_volumes()
                return
            except _Waiting as w:
                if w.message not in announced:
                    announced.add(w.message)
                    self._event("Warning", "FailedMount", w.message)
                self._sleep(2.0)

    def _materialize_volumes(self) -> None:
        vol_root = self.sandbox / "volumes"
        vol_root.mkdir(parents=True, exist_ok=True)
        spec = self.pod["spec"]
        if spec.get("automountServiceAccountToken") is not False:
            self._write_service_account()
        for v in spec.get("volumes") or []:
            name = v["name"]
            d = vol_root / name
            if "emptyDir" in v:
                d.mkdir(exist_ok=True)
                d.chmod(0o777)  # as kubelet makes it: writable by the pod's (non-root) user
            elif "configMap" in v:
                src = v["configMap"]
                obj = self._volume_source("configmaps", src["name"], bool(src.get("optional")))
                self._write_files(
                    d,
                    _configmap_files(obj),
                    src.get("items"),
                    src.get("defaultMode", 0o644),
                    bool(src.get("optional")),
                )
            elif "secret" in v:
                src = v["secret"]
                obj = self._volume_source("secrets", src["secretName"], bool(src.get("optional")))
                self._write_files(
                    d,
                    _secret_files(obj),
                    src.get("items"),
                    src.get("defaultMode", 0o644),
                    bool(src.get("optional")),
                )
            elif "projected" in v:
                self._projected(d, v["projected"])
            elif "downwardAPI" in v:
                src = v["downwardAPI"]
                files = {
                    i["path"]: self._field(i["fieldRef"]["fieldPath"]).encode()
                    for i in src.get("items") or []
                    if "fieldRef" in i
                }
                self._write_files(d, files, None, src.get("defaultMode", 0o644), False)
            elif "hostPath" in v:
                hp = v["hostPath"]
                path = Path(hp["path"])
                if hp.get("type") == "DirectoryOrCreate":
                    path.mkdir(parents=True, exist_ok=True)
                elif hp.get("type") == "FileOrCreate" and not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
                d = path
            elif "persistentVolumeClaim" in v:
                d = self.ctx.state_dir / "pvc" / self.ns / v["persistentVolumeClaim"]["claimName"]
                d.mkdir(parents=True, exist_ok=True)
            else:
                kinds = [k for k in v if k != "name"]
                raise _Waiting(
                    "FailedMount",
                    f"volume {name}: type {kinds} is not supported by the kubetune node agent",
                )
            self.volume_dirs[name] = d

    def _volume_source(self, kind: str, name: str, optional: bool) -> JSON | None:
        try:
            return self.ctx.kube.get(f"/api/v1/namespaces/{self.ns}/{kind}/{name}")
        except ApiError as e:
            if e.status == 404 and optional:
                return None
            if e.status == 404:
                raise _Waiting(
                    "FailedMount", f'MountVolume.SetUp failed: {kind[:-1]} "{name}" not found'
                ) from e
            raise

    def _write_files(
        self, d: Path, files: dict[str, bytes], items: list[JSON] | None, mode: int, optional: bool
    ) -> None:
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        selected: list[tuple[str, bytes, int]] = []
        if items:
            for item in items:
                if item["key"] not in files:
                    if optional or item.get("optional"):
                        continue
                    raise _Waiting(
                        "FailedMount", f"MountVolume.SetUp failed: key {item['key']} not found"
                    )
                selected.append((item["path"], files[item["key"]], item.get("mode", mode)))
        else:
            selected = [(k, v, mode) for k, v in files.items()]
        for rel, data, m in selected:
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            p.chmod(m)
        shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)

    def _projected(self, d: Path, proj: JSON) -> None:
        mode = proj.get("defaultMode", 0o644)
        files: dict[str, bytes] = {}
        for src in proj.get("sources") or []:
            if "serviceAccountToken" in src:
                t = src["serviceAccountToken"]
                token = self._token(
                    t.get("audience"), int(t.get("expirationSeconds", TOKEN_EXPIRATION))
                )
                files[t["path"]] = token.encode()
            elif "configMap" in src or "secret" in src:
                kind = "configMap" if "configMap" in src else "secret"
                s = src[kind]
                optional = bool(s.get("optional"))
                obj = self._volume_source(
                    "configmaps" if kind == "configMap" else "secrets", s["name"], optional
                )
                data = _configmap_files(obj) if kind == "configMap" else _secret_files(obj)
                if s.get("items"):
                    for item in s["items"]:
                        if item["key"] in data:
                            files[item["path"]] = data[item["key"]]
                        elif not optional:
                            raise _Waiting(
                                "FailedMount",
                                f"MountVolume.SetUp failed: key {item['key']} not found in {s['name']}",
                            )
                else:
                    files.update(data)
            elif "downwardAPI" in src:
                for item in src["downwardAPI"].get("items") or []:
                    if "fieldRef" in item:
                        files[item["path"]] = self._field(item["fieldRef"]["fieldPath"]).encode()
            else:
                log.warning(
                    "%s/%s: projected source %s not supported; skipped",
                    self.ns,
                    self.pod_name,
                    list(src),
                )
        self._write_files(d, files, None, mode, False)

    def _token(self, audience: str | None, expiration: int) -> str:
        spec: JSON = {
            "expirationSeconds": expiration,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.pod_name,
                "uid": self.uid,
            },
        }
        if audience:
            spec["audiences"] = [audience]
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        try:
            resp = self.ctx.kube.create(
                f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            )
        except ApiError as e:
            if e.status in (403, 404):
                raise _Waiting(
                    "FailedMount", f'failed to fetch token for service account "{sa}": {e.message}'
                ) from e
            raise
        return str(resp["status"]["token"])

    def _write_service_account(self) -> None:
        """Token, CA and namespace for the pod's service account plus a kubeconfig using them."""
        sa_dir = self.sandbox / "serviceaccount"
        files = {
            "token": self._token(None, TOKEN_EXPIRATION).encode(),
            "ca.crt": self.ctx.ca_file.read_bytes(),
            "namespace": self.ns.encode(),
        }
        self._write_files(sa_dir, files, None, 0o644, False)
        server = f"https://{self.ctx.api_host}:{self.ctx.api_port}"
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kubetune",
                    "cluster": {"server": server, "certificate-authority": str(sa_dir / "ca.crt")},
                }
            ],
            "users": [
                {
                    "name": f"system:serviceaccount:{self.ns}:{sa}",
                    "user": {"tokenFile": str(sa_dir / "token")},
                }
            ],
            "contexts": [
                {
                    "name": "in-pod",
                    "context": {
                        "cluster": "kubetune",
                        "user": f"system:serviceaccount:{self.ns}:{sa}",
                        "namespace": self.ns,
                    },
                }
            ],
            "current-context": "in-pod",
        }
        (self.sandbox / "kubeconfig").write_text(json.dumps(kubeconfig, indent=1))
        self.sa_dir = sa_dir
