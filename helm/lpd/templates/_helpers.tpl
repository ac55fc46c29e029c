{{/* The release's base name, at most 63 characters. */}}
{{- define "lpd.fullname" -}}
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

{{- define "lpd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "lpd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "lpd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels; add app.kubernetes.io/component beside them. */}}
{{- define "lpd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lpd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lpd.schedulerName" -}}
{{- printf "%s-scheduler" (include "lpd.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lpd.workerName" -}}
{{- printf "%s-worker" (include "lpd.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* host:port of the scheduler, as workers dial it. */}}
{{- define "lpd.schedulerAddress" -}}
{{- if .Values.workers.schedulerAddress -}}
{{- .Values.workers.schedulerAddress -}}
{{- else -}}
{{- printf "%s:%d" (include "lpd.schedulerName" .) (int .Values.scheduler.port) -}}
{{- end -}}
{{- end -}}

{{- define "lpd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "lpd.workerImage" -}}
{{- $repository := default .Values.image.repository .Values.workers.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.workers.image.tag -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{/* The Secret with S3 credentials, or "" when the chart passes none. */}}
{{- define "lpd.s3SecretName" -}}
{{- $c := .Values.s3.credentials -}}
{{- if $c.existingSecret -}}
{{- $c.existingSecret -}}
{{- else if $c.create -}}
{{- printf "%s-s3" (include "lpd.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* --s3-* flags (container args list items). */}}
{{- define "lpd.s3Args" -}}
{{- with .Values.s3.endpoint }}
- --s3-endpoint={{ . }}
{{- end }}
{{- with .Values.s3.region }}
- --s3-region={{ . }}
{{- end }}
{{- with .Values.s3.addressing }}
- --s3-addressing={{ . }}
{{- end }}
{{- end -}}

{{/* AWS_* variables from the S3 Secret (container env list items). */}}
{{- define "lpd.s3Env" -}}
{{- $secret := include "lpd.s3SecretName" . -}}
{{- if $secret }}
{{- $c := .Values.s3.credentials }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ $c.accessKeyIdKey }}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ $c.secretAccessKeyKey }}}
{{- if $c.sessionTokenKey }}
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ $c.sessionTokenKey }}, optional: true}
{{- end }}
{{- end }}
{{- end -}}
