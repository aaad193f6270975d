{{/* Names, labels, image and registry settings shared by the templates. */}}

{{- define "aos-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's name prefix: the release name alone when it already contains the chart name. */}}
{{- define "aos-operator.fullname" -}}
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

{{- define "aos-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "aos-operator.labels" -}}
helm.sh/chart: {{ include "aos-operator.chart" . }}
app.kubernetes.io/name: {{ include "aos-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aos-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component (operator, agent, registry); call with (dict "root" $ "component" "agent"). */}}
{{- define "aos-operator.componentLabels" -}}
{{ include "aos-operator.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of one component: stable across upgrades, so no version in them. */}}
{{- define "aos-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aos-operator.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "aos-operator.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "aos-operator.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "aos-operator.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aos-operator.agentServiceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (printf "%s-agent" (include "aos-operator.fullname" .)) .Values.agent.serviceAccount.name }}
{{- else }}
{{- required "agent.serviceAccount.name is required when agent.serviceAccount.create is false" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aos-operator.registryName" -}}
{{- printf "%s-registry" (include "aos-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* HOST[:PORT][/PREFIX] the operator pushes to; fails when no registry is configured. */}}
{{- define "aos-operator.registryHost" -}}
{{- $registry := .Values.registry }}
{{- if $registry.inCluster.enabled }}
{{- if $registry.external.host }}
{{- fail "registry.external.host is set while registry.inCluster.enabled is true: set registry.inCluster.enabled=false to use the external registry" }}
{{- end }}
{{- printf "%s.%s.svc:%d" (include "aos-operator.registryName" .) .Release.Namespace (int $registry.inCluster.service.port) }}
{{- else }}
{{- required "registry.external.host is required when registry.inCluster.enabled is false (HOST[:PORT][/PREFIX] of an OCI registry)" $registry.external.host }}
{{- end }}
{{- end }}

{{/* The in-cluster registry speaks plain HTTP. */}}
{{- define "aos-operator.registryInsecure" -}}
{{- if or .Values.registry.inCluster.enabled .Values.registry.external.insecure }}true{{ end }}
{{- end }}

{{- define "aos-operator.registryAuthSecret" -}}
{{- if not .Values.registry.inCluster.enabled }}{{ .Values.registry.external.authSecretName }}{{ end }}
{{- end }}

{{/* The CA volume source of the external registry, or nothing. */}}
{{- define "aos-operator.registryCaVolume" -}}
{{- $ca := .Values.registry.external.ca }}
{{- if and $ca.secretName $ca.configMapName }}
{{- fail "registry.external.ca: set secretName or configMapName, not both" }}
{{- end }}
{{- if not .Values.registry.inCluster.enabled }}
{{- if $ca.secretName }}
secret:
  secretName: {{ $ca.secretName }}
  items:
    - key: {{ $ca.key }}
      path: ca.crt
{{- else if $ca.configMapName }}
configMap:
  name: {{ $ca.configMapName }}
  items:
    - key: {{ $ca.key }}
      path: ca.crt
{{- end }}
{{- end }}
{{- end }}

{{/* Mount points of the registry credentials and CA in operator and agent pods. */}}
{{- define "aos-operator.registryAuthDir" -}}/etc/aos/registry-auth{{- end }}
{{- define "aos-operator.registryCaDir" -}}/etc/aos/registry-ca{{- end }}

{{/* Command-line flags both the operator and the agent take for the registry. */}}
{{- define "aos-operator.registryClientArgs" -}}
{{- if include "aos-operator.registryInsecure" . }}
- --registry-insecure
{{- end }}
{{- if include "aos-operator.registryCaVolume" . }}
- --registry-ca={{ include "aos-operator.registryCaDir" . }}/ca.crt
{{- end }}
{{- if include "aos-operator.registryAuthSecret" . }}
- --registry-auth={{ include "aos-operator.registryAuthDir" . }}/config.json
{{- end }}
{{- end }}

{{- define "aos-operator.registryClientVolumeMounts" -}}
{{- if include "aos-operator.registryCaVolume" . }}
- name: registry-ca
  mountPath: {{ include "aos-operator.registryCaDir" . }}
  readOnly: true
{{- end }}
{{- if include "aos-operator.registryAuthSecret" . }}
- name: registry-auth
  mountPath: {{ include "aos-operator.registryAuthDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "aos-operator.registryClientVolumes" -}}
{{- with include "aos-operator.registryCaVolume" . | trim }}
- name: registry-ca
  {{- . | nindent 2 }}
{{- end }}
{{- with include "aos-operator.registryAuthSecret" . }}
- name: registry-auth
  secret:
    secretName: {{ . }}
    items:
      - key: .dockerconfigjson
        path: config.json
{{- end }}
{{- end }}

{{/* Groups kopf may find its peering resources in: kopf.dev today, zalando.org in older clusters. */}}
{{- define "aos-operator.peeringGroups" -}}
- kopf.dev
- zalando.org
{{- end }}

{{/* The watched namespaces, or nothing for cluster-wide. */}}
{{- define "aos-operator.namespaced" -}}
{{- if .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}
