# syntax=docker/dockerfile:1
# Two small non-root images from one build:
#   docker build --target svc -t txlab-svc .   the workload charts/txlab runs
#   docker build --target cli -t txlab .       txlab itself with helm, the chart,
#                                              profiles, scenarios and chaos files
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Caches keep the registry and the target directory between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p txlab-svc -p txlab-cli --bins \
    && mkdir -p /out \
    && cp target/release/txlab-svc target/release/txlab /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 txlab \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin txlab
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

FROM runtime AS svc
COPY --from=build /out/txlab-svc /usr/local/bin/txlab-svc
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/txlab-svc"]

FROM runtime AS cli
COPY --from=build /out/txlab /usr/local/bin/txlab
# `--target k8s` renders the chart with helm.
COPY --from=alpine/helm:3.17.3 /usr/bin/helm /usr/local/bin/helm
COPY charts /opt/txlab/charts
COPY profiles /opt/txlab/profiles
COPY scenarios /opt/txlab/scenarios
COPY chaos /opt/txlab/chaos
WORKDIR /opt/txlab
ENTRYPOINT ["/usr/local/bin/txlab"]
