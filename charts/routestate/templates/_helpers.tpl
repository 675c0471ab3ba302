{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "routestate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless the release name contains it. */}}
{{- define "routestate.fullname" -}}
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

{{- define "routestate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "routestate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "routestate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "routestate.labels" -}}
helm.sh/chart: {{ include "routestate.chart" . }}
{{ include "routestate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "routestate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "routestate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "routestate.leaseName" -}}
{{- default (include "routestate.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "routestate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Rejects combinations the schema cannot express. */}}
{{- define "routestate.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without a Lease every replica would write Redis" }}
{{- end }}
{{- if and .Values.leaderElection.enabled (ge (mul 2 (int .Values.leaderElection.renewPeriodSeconds)) (int .Values.leaderElection.leaseDurationSeconds)) }}
{{- fail "leaderElection.renewPeriodSeconds must be less than half of leaderElection.leaseDurationSeconds" }}
{{- end }}
{{- if and .Values.redis.tls.caSecret.name .Values.redis.tls.caConfigMap.name }}
{{- fail "set at most one of redis.tls.caSecret.name and redis.tls.caConfigMap.name" }}
{{- end }}
{{- if and (not .Values.redis.cluster) (not .Values.redis.sentinel.masterName) (gt (len .Values.redis.urls) 1) }}
{{- fail "redis.urls has several URLs but redis.cluster is false: a standalone Redis takes exactly one URL" }}
{{- end }}
{{- if and .Values.redis.cluster .Values.redis.sentinel.masterName }}
{{- fail "redis.cluster and redis.sentinel.masterName exclude each other: Sentinel watches a master with replicas, not a Redis Cluster" }}
{{- end }}
{{- if and .Values.redis.sentinel.existingSecret.name (not .Values.redis.sentinel.masterName) }}
{{- fail "redis.sentinel.existingSecret.name is set but redis.sentinel.masterName is empty" }}
{{- end }}
{{- end }}
