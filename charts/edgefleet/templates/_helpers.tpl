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
