{{/* Names, labels and the arguments every role shares. */}}

{{- define "quarry.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "quarry.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "quarry.labels" -}}
app.kubernetes.io/name: quarry
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one role: call with (dict "root" $ "role" "gateway"). */}}
{{- define "quarry.selector" -}}
app.kubernetes.io/name: quarry
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "quarry.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- printf "http://%s-etcd:2379" (include "quarry.fullname" .) -}}
{{- else -}}
{{- required "etcd.endpoints must list your etcd when etcd.enabled is false" (join "," .Values.etcd.endpoints) -}}
{{- end -}}
{{- end -}}

{{/* Flags of `quarry serve <role>` that every role takes. */}}
{{- define "quarry.serveArgs" -}}
- --listen
- "0.0.0.0:{{ .Values.ports.grpc }}"
- --advertise
- "$(POD_IP):{{ .Values.ports.grpc }}"
- --etcd
- {{ include "quarry.etcdEndpoints" . | quote }}
- --cluster
- {{ .Values.cluster.name | quote }}
- --metrics-addr
- "0.0.0.0:{{ .Values.ports.metrics }}"
{{- end -}}

{{/* Environment every quarry process gets, a role's or a one-off command's (the scale Jobs). */}}
{{- define "quarry.commonEnv" -}}
- name: QUARRY_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: QUARRY_DISCOVERY__LEASE_TTL_S
  value: {{ .Values.discovery.leaseTtlSeconds | quote }}
{{- with .Values.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Environment every role gets. */}}
{{- define "quarry.env" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{ include "quarry.commonEnv" . }}
{{- if include "quarry.internalTlsSecret" . }}
- name: QUARRY_INTERNAL_TLS__MODE
  value: {{ .Values.internalTls.mode | quote }}
- name: QUARRY_INTERNAL_TLS__CA
  value: /etc/quarry/internal-tls/ca.crt
- name: QUARRY_INTERNAL_TLS__CERT
  value: /etc/quarry/internal-tls/tls.crt
- name: QUARRY_INTERNAL_TLS__KEY
  value: /etc/quarry/internal-tls/tls.key
- name: QUARRY_INTERNAL_TLS__HEALTH_LISTEN
  value: "0.0.0.0:{{ .Values.ports.health }}"
{{- end }}
{{- end -}}

{{/* The Secret holding the cluster CA and the roles' certificates, or "" when off. */}}
{{- define "quarry.internalTlsSecret" -}}
{{- $internal := .Values.internalTls -}}
{{- if not (has $internal.mode (list "off" "permissive" "required")) -}}
{{- fail (printf "internalTls.mode %q is unknown (off, permissive, required)" $internal.mode) -}}
{{- end -}}
{{- if ne $internal.mode "off" -}}
{{- if eq $internal.certificates "generate" -}}
{{- printf "%s-internal-tls" (include "quarry.fullname" .) -}}
{{- else if eq $internal.certificates "existingSecret" -}}
{{- required "internalTls.existingSecret must name a Secret when internalTls.certificates is existingSecret" $internal.existingSecret -}}
{{- else -}}
{{- fail (printf "internalTls.certificates %q is unknown (generate, existingSecret)" $internal.certificates) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The volume a role's certificate is mounted from: call with (dict "root" $ "role" "analyzer"). */}}
{{- define "quarry.internalTlsVolume" -}}
{{- $secret := include "quarry.internalTlsSecret" .root -}}
{{- if $secret -}}
{{- toJson (dict "name" "internal-tls" "secret" (dict "secretName" $secret "items" (list (dict "key" "ca.crt" "path" "ca.crt") (dict "key" (printf "%s.crt" .role) "path" "tls.crt") (dict "key" (printf "%s.key" .role) "path" "tls.key")))) -}}
{{- end -}}
{{- end -}}

{{/* Ports, probes and the init container that writes the cluster settings (idempotent:
     the same shard count again is fine, another one is refused). */}}
{{- define "quarry.ports" -}}
- name: grpc
  containerPort: {{ .Values.ports.grpc }}
- name: metrics
  containerPort: {{ .Values.ports.metrics }}
{{- end -}}

{{/* Probes of a role: call with (dict "root" $ "port" N); port defaults to gRPC's. */}}
{{- define "quarry.probes" -}}
{{- $port := .port | default .root.Values.ports.grpc -}}
readinessProbe:
  grpc:
    port: {{ $port }}
  periodSeconds: 5
livenessProbe:
  grpc:
    port: {{ $port }}
  initialDelaySeconds: 10
  periodSeconds: 10
{{- end -}}

{{/* The flags naming the cluster in etcd, shared by `quarry cluster create` and
     `quarry cluster scale`. */}}
{{- define "quarry.clusterFlags" -}}
- --etcd
- {{ include "quarry.etcdEndpoints" . | quote }}
- --cluster
- {{ .Values.cluster.name | quote }}
{{- end -}}

{{/* The shard count, checked: at least 1, and at most cluster.partitions when that is set. */}}
{{- define "quarry.shards" -}}
{{- $shards := int .Values.cluster.shards -}}
{{- if lt $shards 1 -}}
{{- fail (printf "cluster.shards must be at least 1, got %v" .Values.cluster.shards) -}}
{{- end -}}
{{- with .Values.cluster.partitions -}}
{{- if gt $shards (int .) -}}
{{- fail (printf "cluster.shards (%d) cannot exceed cluster.partitions (%d): a shard holds at least one partition" $shards (int .)) -}}
{{- end -}}
{{- end -}}
{{- $shards -}}
{{- end -}}

{{- define "quarry.clusterCreate" -}}
- name: cluster-create
  image: {{ include "quarry.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - cluster
    - create
    {{- include "quarry.clusterFlags" . | nindent 4 }}
    - --shards
    - {{ include "quarry.shards" . | quote }}
    {{- with .Values.cluster.partitions }}
    - --partitions
    - {{ . | quote }}
    {{- end }}
{{- end -}}

{{- define "quarry.podAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.metrics | quote }}
prometheus.io/path: /metrics
{{- end -}}

{{/* The Secret holding the gateway's certificate (tls.crt, tls.key), or "" for plaintext. */}}
{{- define "quarry.gatewayTlsSecret" -}}
{{- $tls := .Values.gateway.tls -}}
{{- if or (eq $tls.mode "generate") (eq $tls.mode "certManager") -}}
{{- printf "%s-gateway-tls" (include "quarry.fullname" .) -}}
{{- else if eq $tls.mode "existingSecret" -}}
{{- required "gateway.tls.existingSecret must name a kubernetes.io/tls Secret when gateway.tls.mode is existingSecret" $tls.existingSecret -}}
{{- else if ne $tls.mode "none" -}}
{{- fail (printf "gateway.tls.mode %q is unknown (generate, existingSecret, certManager, none)" $tls.mode) -}}
{{- end -}}
{{- end -}}

{{/* DNS names of the gateway's certificate. */}}
{{- define "quarry.gatewayDnsNames" -}}
{{- $service := printf "%s-gateway" (include "quarry.fullname" .) -}}
{{- $names := list $service (printf "%s.%s" $service .Release.Namespace) (printf "%s.%s.svc" $service .Release.Namespace) (printf "%s.%s.svc.cluster.local" $service .Release.Namespace) -}}
{{- toJson (concat $names .Values.gateway.tls.extraDnsNames) -}}
{{- end -}}

{{/* Flags of the gateway's public API: TLS, keys, and the refusal of an open gateway. */}}
{{- define "quarry.gatewayArgs" -}}
{{- $secret := include "quarry.gatewayTlsSecret" . -}}
{{- $keys := or .Values.gateway.apiKeys.existingSecret .Values.gateway.apiKeys.etcd -}}
{{- if and (not $secret) (not $keys) (not .Values.gateway.insecure) -}}
{{- fail "gateway.tls.mode is none and no API keys are set: anyone reaching the gateway could read and delete every document. Set gateway.apiKeys.existingSecret (or gateway.apiKeys.etcd), a TLS mode, or gateway.insecure=true" -}}
{{- end -}}
{{- if $secret }}
- --tls-cert
- /etc/quarry/tls/tls.crt
- --tls-key
- /etc/quarry/tls/tls.key
- --health-listen
- "0.0.0.0:{{ .Values.ports.health }}"
{{- end }}
{{- if .Values.gateway.apiKeys.existingSecret }}
- --keys-file
- /etc/quarry/keys/keys.jsonl
{{- end }}
{{- if .Values.gateway.insecure }}
- --insecure
{{- end }}
{{- end -}}
