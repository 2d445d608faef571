{{/*
Names. The full name is cut to 40 characters because it gets suffixes
("-etcd", "-peers", "-0", and the controller-revision-hash label of a
StatefulSet adds 11 more) and every result must stay a 63-character label.
*/}}
{{- define "gearmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "gearmesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gearmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Headless Service of the nodes: one DNS record per pod. */}}
{{- define "gearmesh.peerService" -}}
{{- printf "%s-peers" (include "gearmesh.fullname" .) -}}
{{- end -}}

{{- define "gearmesh.etcdName" -}}
{{- printf "%s-etcd" (include "gearmesh.fullname" .) -}}
{{- end -}}

{{- define "gearmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gearmesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Label a pod carries to be let through to the Gearman port when
networkPolicy.allowExternal is false. */}}
{{- define "gearmesh.clientLabel" -}}
{{- printf "%s-client" (include "gearmesh.fullname" .) -}}
{{- end -}}

{{/* Labels on every object; objects add their app.kubernetes.io/component. */}}
{{- define "gearmesh.labels" -}}
app.kubernetes.io/name: {{ include "gearmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "gearmesh.metaLabels" . }}
{{- end -}}

{{/* The labels that are not part of any selector (pod templates add these
to their selector labels). */}}
{{- define "gearmesh.metaLabels" -}}
helm.sh/chart: {{ include "gearmesh.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gearmesh
{{- end -}}

{{/* Selector labels of the gearmesh node pods. */}}
{{- define "gearmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gearmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end -}}

{{/* Selector labels of the bundled etcd pods. */}}
{{- define "gearmesh.etcdSelectorLabels" -}}
app.kubernetes.io/name: {{ include "gearmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: etcd
{{- end -}}

{{- define "gearmesh.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* etcd key prefix: per release unless set, so releases can share an etcd. */}}
{{- define "gearmesh.etcdPrefix" -}}
{{- if .Values.etcd.prefix -}}
{{- .Values.etcd.prefix -}}
{{- else -}}
{{- printf "/gearmesh/%s/%s" .Release.Namespace (include "gearmesh.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* DNS name of bundled etcd member $i: <etcd>-<i>.<etcd>.<ns>.svc.<domain> */}}
{{- define "gearmesh.etcdMemberHost" -}}
{{- $ctx := index . 0 -}}
{{- $i := index . 1 -}}
{{- $etcd := include "gearmesh.etcdName" $ctx -}}
{{- printf "%s-%d.%s.%s.svc.%s" $etcd (int $i) $etcd $ctx.Release.Namespace $ctx.Values.clusterDomain -}}
{{- end -}}

{{/*
Comma-separated etcd endpoints the nodes get in GEARMESH_ETCD: every bundled
member (so a node can fail over between them), or the configured external
ones. Empty means standalone.
*/}}
{{- define "gearmesh.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.etcd.replicaCount) -}}
{{- $eps = append $eps (printf "http://%s:%d" (include "gearmesh.etcdMemberHost" (list $ $i)) (int $.Values.etcd.ports.client)) -}}
{{- end -}}
{{- join "," $eps -}}
{{- else -}}
{{- join "," .Values.etcd.endpoints -}}
{{- end -}}
{{- end -}}

{{/* etcd --initial-cluster: name=peerURL for every member. */}}
{{- define "gearmesh.etcdInitialCluster" -}}
{{- $etcd := include "gearmesh.etcdName" . -}}
{{- $members := list -}}
{{- range $i := until (int .Values.etcd.replicaCount) -}}
{{- $members = append $members (printf "%s-%d=http://%s:%d" $etcd $i (include "gearmesh.etcdMemberHost" (list $ $i)) (int $.Values.etcd.ports.peer)) -}}
{{- end -}}
{{- join "," $members -}}
{{- end -}}

{{/*
Soft or hard anti-affinity against pods matching the given selector labels.
Called with (list context preset selectorLabelsTemplate topologyKey).
*/}}
{{- define "gearmesh.antiAffinity" -}}
{{- $ctx := index . 0 -}}
{{- $preset := index . 1 -}}
{{- $labels := include (index . 2) $ctx -}}
{{- $key := index . 3 -}}
{{- if eq $preset "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: {{ $key }}
      labelSelector:
        matchLabels:
          {{- $labels | nindent 10 }}
{{- else if eq $preset "soft" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: {{ $key }}
        labelSelector:
          matchLabels:
            {{- $labels | nindent 12 }}
{{- end }}
{{- end -}}

{{/*
Refuse value combinations that would install something that cannot work,
at render time rather than as a crash-looping pod.
*/}}
{{- define "gearmesh.validate" -}}
{{- $clustered := or .Values.etcd.enabled (gt (len .Values.etcd.endpoints) 0) -}}
{{- if and .Values.etcd.enabled (gt (len .Values.etcd.endpoints) 0) -}}
{{- fail "set either etcd.enabled (bundled etcd) or etcd.endpoints (existing etcd), not both" -}}
{{- end -}}
{{- if and (not $clustered) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) -}}
{{- fail "more than one gearmesh node needs etcd: set etcd.enabled=true or etcd.endpoints, or replicaCount=1 for a standalone node" -}}
{{- end -}}
{{- if and .Values.tls.etcd.secret .Values.etcd.enabled -}}
{{- fail "tls.etcd.secret is for an existing etcd (etcd.enabled=false, etcd.endpoints); the bundled etcd serves plaintext" -}}
{{- end -}}
{{- if and (or .Values.tls.gearman.verifyClient .Values.tls.gearman.aclConfigMap) (not .Values.tls.gearman.secret) -}}
{{- fail "tls.gearman.verifyClient and tls.gearman.aclConfigMap need tls.gearman.secret (client certificates need TLS)" -}}
{{- end -}}
{{- if .Values.tls.certManager.enabled -}}
{{- if not .Values.tls.certManager.issuerRef.name -}}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name (a cert-manager Issuer or ClusterIssuer)" -}}
{{- end -}}
{{- if not (or .Values.tls.gearman.secret .Values.tls.peer.secret) -}}
{{- fail "tls.certManager.enabled issues the Secrets named by tls.gearman.secret and tls.peer.secret: set at least one" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (not (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage)) -}}
{{- if not (and .Values.resources .Values.resources.requests .Values.resources.requests.cpu) -}}
{{- fail "autoscaling on CPU needs resources.requests.cpu (utilisation is a share of the request)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
