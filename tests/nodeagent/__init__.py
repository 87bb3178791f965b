"""kubetune test node agent: the stand-in for kubelet + a container runtime.

This machine (and CI) can run a real control plane (etcd, kube-apiserver, controller-manager,
scheduler: see hack/cluster) but no kubelet, because there is no container runtime. The node
agent fills that gap just far enough for the operator's integration tests to be real:

* it registers a Node (capacity/allocatable cpu, memory, pods and optionally ``nvidia.com/gpu``,
  labels, taints) and keeps it Ready with status heartbeats and a Lease in kube-node-lease, so
  the node-lifecycle controller never taints it;
* it watches pods bound to its node and runs each container inside its image when the image
  exists in the local podman storage (images.py: podman + runc, the image's filesystem and user,
  the pod's volumes, env, service account and memory limit), otherwise its ``command`` +
  ``args`` as a local process, in a private mount namespace where the pod's volumes (emptyDir,
  configMap, secret, projected, downwardAPI, hostPath, PVC-as-a-directory) and a per-container
  termination-log file are bind-mounted at the paths the pod spec names, in a memory cgroup that
  enforces ``resources.limits.memory`` (OOMKilled is reported);
* env is resolved like kubelet does (value with $(VAR) expansion, fieldRef, resourceFieldRef,
  configMapKeyRef, secretKeyRef, envFrom), and pods get their service account: a bound token
  from the TokenRequest API at /var/run/secrets/kubernetes.io/serviceaccount, plus a
  KUBECONFIG and KUBERNETES_SERVICE_HOST/PORT pointing at the loopback API server, so in-pod
  code is subject to that service account's RBAC;
* it reports pod status like kubelet (Pending/ContainerCreating, Running, Succeeded/Failed,
  container states with exitCode/reason/message, restartCount, conditions), honours
  restartPolicy, activeDeadlineSeconds and graceful deletion (SIGTERM, SIGKILL after the grace
  period, then deletes the pod object with gracePeriodSeconds=0);
* images matching ``--unpullable-images`` (env KUBETUNE_AGENT_UNPULLABLE_IMAGES; hack/cluster
  sets ``\\.invalid([/:]|$)``) never start: ErrImagePull, then ImagePullBackOff;
* it serves /containerLogs over TLS so ``kubectl logs`` works (follow, tailLines, previous).
* pods with ``hostname`` + ``subdomain`` (an Indexed Job's pods behind a headless Service)
  get an /etc/hosts that resolves their group's pod names (``<job>-<i>.<subdomain>``, with the
  ``.<ns>``, ``.svc`` and ``.svc.cluster.local`` forms) to 127.0.0.1: the stand-in for cluster
  DNS that torchrun's rendezvous needs. Every pod of every agent shares the host's loopback, so
  the pods of a group must not bind the same port twice: the rendezvous store listens on index
  0 only (``is_host``), and worker ports are picked free;

It does not emulate: pulling images (only local ones are used; other pods' processes see the
host's root fs, run as root, with the agent's PATH), networking (no pod IPs or Services: everything is 127.0.0.1), probes,
exec/attach/port-forward, CPU limits, ConfigMap/Secret volume updates after start, and
in-place pod resize. Run it as ``PYTHONPATH=tests python -m nodeagent --help``.
"""
