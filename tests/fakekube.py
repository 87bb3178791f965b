"""An in-memory Kubernetes API server behind the operator's own `Kube` client (the middle tier).

`FakeKube` subclasses `kubetune_operator.k8s.Kube` and replaces only `request` (the HTTP
transport), so `get`, `create`, `delete`, `merge_patch`, `post_event` and the leader elector's
raw requests all run their real code against it. It keeps the API server's rules that the
operator relies on:

  * POST of an existing name: 409 AlreadyExists; GET/PATCH/PUT/DELETE of a missing one: 404;
  * every write bumps `metadata.resourceVersion`; a PUT carrying a stale one: 409 Conflict;
  * DELETE with `preconditions.uid` of another object: 409 Conflict;
  * a spec change bumps `metadata.generation`; `/status` writes only the status and the main
    resource never writes the status (the FineTuneJob CRD has the status subresource);
  * deleting an owner deletes its dependents (the garbage collector, at once);
  * list with an equality label selector (`a=b,c=d`).

Every request is recorded as a `Call(verb, group, resource)` with the RBAC verb (get, list,
create, update, patch, delete) and resource (`finetunejobs/status` for the subresource), which is
what the chart's Roles must grant (tests/middle/test_rbac_seen.py).

Crash windows: `crash_at(n, before=...)` makes request number n (0-based, counted from the call)
raise `Crash` before or after the server carried it out, as a process dying there would;
`crash_on(verb, resource)` does it at the next such request.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from kubetune_operator.k8s import KINDS, ApiError, Kube

JSON = dict[str, Any]

# Resources with a status subresource: the main resource ignores `status` in writes.
_STATUS_SUBRESOURCE = {
    ("kubetune.io", "finetunejobs"),
    ("kubetune.io", "finetuneschedules"),
    ("batch", "jobs"),
    ("", "pods"),
}
_GENERATION = {
    ("kubetune.io", "finetunejobs"),
    ("kubetune.io", "finetuneschedules"),
    ("batch", "jobs"),
}
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class Crash(BaseException):
    """The operator process died here (a BaseException, so no `except Exception` catches it)."""


@dataclass(frozen=True)
class Call:
    verb: str  # the RBAC verb
    group: str  # "" for the core group
    resource: str  # plural, or plural/subresource
    namespace: str | None
    name: str | None

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.name else (self.namespace or "*")
        group = self.group or "core"
        return f"{self.verb} {group}/{self.resource} {where}"


@dataclass(frozen=True)
class _Url:
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    sub: str | None


def parse_url(url: str) -> _Url:
    parts = [unquote(p) for p in url.strip("/").split("/")]
    if parts[0] == "api":  # /api/v1/...
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis":  # /apis/<group>/<version>/...
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise ValueError(f"not an API path: {url}")
    namespace = None
    if rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return _Url(group, version, plural, namespace, name, sub)


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def _matches(obj: JSON, selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj["metadata"].get("labels") or {}
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeKube(Kube):
    """An API server in a dict; see the module docstring."""

    def __init__(self) -> None:  # no API client: `request` below is the whole transport
        self.objects: dict[tuple[str, str, str | None, str], JSON] = {}
        self.calls: list[Call] = []
        self._rv = 1000
        self._crash: tuple[int, bool] | None = None
        self._crash_on: tuple[str, str, bool] | None = None
        # Called with each Call before it is served (to interleave another client, or fail it).
        self.on_request: Callable[[Call], None] | None = None
        self._now = datetime(2026, 1, 1, tzinfo=UTC)

    # ------------------------------------------------------------------------ test controls

    def crash_at(self, n: int | None, *, before: bool = True) -> None:
        """Request number `n` from now raises Crash, before or after it takes effect."""
        self._crash = None if n is None else (len(self.calls) + n, before)

    def crash_on(self, verb: str, resource: str, *, before: bool = True) -> None:
        """The next `verb` request on `resource` raises Crash, before or after it takes effect."""
        self._crash_on = (verb, resource, before)

    @property
    def revision(self) -> int:
        """Grows with every write the server carried out."""
        return self._rv

    def verbs(self) -> set[tuple[str, str, str]]:
        """Every (group, resource, verb) seen so far."""
        return {(c.group, c.resource, c.verb) for c in self.calls}

    def put(self, obj: JSON) -> JSON:
        """Store `obj` as another client would (no call recorded); returns the stored copy."""
        group, plural = _kind_key(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", self._stamp())
        if (group, plural) in _GENERATION:
            meta.setdefault("generation", 1)
        meta["resourceVersion"] = self._next_rv()
        stored = copy.deepcopy(obj)
        self.objects[(group, plural, meta.get("namespace"), meta["name"])] = stored
        return copy.deepcopy(stored)

    @staticmethod
    def key(kind: str) -> tuple[str, str]:
        """(API group, plural) of a kind in the operator's kind table."""
        return _kind_key({"kind": kind})

    def find(self, kind: str, namespace: str, name: str) -> JSON | None:
        obj = self.objects.get((*self.key(kind), namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def all(self, kind: str, namespace: str | None = None) -> list[JSON]:
        group, plural = self.key(kind)
        return [
            copy.deepcopy(o)
            for (g, p, ns, _), o in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
            if (g, p) == (group, plural) and (namespace is None or ns == namespace)
        ]

    def edit(self, kind: str, namespace: str, name: str, patch: JSON) -> JSON:
        """Merge-patch an object as a controller would (status included; no call recorded)."""
        obj = self.find(kind, namespace, name)
        assert obj is not None, f"{kind} {namespace}/{name} does not exist"
        obj = merge(obj, patch)
        return self.put(obj)

    def remove(self, kind: str, namespace: str, name: str) -> None:
        obj = self.find(kind, namespace, name)
        assert obj is not None
        self._delete_tree(_kind_key(obj), namespace, name)

    # ------------------------------------------------------------------------ transport

    def request(  # Kube.request's signature; timeouts and `expected` mean nothing here
        self, method: str, url: str, *, query: dict[str, str] | None = None, body: Any = None,
        content_type: str = "application/json", **_: Any,
    ) -> Any:  # fmt: skip
        u = parse_url(url)
        verb = ("get" if u.name is not None else "list") if method == "GET" else _VERBS[method]
        resource = f"{u.plural}/{u.sub}" if u.sub else u.plural
        index = len(self.calls)
        self.calls.append(Call(verb, u.group, resource, u.namespace, u.name))
        if self.on_request is not None:
            self.on_request(self.calls[-1])
        crash = self._crash
        if self._crash_on is not None and self._crash_on[:2] == (verb, resource):
            crash, self._crash_on = (index, self._crash_on[2]), None
        if crash is not None and crash[0] == index and crash[1]:
            self._crash = None
            raise Crash(f"before request {index}: {self.calls[-1]}")
        try:
            return self._serve(verb, u, query or {}, copy.deepcopy(body), content_type)
        finally:  # an error answer too: the process dies before it sees it
            if crash is not None and crash[0] == index:
                self._crash = None
                raise Crash(f"after request {index}: {self.calls[-1]}")

    def _serve(self, verb: str, u: _Url, query: dict[str, str], body: Any, ctype: str) -> Any:
        key = (u.group, u.plural)
        if verb == "list":
            items = [
                copy.deepcopy(o)
                for (g, p, ns, _), o in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
                if (g, p) == key
                and (u.namespace is None or ns == u.namespace)
                and _matches(o, query.get("labelSelector"))
            ]
            return {"kind": "List", "items": items, "metadata": {"resourceVersion": str(self._rv)}}
        if verb == "create":
            return self._create(key, u, body)
        assert u.name is not None
        stored = self.objects.get((*key, u.namespace, u.name))
        if stored is None:
            raise _error(404, "NotFound", f'{u.plural} "{u.name}" not found')
        if verb == "get":
            return copy.deepcopy(stored)
        if verb == "delete":
            uid = ((body or {}).get("preconditions") or {}).get("uid")
            if uid is not None and uid != stored["metadata"]["uid"]:
                raise _error(409, "Conflict", "Precondition failed: UID in precondition")
            self._delete_tree(key, u.namespace, u.name)
            return {"kind": "Status", "status": "Success"}
        if verb == "update":
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if rv is not None and rv != stored["metadata"]["resourceVersion"]:
                raise _error(409, "Conflict", "the object has been modified")
            new = dict(body)
            new["metadata"] = {**stored["metadata"], **body.get("metadata", {})}
        else:
            assert ctype == "application/merge-patch+json", ctype
            new = merge(stored, body)
        return self._write(key, stored, new, u.sub)

    def _create(self, key: tuple[str, str], u: _Url, body: JSON) -> JSON:
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        meta["namespace"] = u.namespace
        if (*key, u.namespace, meta["name"]) in self.objects:
            raise _error(409, "AlreadyExists", f'{u.plural} "{meta["name"]}" already exists')
        if key in _STATUS_SUBRESOURCE:
            body.pop("status", None)
        for field in ("uid", "resourceVersion", "creationTimestamp", "generation"):
            meta.pop(field, None)
        return self.put(body)

    def _write(self, key: tuple[str, str], stored: JSON, new: JSON, sub: str | None) -> JSON:
        if key in _STATUS_SUBRESOURCE:
            if sub == "status":  # only the status changes
                new = {**copy.deepcopy(stored), "status": new.get("status")}
            else:  # the status never changes
                new = {**new, "status": copy.deepcopy(stored.get("status"))}
                if new["status"] is None:
                    new.pop("status")
        meta = new["metadata"]
        for field in ("uid", "creationTimestamp", "name", "namespace"):
            meta[field] = stored["metadata"][field]
        if key in _GENERATION and new.get("spec") != stored.get("spec"):
            meta["generation"] = int(stored["metadata"].get("generation") or 1) + 1
        else:
            meta["generation"] = stored["metadata"].get("generation")
            if meta["generation"] is None:
                meta.pop("generation")
        return self.put(new)

    def _delete_tree(self, key: tuple[str, str], namespace: str | None, name: str) -> None:
        gone = self.objects.pop((*key, namespace, name))
        uid = gone["metadata"]["uid"]
        for k, obj in list(self.objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if k in self.objects and any(r.get("uid") == uid for r in refs):
                self._delete_tree((k[0], k[1]), k[2], k[3])

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _stamp(self) -> str:
        return self._now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _kind_key(obj: JSON) -> tuple[str, str]:
    if obj["kind"] in KINDS:
        prefix, plural = KINDS[obj["kind"]]
        return ("" if prefix == "/api/v1" else prefix.split("/")[2]), plural
    group = obj["apiVersion"].rpartition("/")[0]
    return group, obj["kind"].lower() + "s"


def _error(status: int, reason: str, message: str) -> ApiError:
    return ApiError(status, reason, json.dumps({"kind": "Status", "message": message}))
