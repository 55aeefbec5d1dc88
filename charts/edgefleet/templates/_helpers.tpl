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

{{- define "edgefleet.hubLabels" -}}
app.kubernetes.io/name: edgefleet-hub
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

{{/* The cloud hub's config (NATS's syntax). Devices' leaf connections must present a client
certificate of the devices' CA, mapped to a user by its subject; the users are the accounts
the controller writes. */}}
{{- define "edgefleet.hubConfig" -}}
server_name: $POD_NAME
listen: "0.0.0.0:4222"
http: "0.0.0.0:8222"
pid_file: "/var/run/nats/nats.pid"
max_payload: 1MB
jetstream {
  store_dir: "/data"
  domain: "cloud"
  max_file_store: {{ .Values.hub.cloud.storeMiB }}MB
  max_memory_store: 64MB
}
# For readers of what devices send (MQTT is what most telemetry tools speak).
mqtt {
  port: 1883
}
leafnodes {
  port: 7422
  tls {
    cert_file: "/etc/edgefleet-hub/tls/tls.crt"
    key_file: "/etc/edgefleet-hub/tls/tls.key"
    ca_file: "/etc/edgefleet-hub/device-ca/ca.crt"
    verify_and_map: true
    timeout: 5
  }
}
include "../accounts/accounts.conf"
{{- end }}

{{/* The cloud hub's accounts before the controller writes them: only the reader, as the
controller's controller/src/decide/hub_accounts.rs writes them for no device. */}}
{{- define "edgefleet.hubAccounts" -}}
# Written by edgefleet-controller from the enrolled EdgeDevices; edits are overwritten.
accounts {
  FLEET {
    jetstream: enabled
    users: [
      {user: "edgefleet-reader", password: $EDGEFLEET_READER_PASSWORD, allowed_connection_types: ["STANDARD", "MQTT"], permissions: {publish: {deny: ["edgefleet.>"]}, subscribe: {allow: ["edgefleet.dev.*.up.>", "edgefleet.dev.*.up", "_INBOX.>"]}}}
    ]
  }
}
{{ end }}
