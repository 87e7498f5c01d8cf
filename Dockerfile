# syntax=docker/dockerfile:1
# Images for both services, from one build: `docker build --target session-svc .` and
# `docker build --target gateway-svc .` (docker-compose.yml does both).
#
# The services are built by scripts/build-release.sh, as bench/run.sh builds what it measures:
# the release profile (fat LTO, one codegen unit) plus profile-guided optimisation, which builds
# them instrumented, runs them on a training load inside this stage (loopback only: the WeChat
# sandbox and the load generator, built here too), and builds them again with the profile
# (~20 minutes on 2 cores; `--build-arg WEAPP_PGO=off` for the release profile alone, ~8).
# Compiled dependencies are kept between builds in BuildKit cache mounts (the registry and
# target/). No protoc is needed: the protos are compiled by protox, in Rust.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# make: jemalloc, the gateway's allocator, is built from its C sources. openssl: the training
# run's identity key. llvm-tools: llvm-profdata of rustc's own LLVM, for the profile.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make openssl \
 && rm -rf /var/lib/apt/lists/* \
 && rustup component add llvm-tools
ARG WEAPP_PGO=on
WORKDIR /src
COPY . .
RUN --mount=type=cache,id=weapp-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=weapp-target,target=/src/target \
    WEAPP_PGO=${WEAPP_PGO} scripts/build-release.sh /out \
 && mkdir -p /out/data

# Small runtime: glibc and libgcc only (TLS is rustls), no shell, no package manager,
# runs as the unprivileged user `nonroot` (uid 65532).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER nonroot:nonroot

FROM runtime AS session-svc
COPY --from=build /out/session-svc /usr/local/bin/session-svc
# The embedded store's directory (unused with MongoDB), owned by the runtime user.
COPY --from=build --chown=65532:65532 /out/data /var/lib/weapp
ENV WEAPP_SESSION_LISTEN=0.0.0.0:50051 \
    WEAPP_DATA_DIR=/var/lib/weapp \
    WEAPP_LOG_FORMAT=json
EXPOSE 50051
VOLUME ["/var/lib/weapp"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/session-svc", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/session-svc"]

FROM runtime AS gateway-svc
COPY --from=build /out/gateway-svc /usr/local/bin/gateway-svc
ENV WEAPP_GATEWAY_LISTEN=0.0.0.0:8765 \
    WEAPP_LOG_FORMAT=json
EXPOSE 8765
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/gateway-svc", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/gateway-svc"]
