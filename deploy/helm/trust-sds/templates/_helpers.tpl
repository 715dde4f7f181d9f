{{/* Labels on every object (the same as deploy/kustomize). */}}
{{- define "trust-sds.labels" -}}
app.kubernetes.io/name: trust-sds
app.kubernetes.io/component: sds-server
{{- end }}

{{/* Pod selector. */}}
{{- define "trust-sds.selectorLabels" -}}
app.kubernetes.io/name: trust-sds
{{- end }}

{{/* Read access to what the Kubernetes source watches, and status/event writes. */}}
{{- define "trust-sds.rules.namespaced" -}}
# CA Secrets referenced by caCertSecretRef / caCertBundleRef. RBAC cannot be narrowed by
# label, so this covers every Secret: trust-sds itself keeps the data of Secrets labelled
# mcp.kuadrant.io/secret=true only; of any other Secret it keeps only that it exists (to
# tell "missing label" from "not found").
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["list", "watch"]
# The objects that reference CA Secrets: per-server CAs and gateway-wide bundles.
- apiGroups: ["mcp.kuadrant.io"]
  resources: ["mcpserverregistrations", "mcpgatewayextensions"]
  verbs: ["list", "watch"]
# HTTPRoutes tell which Gateway (and so which MCPGatewayExtension's base bundle) a
# registration belongs to, through their parentRefs.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["list", "watch"]
# The Ready condition, written by server-side apply (field manager trust-sds) so that
# conditions owned by other controllers are left alone.
- apiGroups: ["mcp.kuadrant.io"]
  resources: ["mcpserverregistrations/status", "mcpgatewayextensions/status"]
  verbs: ["patch", "update"]
{{- end }}

{{/* Leader election between replicas: only the Lease holder writes status. */}}
{{- define "trust-sds.rules.leases" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}

{{/* Warning events (e.g. a CA certificate that expires soon). */}}
{{- define "trust-sds.rules.events" -}}
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
