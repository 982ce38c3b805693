{{- /*
    Consistency checks between our values and the values we give the JupyterHub chart, which
    cannot be templated: each failure says which value to change.
*/}}
{{- define "workbench.checks" -}}
    {{- $hub := .Values.jupyterhub.hub | default dict }}
    {{- $services := $hub.services | default dict }}
    {{- if not (hasKey $services "workbench") }}
        {{- fail "workbench: jupyterhub.hub.services.workbench is missing: the control plane is that JupyterHub service (keep the entry from the chart's values.yaml)" }}
    {{- end }}
    {{- $configMap := include "workbench.config.fullname" . }}
    {{- $mounted := false }}
    {{- range $hub.extraVolumes | default list }}
        {{- if and .configMap (eq (.configMap.name | default "") $configMap) }}
            {{- $mounted = true }}
        {{- end }}
    {{- end }}
    {{- if not $mounted }}
        {{- fail (printf "workbench: the hub must mount the ConfigMap %q: set jupyterhub.hub.extraVolumes[].configMap.name to %q (it follows jupyterhub.fullnameOverride)" $configMap $configMap) }}
    {{- end }}
    {{- $extraConfig := $hub.extraConfig | default dict }}
    {{- if not (hasKey $extraConfig "workbench") }}
        {{- fail "workbench: jupyterhub.hub.extraConfig.workbench is missing: it loads the workbench configuration into the hub" }}
    {{- end }}
    {{- $wb := .Values.workbench }}
    {{- if and $wb.database.url $wb.database.existingSecret }}
        {{- fail "workbench: set workbench.database.url or workbench.database.existingSecret, not both" }}
    {{- end }}
{{- end }}

{{- /* Whether the chart runs without durable storage or database (evaluation only). */}}
{{- define "workbench.ephemeralStorage" -}}
    {{- $storage := .Values.workbench.storage }}
    {{- if and (not $storage.projectsVolume) (not $storage.nfs.server) }}true{{ end }}
{{- end }}

{{- define "workbench.database.secretName" -}}
    {{- .Values.workbench.database.existingSecret | default (include "workbench.secret.fullname" .) }}
{{- end }}

{{- define "workbench.database.secretKey" -}}
    {{- if .Values.workbench.database.existingSecret }}
        {{- .Values.workbench.database.existingSecretKey }}
    {{- else -}}
        db-url
    {{- end }}
{{- end }}

{{- define "workbench.database.configured" -}}
    {{- if or .Values.workbench.database.url .Values.workbench.database.existingSecret }}true{{ end }}
{{- end }}
