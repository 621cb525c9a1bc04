{{- define "armorm.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "armorm.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "armorm.labels" -}}
app.kubernetes.io/name: {{ include "armorm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "armorm.selector" -}}
app.kubernetes.io/name: {{ include "armorm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{/* The image by digest when given, else by tag; `latest` and an empty tag are refused. */}}
{{- define "armorm.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- if or (not $image.tag) (eq (toString $image.tag) "latest") -}}
{{- fail "image.tag must name a release (not empty, not latest), or set image.digest" -}}
{{- end -}}
{{- printf "%s:%s" $image.repository (toString $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "armorm.claimName" -}}
{{- .Values.modelRepository.pvc.existingClaim | default (printf "%s-repository" (include "armorm.fullname" .)) -}}
{{- end -}}

{{- define "armorm.gracePeriod" -}}
{{- $s := .Values.shutdown -}}
{{- add $s.preStopSeconds $s.drainSeconds $s.tritonExitSeconds 10 -}}
{{- end -}}

{{- define "armorm.probeScheme" -}}
{{- if .Values.security.tlsSecret }}HTTPS{{ else }}HTTP{{ end -}}
{{- end -}}

{{/* The restricted Pod Security profile, for every container here. */}}
{{- define "armorm.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "armorm.podSecurity" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Mean backbone queue time per request (µs) over this release's pods, 0 when idle. */}}
{{- define "armorm.queueQuery" -}}
{{- $match := printf "model=\"armorm_backbone\",namespace=\"%s\",pod=~\"%s-[a-z0-9]+-[a-z0-9]+\"" .Release.Namespace (include "armorm.fullname" .) -}}
sum(rate(nv_inference_queue_duration_us{ {{- $match -}} }[2m])) / clamp_min(sum(rate(nv_inference_request_success{ {{- $match -}} }[2m])), 0.001)
{{- end -}}

{{- define "armorm.scalingBehavior" -}}
{{- $a := .Values.autoscaling -}}
scaleUp:
  stabilizationWindowSeconds: {{ $a.scaleUp.stabilizationWindowSeconds }}
  policies:
    - {type: Pods, value: {{ $a.scaleUp.podsPerMinute }}, periodSeconds: 60}
scaleDown:
  stabilizationWindowSeconds: {{ $a.scaleDown.stabilizationWindowSeconds }}
  policies:
    - {type: Pods, value: {{ $a.scaleDown.podsPerMinute }}, periodSeconds: 60}
{{- end -}}
