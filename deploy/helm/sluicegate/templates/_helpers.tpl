{{/* Names and labels. */}}
{{- define "sluicegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluicegate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sluicegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluicegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sluicegate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sluicegate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "sluicegate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sluicegate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sluicegate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if eq $tag "latest" -}}
{{- fail "image.tag: name a version, not latest" -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* The Bitnami subcharts' names, as their common.names.fullname makes them. */}}
{{- define "sluicegate.postgresql.fullname" -}}
{{- if .Values.postgresql.fullnameOverride -}}
{{- .Values.postgresql.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "postgresql" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name "postgresql" | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sluicegate.redis.fullname" -}}
{{- if .Values.redis.fullnameOverride -}}
{{- .Values.redis.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "redis" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name "redis" | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* "true" when the gateway has a shared database / a Redis, else "". */}}
{{- define "sluicegate.hasDatabase" -}}
{{- if or .Values.postgresql.enabled .Values.externalDatabase.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "sluicegate.hasRedis" -}}
{{- if or .Values.redis.enabled .Values.externalRedis.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "sluicegate.keysSecret" -}}
{{- if .Values.keys.existingSecret -}}
{{- .Values.keys.existingSecret -}}
{{- else if .Values.keys.create -}}
{{- printf "%s-keys" (include "sluicegate.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Refusals: settings that would run but serve wrongly. */}}
{{- define "sluicegate.validate" -}}
{{- $many := or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) -}}
{{- if and $many (not (include "sluicegate.hasDatabase" .)) -}}
{{- fail "several pods need a shared database: set postgresql.enabled or externalDatabase.existingSecret (SQLite in each pod's data folder would give each its own keys and audit trail)" -}}
{{- end -}}
{{- if and $many .Values.persistence.enabled -}}
{{- fail "persistence.enabled keeps SQLite on a volume for one pod: set replicaCount: 1 without autoscaling, or use PostgreSQL" -}}
{{- end -}}
{{- if and .Values.postgresql.enabled .Values.externalDatabase.existingSecret -}}
{{- fail "set either postgresql.enabled or externalDatabase.existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.externalRedis.existingSecret -}}
{{- fail "set either redis.enabled or externalRedis.existingSecret, not both" -}}
{{- end -}}
{{- if lt (int .Values.workers) 1 -}}
{{- fail "workers must be at least 1" -}}
{{- end -}}
{{- $s := .Values.shutdown -}}
{{- $needed := add (int $s.preStopSleepSeconds) (int $s.drainSeconds) 30 -}}
{{- if lt (int $s.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "shutdown.terminationGracePeriodSeconds must cover the preStop sleep, the drain and 30 s for calls in flight: at least %d" (int $needed)) -}}
{{- end -}}
{{- end -}}

{{/* Sets .root at .path (a list of keys) to .value, unless the config already has that key
     (whatever its value: what the config says wins). */}}
{{- define "sluicegate.setDefault" -}}
{{- $node := .root -}}
{{- range initial .path -}}
{{- if not (kindIs "map" (get $node .)) -}}
{{- $_ := set $node . (dict) -}}
{{- end -}}
{{- $node = get $node . -}}
{{- end -}}
{{- if not (hasKey $node (last .path)) -}}
{{- $_ := set $node (last .path) .value -}}
{{- end -}}
{{- end -}}

{{/* The gateway's config: .Values.config, with what the chart knows filled in where it is unset
     (tests/test_deploy.py mirrors this). */}}
{{- define "sluicegate.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- if .Values.admin.enabled -}}
{{- include "sluicegate.setDefault" (dict "root" $config "path" (list "admin" "host") "value" "0.0.0.0") -}}
{{- include "sluicegate.setDefault" (dict "root" $config "path" (list "admin" "port") "value" (int .Values.admin.port)) -}}
{{- end -}}
{{- if .Values.shutdown.drainSeconds -}}
{{- include "sluicegate.setDefault" (dict "root" $config "path" (list "server" "drain_s") "value" .Values.shutdown.drainSeconds) -}}
{{- end -}}
{{- if include "sluicegate.keysSecret" . -}}
{{- include "sluicegate.setDefault" (dict "root" $config "path" (list "audit" "chain" "key") "value" "env://AUDIT_CHAIN_KEY") -}}
{{- include "sluicegate.setDefault" (dict "root" $config "path" (list "cache" "redis" "key") "value" "env://CACHE_KEY") -}}
{{- end -}}
{{- if include "sluicegate.hasRedis" . -}}
{{- include "sluicegate.setDefault" (dict "root" $config "path" (list "limits" "backend") "value" "redis") -}}
{{- include "sluicegate.setDefault" (dict "root" $config "path" (list "limits" "redis" "url") "value" "env://REDIS_URL") -}}
{{- include "sluicegate.setDefault" (dict "root" $config "path" (list "cache" "redis" "url") "value" "env://REDIS_URL") -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
