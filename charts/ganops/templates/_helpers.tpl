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
ganops.endpointRule: the egress rule to one endpoint the platform configured (MLflow, the object store). Pass
{"rule": .Values.networkPolicy.<name>, "url": <the endpoint URL>, "name": "<name>", "fallback": <list of peers>}.
Peers: `rule.to` when set; else derived from the URL: an in-cluster Service (`<svc>.<namespace>.svc…`) → pods of that
namespace (narrowed by `rule.podSelector`), an IPv4 address → that address; else `fallback` (the object store on AWS,
whose endpoint is not one address), else the render fails naming the value to set. Ports: `rule.ports`, else the
URL's (80/443 by scheme). Never "any pod in any namespace", never 0.0.0.0/0 with the cluster's own ranges.
*/}}
{{- define "ganops.endpointRule" -}}
{{- $to := .rule.to }}
{{- $ports := .rule.ports }}
{{- $host := "" }}
{{- if .url }}
{{- $u := urlParse .url }}
{{- $hostport := splitList ":" $u.host }}
{{- $host = first $hostport }}
{{- if not $ports }}
{{- $ports = list (ternary (last $hostport) (ternary "443" "80" (eq $u.scheme "https")) (eq (len $hostport) 2) | int) }}
{{- end }}
{{- if not $to }}
{{- $labels := splitList "." $host }}
{{- if regexMatch "^[0-9]+([.][0-9]+){3}$" $host }}
{{- $to = list (dict "ipBlock" (dict "cidr" (printf "%s/32" $host))) }}
{{- else if and (ge (len $labels) 3) (eq (index $labels 2) "svc") }}
{{- $peer := dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" (index $labels 1))) }}
{{- with .rule.podSelector }}{{ $_ := set $peer "podSelector" . }}{{ end }}
{{- $to = list $peer }}
{{- end }}
{{- end }}
{{- end }}
{{- if not $ports }}{{ $ports = list 443 }}{{ end }}
{{- if and (not $to) (not .url) }}{{ $to = .fallback }}{{ end }}
{{- if not $to }}
{{- fail (printf "\n\nganops: networkPolicy.%s.to: %s is outside the cluster (%s) and a NetworkPolicy cannot name a host: list its addresses (ipBlock CIDRs), or set networkPolicy.enabled=false\n" .name .url $host) }}
{{- end }}
{{- $portRules := list }}
{{- range $ports }}{{ $portRules = append $portRules (dict "protocol" "TCP" "port" (int .)) }}{{ end -}}
- to:
    {{- toYaml $to | nindent 4 }}
  ports:
    {{- toYaml $portRules | nindent 4 }}
{{- end }}

{{/*
ganops.platformEgress: egress every ganops pod needs and nothing else: DNS (UDP and TCP), the object store, MLflow.
*/}}
{{- define "ganops.platformEgress" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns.to | nindent 4 }}
  ports:
    {{- range .Values.networkPolicy.dns.ports }}
    - protocol: UDP
      port: {{ . }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- /* AWS S3 (no endpoint URL) is many public addresses: public IPv4 only, never the cluster's or the metadata
service's ranges. Set networkPolicy.objectStore.to to your VPC endpoint's CIDRs to narrow it further. */}}
{{- $public := list (dict "ipBlock" (dict "cidr" "0.0.0.0/0" "except" (list "10.0.0.0/8" "172.16.0.0/12" "192.168.0.0/16" "100.64.0.0/10" "169.254.0.0/16" "127.0.0.0/8"))) }}
{{ include "ganops.endpointRule" (dict "rule" .Values.networkPolicy.objectStore "url" .Values.objectStore.endpointUrl "name" "objectStore" "fallback" $public) }}
{{ include "ganops.endpointRule" (dict "rule" .Values.networkPolicy.mlflow "url" .Values.mlflow.uri "name" "mlflow" "fallback" (list)) }}
{{- end }}

{{/*
ganops.egress: egress rules of the operator and serving: the platform's, plus networkPolicy.extraEgress.
*/}}
{{- define "ganops.egress" -}}
{{ include "ganops.platformEgress" . }}
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
ganops.trainerNetworkPolicy: GANOPS_TRAINER_NETWORK_POLICY, the platform's part of every job's default-deny
NetworkPolicy (the operator adds the job's own pods as its only other peers): egress as the operator's, scrapes from
the monitoring namespace.
*/}}
{{- define "ganops.trainerNetworkPolicy" -}}
{{- $egress := include "ganops.egress" . | fromYamlArray }}
{{- $metrics := list (dict "namespaceSelector" .Values.networkPolicy.monitoringNamespaceSelector) }}
{{- dict "egress" $egress "metricsFrom" $metrics | toJson }}
{{- end }}

{{/*
ganops.minGates: operator.policy.minGates as GANOPS_MIN_GATES (`maxFID=60,minRecall=0.2`).
*/}}
{{- define "ganops.minGates" -}}
{{- $pairs := list }}
{{- range $gate, $value := . }}{{ $pairs = append $pairs (printf "%s=%v" $gate $value) }}{{ end }}
{{- join "," $pairs }}
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
# get: after a 409 at create, whose the existing policy is (as for the ConfigMap and the Service)
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create"]
{{- end }}
