{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name, or release-chart when the release name lacks the chart's. */}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "kubetune.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "kubetune.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag (tag defaults to appVersion) or repository@digest. */}}
{{- define "kubetune.imageRef" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "kubetune.operatorImage" -}}
{{- include "kubetune.imageRef" (list .Values.image .) -}}
{{- end -}}

{{- define "kubetune.trainerImage" -}}
{{- include "kubetune.imageRef" (list .Values.trainer.image .) -}}
{{- end -}}

{{/* Cluster-scoped object names carry the release namespace so two releases don't collide. */}}
{{- define "kubetune.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "kubetune.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The rules the operator needs on FineTuneJobs and the children it creates per run, shared by the
ClusterRole (cluster-wide mode) and the per-namespace Roles (namespaced mode). Checked against
the operator's API calls by tests/unit/test_chart_rbac.py and proven sufficient by
tests/integration/test_chart_install.py.
*/}}
{{- define "kubetune.workloadRules" -}}
# Exactly the requests the operator makes: tests/middle runs it over a fake API server that
# records them, and tests/unit/test_chart_rbac.py checks these rules against that record. A
# verb granted beyond it says why here.
# The custom resource: read and watch it; patch the operator's status record, an annotation the
# trainer cannot write (ledger.py); create and delete the runs a FineTuneSchedule stamps (and
# prunes past its history limits, or replaces under concurrencyPolicy Replace).
- apiGroups: ["kubetune.io"]
  resources: ["finetunejobs"]
  verbs: ["get", "list", "watch", "patch", "create", "delete"]
# FineTuneSchedules: read and watch them; write their status.
- apiGroups: ["kubetune.io"]
  resources: ["finetuneschedules"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kubetune.io"]
  resources: ["finetuneschedules/status"]
  verbs: ["patch"]
# Status is the operator's to write (merge patches). get is unused by the operator itself: it
# grants each run's trainer get+patch (resourceNames: [<job>]), and RBAC only lets it grant what
# it holds.
- apiGroups: ["kubetune.io"]
  resources: ["finetunejobs/status"]
  verbs: ["get", "patch"]
# Unused by any request: children carry ownerReferences with blockOwnerDeletion, and clusters
# running the OwnerReferencesPermissionEnforcement admission plugin require this to create them.
- apiGroups: ["kubetune.io"]
  resources: ["finetunejobs/finalizers"]
  verbs: ["update"]
# One batch/v1 Job per run (patch: suspend/resume).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch", "delete", "patch"]
# Read-only: pod phase, scheduling and termination messages of the runs' pods.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Per run: the trainer config (ConfigMap) and, for runs of several pods, the headless Service
# that names them for rendezvous; both are replaced (never patched) when they drift, and go with
# a superseded run.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["create", "get", "delete"]
# Per job: the trainer's own ServiceAccount (removed with the FineTuneJob by the garbage
# collector).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["create", "get"]
# Per job: a Role + RoleBinding letting its trainer patch only that job's status; patched back
# when edited; a RoleBinding whose roleRef changed is replaced (roleRef is immutable).
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles"]
  verbs: ["create", "get", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["rolebindings"]
  verbs: ["create", "get", "patch", "delete"]
# Events on FineTuneJobs (core/v1 Events; each is a new object).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# The Kueue Workload of a queued run: listed for status.queue (the quota it waits for,
# admission, preemption); patched only in spec.active, which is how runPolicy.suspend stops a
# queued run. Without Kueue the operator finds no such resource and moves on.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "patch"]
{{- end -}}
