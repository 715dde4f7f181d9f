#!/usr/bin/env bash
# =====================================================================================
#  trust-sds end-to-end test on kind
#
#  NEEDS Docker, kind, kubectl, openssl and jq. It cannot run where there is no Docker
#  daemon (e.g. the project's build sandbox); CI runs it (.github/workflows/kind-e2e.yaml).
# =====================================================================================
#
# What it does: builds the image, creates a one-node kind cluster (kind-config.yaml),
# loads the image with `kind load image-archive`, installs the CRDs and the kustomize base
# as it is (`serve --kube --leader-elect $(POD_NAMESPACE)` and its RBAC) with one replica
# and imagePullPolicy Never, makes a PKI with openssl and an HTTPS upstream (nginx
# answering an MCP initialize), then walks docs/operator-guide.md:
#   0. the pod holds the Lease, and its ServiceAccount can do what the code needs and
#      nothing more (kubectl auth can-i);
#   1-5 are the steps of tests/e2e/scenario.steps (shared with tests/e2e_scenario.rs,
#   which walks them without Docker), read by run_step below:
#   1. labelled CA Secret + MCPServerRegistration -> Ready=True, written by
#      server-side apply on the status subresource with field manager trust-sds; probe OK;
#   2. every failure message by editing the Secret (wrong key, oversized, garbage, private
#      key, leaf certificate) with fail static; unlabel and delete withdraw;
#   3. CA rotation: the upstream moves to a new CA, the Secret gets old+new, then new only;
#      `trust-sds probe --watch` must succeed again within ROTATION_BUDGET_SECONDS of each
#      edit; lastTransitionTime stays while Ready stays True; the old CA is then refused;
#   4. the gateway-wide bundle (MCPGatewayExtension.spec.caCertBundleRef) of an extension
#      in another namespace, reached through the HTTPRoute's parentRef, and route edits;
#   5. two replicas: deleting the Lease holder hands status writing to the other one;
#   6. mutual TLS on the SDS port with an authorization policy, through the patch of
#      deploy/kustomize/README.md: a client certificate from the client CA completes the
#      handshake (openssl s_client through a port-forward), none or one from another CA
#      does not, a plaintext probe no longer gets in, and a renewed serving certificate is
#      picked up without a restart.
#
# Environment:
#   CLUSTER_NAME             kind cluster name                        (trust-sds-e2e)
#   KEEP_CLUSTER=1           leave the cluster running afterwards
#   REUSE_CLUSTER=1          use an existing cluster named CLUSTER_NAME
#   IMAGE                    image to build and load                  (ghcr.io/trust-sds/trust-sds:e2e)
#   NGINX_IMAGE              the HTTPS upstream's image               (nginx:1.27-alpine)
#   GATEWAY_API_VERSION      Gateway API CRDs, for HTTPRoute          (v1.2.1)
#   ROTATION_BUDGET_SECONDS  Secret edit -> probe succeeds again      (5)
#   STATUS_TIMEOUT_SECONDS   wait for an expected Ready condition     (30)
#   ARTIFACTS_DIR            diagnostics on failure                   (a temporary directory)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"

CLUSTER_NAME="${CLUSTER_NAME:-trust-sds-e2e}"
IMAGE="${IMAGE:-ghcr.io/trust-sds/trust-sds:e2e}"
NGINX_IMAGE="${NGINX_IMAGE:-nginx:1.27-alpine}"
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.2.1}"
ROTATION_BUDGET_SECONDS="${ROTATION_BUDGET_SECONDS:-5}"
STATUS_TIMEOUT_SECONDS="${STATUS_TIMEOUT_SECONDS:-30}"

SYSTEM_NS=trust-sds          # where trust-sds runs
NS=mcp-test                  # where the upstream, its Secrets and registration live
GW_NS=mcp-system             # where the MCPGatewayExtension and its bundle live
LABEL=mcp.kuadrant.io/secret
UPSTREAM_HOST="weather.$NS.svc"
UPSTREAM_URL="https://$UPSTREAM_HOST:8443/mcp"
SDS_URL="http://trust-sds.$SYSTEM_NS.svc:18000"

WORK="$(mktemp -d)"
ARTIFACTS_DIR="${ARTIFACTS_DIR:-$WORK/artifacts}"
PKI="$WORK/pki"
CLUSTER_CREATED=0
PORT_FORWARD_PID=""

# ---------------------------------------------------------------------------- helpers

log() { printf '\n==> %s\n' "$*"; }
step() { printf '    %s\n' "$*"; }
fail() {
  printf '\nFAIL: %s\n' "$*" >&2
  exit 1
}
need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is required (see tests/e2e/kind/README.md)"
  done
}
now_ms() { date +%s%3N; }

# kubectl against the test cluster only, whatever the current context is.
k() { kubectl --context "kind-$CLUSTER_NAME" "$@"; }

# The admin HTTP API of trust-sds, through the API server's service proxy (no port-forward).
admin_get() { k get --raw "/api/v1/namespaces/$SYSTEM_NS/services/trust-sds:admin/proxy$1"; }

