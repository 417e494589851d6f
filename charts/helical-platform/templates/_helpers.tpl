{{/* Labels every object of this chart carries. */}}
{{- define "helical-platform.labels" -}}
app.kubernetes.io/name: helical-platform
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Pool name for a GPU type: the DAG derives the same name from the profile. */}}
{{- define "helical-platform.poolName" -}}
{{- printf "gpu-%s" . -}}
{{- end }}
