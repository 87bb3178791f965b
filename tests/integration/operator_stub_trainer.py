#!/usr/bin/env python3
"""A stand-in trainer for the operator's lifecycle tests: it follows the trainer contract
(docs/design.md) without training anything, so the tests are about the operator, quickly.

Run by the node agent as the trainer pod's command (KUBETUNE_TRAINER_COMMAND points here). It
reads the resolved config the operator mounted (`--config`, /etc/kubetune/config.json) and takes
its script from `spec.model.hubId`, `stub/<action>` (`ok` for any other model, e.g. the s3Uri
a `spec.model.fromJob` resolves to):

  ok             report progress, then succeed after maxSteps/10 seconds (artifacts + metrics)
  fail-<code>    fail with exit code <code> (10-14: the contract's reason; else TrainerError)
  hang           report progress and sleep until killed (suspend, deadline, restart tests)
  oom            allocate memory until the memory limit kills it
  rbac           probe its own API rights, print them as JSON on stdout, then succeed
  noresult       exit 0 without writing a termination message (a broken trainer)
  promoted       as ok, with test metrics and a promotion gate that passed (spec.output.promote)
  notpromoted    as ok, with a promotion gate that did not pass

Progress is merge-patched into status.progress with the pod's own ServiceAccount token (the
KUBECONFIG the node agent provides), exactly as the real trainer does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any

REASONS = {10: "ConfigError", 11: "DatasetError", 12: "ModelError", 13: "NonFiniteLoss",
           14: "ArtifactsMissing"}  # fmt: skip


def api() -> Any:
    from kubernetes import client, config

    config.load_kube_config(os.environ["KUBECONFIG"])
    return client.ApiClient()


def call(method: str, url: str, body: Any = None, ctype: str = "application/json") -> int:
    """One API request with the pod's credentials; returns the HTTP status."""
    c = api()
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = ctype
    m, full, h, b, post = c.param_serialize(
        method=method, resource_path=url, header_params=headers, body=body,
        auth_settings=["BearerToken"],
    )  # fmt: skip
    resp = c.call_api(m, full, h, b, post)
    resp.read()
    return int(resp.status)


def status_url(ns: str, name: str) -> str:
    return f"/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs/{name}/status"


