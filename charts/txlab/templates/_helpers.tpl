{{/* The name of a role's objects: <release>-<role>. */}}
{{- define "txlab.name" -}}
{{- printf "%s-%s" .root.Release.Name .role | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object of the chart. */}}
{{- define "txlab.labels" -}}
app.kubernetes.io/name: txlab
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
txlab.dev/method: {{ .Values.txMode }}
{{- with .Values.extraLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* What selects one role's pods. */}}
{{- define "txlab.selector" -}}
app.kubernetes.io/name: txlab
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{/* The method must be one txlab knows. */}}
{{- define "txlab.checkMode" -}}
{{- if not (has .Values.txMode (list "twopc" "tcc" "outbox" "saga_chor" "saga_orch")) -}}
{{- fail (printf "txMode %q is not one of twopc, tcc, outbox, saga_chor, saga_orch" .Values.txMode) -}}
{{- end -}}
{{- if or (lt (int .Values.replicas) 1) (gt (int .Values.replicas) 3) -}}
{{- fail (printf "replicas %v: between 1 and 3 (the topics' partitions)" .Values.replicas) -}}
{{- end -}}
{{- end -}}
