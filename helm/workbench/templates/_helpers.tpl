{{- /*
    Named templates of the workbench chart: names, labels, images and the rendering of values
    as Python literals for the workbench configuration.
*/}}

{{- /*
    The prefix of every resource name. It follows the JupyterHub chart's rule, so that our
    objects sit next to "hub" and "proxy-public": jupyterhub.fullnameOverride as it is when it
    is a string (the default, "", gives no prefix), else "<release>-jupyterhub-" or
    "<release>-" when the release name already contains "jupyterhub".
*/}}
{{- define "workbench.prefix" -}}
    {{- $override := .Values.jupyterhub.fullnameOverride }}
    {{- if eq (typeOf $override) "string" }}
        {{- with $override }}{{ . }}-{{ end }}
    {{- else if contains "jupyterhub" .Release.Name }}
        {{- .Release.Name }}-
    {{- else }}
        {{- .Release.Name }}-jupyterhub-
    {{- end }}
{{- end }}

{{- define "workbench.controlPlane.fullname" -}}
    {{- include "workbench.prefix" . }}workbench-control-plane
{{- end }}

{{- define "workbench.config.fullname" -}}
    {{- include "workbench.prefix" . }}workbench-config
{{- end }}

{{- define "workbench.secret.fullname" -}}
    {{- include "workbench.prefix" . }}workbench
{{- end }}

{{- define "workbench.controlPlane.serviceAccountName" -}}
    {{- .Values.workbench.controlPlane.serviceAccount.name | default (include "workbench.controlPlane.fullname" .) }}
{{- end }}

{{- /* Names of objects of the JupyterHub chart that we refer to. */}}
{{- define "workbench.hub.fullname" -}}
    {{- include "workbench.prefix" . }}hub
{{- end }}

{{- define "workbench.hub.serviceAccountName" -}}
    {{- $hub := .Values.jupyterhub.hub | default dict }}
    {{- $sa := $hub.serviceAccount | default dict }}
    {{- .Values.workbench.rbac.hubServiceAccount | default $sa.name | default (include "workbench.hub.fullname" .) }}
{{- end }}

{{- define "workbench.hub.secretName" -}}
    {{- $hub := .Values.jupyterhub.hub | default dict }}
    {{- $hub.existingSecret | default (include "workbench.hub.fullname" .) }}
{{- end }}

{{- define "workbench.proxyApi.fullname" -}}
    {{- include "workbench.prefix" . }}proxy-api
{{- end }}

{{- /* Cluster-scoped objects need names unique in the cluster: always the release name. */}}
{{- define "workbench.clusterRole.hub" -}}
    {{- .Release.Name }}-{{ .Release.Namespace }}-workbench-hub
{{- end }}

{{- define "workbench.clusterRole.controlPlane" -}}
    {{- .Release.Name }}-{{ .Release.Namespace }}-workbench-control-plane
{{- end }}

{{- /* Labels (app.kubernetes.io/* and helm.sh/chart). Call with (list $ "component"). */}}
{{- define "workbench.chart" -}}
    {{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "workbench.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "workbench.labels" -}}
{{- $root := index . 0 -}}
{{ include "workbench.selectorLabels" . }}
app.kubernetes.io/part-of: workbench
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ include "workbench.chart" $root }}
{{- end }}

{{- /* "name:tag" of an image dict; a blank tag gives the chart's appVersion. */}}
{{- define "workbench.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- printf "%s:%s" $image.name ($image.tag | default $root.Chart.AppVersion | toString) }}
{{- end }}

{{- define "workbench.controlPlane.image" -}}
    {{- $image := .Values.workbench.controlPlane.image }}
    {{- if not $image.name }}
        {{- $image = .Values.jupyterhub.hub.image }}
    {{- end }}
    {{- include "workbench.image" (list $image .) }}
{{- end }}

{{- define "workbench.session.image" -}}
    {{- include "workbench.image" (list .Values.jupyterhub.singleuser.image .) }}
{{- end }}

{{- /* The control plane's URL inside the cluster, as the hub and the proxy reach it. */}}
{{- define "workbench.controlPlane.url" -}}
    http://{{ include "workbench.controlPlane.fullname" . }}.{{ .Release.Namespace }}.svc:{{ .Values.workbench.controlPlane.port }}
{{- end }}

{{- define "workbench.hub.baseUrl" -}}
    {{- $hub := .Values.jupyterhub.hub | default dict }}
    {{- $hub.baseUrl | default "/" | trimSuffix "/" }}/
{{- end }}

{{- define "workbench.servicePrefix" -}}
    {{- include "workbench.hub.baseUrl" . }}services/workbench/
{{- end }}

{{- /*
    A value as a Python literal: dicts (sorted keys), lists, strings, booleans, None, and
    numbers (integers without a fraction stay integers). Go's quoting of strings ("%q") only
    uses escapes that mean the same in Python.
*/}}
{{- define "workbench.py" -}}
    {{- $kind := kindOf . }}
    {{- if eq $kind "map" }}
        {{- $items := list }}
        {{- range $key, $value := . }}
            {{- $items = append $items (printf "%q: %s" $key (include "workbench.py" $value)) }}
        {{- end }}
        {{- printf "{%s}" (join ", " $items) }}
    {{- else if eq $kind "slice" }}
        {{- $items := list }}
        {{- range . }}
            {{- $items = append $items (include "workbench.py" .) }}
        {{- end }}
        {{- printf "[%s]" (join ", " $items) }}
    {{- else if eq $kind "bool" }}
        {{- ternary "True" "False" . }}
    {{- else if eq $kind "invalid" }}
        {{- "None" }}
    {{- else if eq $kind "string" }}
        {{- printf "%q" . }}
    {{- else if eq $kind "float64" }}
        {{- if eq (float64 (int64 .)) . }}
            {{- int64 . }}
        {{- else }}
            {{- . }}
        {{- end }}
    {{- else if hasPrefix "int" $kind }}
        {{- . }}
    {{- else }}
        {{- fail (printf "workbench: cannot render a %s as Python: %v" $kind .) }}
    {{- end }}
{{- end }}

{{- /* A quota of the values (cpu, memory, gpu, pods) as the dict UserNamespaces expects. */}}
{{- define "workbench.quota" -}}
    {{- $quota := dict }}
    {{- range $key, $value := . }}
        {{- if not (kindIs "invalid" $value) }}
            {{- $_ := set $quota $key $value }}
        {{- end }}
    {{- end }}
    {{- include "workbench.py" $quota }}
{{- end }}