def report(cfg: dict[str, Any], step: int, total: int, stage: str) -> None:
    job = cfg["job"]
    progress = {
        "run": job["run"],
        "step": step,
        "totalSteps": total,
        "stage": stage,
        "loss": round(2.0 / (1 + step), 4),
        "updatedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    try:
        code = call("PATCH", status_url(job["namespace"], job["name"]),
                    {"status": {"progress": progress}}, "application/merge-patch+json")  # fmt: skip
        print(f"progress step {step}: HTTP {code}", flush=True)
    except Exception as e:  # reporting never stops training
        print(f"progress failed: {e}", flush=True)


def write_result(result: dict[str, Any]) -> None:
    path = os.environ.get("KUBETUNE_TERMINATION_LOG", "/dev/termination-log")
    with open(path, "w") as f:
        f.write(json.dumps(result))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=os.environ.get("KUBETUNE_CONFIG"))
    # The launcher's arguments of a multi-process or multi-node run (--nproc-per-node, --nnodes,
    # rendezvous) are ignored: each pod of a group runs the script on its own.
    args, _launcher = p.parse_known_args()
    with open(args.config) as f:
        cfg = json.load(f)
    spec = cfg["spec"]
    hub_id = spec["model"].get("hubId") or "stub/ok"
    action = hub_id.split("/", 1)[1]
    steps = int((spec.get("hyperparameters") or {}).get("maxSteps") or 10)
    prefix = cfg["runPrefix"]
    job = cfg["job"]
    print(
        f"stub trainer: {action} run {job['run']} gen {job['generation']} -> {prefix}", flush=True
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if action in ("promoted", "notpromoted"):
        passed = action == "promoted"
        tuned = 1.0 if passed else 1.5
        write_result({
            "outcome": "Succeeded", "reason": "Completed", "message": f"trained {steps} steps",
            "retryable": False,
            "artifacts": {"mergedModelUri": prefix + "merged/",
                          "manifestUri": prefix + "manifest.json", "manifestSha256": "0" * 64},
            "metrics": {"train_loss": 0.5, "test_loss": tuned, "base_test_loss": 2.0},
            "evaluation": {"loss": {"base": 2.0, "tuned": tuned},
                           "perplexity": {"base": 7.389, "tuned": round(2.718 ** tuned, 3)}},
            "promotion": {"promoted": passed, "reason": "Promoted" if passed else "NotPromoted",
                          "metric": "loss", "rule": "beatPrevious", "direction": "minimize",
                          "value": tuned, **({} if passed else {"previous": 1.0}),
                          "message": "promoted: test loss 1, no promoted run before" if passed
                          else "not promoted: test loss 1.5 vs 1 of the promoted run"},
        })  # fmt: skip
        return 0
    if action == "ok":
        # Proves the Secret values arrived (as env from secretKeyRef) without printing them.
        digests = {
            k: hashlib.sha256(os.environ[k].encode()).hexdigest()
            for k in ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN")
            if k in os.environ
        }
        print("secret digests " + json.dumps(digests, sort_keys=True), flush=True)
        # What spec.pod put in the environment (names and whether the CA file is mounted).
        ca = os.environ.get("KUBETUNE_EXTRA_CA_BUNDLE", "")
        extra = {k: os.environ.get(k) for k in ("HTTPS_PROXY", "HF_ENDPOINT", "PROXY_USER")}
        extra["ca_file"] = os.path.isfile(ca) if ca else None
        print("pod options " + json.dumps(extra, sort_keys=True), flush=True)
        report(cfg, 0, steps, "train")
        time.sleep(steps / 10)
        report(cfg, steps, steps, "upload")
        write_result({
            "outcome": "Succeeded", "reason": "Completed", "message": f"trained {steps} steps",
            "retryable": False,
            "artifacts": {"adapterUri": prefix + "adapter/", "mergedModelUri": prefix + "merged/",
                          "manifestUri": prefix + "manifest.json", "manifestSha256": "0" * 64,
                          "metricsUri": prefix + "metrics.json"},
            "metrics": {"train_loss": 0.5, "eval_loss": 0.75, "train_steps": steps},
        })  # fmt: skip
        return 0
    if action.startswith("fail-"):
        code = int(action.split("-", 1)[1])
        reason = REASONS.get(code, "TrainerError")
        write_result({"outcome": "Failed", "reason": reason, "retryable": code < 10,
                      "message": f"stub failure with exit code {code}",
                      "artifacts": {}, "metrics": {}})  # fmt: skip
        return code
    if action == "hang":
        step = 0
        while True:
            report(cfg, step, 1000, "train")
            step += 1
            time.sleep(1)
    if action == "oom":
        hog = []
        while True:
            hog.append(bytearray(64 * 2**20))
            time.sleep(0.01)
    if action == "rbac":
        ns, name = job["namespace"], job["name"]
        other = os.environ.get("STUB_OTHER_JOB", "other")
        probes = {
            "own_status_get": call("GET", status_url(ns, name)),
            "own_status_patch": call("PATCH", status_url(ns, name),
                                     {"status": {"progress": {"run": job["run"], "step": 1}}},
                                     "application/merge-patch+json"),
            "other_status_patch": call("PATCH", status_url(ns, other),
                                       {"status": {"progress": {"step": 666}}},
                                       "application/merge-patch+json"),
            "own_spec_patch": call("PATCH", f"/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs/{name}",
                                   {"spec": {"runPolicy": {"suspend": True}}},
                                   "application/merge-patch+json"),
            "secrets_list": call("GET", f"/api/v1/namespaces/{ns}/secrets"),
            "pods_list": call("GET", f"/api/v1/namespaces/{ns}/pods"),
            "jobs_create": call("POST", f"/apis/batch/v1/namespaces/{ns}/jobs", {"metadata": {}}),
        }  # fmt: skip
        print("RBAC " + json.dumps(probes, sort_keys=True), flush=True)
        write_result({"outcome": "Succeeded", "reason": "Completed", "message": "probed",
                      "retryable": False, "artifacts": {"manifestUri": prefix + "manifest.json"},
                      "metrics": {}})  # fmt: skip
        return 0
    if action == "noresult":
        return 0
    print(f"unknown action {action}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
