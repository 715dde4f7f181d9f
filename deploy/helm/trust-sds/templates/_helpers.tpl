{{/* Labels on every object (the same as deploy/kustomize). */}}
{{- define "trust-sds.labels" -}}
app.kubernetes.io/name: trust-sds
app.kubernetes.io/component: sds-server
{{- end }}

{{/* Pod selector. */}}
{{- define "trust-sds.selectorLabels" -}}
app.kubernetes.io/name: trust-sds
{{- end }}

{{/* Checks the values this chart cannot render sensibly. */}}
{{- define "trust-sds.validate" -}}
{{- if not (has .Values.source (list "kube" "manifests")) }}
{{- fail (printf "source must be \"kube\" or \"manifests\", not %q" (toString .Values.source)) }}
{{- end }}
{{- if .Values.namespaces }}
{{- fail "`namespaces` is gone: trust-sds watches all namespaces, or one (`watchNamespace`)" }}
{{- end }}
{{- if and .Values.listener .Values.listener.uds }}
{{- fail "`listener.uds` is gone: set `uds.enabled: true` (the socket is /run/trust-sds/sds.sock, in the emptyDir volume `sds-socket`)" }}
{{- end }}
{{- if and .Values.tls.clientCA (not .Values.tls.enabled) }}
{{- fail "`tls.clientCA: true` needs `tls.enabled: true`" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "`tls.enabled: true` needs `tls.secretName` (a kubernetes.io/tls Secret)" }}
{{- end }}
{{- if and .Values.authz.policy (not .Values.tls.clientCA) (not .Values.uds.enabled) }}
{{- fail "`authz.policy` needs client identities: set `tls.clientCA: true` (client certificate SANs) or `uds.enabled: true` (node:<node id> on the Unix socket); otherwise every client is refused" }}
{{- end }}
{{- end }}

{{/* The authorization policy file: `authz.policy` as written (a string; a map is rendered as YAML). */}}
{{- define "trust-sds.authzPolicy" -}}
{{- if kindIs "string" .Values.authz.policy }}
{{- .Values.authz.policy }}
{{- else }}
{{- toYaml .Values.authz.policy }}
{{- end }}
{{- end }}

{{/* Non-empty when the trust-sds container mounts any volume. */}}
{{- define "trust-sds.hasVolumes" -}}
{{- if or (eq .Values.source "manifests") .Values.tls.enabled .Values.authz.policy .Values.uds.enabled }}true{{ end }}
{{- end }}

{{/*
What `trust-sds serve --kube` reads and writes in the watched namespaces. Every rule maps to
a call in the code (src/source/kube.rs, src/status_writer.rs); nothing else is granted.
The same rules, with the same comments, as deploy/kustomize/clusterrole.yaml.
*/}}
{{- define "trust-sds.rules.watch" -}}
# Secrets: two watches (list + watch). One, with the label selector
# mcp.kuadrant.io/secret=true, reads the labelled CA Secrets in full; the other is
# metadata-only and sees every Secret's name, so that "not found" and "missing required
# label" can be told apart. RBAC cannot be narrowed by label, so this grant covers every
# Secret's data: trust-sds itself never requests the data of an unlabelled Secret. No
# `get`: nothing is read by name.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["list", "watch"]
# The objects that reference CA Secrets (per-server CAs and gateway-wide bundles), watched
# in the served version (v1, or v1alpha1). The start-up check of that version, repeated
# every 2 s while a watch is failing to see whether the API server answers again, is a
# list (limit 1) of MCPServerRegistrations.
- apiGroups: ["mcp.kuadrant.io"]
  resources: ["mcpserverregistrations", "mcpgatewayextensions"]
  verbs: ["list", "watch"]
# HTTPRoutes (gateway.networking.k8s.io/v1): a registration's target route and its
# parentRefs decide which Gateway, and so which MCPGatewayExtension's bundle, applies. One
# list at start-up tells whether the Gateway API is served (if it is not, or the list is
# refused, gateway bundles apply by namespace), then a watch. No `get`.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["list", "watch"]
# The Ready condition: server-side apply (an HTTP PATCH) on the status subresource, field
# manager trust-sds, so conditions other controllers own are left alone. No `update`:
# nothing is written with PUT.
- apiGroups: ["mcp.kuadrant.io"]
  resources: ["mcpserverregistrations/status", "mcpgatewayextensions/status"]
  verbs: ["patch"]
{{- end }}

{{/* Leader election: the Lease trust-sds-status-writer in the release namespace (src/leader.rs). */}}
{{- define "trust-sds.rules.leases" -}}
# The first replica creates the Lease when it does not exist yet. `create` cannot be
# limited to a name (the name is not known to RBAC before the object exists).
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create"]
# Every replica reads the Lease every 5 s; the holder renews it, and another replica takes
# it over once it expires, both with a PUT carrying the resourceVersion it read. Only this
# one Lease.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  resourceNames: ["trust-sds-status-writer"]
  verbs: ["get", "update"]
{{- end }}
