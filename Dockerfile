# syntax=docker/dockerfile:1
#
# trust-sds container image: the Rust binary on distroless (glibc, CA roots), running as non-root.
#
#   docker build -t ghcr.io/trust-sds/trust-sds:dev .
#   docker run --rm -p 18000:18000 -p 18001:18001 \
#     -v "$PWD/examples/quickstart:/etc/trust-sds/manifests:ro" ghcr.io/trust-sds/trust-sds:dev
#
# The default command serves the manifests directory /etc/trust-sds/manifests (empty in the
# image: mount yours there), so the image runs without a cluster. In Kubernetes,
# deploy/kustomize and the Helm chart replace it with
#   serve --kube --leader-elect $(POD_NAMESPACE) --listen 0.0.0.0:18000 --admin-listen 0.0.0.0:18001
# (in-cluster config; POD_NAME and POD_NAMESPACE from the downward API). Outside a cluster,
# `serve --kube` uses $KUBECONFIG: mount it and set the variable.

FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole context (see .dockerignore): build.rs compiles proto/ with a pure-Rust protobuf
# compiler, so no protoc is needed; ring needs the C compiler the image already has.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -D -m 0755 target/release/trust-sds /out/trust-sds \
 && install -d -m 0755 /out/manifests

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/trust-sds /trust-sds
COPY --from=builder --chown=65532:65532 /out/manifests /etc/trust-sds/manifests
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# 18000: gRPC (SDS, ADS, health, admin API). 18001: admin HTTP (/healthz, /readyz, /metrics, ...).
EXPOSE 18000 18001
ENTRYPOINT ["/trust-sds"]
CMD ["serve", "--manifests", "/etc/trust-sds/manifests", "--listen", "0.0.0.0:18000", "--admin-listen", "0.0.0.0:18001"]