# The version served for a resource name, or nothing when it is not served.
served_version() {
  local bundles
  bundles="$(admin_get /bundles)"
  jq -r --arg n "$1" '.[] | select(.name == $n) | .version' <<<"$bundles"
}

# The holder of the status writer's Lease (a pod name), or nothing.
lease_holder() {
  k -n "$SYSTEM_NS" get lease trust-sds-status-writer -o 'jsonpath={.spec.holderIdentity}' 2>/dev/null || true
}

# The namespace of the objects the helpers below read and write: $NS, or $GW_NS inside
# `in_gw_ns`.
obj_ns() { printf '%s' "${OBJ_NS:-$NS}"; }
# in_gw_ns CMD...: runs a helper on the objects in $GW_NS.
in_gw_ns() {
  local OBJ_NS=$GW_NS
  "$@"
}

# The lastTransitionTime of the Ready condition of <kind>/<name>.
ready_since() {
  k -n "$(obj_ns)" get "$1" "$2" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].lastTransitionTime}'
}

# can_i WANT NAMESPACE VERB RESOURCE [FLAGS...]: asks the API server whether trust-sds's
# ServiceAccount may do VERB on RESOURCE (TYPE or TYPE/NAME) in NAMESPACE; WANT is yes or
# no. FLAGS go to `kubectl auth can-i`, e.g. --subresource=status.
can_i() {
  local want=$1 ns=$2 verb=$3 resource=$4 have
  shift 4
  have="$(k auth can-i "$verb" "$resource" "$@" -n "$ns" \
    --as="system:serviceaccount:$SYSTEM_NS:trust-sds" 2>/dev/null || true)"
  [[ $have == "$want" ]] ||
    fail "RBAC: can-i $verb $resource $* -n $ns: want $want, have ${have:-<nothing>}"
}

# "<status>\t<reason>\t<message>" of the Ready condition of <kind>/<name>.
ready_condition() {
  k -n "$(obj_ns)" get "$1" "$2" \
    -o 'jsonpath={range .status.conditions[?(@.type=="Ready")]}{.status}{"\t"}{.reason}{"\t"}{.message}{end}' \
    2>/dev/null || true
}

# expect_ready KIND NAME STATUS REASON MESSAGE [exact|prefix]
# Waits until the Ready condition matches; the message exactly, or as a prefix.
LAST_MESSAGE=""
expect_ready() {
  local kind=$1 name=$2 want_status=$3 want_reason=$4 want_message=$5 mode=${6:-exact}
  local deadline=$(($(date +%s) + STATUS_TIMEOUT_SECONDS)) status reason message
  while :; do
    IFS=$'\t' read -r status reason message <<<"$(ready_condition "$kind" "$name")" || true
    if [[ $status == "$want_status" && $reason == "$want_reason" ]] &&
      { [[ $mode == exact && $message == "$want_message" ]] ||
        [[ $mode == prefix && $message == "$want_message"* ]]; }; then
      step "$kind/$name Ready=$status $reason: $message"
      LAST_MESSAGE="$message"
      return 0
    fi
    if (($(date +%s) >= deadline)); then
      fail "$kind/$name: want Ready=$want_status $want_reason \"$want_message\" ($mode); have Ready=${status:-<none>} ${reason:-<none>} \"${message:-}\""
    fi
    sleep 0.5
  done
}

# The version quoted in a status message: "... (version 0123456789abcdef) ...".
version_in() { sed -n 's/.*(version \([0-9a-f]\{16\}\)).*/\1/p' <<<"$1"; }

# put_ca_secret NAME KEY FILE LABELLED(true|false): create or replace a Secret
# holding FILE under KEY (replace, not apply: a removed key or label must go away).
put_ca_secret() {
  local doc
  doc="$(k -n "$(obj_ns)" create secret generic "$1" --from-file="$2=$3" --dry-run=client -o json)"
  if [[ $4 == true ]]; then
    doc="$(jq --arg l "$LABEL" '.metadata.labels[$l] = "true"' <<<"$doc")"
  fi
  if k -n "$(obj_ns)" get secret "$1" >/dev/null 2>&1; then
    k replace -f - <<<"$doc" >/dev/null
  else
    k create -f - <<<"$doc" >/dev/null
  fi
}

# Starts a probe pod: trust-sds probe for $NS/weather against the upstream.
start_probe() {
  local pod=$1
  shift
  k -n "$NS" run "$pod" --image="$IMAGE" --image-pull-policy=Never --restart=Never \
    --labels=app.kubernetes.io/name=trust-sds-probe -- \
    probe --sds "$SDS_URL" --registration "$NS/weather" "$@" "$UPSTREAM_URL" >/dev/null
}

