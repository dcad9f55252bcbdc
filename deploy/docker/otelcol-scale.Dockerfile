# syntax=docker/dockerfile:1
# The `otelcol-scale` image: the OpenTelemetry Collector with the `scale` processor, built by
# ocb from builder-config.yaml (cgo, libscale linked statically).
#
#   docker build -f deploy/docker/otelcol-scale.Dockerfile -t scale-autoscaler/otelcol-scale:0.1.0 .
#
# Built from the repository root with the project's own `make collector` (libscale, then ocb).
# No image is built on the project's development machine (it has no Docker): images are built
# elsewhere (CI, a release machine), and nothing in `make test` needs one. The chart's collector
# ConfigMaps (deploy/helm/scale) are configurations for this image.
ARG RUST_VERSION=1.95
ARG GO_VERSION=1.26.8
FROM golang:${GO_VERSION}-bookworm AS go

FROM rust:${RUST_VERSION}-bookworm AS build
COPY --from=go /usr/local/go /usr/local/go
ENV PATH=/usr/local/go/bin:/root/go/bin:$PATH GOTOOLCHAIN=local SCALE_CACHE=/root/.cache/scale
WORKDIR /src
COPY . .
RUN make collector

FROM debian:bookworm-slim
COPY --from=build /src/_build/otelcol-scale/otelcol-scale /usr/local/bin/otelcol-scale
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/otelcol-scale"]
CMD ["--config=/etc/otelcol-scale/collector.yaml"]
