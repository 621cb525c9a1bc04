{{- define "armorm.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "armorm.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "armorm.labels" -}}
app.kubernetes.io/name: {{ include "armorm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "armorm.selector" -}}
app.kubernetes.io/name: {{ include "armorm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