# probe_once NAME [probe flags...]: runs a one-shot probe; succeeds iff initialize did.
probe_once() {
  local pod="probe-$1" phase="" deadline=$(($(date +%s) + 90))
  shift
  start_probe "$pod" "$@"
  while :; do
    phase="$(k -n "$NS" get pod "$pod" -o 'jsonpath={.status.phase}' 2>/dev/null || true)"
    [[ $phase == Succeeded || $phase == Failed ]] && break
    if (($(date +%s) >= deadline)); then
      phase=Timeout
      break
    fi
    sleep 1
  done
  k -n "$NS" logs "$pod" 2>/dev/null | sed 's/^/      | /' || true
  k -n "$NS" delete pod "$pod" --wait=false >/dev/null 2>&1 || true
  [[ $phase == Succeeded ]]
}

watch_log() { k -n "$NS" logs probe-watch 2>/dev/null || true; }

# wait_watch_recovers FROM_LINE T0_MS WHAT: waits until the watch probe logs, after line
# FROM_LINE, a trust change immediately followed by a successful initialize; fails unless
# that happened within ROTATION_BUDGET_SECONDS of T0_MS.
wait_watch_recovers() {
  local from=$1 t0=$2 what=$3 budget_ms=$((ROTATION_BUDGET_SECONDS * 1000)) give_up log elapsed
  give_up=$((t0 + 60000))
  while :; do
    log="$(watch_log | tail -n +"$((from + 1))")"
    # Only the probe's own lines count (log lines of the client library may interleave).
    if awk '/^trust changed to version / { changed = 1; next }
            /^initialize: / { if (changed && /^initialize: HTTP 2/) found = 1; changed = 0 }
            END { exit !found }' <<<"$log"; then
      elapsed=$(($(now_ms) - t0))
      break
    fi
    (($(now_ms) < give_up)) || fail "$what: the watch probe never succeeded again; its log since the edit:
$log"
    sleep 0.2
  done
  grep -A1 '^trust changed to version ' <<<"$log" | sed 's/^/      | /' || true
  ((elapsed <= budget_ms)) ||
    fail "$what: probe succeeded again only after ${elapsed} ms (budget ${budget_ms} ms)"
  step "$what: probe OK again ${elapsed} ms after the Secret edit (budget ${budget_ms} ms)"
}

# set_upstream_leaf NAME: the upstream now serves $PKI/NAME.crt; waits for the old pod to go.
set_upstream_leaf() {
  local old
  old="$(k -n "$NS" get pods -l app=weather -o name)"
  k -n "$NS" create secret tls weather-tls --cert "$PKI/$1.crt" --key "$PKI/$1.key" \
    --dry-run=client -o yaml | k replace -f - >/dev/null
  k -n "$NS" rollout restart deployment/weather >/dev/null
  k -n "$NS" rollout status deployment/weather --timeout=120s >/dev/null
  if [[ -n $old ]]; then
    # shellcheck disable=SC2086 # one name per word
    k -n "$NS" wait --for=delete $old --timeout=60s >/dev/null 2>&1 || true
  fi
  step "upstream now serves $1.crt"
}

diagnostics() {
  mkdir -p "$ARTIFACTS_DIR"
  k get pods -A -o wide >"$ARTIFACTS_DIR/pods.txt" 2>&1 || true
  k -n "$SYSTEM_NS" logs deployment/trust-sds --all-containers >"$ARTIFACTS_DIR/trust-sds.log" 2>&1 || true
  k -n "$NS" logs probe-watch >"$ARTIFACTS_DIR/probe-watch.log" 2>&1 || true
  k get mcpserverregistrations,mcpgatewayextensions -A -o yaml --show-managed-fields >"$ARTIFACTS_DIR/mcp-objects.yaml" 2>&1 || true
  k -n "$SYSTEM_NS" get lease trust-sds-status-writer -o yaml >"$ARTIFACTS_DIR/lease.yaml" 2>&1 || true
  k -n "$SYSTEM_NS" logs deployment/trust-sds --previous >"$ARTIFACTS_DIR/trust-sds-previous.log" 2>&1 || true
  local view
  for view in statuses bundles clients; do
    admin_get "/$view" >"$ARTIFACTS_DIR/$view.json" 2>&1 || true
  done
  kind export logs "$ARTIFACTS_DIR/kind" --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
  printf 'diagnostics in %s\n' "$ARTIFACTS_DIR" >&2
}

