{{/* Chart name (app.kubernetes.io/name). */}}
{{- define "scale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix: the release name when it contains the chart name, else "<release>-<name>". */}}
{{- define "scale.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "scale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "scale.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "scale.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "scale.serviceAccountName" -}}
{{- default (include "scale.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "scale.leaseName" -}}
{{- default (include "scale.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "scale.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "scale.collectorImage" -}}
{{- printf "%s:%s" .Values.collector.image.repository (default .Chart.AppVersion .Values.collector.image.tag) }}
{{- end }}

{{/* The daemon's OTLP endpoint as the collectors see it. */}}
{{- define "scale.daemonEndpoint" -}}
{{- default (printf "%s.%s.svc:%d" (include "scale.fullname" .) .Release.Namespace (int .Values.otlp.port)) .Values.collector.daemonEndpoint }}
{{- end }}

{{/*
The namespaces of rbac.workloads, in order, after checking that every rule with a literal target
names a listed workload (a rule the daemon could not act on is an error at install time, not a
403 at the first incident). Returns a YAML list.
*/}}
{{- define "scale.workloadNamespaces" -}}
{{- $listed := dict }}
{{- $namespaces := list }}
{{- range .Values.rbac.workloads }}
{{- if not .namespace }}{{ fail "rbac.workloads: every entry needs a namespace" }}{{ end }}
{{- if not (or .deployments .statefulsets) }}{{ fail (printf "rbac.workloads: namespace %s lists no deployments and no statefulsets" .namespace) }}{{ end }}
{{- $namespaces = append $namespaces .namespace }}
{{- $ns := .namespace }}
{{- range .deployments }}{{ $_ := set $listed (printf "Deployment/%s/%s" $ns .) true }}{{ end }}
{{- range .statefulsets }}{{ $_ := set $listed (printf "StatefulSet/%s/%s" $ns .) true }}{{ end }}
{{- end }}
{{- if ne (len $namespaces) (len (uniq $namespaces)) }}{{ fail "rbac.workloads: a namespace is listed twice; list all its workloads in one entry" }}{{ end }}
{{- range .Values.rules }}
{{- $t := (.action | default dict).target | default dict }}
{{- $kind := $t.kind | default "Deployment" }}
{{- if and $t.namespace $t.name (not (contains "${" (printf "%s%s" $t.namespace $t.name))) }}
{{- if not (hasKey $listed (printf "%s/%s/%s" $kind $t.namespace $t.name)) }}
{{- fail (printf "rule %s targets %s %s/%s, which rbac.workloads does not list: the daemon would be refused (403)" .name $kind $t.namespace $t.name) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $namespaces }}
{{- end }}

{{/* The `scale` processor's settings: engine, rules inline, and collector.scale. */}}
{{- define "scale.processor" -}}
{{- $p := deepCopy (.Values.engine | default dict) }}
{{- $_ := set $p "rules" .Values.rules }}
{{- $s := .Values.collector.scale }}
{{- $_ = set $p "drop" $s.drop }}
{{- with $s.snapshotPath }}{{ $_ = set $p "snapshot_path" . }}{{ end }}
{{- with $s.snapshotInterval }}{{ $_ = set $p "snapshot_interval" . }}{{ end }}
{{- with $s.initialSnapshot }}{{ $_ = set $p "initial_snapshot" . }}{{ end }}
{{- with $s.reportInterval }}{{ $_ = set $p "report_interval" . }}{{ end }}
{{- toYaml $p }}
{{- end }}

{{/* The collectors' exporter to the daemon (argument: dict "daemon" <endpoint>). */}}
{{- define "scale.collector.daemonExporter" -}}
otlp_grpc/daemon:
  endpoint: {{ .daemon }}
  tls:
    insecure: true
  compression: gzip
  headers:
    # For `scale serve --token-file`: "Bearer <token>" (the token Secret). Empty (ignored)
    # when the daemon requires none.
    authorization: ${env:SCALE_DAEMON_AUTHORIZATION:-}
{{- end }}

{{/* The collectors' memory_limiter (configs/collector/). */}}
{{- define "scale.collector.memoryLimiter" -}}
memory_limiter:
  check_interval: 1s
  limit_percentage: 80
  spike_limit_percentage: 20
{{- end }}
