{{/* Chart name, possibly overridden. */}}
{{- define "autoparallel-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects (release name, plus the chart name unless it already holds it). */}}
{{- define "autoparallel-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "autoparallel-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "autoparallel-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "autoparallel-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "autoparallel-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: autoparallel
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "autoparallel-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "autoparallel-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {image: {repository, tag, digest}, appVersion}: by digest when one is set. */}}
{{- define "autoparallel-operator.imageRef" -}}
{{- $tag := default .appVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{- define "autoparallel-operator.image" -}}
{{- include "autoparallel-operator.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/* The training pods' default image (the operator's --training-image). */}}
{{- define "autoparallel-operator.trainingImage" -}}
{{- include "autoparallel-operator.imageRef" (dict "image" .Values.trainingImage "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/*
What the operator does with the ParallelDeployments and the children it creates, in the namespaces it
watches: a ClusterRole when it watches every namespace, a Role in each watched namespace otherwise.
Children are written with server-side apply, which the API server authorizes as patch, and also as
create when the object does not exist yet.
*/}}
{{- define "autoparallel-operator.namespacedRules" -}}
# kopf watches ParallelDeployments and records its progress in their annotations (merge patches).
- apiGroups: [autoparallel.io]
  resources: [paralleldeployments]
  verbs: [list, watch, patch]
# The plan, conditions and replica counts are written to the status subresource (merge patches).
- apiGroups: [autoparallel.io]
  resources: [paralleldeployments/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion; where the OwnerReferencesPermissionEnforcement
# admission plugin is on (e.g. OpenShift), setting that needs update on the owner's finalizers.
- apiGroups: [autoparallel.io]
  resources: [paralleldeployments/finalizers]
  verbs: [update]
# vLLM servers: a Deployment per plan of single-node replicas, a StatefulSet per multi-node replica.
# Applied, watched for readiness, listed by owner label and deleted when they belong to an older plan.
- apiGroups: [apps]
  resources: [deployments, statefulsets]
  verbs: [list, watch, create, patch, delete]
# Multi-node replicas on LeaderWorkerSet (where its CRD is served): one per plan, handled like the above.
- apiGroups: [leaderworkerset.x-k8s.io]
  resources: [leaderworkersets]
  verbs: [list, watch, create, patch, delete]
# Training runs are Jobs: applied and watched like the servers; a Job's pod template is immutable, so
# one of an older plan is read (get) and deleted before the new one is applied.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# Services in front of the servers (headless for multi-node groups): applied, listed by owner label
# and deleted with an older plan. Never watched or read one by one.
- apiGroups: [""]
  resources: [services]
  verbs: [list, create, patch, delete]
# The weight cache (spec.model.cache.size): a PVC applied once per resource. Never deleted by the operator
# (garbage collection through its ownerReference does, unless cache.retain).
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [create, patch]
# vLLM's /metrics scraped through a PodMonitor per resource, only while the Prometheus Operator's CRD is
# served: applied, listed by owner label and deleted when the resource stops serving.
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors]
  verbs: [list, create, patch, delete]
# spec.scaling: an HPA on vLLM's metric, or KEDA's ScaledObject while KEDA's CRD is served (each replaces the
# other): applied, listed by owner label and deleted when no longer rendered.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, create, patch, delete]
# KEDA's ScaledObject, the same way.
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [list, create, patch, delete]
# spec.serving.gateway.inferencePool: the Gateway API Inference Extension's InferencePool of the vLLM servers,
# while its CRD is served: applied, listed by owner label and deleted when no longer rendered.
- apiGroups: [inference.networking.k8s.io]
  resources: [inferencepools]
  verbs: [list, create, patch, delete]
# Events on ParallelDeployments (Planned, InsufficientMemory, …), posted by the operator and by kopf.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
