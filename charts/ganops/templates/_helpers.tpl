{{/*
ganops.name: the chart name, or .Values.nameOverride.
*/}}
{{- define "ganops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
ganops.fullname: prefix of every object name; the release name when it already contains the chart name.
Truncated to 45 characters so that "-operator-metrics" and the like still fit in 63.
*/}}
{{- define "ganops.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
ganops.chart: chart name and version, for the helm.sh/chart label.
*/}}
{{- define "ganops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
ganops.labels: labels of every object. Pass a dict {"ctx": $, "component": "operator"}.
*/}}
{{- define "ganops.labels" -}}
helm.sh/chart: {{ include "ganops.chart" .ctx }}
{{ include "ganops.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: ganops
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
ganops.selectorLabels: the immutable labels a Deployment selects its pods by. Pass {"ctx": $, "component": …}.
*/}}
{{- define "ganops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ganops.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
ganops.image: "registry/repository:tag" or "registry/repository@digest". Pass {"image": .Values.x.image, "ctx": $}.
*/}}
{{- define "ganops.image" -}}
{{- $repo := .image.repository }}
{{- if .image.registry }}{{ $repo = printf "%s/%s" .image.registry .image.repository }}{{ end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/*
ganops.operator.serviceAccountName / ganops.serving.serviceAccountName.
*/}}
{{- define "ganops.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "ganops.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ganops.serving.serviceAccountName" -}}
{{- if .Values.serving.serviceAccount.create }}
{{- default (printf "%s-serving" (include "ganops.fullname" .)) .Values.serving.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serving.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
ganops.monitoring.enabled: "true" when the monitors and rules are rendered: asked for, and either the cluster
serves monitoring.coreos.com/v1 or forceEnable says render them anyway.
*/}}
{{- define "ganops.monitoring.enabled" -}}
{{- if and .Values.monitoring.enabled (or .Values.monitoring.forceEnable (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) -}}
true
{{- end }}
{{- end }}

{{/*
ganops.egress: egress rules shared by the operator and serving: DNS (UDP and TCP), object store, MLflow, extras.
*/}}
{{- define "ganops.egress" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns.to | nindent 4 }}
  ports:
    {{- range .Values.networkPolicy.dns.ports }}
    - protocol: UDP
      port: {{ . }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- range $name := list "objectStore" "mlflow" }}
{{- $rule := index $.Values.networkPolicy $name }}
- to:
    {{- toYaml $rule.to | nindent 4 }}
  ports:
    {{- range $rule.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end }}
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
ganops.validateValues: one message per inconsistent combination of values, checked before anything renders.
*/}}
{{- define "ganops.validateValues" -}}
{{- $problems := list }}
{{- if and .Values.serving.enabled (not .Values.serving.model) }}
{{- $problems = append $problems "serving.model: set name@alias (or serving.enabled=false)" }}
{{- end }}
{{- if and .Values.serving.canary.alias (eq (float64 .Values.serving.canary.percent) 0.0) }}
{{- $problems = append $problems "serving.canary: an alias with percent 0 sends no traffic; set serving.canary.percent" }}
{{- end }}
{{- if and (gt (float64 .Values.serving.canary.percent) 0.0) (not .Values.serving.canary.alias) }}
{{- $problems = append $problems "serving.canary.percent > 0 needs serving.canary.alias" }}
{{- end }}
{{- if and .Values.serving.autoscaling.enabled (gt (int .Values.serving.autoscaling.minReplicas) (int .Values.serving.autoscaling.maxReplicas)) }}
{{- $problems = append $problems "serving.autoscaling: minReplicas > maxReplicas" }}
{{- end }}
{{- $servingReplicas := ternary .Values.serving.autoscaling.minReplicas .Values.serving.replicas .Values.serving.autoscaling.enabled }}
{{- if and .Values.serving.enabled .Values.serving.podDisruptionBudget.enabled (not (kindIs "string" .Values.serving.podDisruptionBudget.minAvailable)) (ge (int .Values.serving.podDisruptionBudget.minAvailable) (int $servingReplicas)) }}
{{- $problems = append $problems (printf "serving.podDisruptionBudget.minAvailable %d >= %d replicas: no node could ever be drained" (int .Values.serving.podDisruptionBudget.minAvailable) (int $servingReplicas)) }}
{{- end }}
{{- if and .Values.serving.apiKeys.required (not .Values.serving.apiKeys.secretName) }}
{{- $problems = append $problems "serving.apiKeys.required needs serving.apiKeys.secretName" }}
{{- end }}
{{- if $problems }}
{{- fail (printf "\n\nganops: invalid values:\n  - %s\n" (join "\n  - " $problems)) }}
{{- end }}
{{- end }}

{{/*
ganops.operator.namespacedRules: what the operator may do in a namespace it watches (see operator-rbac.yaml).
*/}}
{{- define "ganops.operator.namespacedRules" -}}
- apiGroups: ["ganops.io"]
  resources: ["gantrainingjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["ganops.io"]
  resources: ["gantrainingjobs/status"]
  verbs: ["get", "patch"]
- apiGroups: ["ganops.io"]
  resources: ["gantrainingjobs/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# get: after a 409 at create, whose the existing object is (a deleted namesake's is waited for, never patched)
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create"]
# list: the Job controller's FailedCreate events, surfaced in the job's PodsNotStarting condition
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list", "create", "patch"]
{{- end }}
