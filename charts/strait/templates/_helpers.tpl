{{/* Labels on everything the chart makes. */}}
{{- define "strait.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: strait
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{/* straitd's pod selector. */}}
{{- define "strait.straitd.selector" -}}
app: straitd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* An image reference: {{ include "strait.image" (list $ .Values.images.straitd) }} */}}
{{- define "strait.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end }}

{{/* straitd's Service in this release, as proxies and the API server reach it. */}}
{{- define "strait.straitd.host" -}}
straitd.{{ .Release.Namespace }}.svc
{{- end }}

{{/*
The mesh CA, made once per render (genCA) or taken from the Secret already in the cluster, so
the Secret, the webhooks' caBundle and straitd agree. Returns YAML: {cert, key, generated}.
*/}}
{{- define "strait.ca" -}}
{{- if not (hasKey .Values "__stCa") -}}
{{- $ca := dict -}}
{{- if .Values.ca.existingSecret -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace .Values.ca.existingSecret -}}
{{- $root := "" -}}
{{- if $secret -}}{{- $root = index $secret.data "root-cert.pem" | default "" | b64dec -}}{{- end -}}
{{- $_ := set $ca "cert" $root -}}
{{- $_ := set $ca "generated" false -}}
{{- else -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace "cacerts" -}}
{{- if $secret -}}
{{- $_ := set $ca "cert" (index $secret.data "ca-cert.pem" | b64dec) -}}
{{- $_ := set $ca "key" (index $secret.data "ca-key.pem" | b64dec) -}}
{{- else -}}
{{- $generated := genCA "strait-ca" (int .Values.ca.validityDays) -}}
{{- $_ := set $ca "cert" $generated.Cert -}}
{{- $_ := set $ca "key" $generated.Key -}}
{{- end -}}
{{- $_ := set $ca "generated" true -}}
{{- end -}}
{{- $_ := set .Values "__stCa" $ca -}}
{{- end -}}
{{- toYaml (get .Values "__stCa") -}}
{{- end }}

{{/* The webhooks' caBundle, base64. */}}
{{- define "strait.caBundle" -}}
{{- $bundle := .Values.webhook.caBundle | default (include "strait.ca" . | fromYaml).cert -}}
{{- if not $bundle -}}
{{- fail "webhook.caBundle: give the PEM of the CA behind ca.existingSecret (its root-cert.pem); it could not be read from the cluster" -}}
{{- end -}}
{{- $bundle | b64enc -}}
{{- end }}

{{/* A label map as KEY=VALUE,KEY=VALUE (sorted by key), for a command-line flag. */}}
{{- define "strait.labelList" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}{{- end -}}
{{- join "," $pairs -}}
{{- end }}
