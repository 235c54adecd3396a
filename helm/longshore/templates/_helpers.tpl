{{- define "longshore.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "longshore.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "longshore.labels" -}}
{{ include "longshore.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "longshore.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "longshore.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The settings file: config, with the drain deadline and the metrics port the pod
     spec relies on. JSON, not TOML: Helm reads numbers as floats, and JSON writes
     them back as the integers they were. */}}
{{- define "longshore.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $pipeline := default dict $config.pipeline -}}
{{- $_ := set $pipeline "shutdown_deadline" (printf "%ds" (int .Values.shutdownDeadlineSeconds)) -}}
{{- $_ := set $config "pipeline" $pipeline -}}
{{- $_ := set $config "metrics" (dict "addr" (printf "0.0.0.0:%d" (int .Values.metricsPort))) -}}
{{- if .Values.control.enabled -}}
{{- $_ := set $config "control" (dict "enabled" true "token_file" (printf "%s/%s" (include "longshore.controlTokenDir" .) .Values.control.tokenSecret.key)) -}}
{{- end -}}
{{- toPrettyJson $config -}}
{{- end -}}

{{/* Where the control token's Secret is mounted. */}}
{{- define "longshore.controlTokenDir" -}}
/var/run/secrets/longshore/control
{{- end -}}