on_exit() {
  local rc=$?
  if [[ -n $PORT_FORWARD_PID ]]; then
    kill "$PORT_FORWARD_PID" 2>/dev/null || true
  fi
  if ((rc != 0)) && ((CLUSTER_CREATED)); then
    diagnostics
  fi
  if ((CLUSTER_CREATED)) && [[ ${KEEP_CLUSTER:-0} != 1 && ${REUSE_CLUSTER:-0} != 1 ]]; then
    kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
  fi
  if ((CLUSTER_CREATED)) && [[ $ARTIFACTS_DIR == "$WORK"/* && $rc != 0 ]]; then
    printf 'keeping %s for the diagnostics\n' "$WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap on_exit EXIT

# ---------------------------------------------------------------------------- image

need docker kind kubectl openssl jq awk date realpath

log "building $IMAGE"
DOCKER_BUILDKIT=1 docker build -t "$IMAGE" "$REPO"

# ---------------------------------------------------------------------------- cluster

log "cluster $CLUSTER_NAME"
existing="$(kind get clusters 2>/dev/null || true)"
if [[ ${REUSE_CLUSTER:-0} == 1 ]] && grep -qx "$CLUSTER_NAME" <<<"$existing"; then
  step "reusing the existing cluster"
else
  kind create cluster --name "$CLUSTER_NAME" --config "$HERE/kind-config.yaml" --wait 120s
fi
CLUSTER_CREATED=1
# As upstream's CI does: many inotify users share the host kernel through the node.
docker exec "$CLUSTER_NAME-control-plane" sysctl -w fs.inotify.max_user_instances=1024 >/dev/null 2>&1 ||
  step "could not raise fs.inotify.max_user_instances in the node; raise it on the host if pods fail"

log "loading images"
docker save "$IMAGE" -o "$WORK/trust-sds.tar"
kind load image-archive "$WORK/trust-sds.tar" --name "$CLUSTER_NAME"
docker image inspect "$NGINX_IMAGE" >/dev/null 2>&1 || docker pull -q "$NGINX_IMAGE" >/dev/null
docker save "$NGINX_IMAGE" -o "$WORK/nginx.tar"
kind load image-archive "$WORK/nginx.tar" --name "$CLUSTER_NAME"

log "CRDs"
k apply --server-side -f "$REPO/deploy/crds.yaml" >/dev/null
k apply --server-side -f \
  "https://github.com/kubernetes-sigs/gateway-api/releases/download/$GATEWAY_API_VERSION/standard-install.yaml" >/dev/null
k wait --for=condition=Established --timeout=60s \
  crd/mcpserverregistrations.mcp.kuadrant.io \
  crd/mcpgatewayextensions.mcp.kuadrant.io \
  crd/httproutes.gateway.networking.k8s.io >/dev/null

log "trust-sds (deploy/kustomize: serve --kube --leader-elect, imagePullPolicy Never)"
k create namespace "$SYSTEM_NS" >/dev/null
overlay="$WORK/overlay"
mkdir -p "$overlay"
cat >"$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $SYSTEM_NS
resources:
- $(realpath --relative-to="$overlay" "$REPO/deploy/kustomize")
images:
- name: ghcr.io/trust-sds/trust-sds
  newName: ${IMAGE%:*}
  newTag: ${IMAGE##*:}
patches:
- target: { kind: ClusterRoleBinding, name: trust-sds }
  patch: |-
    - op: replace
      path: /subjects/0/namespace
      value: $SYSTEM_NS
- target: { kind: RoleBinding, name: trust-sds-leader-election }
  patch: |-
    - op: replace
      path: /subjects/0/namespace
      value: $SYSTEM_NS
# One replica until step 5: the admin API seen through the Service is then the one that
# serves the probes. The args and env are the base's own.
- target: { kind: Deployment, name: trust-sds }
  patch: |-
    - op: replace
      path: /spec/replicas
      value: 1
    - op: add
      path: /spec/template/spec/containers/0/imagePullPolicy
      value: Never
EOF
k kustomize "$overlay" | k apply --server-side -f - >/dev/null
k -n "$SYSTEM_NS" rollout status deployment/trust-sds --timeout=180s
deadline=$(($(date +%s) + 60))
until readyz="$(admin_get /readyz 2>/dev/null)"; do
  (($(date +%s) < deadline)) || fail "trust-sds /readyz is not answering through its Service"
  sleep 1
done
step "readyz: $readyz"
[[ $readyz == ready* ]] || fail "trust-sds is not ready: $readyz"

log "0. leader election and RBAC"
pod="$(k -n "$SYSTEM_NS" get pods -l app.kubernetes.io/name=trust-sds -o 'jsonpath={.items[0].metadata.name}')"
deadline=$(($(date +%s) + 30))
until [[ $(lease_holder) == "$pod" ]]; do
  (($(date +%s) < deadline)) ||
    fail "Lease $SYSTEM_NS/trust-sds-status-writer: want holder $pod, have \"$(lease_holder)\""
  sleep 1
done
step "Lease $SYSTEM_NS/trust-sds-status-writer held by $pod (POD_NAME from the downward API)"
can_i yes "$NS" list secrets
can_i yes "$NS" watch secrets
can_i no "$NS" get secrets
can_i no "$NS" update secrets
can_i yes "$NS" list mcpserverregistrations.mcp.kuadrant.io
can_i yes "$NS" watch mcpgatewayextensions.mcp.kuadrant.io
can_i yes "$NS" list httproutes.gateway.networking.k8s.io
can_i yes "$NS" watch httproutes.gateway.networking.k8s.io
can_i no "$NS" patch mcpserverregistrations.mcp.kuadrant.io
can_i yes "$NS" patch mcpserverregistrations.mcp.kuadrant.io --subresource=status
can_i yes "$NS" patch mcpgatewayextensions.mcp.kuadrant.io --subresource=status
can_i no "$NS" update mcpserverregistrations.mcp.kuadrant.io --subresource=status
can_i yes "$SYSTEM_NS" create leases.coordination.k8s.io
can_i yes "$SYSTEM_NS" update leases.coordination.k8s.io/trust-sds-status-writer
can_i no "$SYSTEM_NS" update leases.coordination.k8s.io/another-lease
can_i no "$NS" create leases.coordination.k8s.io
can_i no "$NS" create events
step "the ServiceAccount can do what the code does, and no more"

# ---------------------------------------------------------------------------- PKI

log "PKI (openssl)"
mkdir -p "$PKI"
cat >"$PKI/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:$UPSTREAM_HOST, DNS:$UPSTREAM_HOST.cluster.local
EOF
make_ca() { # NAME CN
  openssl req -x509 -new -config "$PKI/openssl.cnf" -extensions v3_ca \
    -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/$1.key" -out "$PKI/$1.crt" -days 30 -subj "/CN=$2" 2>/dev/null
}
make_leaf() { # NAME CA
  openssl req -new -config "$PKI/openssl.cnf" \
    -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/$1.key" -out "$PKI/$1.csr" -subj "/CN=$UPSTREAM_HOST" 2>/dev/null
  openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/$2.crt" -CAkey "$PKI/$2.key" -CAcreateserial \
    -days 30 -extfile "$PKI/openssl.cnf" -extensions v3_leaf -out "$PKI/$1.crt" 2>/dev/null
}
make_ca ca-a "E2E Upstream Root A"
make_ca ca-b "E2E Upstream Root B"
make_ca ca-g "E2E Gateway Root"
make_leaf leaf-a ca-a
make_leaf leaf-b ca-b
cat "$PKI/ca-a.crt" "$PKI/ca-b.crt" >"$PKI/ca-ab.crt"
printf 'this is not a certificate\n' >"$PKI/garbage.txt"
: >"$PKI/big.pem"
while (($(wc -c <"$PKI/big.pem") <= 65536)); do cat "$PKI/ca-a.crt" >>"$PKI/big.pem"; done
: >"$PKI/huge.pem"
while (($(wc -c <"$PKI/huge.pem") <= 262144)); do cat "$PKI/ca-g.crt" >>"$PKI/huge.pem"; done
step "roots A, B, G; leaves for $UPSTREAM_HOST from A and B"

# ---------------------------------------------------------------------------- upstream

log "HTTPS upstream $UPSTREAM_URL (nginx)"
k create namespace "$NS" >/dev/null
k create namespace "$GW_NS" >/dev/null
k -n "$NS" create secret tls weather-tls --cert "$PKI/leaf-a.crt" --key "$PKI/leaf-a.key" >/dev/null
k -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: weather-nginx
data:
  default.conf: |
    server {
      listen 8443 ssl;
      ssl_certificate     /etc/nginx/tls/tls.crt;
      ssl_certificate_key /etc/nginx/tls/tls.key;
      # Just enough MCP for an initialize (streamable HTTP, JSON answer).
      location /mcp {
        default_type application/json;
        return 200 '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"weather-e2e","version":"1.0.0"}}}';
      }
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: weather
  labels: { app: weather }
spec:
  replicas: 1
  selector:
    matchLabels: { app: weather }
  template:
    metadata:
      labels: { app: weather }
    spec:
      containers:
      - name: nginx
        image: $NGINX_IMAGE
        imagePullPolicy: Never
        ports:
        - { name: https, containerPort: 8443 }
        readinessProbe:
          tcpSocket: { port: https }
          periodSeconds: 2
        volumeMounts:
        - { name: conf, mountPath: /etc/nginx/conf.d }
        - { name: tls, mountPath: /etc/nginx/tls, readOnly: true }
      volumes:
      - { name: conf, configMap: { name: weather-nginx } }
      - { name: tls, secret: { secretName: weather-tls } }
---
apiVersion: v1
kind: Service
metadata:
  name: weather
spec:
  selector: { app: weather }
  ports:
  - { name: https, port: 8443, targetPort: https }
EOF
k -n "$NS" rollout status deployment/weather --timeout=120s >/dev/null
step "upstream serves leaf-a.crt (CA A)"

# ---------------------------------------------------------------------------- 1-5. the scenario

# The operator's scenario is tests/e2e/scenario.steps, shared with tests/e2e_scenario.rs
# (the same steps without Docker: a real kube-apiserver, two replicas, Envoy); each
# operation is documented there. A `case` arm below per operation (a test checks that).
declare -A VARS=()
SINCE=""

# fill TEXT: the steps' placeholders replaced.
fill() {
  local text=$1 name
  text=${text//\{NS\}/$NS}
  text=${text//\{GW_NS\}/$GW_NS}
  text=${text//\{HOST\}/$UPSTREAM_HOST}
  for name in "${!VARS[@]}"; do
    text=${text//\{$name\}/${VARS[$name]}}
  done
  [[ $text != *"{"* ]] || fail "unknown placeholder in: $text"
  printf '%s' "$text"
}

# ns_of ns|gw: the namespace a step names.
ns_of() {
  case $1 in
  ns) printf '%s' "$NS" ;;
  gw) printf '%s' "$GW_NS" ;;
  *) fail "namespace selector $1: want ns or gw" ;;
  esac
}

# run_step OP WORDS...: one step of tests/e2e/scenario.steps.
run_step() {
  local op=$1 deadline have from t0 line
  shift
  case $op in
  section)
    log "$*"
    ;;
  register)
    k -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: weather-route
spec:
  parentRefs:
  - { group: gateway.networking.k8s.io, kind: Gateway, name: mcp-gateway, namespace: $GW_NS }
  rules:
  - backendRefs:
    - { name: weather, port: 8443 }
---
apiVersion: mcp.kuadrant.io/v1
kind: MCPServerRegistration
metadata:
  name: weather
spec:
  prefix: weather_
  path: /mcp
  targetRef: { group: gateway.networking.k8s.io, kind: HTTPRoute, name: weather-route }
  caCertSecretRef: { name: weather-ca }
YAML
    step "HTTPRoute weather-route and MCPServerRegistration weather in $NS"
    ;;
  secret) # ns|gw NAME KEY FILE labelled|unlabelled
    OBJ_NS="$(ns_of "$1")" put_ca_secret "$2" "$3" "$PKI/$4" "$([[ $5 == labelled ]] && echo true || echo false)"
    ;;
  label) # ns|gw NAME on|off
    if [[ $3 == on ]]; then
      k -n "$(ns_of "$1")" label secret "$2" "$LABEL=true" --overwrite >/dev/null
    else
      k -n "$(ns_of "$1")" label secret "$2" "$LABEL-" >/dev/null
    fi
    ;;
  delete) # ns|gw NAME
    k -n "$(ns_of "$1")" delete secret "$2" >/dev/null
    ;;
  expect) # registration|extension NAME STATUS REASON exact|prefix MESSAGE...
    local kind=$1 name=$2 status=$3 reason=$4 mode=$5
    shift 5
    case $kind in
    registration) expect_ready mcpserverregistration "$name" "$status" "$reason" "$(fill "$*")" "$mode" ;;
    extension) in_gw_ns expect_ready mcpgatewayextension "$name" "$status" "$reason" "$(fill "$*")" "$mode" ;;
    *) fail "expect $kind: want registration or extension" ;;
    esac
    ;;
  managed-by) # registration NAME MANAGER/OPERATION/SUBRESOURCE
    have="$(k -n "$NS" get mcpserverregistration "$2" --show-managed-fields \
      -o 'jsonpath={range .metadata.managedFields[*]}{.manager}/{.operation}/{.subresource}{"\n"}{end}')"
    grep -qx "$3" <<<"$have" || fail "want a managedFields entry $3; have: $have"
    step "written by $3 (server-side apply)"
    ;;
  remember) # VAR
    VARS[$1]="$(version_in "$LAST_MESSAGE")"
    [[ -n ${VARS[$1]} ]] || fail "no version in: $LAST_MESSAGE"
    ;;
  differs) # VAR
    [[ $(version_in "$LAST_MESSAGE") != "${VARS[$1]:-}" ]] || fail "the version must differ from $1"
    ;;
  served) # RESOURCE VERSION|none
    local resource want
    resource="$(fill "$1")"
    want="$([[ $2 == none ]] || fill "$2")"
    deadline=$(($(date +%s) + STATUS_TIMEOUT_SECONDS))
    until [[ $(served_version "$resource") == "$want" ]]; do
      (($(date +%s) < deadline)) || fail "$resource: want \"$want\" served, have \"$(served_version "$resource")\""
      sleep 0.5
    done
    step "$resource: served \"$want\""
    ;;
  not-quoting) # FILE
    while IFS= read -r line; do
      [[ -z $line || $line == -----* || $LAST_MESSAGE != *"$line"* ]] || fail "the status message quotes $1"
    done <"$PKI/$1"
    ;;
  since) # save|same
    have="$(ready_since mcpserverregistration weather)"
    if [[ $1 == save ]]; then
      SINCE=$have
    else
      [[ $have == "$SINCE" ]] || fail "lastTransitionTime must stay $SINCE while Ready stays True (have $have)"
    fi
    ;;
  probe) # ok|refused LABEL
    local want=$1
    if [[ $want == ok ]]; then
      probe_once "$2" || fail "probe $2: the upstream must be trusted"
    elif probe_once "$2" --timeout 3s; then
      fail "probe $2: the upstream must be refused"
    fi
    ;;
  upstream) # LEAF
    set_upstream_leaf "$1"
    ;;
  watch)
    start_probe probe-watch --watch
    k -n "$NS" wait --for=condition=Ready pod/probe-watch --timeout=60s >/dev/null
    deadline=$(($(date +%s) + 30))
    until [[ $(watch_log) == *"initialize: HTTP 2"* ]]; do
      (($(date +%s) < deadline)) || fail "the watch probe never succeeded; its log:
$(watch_log)"
      sleep 0.5
    done
    step "watch probe trusts the upstream"
    ;;
  rotate) # FILE LABEL...
    local file=$1
    shift
    from=$(watch_log | wc -l)
    t0=$(now_ms)
    put_ca_secret weather-ca ca.crt "$PKI/$file" true
    wait_watch_recovers "$from" "$t0" "$*"
    ;;
  extension) # NAME SECRET
    k -n "$GW_NS" apply -f - >/dev/null <<YAML
apiVersion: mcp.kuadrant.io/v1
kind: MCPGatewayExtension
metadata:
  name: $1
spec:
  targetRef: { group: gateway.networking.k8s.io, kind: Gateway, name: mcp-gateway, sectionName: mcp }
  caCertBundleRef: { name: $2 }
YAML
    ;;
  route) # GATEWAY
    k -n "$NS" patch httproute weather-route --type=json \
      -p "[{\"op\": \"replace\", \"path\": \"/spec/parentRefs/0/name\", \"value\": \"$1\"}]" >/dev/null
    step "weather-route's parent: Gateway $GW_NS/$1"
    ;;
  handoff)
    k -n "$SYSTEM_NS" scale deployment/trust-sds --replicas=2 >/dev/null
    k -n "$SYSTEM_NS" rollout status deployment/trust-sds --timeout=180s >/dev/null
    local old holder
    old="$(lease_holder)"
    [[ -n $old ]] || fail "the Lease has no holder"
    step "holder: $old"
    k -n "$SYSTEM_NS" delete pod "$old" --wait=false >/dev/null
    # The deleted holder releases the Lease on SIGTERM: another replica takes it at its
    # next check (every 5 s), or once it has not been renewed for 15 s if the release failed.
    deadline=$(($(date +%s) + 60))
    while :; do
      holder="$(lease_holder)"
      if [[ -n $holder && $holder != "$old" ]] && k -n "$SYSTEM_NS" get pod "$holder" >/dev/null 2>&1; then
        break
      fi
      (($(date +%s) < deadline)) || fail "no replica took the Lease over from $old (holder: \"$holder\")"
      sleep 1
    done
    step "new holder: $holder"
    ;;
  *)
    fail "tests/e2e/scenario.steps: unknown operation $op"
    ;;
  esac
}

# Read on descriptor 3: the steps' commands keep the script's stdin.
# `read -a` splits a line into words without globbing; `$*` joins a message back.
while read -r -u 3 -a words; do
  ((${#words[@]})) && [[ ${words[0]} != \#* ]] || continue
  run_step "${words[@]}"
done 3<"$REPO/tests/e2e/scenario.steps"
# ---------------------------------------------------------------------------- 6. mTLS

log "6. mutual TLS and an authorization policy on the SDS port (deploy/kustomize/README.md patch)"
SDS_NAME="trust-sds.$SYSTEM_NS.svc"
BROKER_ID=spiffe://cluster.local/ns/mcp-system/sa/mcp-broker
cat >>"$PKI/openssl.cnf" <<EOF
[v3_sds_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:$SDS_NAME, DNS:$SDS_NAME.cluster.local
[v3_sds_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = URI:$BROKER_ID
EOF
make_cert() { # NAME CA EXTENSIONS CN
  openssl req -new -config "$PKI/openssl.cnf" \
    -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/$1.key" -out "$PKI/$1.csr" -subj "/CN=$4" 2>/dev/null
  openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/$2.crt" -CAkey "$PKI/$2.key" -CAcreateserial \
    -days 30 -extfile "$PKI/openssl.cnf" -extensions "$3" -out "$PKI/$1.crt" 2>/dev/null
}
# One CA for both directions, as in docs/operator-guide.md: it signs the serving
# certificate and is the client CA (the Secret's ca.crt).
make_ca sds-ca "E2E SDS CA"
make_cert sds-server sds-ca v3_sds_server "$SDS_NAME"
make_cert sds-server-renewed sds-ca v3_sds_server "$SDS_NAME"
make_cert sds-broker sds-ca v3_sds_client mcp-broker
make_cert sds-stranger ca-b v3_sds_client mcp-broker
# sds_tls_secret NAME: the kubernetes.io/tls Secret trust-sds-tls from $PKI/NAME.{crt,key}.
sds_tls_secret() {
  k -n "$SYSTEM_NS" create secret generic trust-sds-tls --type=kubernetes.io/tls \
    --from-file=tls.crt="$PKI/$1.crt" --from-file=tls.key="$PKI/$1.key" \
    --from-file=ca.crt="$PKI/sds-ca.crt" --dry-run=client -o yaml
}
sds_tls_secret sds-server | k create -f - >/dev/null
cat >"$WORK/policy.yaml" <<EOF
clients:
- identity: $BROKER_ID
  namespaces: ["*"]
- identity: mcp-gateway-envoy.mcp-system.svc
  namespaces: [mcp-gateway]
EOF
k -n "$SYSTEM_NS" create configmap trust-sds-authz --from-file=policy.yaml="$WORK/policy.yaml" >/dev/null
# The operations of the README's patch (the ConfigMap is created directly here rather than
# by a configMapGenerator).
k -n "$SYSTEM_NS" patch deployment trust-sds --type=json -p '[
  {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--tls-cert=/etc/trust-sds/tls/tls.crt"},
  {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--tls-key=/etc/trust-sds/tls/tls.key"},
  {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--tls-client-ca=/etc/trust-sds/tls/ca.crt"},
  {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--authz=/etc/trust-sds/authz/policy.yaml"},
  {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts", "value": [
    {"name": "tls", "mountPath": "/etc/trust-sds/tls", "readOnly": true},
    {"name": "authz", "mountPath": "/etc/trust-sds/authz", "readOnly": true}]},
  {"op": "add", "path": "/spec/template/spec/volumes", "value": [
    {"name": "tls", "secret": {"secretName": "trust-sds-tls"}},
    {"name": "authz", "configMap": {"name": "trust-sds-authz"}}]}
]' >/dev/null
# serve exits at start-up when the certificate, key, client CA or policy cannot be used.
k -n "$SYSTEM_NS" rollout status deployment/trust-sds --timeout=180s >/dev/null
step "rolled out with --tls-cert, --tls-key, --tls-client-ca and --authz"

# A port-forward to one running pod of the new ReplicaSet (terminating pods left out).
pod="$(k -n "$SYSTEM_NS" get pods -l app.kubernetes.io/name=trust-sds -o json |
  jq -r '[.items[] | select(.metadata.deletionTimestamp == null and .status.phase == "Running")][0].metadata.name')"
[[ -n $pod && $pod != null ]] || fail "no running trust-sds pod after the rollout"
kubectl --context "kind-$CLUSTER_NAME" -n "$SYSTEM_NS" port-forward "pod/$pod" --address 127.0.0.1 :18000 \
  >"$WORK/port-forward.log" 2>&1 &
PORT_FORWARD_PID=$!
deadline=$(($(date +%s) + 30))
sds_port=""
until [[ -n $sds_port ]]; do
  (($(date +%s) < deadline)) || fail "the port-forward to $pod did not start: $(cat "$WORK/port-forward.log")"
  sleep 0.5
  sds_port="$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9]*\) -> 18000$/\1/p' "$WORK/port-forward.log" 2>/dev/null || true)"
done
step "port-forward to $pod: 127.0.0.1:$sds_port"

# sds_handshake [s_client flags...]: a TLS 1.2 handshake with trust-sds that verifies its
# certificate for $SDS_NAME. TLS 1.2, because there the server checks the client's
# certificate before the handshake completes: a completed handshake means it was accepted.
sds_handshake() {
  openssl s_client -connect "127.0.0.1:$sds_port" -tls1_2 -alpn h2 \
    -servername "$SDS_NAME" -verify_hostname "$SDS_NAME" -verify_return_error \
    -CAfile "$PKI/sds-ca.crt" "$@" </dev/null >"$WORK/s_client.log" 2>&1
}
sds_handshake -cert "$PKI/sds-broker.crt" -key "$PKI/sds-broker.key" ||
  fail "a client certificate from the client CA must be accepted: $(cat "$WORK/s_client.log")"
grep -q '^ALPN protocol: h2$' "$WORK/s_client.log" || fail "trust-sds must negotiate ALPN h2"
step "client certificate from the client CA: accepted, ALPN h2"
if sds_handshake; then fail "a client without a certificate must be refused"; fi
step "no client certificate: refused"
if sds_handshake -cert "$PKI/sds-stranger.crt" -key "$PKI/sds-stranger.key"; then
  fail "a client certificate from another CA must be refused"
fi
step "client certificate from another CA: refused"
if probe_once plaintext --timeout 3s; then fail "a plaintext client must not get through the TLS listener"; fi
step "plaintext probe: refused"

# Renewal: a new serving certificate in the Secret reaches new handshakes without a restart
# (the kubelet updates the volume, and trust-sds checks the files every 2 s).
served_fingerprint() {
  openssl s_client -connect "127.0.0.1:$sds_port" -tls1_2 -servername "$SDS_NAME" \
    -cert "$PKI/sds-broker.crt" -key "$PKI/sds-broker.key" </dev/null 2>/dev/null |
    openssl x509 -noout -fingerprint -sha256 2>/dev/null || true
}
want="$(openssl x509 -in "$PKI/sds-server-renewed.crt" -noout -fingerprint -sha256)"
sds_tls_secret sds-server-renewed | k replace -f - >/dev/null
deadline=$(($(date +%s) + 120))
until [[ $(served_fingerprint) == "$want" ]]; do
  (($(date +%s) < deadline)) || fail "the renewed serving certificate was not served within 120 s"
  sleep 2
done
restarts="$(k -n "$SYSTEM_NS" get pod "$pod" -o 'jsonpath={.status.containerStatuses[0].restartCount}')"
[[ $restarts == 0 ]] || fail "$pod restarted $restarts time(s): the certificate must be reloaded in place"
sds_handshake -cert "$PKI/sds-broker.crt" -key "$PKI/sds-broker.key" ||
  fail "after the renewal the client must still be accepted: $(cat "$WORK/s_client.log")"
step "renewed serving certificate served without a restart"

log "PASS: kind end-to-end"
