#!/usr/bin/env bash
# Checks and tests the Go client module in go/: gofmt, go vet, and go test with the race
# detector. The integration tests run the real trust-sds binary: TRUST_SDS_BIN, or
# target/release/trust-sds (build it first: cargo build --release). A missing binary fails
# the tests; it never skips them.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export TRUST_SDS_BIN="${TRUST_SDS_BIN:-$repo/target/release/trust-sds}"

# gofmt_check: fails, naming the files, when gofmt would change one in this directory.
gofmt_check() {
  local unformatted
  unformatted="$(gofmt -l .)"
  if [ -n "$unformatted" ]; then
    echo "gofmt: these files need formatting (run gofmt -w):" >&2
    echo "$unformatted" >&2
    exit 1
  fi
}

cd "$repo/go"
echo "==> gofmt"
gofmt_check

echo "==> go vet"
go vet ./...

echo "==> go test -race (TRUST_SDS_BIN=$TRUST_SDS_BIN)"
go test -race -count=1 ./...

# The go-control-plane peer of benches/fanout.rs (a module of its own, so the client module
# does not depend on go-control-plane's server): formatted and vetted here, run by the bench.
echo "==> benches/gcp: gofmt, go vet"
cd "$repo/benches/gcp"
gofmt_check
go vet ./...
