{{- define "edgefleet.labels" -}}
app.kubernetes.io/name: edgefleet-controller
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "edgefleet.selector" -}}
app.kubernetes.io/name: edgefleet-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "edgefleet.bootstrapLabels" -}}
app.kubernetes.io/name: edgefleet-bootstrap
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "edgefleet.apiServerEnv" -}}
{{- with .Values.apiServer }}
{{- $hostPort := splitList ":" . }}
- {name: KUBERNETES_SERVICE_HOST, value: {{ index $hostPort 0 | quote }}}
- {name: KUBERNETES_SERVICE_PORT, value: {{ index $hostPort 1 | quote }}}
{{- end }}
{{- end }}

{{/* A device path for the agent's flags: "{node}" becomes the device's name. */}}
{{- define "edgefleet.devicePath" -}}
{{ replace "{node}" "$(EDGEFLEET_DEVICE)" . }}
{{- end }}

{{/* The host directory to mount for a device path: the part before "{node}", if any. */}}
{{- define "edgefleet.hostDir" -}}
{{ splitList "/{node}" . | first }}
{{- end }}

{{/* The rest of a device path below the mounted directory, as a subPathExpr. */}}
{{- define "edgefleet.subPathExpr" -}}
{{- $parts := splitList "/{node}" . }}
{{- if gt (len $parts) 1 }}$(EDGEFLEET_DEVICE){{ index $parts 1 }}{{ end }}
{{- end }}
